"""`MetaTrainer`: the mechanics of `LiMAMLModel`'s training step, apart from the model's API.

The split follows Keras' own: `keras/src/trainers/trainer.py` holds the model API and
`keras/src/backend/tensorflow/trainer.py` how a step runs. `limaml_tf.model.LiMAMLModel` holds the
network, its adaptation and the Keras step entry points; this mixin holds how a training step
turns a raw task bundle into applied gradients:

  encode    features encoded once, per-task random seeds distinct per task, replica and step
            (`encode_bundle`), support sets hidden for `support_dropout`;
  chunk     at most `max_tasks_per_chunk` tasks at once, or the largest chunk whose estimated
            memory (`step_memory`, see `limaml_tf.memory`) fits a budget;
  compile   each chunk's inner + outer loop with XLA or as a TF graph (`uses_xla`);
  sum       the chunks' gradients (`encoded_gradients`), then over replicas (all-reduced once per
            step) before the optimizer applies them, and the logged loss likewise.

The mixin reads the model's `objective`, `_scores`, `encoder`, `encode_samples`, `_task_ids` and
hyper-parameters; it comes before `keras.Model` in the bases, so its overrides of Keras methods
(`fit`, `_maybe_symbolic_build`) call Keras' through `super()`. See docs/training_at_scale.md.
"""

from __future__ import annotations

import collections

import tensorflow as tf

from limaml_tf import distribute, maml, memory
from limaml_tf.definitions import is_multi
from limaml_tf.tasks import SETS

# jit_inner_loop="auto" at n = 1: XLA for chunks of at most this many task slots (tasks x (support + query));
# where the TF graph was faster is in docs/training_at_scale.md ("What changed").
XLA_ONE_STEP_MAX_SLOTS = 32_768
JIT_CHOICES = (True, False, "auto")


class Untracked(collections.UserDict):
    """A mapping Keras/TF object tracking leaves alone (a tracked dict with int keys breaks SavedModel export)."""


