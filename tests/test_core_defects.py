"""Regression tests for four defects of the first core (each failed on commit 418a306):

1. per-task random seeds repeated across chunks, replicas and draws of a pass;
2. the ID meta block read the task id from support slot 0 (an empty support set -> the `base` row);
3. the ID table's gradient was densified every step;
4. mixed precision (`mixed_bfloat16`) broke the inner loop.
"""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import limaml_tf as lt
from conftest import tiny_blocks, with_id_feature

HERE = os.path.dirname(os.path.abspath(__file__))


def _identical_tasks(synthetic, tasks=6, cap=12):
    """A bundle whose `tasks` tasks hold the same samples: any difference between their outputs in
    training mode comes from their random draws alone."""
    df, spec = synthetic
    one = next(lt.split_tasks(df, spec, max_samples_per_task=cap).batches(1))
    rep = lambda a: np.repeat(a, tasks, axis=0)  # noqa: E731
    return {k: ({n: rep(a) for n, a in v.items()} if isinstance(v, dict) else rep(v)) for k, v in one.items()}, spec


def _dropout_model(spec, **kw):
    # seeded and wide enough that no task's output is exactly 0 (every unit dropped or dead): two such
    # tasks would look alike whatever their masks, as happened with 6 units after some test orders
    keras.utils.set_random_seed(0)
    meta, _ = tiny_blocks(spec)
    glob = lt.MLPGlobalBlock(spec.other_features, hidden_units=(32, 32), embedding_dim=2, dropout=0.5)
    return lt.LiMAMLModel(meta, glob, spec, inner_steps=2, inner_learning_rate=0.5, **kw)


@pytest.mark.heavy
def test_dropout_is_identical_chunked_and_unchunked(synthetic):
    bundle, spec = _identical_tasks(synthetic)
    whole, chunked = _dropout_model(spec), _dropout_model(spec, max_tasks_per_chunk=2)
    chunked.set_weights(whole.get_weights())
    for a, b in zip(whole.non_trainable_variables, chunked.non_trainable_variables):
        b.assign(a)  # set_weights leaves the dropout layers' seed states alone
    loss_a, grads_a, logits_a, _ = whole.compute_gradients(bundle)
    loss_b, grads_b, logits_b, _ = chunked.compute_gradients(bundle)
    np.testing.assert_allclose(logits_b, logits_a, rtol=1e-5)
    np.testing.assert_allclose(float(loss_b), float(loss_a), rtol=1e-5)
    for a, b in zip(grads_a, grads_b):
        np.testing.assert_allclose(tf.convert_to_tensor(b), tf.convert_to_tensor(a), rtol=1e-4, atol=1e-7)


@pytest.mark.heavy
def test_dropout_masks_differ_across_chunks(synthetic):
    """Task k of every chunk used to draw the same masks (the task index restarted per chunk)."""
    bundle, spec = _identical_tasks(synthetic)
    model = _dropout_model(spec, max_tasks_per_chunk=2)
    _, _, logits, _ = model.compute_gradients(bundle)
    logits = np.asarray(logits)
    for i in range(len(logits)):
        for j in range(i + 1, len(logits)):
            assert not np.allclose(logits[i], logits[j]), f"tasks {i} and {j} drew the same dropout masks"


class _TwoDraws(keras.layers.Layer):
    """Draws twice from one Dropout layer per forward pass (as MLPGlobalBlock reuses its Dropout)."""

    def __init__(self):
        super().__init__()
        self.drop = keras.layers.Dropout(0.5, seed=7)

    def call(self, x, training=False):
        ones = tf.ones([64])
        return tf.stack([self.drop(ones, training=training), self.drop(ones, training=training)])


def test_draws_of_a_pass_never_repeat_in_the_next_pass():
    """A pass's second draw used to reuse the seed of the next inner step's first draw."""
    from limaml_tf import maml

    block = _TwoDraws()
    block(tf.zeros([1]))
    masks = {}
    for task in range(2):
        for step in range(3):
            seed = maml._pass_seed({"seed": maml.task_seeds(2)[task]}, step)
            out = maml.call_block(block, [], tf.zeros([1]), seed, training=True).numpy()
            masks[task, step, 0], masks[task, step, 1] = out[0], out[1]
    keys = list(masks)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            assert not np.array_equal(masks[a], masks[b]), f"draws {a} and {b} share a mask"


def test_task_seeds_are_distinct_per_replica():
    from limaml_tf import maml

    seeds = np.concatenate([maml.task_seeds(5, r, 3).numpy() for r in range(3)])
    assert len({tuple(s) for s in seeds}) == 15


MIRRORED = textwrap.dedent("""
    import sys, numpy as np, tensorflow as tf
    tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                               [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, sys.argv[1])
    import keras, limaml_tf as lt
    from test_core_defects import _identical_tasks, _dropout_model
    df, spec = lt.make_synthetic(num_tasks=40, mean_samples_per_task=30, seed=3)
    spec = spec.fit(df)
    bundle, spec = _identical_tasks((df, spec), tasks=8)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = _dropout_model(spec, support_dropout=0.5)
        model.compile(optimizer="sgd")
    ds = tf.data.Dataset.from_tensors(tf.nest.map_structure(
        lambda a: tf.constant(a.astype(str) if a.dtype == object else a), bundle)).unbatch().batch(8)
    batch = next(iter(strategy.experimental_distribute_dataset(ds)))
    logits = strategy.run(tf.function(lambda b: model.compute_gradients(b)[2]), args=(batch,))
    a, b = (np.asarray(x) for x in strategy.experimental_local_results(logits))
    print("SAME" if np.allclose(a, b) else "DIFFERENT")
""")


