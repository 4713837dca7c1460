"""benchmarks.training_speed.matmul_flops counts 2 * m * n * k per matrix product, through transposes,
batch broadcasting, nested functions and gradients."""

import pytest
import tensorflow as tf

from benchmarks.training_speed import matmul_flops


def test_counts_products_of_a_step_and_its_gradient():
    w = tf.Variable(tf.ones([5, 3]))

    @tf.function(jit_compile=True)
    def batched(x, y):  # [4, 2, 5] x [5, 7] broadcast: 4 products of 2x5 by 5x7
        return tf.matmul(x, y)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            h = tf.matmul(x, w)                                    # [6, 5] x [5, 3]
            g = tf.matmul(h, h, transpose_a=True)                  # h^T h: 3x6 by 6x3
            b = batched(tf.ones([4, 2, 5]), tf.ones([5, 7]))
            loss = tf.reduce_sum(g) + tf.reduce_sum(b)
        return tape.gradient(loss, w)

    forward = 2 * 6 * 3 * 5 + 2 * 3 * 3 * 6 + 2 * 4 * 2 * 7 * 5
    # the gradient: d h from d g (two 6x3 by 3x3 products), then d w = x^T d h (5x6 by 6x3)
    backward = 2 * (2 * 6 * 3 * 3) + 2 * 5 * 3 * 6
    assert matmul_flops(step, tf.ones([6, 5])) == forward + backward


def test_refuses_a_graph_with_unknown_shapes():
    fn = tf.function(lambda x: tf.matmul(x, x, transpose_b=True))
    with pytest.raises(ValueError, match="not static"):
        matmul_flops(fn, tf.TensorSpec([None, 4], tf.float32))


def test_a_called_function_counts_as_its_body_once_per_call():
    """With a gradient through the call, the graph holds the function's unused inference version beside
    the forward version it calls: only what runs counts."""
    w = tf.Variable(tf.ones([5, 3]))

    def gram(a):
        return tf.matmul(a, a, transpose_a=True)

    def step_of(f):
        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(f(tf.matmul(x, w))) + tf.reduce_sum(f(tf.matmul(x, 2.0 * w)))
            return tape.gradient(loss, w)
        return step

    x = tf.ones([6, 5])
    assert matmul_flops(step_of(tf.function(gram)), x) == matmul_flops(step_of(gram), x)
    loop = tf.function(lambda n: tf.while_loop(lambda i, a: i < n, lambda i, a: (i + 1, tf.matmul(a, a)),
                                               (0, tf.eye(3)))[1])
    with pytest.raises(ValueError, match="While"):
        matmul_flops(loop, tf.constant(2))