class MetaTrainer:
    """Mixin of `LiMAMLModel`: encoding, chunking, XLA choice, chunked gradients and replica sums of a step."""

    def _init_step_mechanics(self, max_tasks_per_chunk, jit_inner_loop):
        """Validates and keeps the step settings; the caches start empty."""
        self.max_tasks_per_chunk = max_tasks_per_chunk
        self._step_memory = Untracked()  # chunk shapes -> memory.StepMemory (budgeted chunking)
        self._chunk_fn = None  # the compiled gradient of one chunk (several chunks in a graph)
        if jit_inner_loop not in JIT_CHOICES:
            raise ValueError("jit_inner_loop must be True, False or 'auto' (XLA where it measured faster, when the "
                             f"loop compiles), got {jit_inner_loop!r}")
        self.jit_inner_loop = jit_inner_loop
        self._jit_scores, self._xla_lowers = None, Untracked()  # XLA-compiled loop; "auto": shape -> lowers?

    # -- the step's inputs ---------------------------------------------------------
    def encode_bundle(self, bundle, step=0):
        """Encodes a raw task bundle: features [T, S, ...], labels and masks, `task_id` [T] and per-task
        random seeds `task_seed` [T, 2] (distinct per task, replica and training `step`)."""
        out, dtype = {}, self.variable_dtype
        for name in SETS:
            mask = bundle[f"{name}_mask"]
            out[name] = self.encode_samples(bundle[name], tf.shape(mask)[:2])
            out[f"{name}_mask"] = tf.cast(mask, dtype)
            out[f"{name}_label"] = tf.cast(bundle[f"{name}_label"], dtype)
        if is_multi(self.meta_block):
            out.update(self._encode_subtasks(bundle))
        t = tf.shape(out["query_mask"])[0]
        out["task_id"] = self._task_ids(bundle.get("task_key"), t)
        replica, replicas = distribute.replica_id_and_count()
        seeds = maml.task_seeds(t, replica, replicas)
        stride = (self.inner_steps + 2) * maml.DRAWS_PER_PASS  # more than the forward passes of one step
        out["task_seed"] = seeds + tf.stack([tf.constant(0, tf.int64), tf.cast(step, tf.int64) * stride])
        return out

    def _encode_subtasks(self, bundle):
        """The `subtask_*` index / mask arrays of the definitions this model's meta blocks read (not the
        primary's: its tasks are the bundle's). See `limaml_tf.tasks`."""
        others = [d for d in self.meta_block.names if d != self.spec.primary_definition]
        out = {"subtask_support_index": {}, "subtask_support_mask": {}, "subtask_query_index": {}}
        for d in others:
            if d not in bundle.get("subtask_query_index", {}):
                raise ValueError(f"the task bundle lacks the sub-tasks of definition {d!r} (subtask_query_index"
                                 f"[{d!r}]): build it with split_tasks / paired_tasks from a spec whose task_keys "
                                 f"include {d!r}")
            out["subtask_support_index"][d] = tf.cast(bundle["subtask_support_index"][d], tf.int32)
            out["subtask_support_mask"][d] = tf.cast(bundle["subtask_support_mask"][d], self.variable_dtype)
            out["subtask_query_index"][d] = tf.cast(bundle["subtask_query_index"][d], tf.int32)
        return out if others else {}

    def _hide_supports(self, encoded):
        """support_dropout: hide the support set of a random fraction of the tasks (drawn per task and
        replica from the step's seeds, before chunking)."""
        seeds = encoded["task_seed"] + tf.constant([0, 1], tf.int64) * 0x5EED
        u = tf.map_fn(lambda s: tf.random.stateless_uniform([], seed=s), seeds, fn_output_signature=tf.float32)
        keep = tf.cast(u >= self.support_dropout, encoded["support_mask"].dtype)
        return {**encoded, "support_mask": encoded["support_mask"] * keep[:, None]}

    def normalizer(self, encoded):
        """Tasks with a query sample in the *global* batch (summed over replicas)."""
        count = tf.reduce_sum(tf.cast(tf.reduce_sum(encoded["query_mask"], -1) > 0, encoded["query_mask"].dtype))
        return tf.maximum(distribute.sum_over_replicas(count), 1.0)

    # -- XLA or the TF graph -------------------------------------------------------
    def uses_xla(self, chunk, training=True) -> bool:
        """Whether a training step on `chunk` compiles its inner + outer loop with XLA: `jit_inner_loop`,
        where "auto" means from 2 inner steps on, or at n = 1 on a chunk of at most `XLA_ONE_STEP_MAX_SLOTS`
        task slots, when the chunk's loop lowers to XLA (checked once per shape)."""
        if self.jit_inner_loop != "auto":
            return bool(self.jit_inner_loop)
        dims = (*chunk["support_mask"].shape, chunk["query_mask"].shape[1])  # tasks, support, query slots
        if self.inner_steps < 2 and (None in dims or dims[0] * (dims[1] + dims[2]) > XLA_ONE_STEP_MAX_SLOTS):
            return False
        specs = tf.nest.map_structure(lambda a: tf.TensorSpec(a.shape, a.dtype), chunk)
        key = (tuple((tuple(s.shape), s.dtype.name) for s in tf.nest.flatten(specs)), bool(training))
        if key not in self._xla_lowers:
            try:
                with tf.init_scope():  # lowered eagerly, on zeros of the chunk's shapes
                    zeros = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), specs)
                    self._xla_scores().experimental_get_compiler_ir(zeros, training)(stage="hlo")
                self._xla_lowers[key] = True
            except Exception:  # noqa: BLE001 - any op XLA cannot compile: run the TF graph instead
                self._xla_lowers[key] = False
        return self._xla_lowers[key]

    def _xla_scores(self):
        if self._jit_scores is None:
            mixed = self.mixed_loss_weight > 0
            self._jit_scores = tf.function(lambda enc, training: self._scores(
                enc, self.inner_steps, self.inner_learning_rate, training, mixed), jit_compile=True)
        return self._jit_scores

    # -- chunks ----------------------------------------------------------------------
    @property
    def max_tasks_per_chunk(self):
        return self._max_tasks_per_chunk

    @max_tasks_per_chunk.setter
    def max_tasks_per_chunk(self, value):
        """Settable after construction (e.g. a budget for the machine a loaded model trains on)."""
        self._chunking = memory.chunk_setting(value)
        self._max_tasks_per_chunk = value

    def tasks_per_chunk(self, encoded) -> int | None:
        """Tasks per chunk for this encoded bundle (None: one chunk), from `max_tasks_per_chunk`."""
        t = encoded["query_mask"].shape[0]
        if t is None:  # a per-replica batch of unknown size
            return None
        budget = memory.budget_bytes(self._chunking)
        if budget is None:
            return self._chunking.tasks
        return self.step_memory(encoded).tasks_within(budget, t)

    def step_memory(self, encoded) -> memory.StepMemory:
        """Estimated memory of the gradient of a chunk of this bundle's shapes (see `limaml_tf.memory`);
        traced without XLA, once per shape."""
        key = tuple((tuple(a.shape[1:]), a.dtype.name) for a in tf.nest.flatten(encoded))
        if key not in self._step_memory:
            def chunk_bytes(tasks):
                probe = tf.nest.map_structure(lambda a: tf.TensorSpec([tasks, *a.shape[1:]], a.dtype), encoded)
                fn = tf.function(lambda chunk: self._chunk_gradients(chunk, 1.0, jit=False))
                return memory.graph_bytes(fn.get_concrete_function(probe).graph)
            self._step_memory[key] = memory.fit_step_memory(chunk_bytes)
        return self._step_memory[key]

    def _chunks(self, encoded):
        size = self.tasks_per_chunk(encoded)
        if not size:
            return [encoded]
        t = encoded["query_mask"].shape[0]
        return [tf.nest.map_structure(lambda a: a[s:s + size], encoded) for s in range(0, t, size)]

    # -- gradients -------------------------------------------------------------------
    def _chunk_gradients(self, chunk, normalizer, regularize=False, jit=None):
        """(loss, gradients for self.trainable_variables, query logits) of one chunk of tasks."""
        optimizer = getattr(self, "optimizer", None)
        with tf.GradientTape() as tape:
            loss, q_logits = self.objective(chunk, normalizer, training=True, jit=jit)
            if regularize and self.losses:  # regularization, once per step (a 1/R share per replica)
                loss += tf.cast(tf.add_n(self.losses), loss.dtype) / distribute.num_replicas()
            scaled = optimizer.scale_loss(loss) if optimizer is not None else loss
        return loss, tape.gradient(scaled, self.trainable_variables), q_logits

    def compute_gradients(self, bundle):
        """(loss, gradients for self.trainable_variables, query logits, encoded bundle) of one training
        step. Under a tf.distribute strategy they are this replica's share (its tasks over the global
        task count). Gradients of embedding tables stay `tf.IndexedSlices`."""
        optimizer = getattr(self, "optimizer", None)
        step = optimizer.iterations if optimizer is not None else 0
        encoded = self.encode_bundle(bundle, step)
        if self.support_dropout:
            encoded = self._hide_supports(encoded)
        return (*self.encoded_gradients(encoded), encoded)

    def encoded_gradients(self, encoded):
        """(loss, gradients, query logits) of an encoded bundle, chunk by chunk (`compute_gradients`
        after feature encoding)."""
        normalizer = self.normalizer(encoded)
        variables = self.trainable_variables
        total, grads, logits = 0.0, [None] * len(variables), []
        chunks = self._chunks(encoded)
        gradients_of = self._chunk_gradients
        if len(chunks) > 1 and not tf.executing_eagerly():
            # one function called per chunk (not inlined: the graph holds one chunk's ops, not k copies),
            # one call after the other (else the executor would run them all at once): at most one
            # chunk's inner loop is in memory
            if self._chunk_fn is None:
                self._chunk_fn = tf.function(self._chunk_gradients, experimental_attributes={"_noinline": True})
            gradients_of = self._chunk_fn
        for i, chunk in enumerate(chunks):
            if i and gradients_of is self._chunk_fn:
                with tf.control_dependencies([g.values if isinstance(g, tf.IndexedSlices) else g for g in grads]):
                    chunk = tf.nest.map_structure(tf.identity, chunk)
            loss, chunk_grads, q_logits = gradients_of(chunk, normalizer, regularize=i == 0 and bool(self.losses))
            grads = [distribute.add_gradients(g, c) for g, c in zip(grads, chunk_grads)]
            total += loss
            logits.append(q_logits)
        grads = [tf.zeros_like(v) if g is None else distribute.merge_duplicate_rows(g) for g, v in zip(grads, variables)]
        return total, grads, tf.concat(logits, 0)

    # -- replica sums ----------------------------------------------------------------
    def _apply_gradients(self, grads):
        """Applies this replica's share of the gradients; under a strategy, summed over replicas first."""
        variables = self.trainable_variables
        context = distribute.replica_context()
        if context is None:
            self.optimizer.apply_gradients(zip(grads, variables))
        else:
            grads = distribute.all_reduce_gradients(context, grads, variables)
            distribute.apply_summed_gradients(self.optimizer, grads, variables)

    def _logs(self, loss, encoded, q_logits):
        # the Mean tracker sums totals and counts over replicas: a replica's share * R averages to the total
        self._loss_tracker.update_state(loss * distribute.num_replicas())
        probs = tf.sigmoid(tf.cast(q_logits, tf.float32))
        self.compute_metrics(None, tf.reshape(encoded["query_label"], [-1]), tf.reshape(probs, [-1]),
                             sample_weight=tf.reshape(encoded["query_mask"], [-1]))
        return distribute.multi_worker_logs(self.get_metrics_result())

    # -- Keras' loop -----------------------------------------------------------------
    def fit(self, x=None, *args, **kwargs):
        """`keras.Model.fit`; a `tf.data.Dataset` of task bundles shuffles itself (`TaskSet.dataset`),
        so `shuffle` defaults to False for it instead of Keras warning that it ignores `shuffle=True`."""
        if isinstance(x, tf.data.Dataset) and len(args) < 8:  # `shuffle` is fit's 9th positional argument
            kwargs.setdefault("shuffle", False)
        return super().fit(x, *args, **kwargs)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Under a tf.distribute strategy, Keras 3 averages a sample batch over the replicas here to build
        # the model symbolically, which fails on string features (raw categorical inputs). Every weight
        # exists since __init__: only the optimizer needs building (in the strategy's scope).
        if self._distribute_strategy is None:
            return super()._maybe_symbolic_build(iterator, data_batch)
        with self.distribute_strategy.scope():
            if self.optimizer is not None and not self.optimizer.built:
                self.optimizer.build(self.trainable_variables)