@pytest.mark.heavy
def test_replicas_draw_different_masks(tmp_path):
    """Under MirroredStrategy every replica used to draw the same masks and hide the same supports."""
    out = subprocess.run([sys.executable, "-c", MIRRORED, HERE], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": os.path.dirname(HERE)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "DIFFERENT"


def _id_model(synthetic, **kw):
    df, spec, id_feature = with_id_feature(*synthetic)
    keys = id_feature.vocabulary
    model = lt.LiMAMLModel(lt.IDEmbeddingMetaBlock(id_feature, output_dim=3),
                           lt.MLPGlobalBlock(spec.other_features, hidden_units=(8,)), spec,
                           inner_learning_rate=0.5, **kw)
    return model, df, spec, keys


def test_id_block_reads_the_task_key_even_with_an_empty_support_set(synthetic):
    model, df, spec, keys = _id_model(synthetic)
    model.meta_block.table.assign(np.random.default_rng(0).normal(size=model.meta_block.table.shape))
    users = list(keys[:4])
    query = df[df[spec.task_key].isin(users)]
    tasks = lt.paired_tasks(query.iloc[:0], query, spec, max_support=4, max_query=8)  # every support set empty
    bundle = next(tasks.batches(4))
    assert bundle["support_mask"].sum() == 0
    adapted = model.adapt_and_predict(bundle, steps=1)
    mask = bundle["query_mask"] > 0
    direct = model({k: tf.constant(v[mask].astype(str) if v.dtype == object else v[mask])
                    for k, v in bundle["query"].items()}).numpy()
    np.testing.assert_allclose(adapted[mask], direct, rtol=1e-5)  # each user's own row, not `base`


def test_id_table_gradient_stays_sparse_with_chunks(synthetic):
    model, df, spec, keys = _id_model(synthetic, max_tasks_per_chunk=3)
    whole, _, _, _ = _id_model(synthetic)
    whole.set_weights(model.get_weights())
    bundle = next(lt.split_tasks(df, spec, max_samples_per_task=12).batches(8))
    index = [v.path for v in model.trainable_variables].index(model.meta_block.table.path)
    sparse = model.compute_gradients(bundle)[1][index]
    assert isinstance(sparse, tf.IndexedSlices), type(sparse)
    assert sparse.values.shape[0] <= 8, "more rows than tasks in the batch: duplicates were not merged"
    dense = tf.convert_to_tensor(whole.compute_gradients(bundle)[1][index])
    np.testing.assert_allclose(tf.convert_to_tensor(sparse), dense, rtol=1e-5, atol=1e-8)


@pytest.fixture
def mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.heavy
def test_mixed_bfloat16_trains_close_to_float32(synthetic, mixed_bfloat16):
    """bfloat16 keeps 8 bits of mantissa (~2-3 significant digits): the gradient of a step in mixed
    precision must point the same way as in float32 (cosine > 0.98) with a norm within 10 %."""
    df, spec = synthetic
    bundle = next(lt.split_tasks(df, spec, max_samples_per_task=12).batches(6))
    keras.utils.set_random_seed(0)
    mixed = lt.LiMAMLModel(*tiny_blocks(spec), spec, inner_learning_rate=0.5)
    mixed.compile(optimizer="adam")
    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(0)
    full = lt.LiMAMLModel(*tiny_blocks(spec), spec, inner_learning_rate=0.5)
    full.set_weights(mixed.get_weights())
    assert mixed.meta_block.compute_dtype == "bfloat16"
    loss_m, grads_m, _, _ = mixed.compute_gradients(bundle)
    loss_f, grads_f, _, _ = full.compute_gradients(bundle)
    flat = lambda gs: np.concatenate([np.ravel(tf.convert_to_tensor(g)) for g in gs]).astype(np.float64)  # noqa
    g_m, g_f = flat(grads_m), flat(grads_f)
    assert np.isfinite(float(loss_m)) and abs(float(loss_m) - float(loss_f)) < 0.02 * float(loss_f)
    assert g_m @ g_f / (np.linalg.norm(g_m) * np.linalg.norm(g_f)) > 0.98
    assert abs(np.linalg.norm(g_m) / np.linalg.norm(g_f) - 1) < 0.1
    logs = mixed.train_on_batch(bundle, return_dict=True)
    assert np.isfinite(logs["loss"])


def _full_table_tensors(graph, shape):
    """Names of the float tensors of exactly `shape` produced anywhere in `graph` (nested functions too)."""
    found = [t.name for op in graph.get_operations() for t in op.outputs
             if t.dtype.is_floating and t.shape.as_list() == list(shape)]
    for fn in getattr(graph, "_functions", {}).values():
        inner = getattr(fn, "graph", None)
        if inner is not None:
            found += _full_table_tensors(inner, shape)
    return found


def test_training_step_never_materializes_the_whole_id_table(synthetic):
    """Defect 3, the cost side: a step reads the batch's rows only (a gather on the backend variable) and
    applies a row update. A dense read of the table (e.g. tf.gather on the Keras variable, or a dense
    gradient) would put a [cardinality, d] tensor in the step's graph and make each step cost O(table)."""
    model, df, spec, _ = _id_model(synthetic)
    model.compile(optimizer="sgd")
    bundle = next(lt.split_tasks(df, spec, max_samples_per_task=12).batches(8))
    model.train_on_batch(bundle)  # builds the optimizer
    graph = tf.function(model.train_step).get_concrete_function(tf.nest.map_structure(tf.constant, bundle)).graph
    table = model.meta_block.table.shape
    assert graph.get_operations(), "empty graph"
    assert _full_table_tensors(graph, table) == []
