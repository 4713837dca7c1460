"""`LiMAMLModel`: a thin Keras model over the algorithm in `limaml_tf.maml`.

`train_step` on a task bundle (see `limaml_tf.tasks`): the tasks' support sets adapt the meta
block (inner loop, vectorized over tasks; second order unless `first_order=True`), their query
losses under the adapted weights are differentiated w.r.t. both blocks, and the compiled optimizer
applies the update (Algorithm 2a). `limaml_tf.vanilla.VanillaModel` is the same network trained
by plain gradient descent on every real sample of the same task batches. Both adapt a task at evaluation time
(`test_step`, `predict_step` on bundles, `adapt_and_predict`) with `eval_steps` SGD steps on its
support set; `eval_steps=0` scores the un-adapted model.

`compile(loss=..., metrics=[...])` is honoured: the loss (default: binary cross-entropy on the
logits) is the per-sample loss of both loops, the metrics are updated on the query samples with
the query mask as sample weight.
"""

from __future__ import annotations

import collections

import keras
import tensorflow as tf

import limaml_tf
from limaml_tf import distribute, maml, memory
from limaml_tf.blocks import TaskParameterizedMetaBlock, check_no_batchnorm
from limaml_tf.definitions import MetaBlocks, is_multi
from limaml_tf.features import FeatureEncoder, FeatureSpec
from limaml_tf.tasks import SETS, check_saved_version, non_negative_int, non_negative_number

AGGREGATIONS = maml.AGGREGATIONS
# jit_inner_loop="auto" at n = 1: XLA for chunks of at most this many task slots (tasks x (support + query)).
# Measured on 2 CPU cores (docs/training_at_scale.md): XLA step / TF step 0.78-0.94 from 4,096 to 32,768
# slots, 1.08-1.20 at 65,536. From 2 inner steps XLA was faster at every size measured.
XLA_ONE_STEP_MAX_SLOTS = 32_768


class _Untracked(collections.UserDict):
    """A mapping Keras/TF object tracking leaves alone (a tracked dict with int keys breaks SavedModel export)."""


def _sample_loss(loss):
    """(labels [N], logits [N]) -> per-sample loss [N] from a compiled Keras loss (None: BCE on logits)."""
    if loss is None:
        return maml.sigmoid_cross_entropy
    fn = keras.losses.get(loss)
    from_logits = bool(getattr(fn, "from_logits", False))
    call = fn.call if isinstance(fn, keras.losses.Loss) else fn

    def sample_loss(labels, logits):
        pred = logits if from_logits else tf.sigmoid(logits)
        return tf.reshape(call(labels[:, None], pred[:, None]), [-1])
    return sample_loss


