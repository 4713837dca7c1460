"""`LiMAMLModel`: a meta block and a global block trained with MAML (Algorithm 2a).

`train_step` on a task bundle (see `limaml_tf.tasks`):

1. inner loop, vectorized over the T tasks with `tf.vectorized_map`: each task starts
   from θ_meta and takes `inner_steps` SGD steps of size `inner_learning_rate` on its
   support loss (global block held fixed) -> θ_meta_i;
2. outer loop: the mean over tasks of each task's query loss under θ_meta_i is
   differentiated w.r.t. θ_meta (through the inner loop: second order unless
   `first_order=True`) and θ_global, and the compiled optimizer applies the update.

`VanillaModel` is the same network trained by plain gradient descent on the same
task batches (every real sample of a task, support and query), with no inner loop.
Both adapt a task at evaluation time (`test_step`, `predict_step` on bundles,
`adapt_and_predict`) with `eval_steps` SGD steps on the task's support set; with
`eval_steps=0` they score the un-adapted model.
"""

from __future__ import annotations

import collections

import keras
import tensorflow as tf

from limaml_tf.features import FeatureEncoder, FeatureSpec
from limaml_tf.tasks import SETS


AGGREGATIONS = ("latest", "mean", "max", "cosine")


def masked_mean_bce(labels, logits, mask):
    """Mean binary cross-entropy over the samples with mask 1 (0 when there are none)."""
    per_sample = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(labels, logits.dtype), logits=logits)
    mask = tf.cast(mask, logits.dtype)
    return tf.reduce_sum(per_sample * mask, -1) / tf.maximum(tf.reduce_sum(mask, -1), 1.0)


class _Untracked(collections.UserDict):
    """A mapping Keras/TF object tracking leaves alone (a dict attribute gets wrapped, and its int keys
    then break SavedModel export of a model that has run adapt_and_predict)."""


def _dense(g, like):
    if g is None:
        return tf.zeros_like(like)
    return tf.convert_to_tensor(g)  # IndexedSlices from a gather -> dense


def _is_seed_state(v) -> bool:
    return "seed_generator_state" in v.path


def _replica_context():
    """The replica context of a multi-replica tf.distribute step, else None."""
    context = tf.distribute.get_replica_context()
    return context if context is not None and context.num_replicas_in_sync > 1 else None


def _sum_over_replicas(value):
    context = _replica_context()
    return value if context is None else context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def _clips(optimizer) -> bool:
    return bool(optimizer.global_clipnorm or optimizer.clipnorm or optimizer.clipvalue)


def _clip(optimizer, grads):
    """The optimizer's gradient clipping (global norm, per-tensor norm or value), in TF ops."""
    if optimizer.global_clipnorm:
        return tf.clip_by_global_norm(grads, optimizer.global_clipnorm)[0]
    if optimizer.clipnorm:
        return [tf.clip_by_norm(g, optimizer.clipnorm) for g in grads]
    if optimizer.clipvalue:
        return [tf.clip_by_value(g, -optimizer.clipvalue, optimizer.clipvalue) for g in grads]
    return grads