@keras.saving.register_keras_serializable("limaml_tf")
class LiMAMLModel(keras.Model):
    """A ranking network split into a meta block (adapted per task) and a global block.

    Args:
      meta_block: Keras layer/model, encoded features -> meta embedding [batch, d]; or a
        `TaskParameterizedMetaBlock` that adapts a small per-task tensor (e.g. an ID embedding row); or a
        dict {task definition: meta block} over definitions of `spec.task_keys` (each adapts on its own
        tasks; the global block reads their embeddings concatenated in sorted definition order —
        `limaml_tf.definitions`, docs/task_definitions.md).
      global_block: Keras layer/model, encoded features + "meta_embedding" -> logits.
      spec: the FeatureSpec of the data (raw inputs are encoded inside the model).
      inner_steps: n, SGD steps per task in the inner loop.
      inner_learning_rate: α, the task learning rate.
      first_order: drop second-order terms (first-order MAML).
      adapt_global_block: adapt the global block too (entire-network MAML).
      eval_steps / eval_learning_rate: adaptation at evaluation; default n and α.
      max_tasks_per_chunk: process at most this many tasks at once (bounds memory; the gradient is
        accumulated over chunks and equals the unchunked one, random draws included); or a memory
        budget the chunk is chosen from: a size such as "512MB" / "2GiB", or "auto" (a quarter of the
        memory available when the step is traced). See `limaml_tf.memory`.
      support_dropout: in training, the fraction of tasks whose support set is hidden, so their query
        loss trains the un-adapted model too (the cold-start path of tasks with no recent samples).
      mixed_loss_weight: λ; the outer loss adds λ × the un-adapted network's loss on every real sample
        of the task (support and query), so the global block learns from all data (not in the paper).
      learn_inner_learning_rate: Meta-SGD — one trainable rate per adapted weight (initialised at α),
        learned through the inner loop; it then replaces α (and `eval_learning_rate`) everywhere.
      jit_inner_loop: compile the training inner + outer loop (after feature encoding) with XLA: True
        (the blocks must be XLA-compilable), False, or "auto": XLA where it measured faster on CPU —
        from 2 inner steps on (1.1-1.5x), and at n = 1 for chunks of up to `XLA_ONE_STEP_MAX_SLOTS`
        task slots (1.1-1.3x; slower above) — when the loop lowers to XLA (checked once per batch
        shape; else the TF graph). XLA compiles anew for each batch shape (seconds to a minute).

    >>> import keras, limaml_tf as lt
    >>> df, spec = lt.make_synthetic(num_tasks=20, mean_samples_per_task=16, seed=0)
    >>> spec = spec.fit(df)
    >>> model = lt.LiMAMLModel(lt.MLPMetaBlock(spec.meta_features, output_dim=4),
    ...                        lt.MLPGlobalBlock(spec.other_features), spec, inner_learning_rate=0.5)
    >>> model.compile(optimizer=keras.optimizers.Adam(3e-3), metrics=[keras.metrics.AUC(name="auc")])
    >>> tasks = lt.split_tasks(df, spec, max_samples_per_task=16)
    >>> history = model.fit(tasks.dataset(tasks_per_batch=8), epochs=1, verbose=0)
    >>> sorted(history.history)
    ['auc', 'loss']
    >>> model.adapt_and_predict(next(tasks.batches(8)), steps=1).shape  # [tasks, query slots]
    (8, 4)
    """

    def __init__(self, meta_block, global_block, spec: FeatureSpec | dict, inner_steps: int = 1,
                 inner_learning_rate: float = 0.1, first_order: bool = False, adapt_global_block: bool = False,
                 eval_steps: int | None = None, eval_learning_rate: float | None = None,
                 max_tasks_per_chunk: int | str | None = None, jit_inner_loop: bool | str = False,
                 support_dropout: float = 0.0, mixed_loss_weight: float = 0.0,
                 learn_inner_learning_rate: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.spec = spec if isinstance(spec, FeatureSpec) else FeatureSpec.from_dict(spec)
        if isinstance(meta_block, dict):
            meta_block = MetaBlocks(meta_block, name="meta_blocks")
        if is_multi(meta_block):
            unknown = sorted(set(meta_block.names) - set(self.spec.definitions))
            if unknown:
                raise ValueError(f"meta_block definitions {unknown} are not task definitions of the spec "
                                 f"{list(self.spec.definitions)}: add them to the spec's task_keys "
                                 "({definition: task-key column})")
            if adapt_global_block:
                raise ValueError("adapt_global_block=True with several task definitions: which tasks would adapt "
                                 "the global block is undefined; use one meta block, or adapt_global_block=False")
        self.meta_block, self.global_block = meta_block, global_block
        check_no_batchnorm(meta_block, "meta block")
        if adapt_global_block:
            check_no_batchnorm(global_block, "global block (adapted: adapt_global_block=True)")
        self.encoder = FeatureEncoder(self.spec, name="feature_encoder")
        self.inner_steps = non_negative_int("inner_steps", inner_steps)
        self.inner_learning_rate = non_negative_number("inner_learning_rate", inner_learning_rate)
        self.first_order, self.adapt_global_block = bool(first_order), bool(adapt_global_block)
        self.eval_steps = self.inner_steps if eval_steps is None else non_negative_int("eval_steps", eval_steps)
        self.eval_learning_rate = (self.inner_learning_rate if eval_learning_rate is None
                                   else non_negative_number("eval_learning_rate", eval_learning_rate))
        self.max_tasks_per_chunk = max_tasks_per_chunk
        self._step_memory = _Untracked()  # chunk shapes -> memory.StepMemory (budgeted chunking)
        self._chunk_fn = None  # the compiled gradient of one chunk (several chunks in a graph)
        if jit_inner_loop not in (True, False, "auto"):
            raise ValueError("jit_inner_loop must be True, False or 'auto' (XLA where it measured faster, when the "
                             f"loop compiles), got {jit_inner_loop!r}")
        self.jit_inner_loop = jit_inner_loop
        if not 0.0 <= support_dropout < 1.0:
            raise ValueError(f"support_dropout must be in [0, 1), got {support_dropout}")
        self.support_dropout = float(support_dropout)
        self.mixed_loss_weight = non_negative_number("mixed_loss_weight", mixed_loss_weight)
        self.learn_inner_learning_rate = bool(learn_inner_learning_rate)
        self._jit_scores, self._xla_lowers = None, _Untracked()  # XLA-compiled loop; "auto": shape -> lowers?
        self._adapt_fns = _Untracked()  # compiled adapt functions; not part of SavedModel exports
        dummy = self.encoder(self.spec.dummy_inputs(2))
        self.global_logits(dummy, self.embed(dummy))  # builds the blocks: the rates take their shapes
        self.inner_rates = self._make_inner_rates() if self.learn_inner_learning_rate else None
        self(self.spec.dummy_inputs(2))  # creates every weight, so stateless calls and loading work

    def _make_inner_rates(self):
        shapes = maml.adapted_param_shapes(self.network, self._weights())
        return [self.add_weight(shape=s, initializer=keras.initializers.Constant(self.inner_learning_rate),
                                name=f"inner_rate_{i}") for i, s in enumerate(shapes)]

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

    # -- the algorithm's inputs ----------------------------------------------
    @property
    def network(self) -> maml.Network:
        return maml.Network(self.meta_block, self.global_block, self.adapt_global_block,
                            _sample_loss(getattr(self, "loss", None)))

    def _weights(self) -> maml.Weights:
        """Dense blocks' weights read once, outside pfor; a `TaskParameterizedMetaBlock` gets its
        variables themselves (it gathers its rows sparsely, once per batch: a dense read of a large
        table would cost a copy of the whole table per step)."""
        read = lambda vs: [tf.convert_to_tensor(v) for v in vs]  # noqa: E731
        meta = self.meta_block.trainable_variables
        meta = [v.value for v in meta] if isinstance(self.meta_block, TaskParameterizedMetaBlock) else read(meta)
        rates = read(self.inner_rates) if getattr(self, "inner_rates", None) else None
        return maml.Weights(meta, read(self.global_block.trainable_variables), rates)

    def _task_ids(self, task_key, num_tasks):
        """Each task's key encoded by a `TaskParameterizedMetaBlock`'s `task_feature` (else zeros)."""
        if not isinstance(self.meta_block, TaskParameterizedMetaBlock):
            return tf.zeros([num_tasks], tf.int32)
        if task_key is None:
            raise ValueError(f"meta block {self.meta_block.name!r} selects per-task parameters by task key: "
                             "pass the bundle's `task_key` (tasks.TaskSet bundles carry it)")
        return self.encoder.encode_feature(self.meta_block.task_feature, task_key)

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

    def encode_samples(self, raw, lead_shape):
        """Encodes raw features with leading dims `lead_shape` (e.g. [T, S]), keeping those dims."""
        lead_shape = tf.convert_to_tensor(lead_shape)
        flat = {k: tf.reshape(v, tf.concat([[-1], tf.shape(v)[tf.size(lead_shape):]], 0)) for k, v in raw.items()}
        enc = self.encoder(flat)
        return {k: tf.reshape(v, tf.concat([lead_shape, tf.shape(v)[1:]], 0)) for k, v in enc.items()}

    def _scores(self, encoded, steps, learning_rate, training, unadapted_loss=False):
        fallback = bool(training) and any(maml.is_seed_state(v) for v in self.meta_block.non_trainable_variables
                                          + self.global_block.non_trainable_variables)
        return self._adapt_and_score(encoded, steps, learning_rate, training, unadapted_loss, fallback)

    def _adapt_and_score(self, encoded, steps, learning_rate, training, unadapted_loss, fallback):
        score = maml.adapt_and_score_definitions if is_multi(self.meta_block) else maml.adapt_and_score
        return score(self.network, self._weights(), encoded, steps, learning_rate, training, self.first_order,
                     unadapted_loss, fallback)

    def adapt_and_score(self, encoded, steps: int, learning_rate, training=False, fallback_to_while_loop=None):
        """(per-task query loss [T], query logits [T, Q]) after `steps` SGD steps per task on its support set."""
        if fallback_to_while_loop is None:
            out = self._scores(encoded, steps, learning_rate, training)
        else:
            out = self._adapt_and_score(encoded, steps, learning_rate, training, False, fallback_to_while_loop)
        return out["query_loss"], out["query_logits"]

    def meta_embeddings(self, support, support_label, support_mask, latest, steps: int, learning_rate,
                        aggregation: str = "latest", task_key=None, definition: str | None = None):
        """Algorithm 2b on encoded recent samples (see `maml.meta_embeddings`); `task_key` [T] is needed
        by a `TaskParameterizedMetaBlock`; `definition` (several task definitions: required) names the
        definition whose tasks these are. Returns [T, d] (d of that definition)."""
        self._check_definition(definition)
        dtype = self.variable_dtype
        task_id = self._task_ids(task_key, tf.shape(support_mask)[0])
        return maml.meta_embeddings(self.network, self._weights(),
                                    (support, tf.cast(support_label, dtype), tf.cast(support_mask, dtype)),
                                    latest, task_id, steps, learning_rate, aggregation, definition)

    def _check_definition(self, definition):
        names = self.meta_block.names if is_multi(self.meta_block) else []
        if names and definition not in names:
            raise ValueError(f"definition={definition!r}: this model has meta blocks for the task definitions "
                             f"{names}; name one of them")
        if not names and definition is not None:
            raise ValueError(f"definition={definition!r}: this model has one meta block; pass definition=None")

    def embed_definition(self, encoded, definition: str | None = None, training=False):
        """The un-adapted meta embedding of one definition (the cold start of its tasks); None: all of them."""
        if definition is None:
            return self.embed(encoded, training)
        self._check_definition(definition)
        block = self.meta_block.blocks[definition]
        return MetaBlocks._call(block, encoded, training)

    # -- training ----------------------------------------------------------------
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

    def objective(self, chunk, normalizer, training=True, jit=None):
        """(this chunk's share of the outer loss, query logits [T, Q]); `jit` None: `jit_inner_loop`."""
        mixed = self.mixed_loss_weight > 0
        if self.uses_xla(chunk, training) if jit is None else jit:
            out = self._xla_scores()(chunk, training)
        else:
            out = self._scores(chunk, self.inner_steps, self.inner_learning_rate, training, mixed)
        has_query = tf.cast(tf.reduce_sum(chunk["query_mask"], -1) > 0, out["query_loss"].dtype)
        per_task = out["query_loss"]
        if mixed:
            per_task = per_task + self.mixed_loss_weight * out["unadapted_loss"]
        return tf.reduce_sum(per_task * has_query) / tf.cast(normalizer, per_task.dtype), out["query_logits"]

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

    def fit(self, x=None, *args, **kwargs):
        """`keras.Model.fit`; a `tf.data.Dataset` of task bundles shuffles itself (`TaskSet.dataset`),
        so `shuffle` defaults to False for it instead of Keras warning that it ignores `shuffle=True`."""
        if isinstance(x, tf.data.Dataset) and len(args) < 8:  # `shuffle` is fit's 9th positional argument
            kwargs.setdefault("shuffle", False)
        return super().fit(x, *args, **kwargs)

    def train_step(self, data):
        bundle = data[0] if isinstance(data, tuple) else data
        loss, grads, q_logits, encoded = self.compute_gradients(bundle)
        variables = self.trainable_variables
        context = distribute.replica_context()
        if context is None:
            self.optimizer.apply_gradients(zip(grads, variables))
        else:
            grads = distribute.all_reduce_gradients(context, grads, variables)
            distribute.apply_summed_gradients(self.optimizer, grads, variables)
        return self._logs(loss, encoded, q_logits)

    # -- evaluation ----------------------------------------------------------------
    def _logs(self, loss, encoded, q_logits):
        # the Mean tracker sums totals and counts over replicas: a replica's share * R averages to the total
        self._loss_tracker.update_state(loss * distribute.num_replicas())
        probs = tf.sigmoid(tf.cast(q_logits, tf.float32))
        self.compute_metrics(None, tf.reshape(encoded["query_label"], [-1]), tf.reshape(probs, [-1]),
                             sample_weight=tf.reshape(encoded["query_mask"], [-1]))
        return distribute.multi_worker_logs(self.get_metrics_result())

    def test_step(self, data):
        bundle = data[0] if isinstance(data, tuple) else data
        encoded = self.encode_bundle(bundle)
        out = self._scores(encoded, self.eval_steps, self.eval_learning_rate, False)
        has_query = tf.cast(tf.reduce_sum(encoded["query_mask"], -1) > 0, out["query_loss"].dtype)
        count = tf.maximum(distribute.sum_over_replicas(tf.reduce_sum(has_query)), 1.0)
        return self._logs(tf.reduce_sum(out["query_loss"] * has_query) / count, encoded, out["query_logits"])

    def predict_step(self, data):
        x = data[0] if isinstance(data, tuple) else data
        if "query_mask" in x:  # a task bundle: adapt on support, score query -> [T, Q]
            out = self._scores(self.encode_bundle(x), self.eval_steps, self.eval_learning_rate, False)
            return tf.sigmoid(out["query_logits"])
        return self(x, training=False)

    def adapt_and_predict(self, bundle, steps: int | None = None, learning_rate: float | None = None):
        """Query probabilities [T, Q] after `steps` SGD steps per task on its support set (compiled)."""
        steps = self.eval_steps if steps is None else int(steps)
        lr = self.eval_learning_rate if learning_rate is None else float(learning_rate)
        if steps not in self._adapt_fns:
            self._adapt_fns[steps] = tf.function(
                lambda b, lr: tf.sigmoid(self._scores(self.encode_bundle(b), steps, lr, False)["query_logits"]),
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
            "support_dropout": self.support_dropout, "mixed_loss_weight": self.mixed_loss_weight,
            "learn_inner_learning_rate": self.learn_inner_learning_rate,
            "limaml_version": limaml_tf.__version__,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        check_saved_version(config.pop("limaml_version", None), cls.__name__)
        config["meta_block"] = keras.saving.deserialize_keras_object(config["meta_block"])
        config["global_block"] = keras.saving.deserialize_keras_object(config["global_block"])
        return cls(**config)