def _check_no_batchnorm(block, role: str):
    for layer in block._flatten_layers(include_self=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            raise ValueError(
                f"the {role} contains BatchNormalization layer {layer.name!r}: its batch statistics would mix "
                "the tasks of a batch during per-task adaptation. Use keras.layers.LayerNormalization "
                "(per-sample statistics) instead.")


@keras.saving.register_keras_serializable("limaml_tf")
class LiMAMLModel(keras.Model):
    """A ranking network split into a meta block (adapted per task) and a global block.

    Args:
      meta_block: Keras layer/model, encoded features -> meta embedding [batch, d].
      global_block: Keras layer/model, encoded features + "meta_embedding" -> logits.
      spec: the FeatureSpec of the data (raw inputs are encoded inside the model).
      inner_steps: n, SGD steps per task in the inner loop.
      inner_learning_rate: α, the task learning rate.
      first_order: drop second-order terms (first-order MAML).
      adapt_global_block: adapt the global block too (entire-network MAML).
      eval_steps / eval_learning_rate: adaptation at evaluation; default n and α.
      max_tasks_per_chunk: process at most this many tasks at once (bounds memory; the
        gradient is accumulated over chunks and is the same as without chunking).
      support_dropout: in training, the fraction of tasks whose support set is hidden, so their query
        loss trains the un-adapted model too (the cold-start path of tasks with no recent samples).
      jit_inner_loop: compile the training inner + outer loop (after feature encoding) with XLA:
        fuses the many small per-task ops (faster step, longer first trace; same maths, float
        rounding may differ slightly).
    """

    meta_learning = True

    def __init__(self, meta_block, global_block, spec: FeatureSpec | dict, inner_steps: int = 1,
                 inner_learning_rate: float = 0.1, first_order: bool = False, adapt_global_block: bool = False,
                 eval_steps: int | None = None, eval_learning_rate: float | None = None,
                 max_tasks_per_chunk: int | None = None, jit_inner_loop: bool = False,
                 support_dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.spec = spec if isinstance(spec, FeatureSpec) else FeatureSpec.from_dict(spec)
        self.meta_block, self.global_block = meta_block, global_block
        _check_no_batchnorm(meta_block, "meta block")
        if adapt_global_block:
            _check_no_batchnorm(global_block, "global block (adapted: adapt_global_block=True)")
        self.encoder = FeatureEncoder(self.spec, name="feature_encoder")
        self.inner_steps, self.inner_learning_rate = int(inner_steps), float(inner_learning_rate)
        self.first_order, self.adapt_global_block = bool(first_order), bool(adapt_global_block)
        self.eval_steps = self.inner_steps if eval_steps is None else int(eval_steps)
        self.eval_learning_rate = self.inner_learning_rate if eval_learning_rate is None else float(eval_learning_rate)
        self.max_tasks_per_chunk = max_tasks_per_chunk
        self.jit_inner_loop = bool(jit_inner_loop)
        if not 0.0 <= support_dropout < 1.0:
            raise ValueError(f"support_dropout must be in [0, 1), got {support_dropout}")
        self.support_dropout = float(support_dropout)
        self._task_seed = keras.random.SeedGenerator(0, name="task_seed") if support_dropout else None
        self._jit_objective = None
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.auc_metric = keras.metrics.AUC(name="auc")
        self._adapt_fns = _Untracked()  # compiled adapt functions; not part of SavedModel exports
        self(self.spec.dummy_inputs(2))  # creates every weight, so stateless calls and loading work

    # -- plain forward (un-adapted, or with a given meta embedding) ---------
    def embed(self, encoded, training=False):
        return self.meta_block(encoded, training=training)

    def global_logits(self, encoded, meta_embedding, training=False):
        logits = self.global_block({**encoded, "meta_embedding": meta_embedding}, training=training)
        return tf.reshape(logits, tf.shape(logits)[:1])

    def call(self, inputs, training=False):
        """Raw feature dict (optionally with "meta_embedding") -> probability [batch]."""
        encoded = self.encoder(inputs)
        embedding = inputs["meta_embedding"] if "meta_embedding" in inputs else self.embed(encoded, training)
        return tf.sigmoid(self.global_logits(encoded, embedding, training))

    @property
    def metrics(self):
        return [self.loss_tracker, self.auc_metric]

    # -- functional pieces used per task ----------------------------------
    @property
    def _custom_meta(self) -> bool:
        return hasattr(self.meta_block, "task_parameters")

    def _stateless(self, block, params, inputs, task_index, step, training):
        """block(inputs) with explicit trainable weights; random layers get a seed per task and step."""
        non_trainable = []
        for v in block.non_trainable_variables:
            value = v.value
            if _is_seed_state(v):
                value = value + tf.cast(tf.stack([task_index, step]), value.dtype)
            non_trainable.append(value)
        kwargs = {"training": training} if block._call_has_training_arg else {}
        out, _ = block.stateless_call(params, non_trainable, inputs, **kwargs)
        return out

    def _initial_params(self, weights, features):
        meta_w, global_w = weights
        meta = self.meta_block.task_parameters(meta_w, features) if self._custom_meta else list(meta_w)
        return meta + (list(global_w) if self.adapt_global_block else [])

    def _split(self, params, weights):
        n_meta = len(params) - (len(weights[1]) if self.adapt_global_block else 0)
        return params[:n_meta], (params[n_meta:] if self.adapt_global_block else weights[1])

    def _task_embedding(self, meta_params, features, task_index, step, training):
        if self._custom_meta:
            return self.meta_block.call_with_task_parameters(meta_params, features)
        return self._stateless(self.meta_block, meta_params, features, task_index, step, training)

    def _task_logits(self, params, weights, features, task_index, step, training):
        meta_p, global_p = self._split(params, weights)
        emb = self._task_embedding(meta_p, features, task_index, step, training)
        logits = self._stateless(self.global_block, global_p, {**features, "meta_embedding": emb},
                                 task_index, step, training)
        return tf.reshape(logits, [-1])

    def _has_random_layers(self) -> bool:
        return any(_is_seed_state(v) for v in self.meta_block.non_trainable_variables
                   + self.global_block.non_trainable_variables)

    def _weights(self):
        # Read each variable once, outside the vectorized loop (pfor cannot vectorize resource reads).
        return ([tf.convert_to_tensor(v) for v in self.meta_block.trainable_variables],
                [tf.convert_to_tensor(v) for v in self.global_block.trainable_variables])

    def _adapt(self, weights, s_x, s_y, s_m, index, steps, lr, training, first_order, seed_offset):
        """One task's inner loop: `steps` SGD steps on its support loss; returns the adapted params.
        A task whose support mask is all zero keeps the initial params (zero gradient)."""
        params = self._initial_params(weights, s_x)
        for step in range(steps):
            with tf.GradientTape() as tape:
                tape.watch(params)
                logits = self._task_logits(params, weights, s_x, index, seed_offset + step, training)
                loss = masked_mean_bce(s_y, logits, s_m)
            grads = [_dense(g, p) for g, p in zip(tape.gradient(loss, params), params)]
            if first_order:
                grads = [tf.stop_gradient(g) for g in grads]
            params = [p - lr * g for p, g in zip(params, grads)]
        return params

    def _vectorized(self, fn, elems, training, fallback_to_while_loop):
        # pfor cannot vectorize a per-task random seed: fall back (for the random ops only) when the
        # model has random layers in training; otherwise never, so an accidental fallback fails loudly.
        if fallback_to_while_loop is None:
            fallback_to_while_loop = bool(training) and self._has_random_layers()
        return tf.vectorized_map(fn, elems, fallback_to_while_loop=fallback_to_while_loop)

    def adapt_and_score(self, encoded, steps: int, learning_rate, training=False, first_order=None,
                        seed_offset=0, fallback_to_while_loop=None):
        """Adapts every task of an encoded bundle on its support set, scores its query set.

        Returns (per-task query loss [T], query logits [T, Q]), vectorized over tasks.
        """
        first_order = self.first_order if first_order is None else first_order
        weights = self._weights()
        lr = tf.cast(learning_rate, self.compute_dtype)

        def one_task(elems):
            s_x, s_y, s_m, q_x, q_y, q_m, index = elems
            params = self._adapt(weights, s_x, s_y, s_m, index, steps, lr, training, first_order, seed_offset)
            q_logits = self._task_logits(params, weights, q_x, index, seed_offset + steps, training)
            return masked_mean_bce(q_y, q_logits, q_m), q_logits

        t = tf.shape(encoded["query_mask"])[0]
        elems = (encoded["support"], encoded["support_label"], encoded["support_mask"],
                 encoded["query"], encoded["query_label"], encoded["query_mask"], tf.range(t, dtype=tf.int32))
        return self._vectorized(one_task, elems, training, fallback_to_while_loop)

    def meta_embeddings(self, support, support_label, support_mask, latest, steps: int, learning_rate,
                        aggregation: str = "latest", task_key=None):
        """Algorithm 2b: per task, adapt the meta block on its recent samples (`support`, encoded
        [T, S, ...]) with `steps` SGD steps, then embed. Returns [T, d].

        aggregation: "latest" (the adapted meta block on the task's latest sample, `latest`:
        encoded [T, ...]; the paper's choice), or "mean" / "max" / "cosine" pooling of the adapted
        embeddings of all real recent samples ("cosine": weights = max(cos(e_j, e_latest), 0)).
        A task with no real recent sample gets the un-adapted embedding of `latest` (cold start).
        """
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        weights = self._weights()
        lr = tf.cast(learning_rate, self.compute_dtype)
        support_mask = tf.cast(support_mask, self.compute_dtype)
        support_label = tf.cast(support_label, self.compute_dtype)

        def one_task(elems):
            s_x, s_y, s_m, last, index = elems
            params = self._adapt(weights, s_x, s_y, s_m, index, steps, lr, False, True, 0)
            meta_p, _ = self._split(params, weights)
            last_emb = self._task_embedding(meta_p, tf.nest.map_structure(lambda a: a[None], last),
                                            index, steps, False)[0]
            if aggregation == "latest":
                return last_emb
            embs = self._task_embedding(meta_p, s_x, index, steps, False)
            m = s_m[:, None]
            has = tf.reduce_sum(s_m) > 0
            if aggregation == "mean":
                pooled = tf.reduce_sum(embs * m, 0) / tf.maximum(tf.reduce_sum(s_m), 1.0)
            elif aggregation == "max":
                pooled = tf.reduce_max(tf.where(m > 0, embs, tf.cast(-1e30, embs.dtype)), 0)
            else:
                cos = tf.reduce_sum(tf.math.l2_normalize(embs, -1) * tf.math.l2_normalize(last_emb, -1), -1)
                w = tf.maximum(cos, 0.0) * s_m
                pooled = tf.reduce_sum(embs * w[:, None], 0) / tf.maximum(tf.reduce_sum(w), 1e-12)
            return tf.where(has, pooled, last_emb)

        t = tf.shape(support_mask)[0]
        elems = (support, support_label, support_mask, latest, tf.range(t, dtype=tf.int32))
        return self._vectorized(one_task, elems, False, None)

    # -- bundles -------------------------------------------------------------
    def encode_bundle(self, bundle):
        """Encodes the raw support/query features of a bundle ([T, S, ...] -> [T, S, ...])."""
        out = dict(bundle)
        for name in SETS:
            raw = bundle[name]
            mask = bundle[f"{name}_mask"]
            out[name] = self.encode_samples(raw, tf.shape(mask)[:2])
            out[f"{name}_mask"] = tf.cast(mask, self.compute_dtype)
            out[f"{name}_label"] = tf.cast(bundle[f"{name}_label"], self.compute_dtype)
        return out

    def encode_samples(self, raw, lead_shape):
        """Encodes raw features with leading dims `lead_shape` (e.g. [T, S]), keeping those dims."""
        lead_shape = tf.convert_to_tensor(lead_shape)
        flat = {k: tf.reshape(v, tf.concat([[-1], tf.shape(v)[tf.size(lead_shape):]], 0)) for k, v in raw.items()}
        enc = self.encoder(flat)
        return {k: tf.reshape(v, tf.concat([lead_shape, tf.shape(v)[1:]], 0)) for k, v in enc.items()}

    def _chunks(self, encoded):
        t = encoded["query_mask"].shape[0]
        if not self.max_tasks_per_chunk or t is None:  # t is None: a per-replica batch of unknown size
            yield 0, encoded
            return
        size = self.max_tasks_per_chunk
        for start in range(0, t, size):
            yield start, tf.nest.map_structure(lambda a: a[start:start + size], encoded)

    def objective(self, encoded, training=True):
        """Training loss of one chunk of tasks: per-task losses and query logits (summed later)."""
        if not self.meta_learning:
            logits = {}
            for name in SETS:
                m = encoded[f"{name}_mask"]
                flat = {k: tf.reshape(v, tf.concat([[-1], tf.shape(v)[2:]], 0)) for k, v in encoded[name].items()}
                emb = self.embed(flat, training)
                logits[name] = tf.reshape(self.global_logits(flat, emb, training), tf.shape(m))
            sample_loss = {n: tf.nn.sigmoid_cross_entropy_with_logits(labels=encoded[f"{n}_label"], logits=logits[n])
                           * encoded[f"{n}_mask"] for n in SETS}
            return sample_loss, logits["query"]
        if training and self.support_dropout:
            t = tf.shape(encoded["support_mask"])[0]
            keep = keras.random.uniform([t, 1], seed=self._task_seed) >= self.support_dropout
            encoded = {**encoded, "support_mask": encoded["support_mask"] * tf.cast(keep, self.compute_dtype)}
        if self.jit_inner_loop:
            if self._jit_objective is None:
                self._jit_objective = tf.function(
                    lambda enc, training: self.adapt_and_score(enc, self.inner_steps, self.inner_learning_rate,
                                                               training=training), jit_compile=True)
            numeric = {k: encoded[k] for k in SETS + tuple(f"{n}_{p}" for n in SETS for p in ("label", "mask"))}
            return self._jit_objective(numeric, training)
        task_loss, q_logits = self.adapt_and_score(encoded, self.inner_steps, self.inner_learning_rate,
                                                   training=training)
        return task_loss, q_logits

    def _weighted_loss(self, out, encoded, normalizer):
        if self.meta_learning:
            has_query = tf.cast(tf.reduce_sum(encoded["query_mask"], -1) > 0, self.compute_dtype)
            return tf.reduce_sum(out * has_query) / normalizer
        return sum(tf.reduce_sum(v) for v in out.values()) / normalizer

    def _normalizer(self, encoded):
        """Tasks with a query sample (meta learning) or real samples (vanilla) in the whole *global*
        batch: under a tf.distribute strategy the count is summed over replicas, so the all-reduced
        sum of the replicas' losses is the single-device mean over the global batch."""
        if self.meta_learning:
            count = tf.reduce_sum(tf.cast(tf.reduce_sum(encoded["query_mask"], -1) > 0, self.compute_dtype))
        else:
            count = sum(tf.reduce_sum(encoded[f"{n}_mask"]) for n in SETS)
        return tf.maximum(_sum_over_replicas(count), 1.0)

    def compute_gradients(self, bundle):
        """(loss, gradients for self.trainable_variables, query logits, encoded bundle) of one step.

        Under a tf.distribute strategy, loss and gradients are this replica's share: its tasks'
        losses over the global task count (summing the shares over replicas gives the global ones)."""
        encoded = self.encode_bundle(bundle)
        normalizer = self._normalizer(encoded)
        variables = self.trainable_variables
        total_loss, grads, logits = 0.0, [tf.zeros_like(v) for v in variables], []
        for _, chunk in self._chunks(encoded):
            with tf.GradientTape() as tape:
                out, q_logits = self.objective(chunk, training=True)
                loss = self._weighted_loss(out, chunk, normalizer)
            chunk_grads = tape.gradient(loss, variables)
            grads = [g + _dense(c, v) for g, c, v in zip(grads, chunk_grads, variables)]
            total_loss += loss
            logits.append(q_logits)
        return total_loss, grads, tf.concat(logits, 0), encoded

    def _update_metrics(self, loss, encoded, q_logits):
        # the Mean tracker sums totals and counts over replicas: a replica's share * R averages to the total
        self.loss_tracker.update_state(loss * tf.distribute.get_strategy().num_replicas_in_sync)
        self.auc_metric.update_state(tf.reshape(encoded["query_label"], [-1]), tf.reshape(tf.sigmoid(q_logits), [-1]),
                                     sample_weight=tf.reshape(encoded["query_mask"], [-1]))
        logs = {m.name: m.result() for m in self.metrics}
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras 3 reduces a multi-worker step's logs with reduce("MEAN", axis=0), which fails on
            # scalars (tensorflow/tensorflow#72388): give them a leading axis.
            logs = {k: v[None] for k, v in logs.items()}
        return logs

    def train_step(self, data):
        bundle = data[0] if isinstance(data, tuple) else data
        loss, grads, q_logits, encoded = self.compute_gradients(bundle)
        context = _replica_context()
        if context is not None and _clips(self.optimizer):
            # Keras clips each replica's share *before* its all-reduce, which is not the clip of the global
            # gradient: reduce here, clip, and give the optimizer a 1/R share of the clipped gradient (its
            # all-reduce sums the shares back; its own clip is then a no-op).
            grads = _clip(self.optimizer, context.all_reduce(tf.distribute.ReduceOp.SUM, grads))
            grads = [g / context.num_replicas_in_sync for g in grads]
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        for v in self.meta_block.non_trainable_variables + self.global_block.non_trainable_variables:
            if _is_seed_state(v):  # fresh randomness next step (per-task offsets are added per call)
                v.assign(v + tf.cast(tf.stack([0, self.inner_steps + 1]), v.dtype))
        return self._update_metrics(loss, encoded, q_logits)

    def _score_bundle(self, bundle):
        encoded = self.encode_bundle(bundle)
        task_loss, q_logits = self.adapt_and_score(encoded, self.eval_steps, self.eval_learning_rate)
        return encoded, task_loss, q_logits

    def test_step(self, data):
        bundle = data[0] if isinstance(data, tuple) else data
        encoded, task_loss, q_logits = self._score_bundle(bundle)
        has_query = tf.cast(tf.reduce_sum(encoded["query_mask"], -1) > 0, self.compute_dtype)
        loss = tf.reduce_sum(task_loss * has_query) / tf.maximum(_sum_over_replicas(tf.reduce_sum(has_query)), 1.0)
        return self._update_metrics(loss, encoded, q_logits)

    def predict_step(self, data):
        x = data[0] if isinstance(data, tuple) else data
        if "query_mask" in x:  # a task bundle: adapt on support, score query -> [T, Q]
            return tf.sigmoid(self._score_bundle(x)[2])
        return self(x, training=False)

    def adapt_and_predict(self, bundle, steps: int | None = None, learning_rate: float | None = None):
        """Query probabilities [T, Q] after `steps` SGD steps per task on its support set (compiled)."""
        steps = self.eval_steps if steps is None else int(steps)
        lr = self.eval_learning_rate if learning_rate is None else float(learning_rate)
        if steps not in self._adapt_fns:
            self._adapt_fns[steps] = tf.function(
                lambda b, lr: tf.sigmoid(self.adapt_and_score(self.encode_bundle(b), steps, lr)[1]),
                reduce_retracing=True)
        return self._adapt_fns[steps](bundle, tf.constant(lr, tf.float32)).numpy()

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Under a tf.distribute strategy, Keras 3 averages a sample batch over the replicas here to build
        # the model symbolically, which fails on string features (raw categorical inputs). Every weight
        # exists since __init__: only the optimizer needs building (in the strategy's scope).
        if self._distribute_strategy is None:
            return super()._maybe_symbolic_build(iterator, data_batch)
        with self.distribute_strategy.scope():
            if self.optimizer is not None and not self.optimizer.built:
                self.optimizer.build(self.trainable_variables)

    # -- serialization -----------------------------------------------------
    def get_config(self):
        return {
            **{k: v for k, v in super().get_config().items() if k in ("name", "trainable", "dtype")},
            "meta_block": keras.saving.serialize_keras_object(self.meta_block),
            "global_block": keras.saving.serialize_keras_object(self.global_block),
            "spec": self.spec.to_dict(),
            "inner_steps": self.inner_steps, "inner_learning_rate": self.inner_learning_rate,
            "first_order": self.first_order, "adapt_global_block": self.adapt_global_block,
            "eval_steps": self.eval_steps, "eval_learning_rate": self.eval_learning_rate,
            "max_tasks_per_chunk": self.max_tasks_per_chunk, "jit_inner_loop": self.jit_inner_loop,
            "support_dropout": self.support_dropout,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["meta_block"] = keras.saving.deserialize_keras_object(config["meta_block"])
        config["global_block"] = keras.saving.deserialize_keras_object(config["global_block"])
        return cls(**config)


@keras.saving.register_keras_serializable("limaml_tf")
class VanillaModel(LiMAMLModel):
    """The same blocks trained by plain gradient descent on every real sample of the task batch
    (support and query); the meta embedding is the un-adapted meta block's output. Evaluation
    adapts per task only if `eval_steps` > 0 (the "vanilla + fine-tune" baseline)."""

    meta_learning = False

    def __init__(self, meta_block, global_block, spec, eval_steps: int = 0, **kwargs):
        super().__init__(meta_block, global_block, spec, eval_steps=eval_steps, **kwargs)
