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

How a training step runs (bundle encoding, task chunks, XLA, chunked gradients, replica sums) is
`limaml_tf.trainer.MetaTrainer`, a mixin of `LiMAMLModel`, as Keras keeps its model API
(`keras/src/trainers/trainer.py`) apart from the backend's step mechanics.
"""

from __future__ import annotations

import keras
import tensorflow as tf

import limaml_tf
from limaml_tf import adaptation, closed_form, distribute, maml
from limaml_tf.api_export import limaml_export
from limaml_tf.blocks import TaskParameterizedMetaBlock, check_no_batchnorm
from limaml_tf.definitions import MetaBlocks, is_multi
from limaml_tf.features import FeatureEncoder
from limaml_tf.spec import FeatureSpec
from limaml_tf.checks import check_saved_version, non_negative_int, non_negative_number
from limaml_tf.trainer import MetaTrainer, Untracked



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


@limaml_export
class LiMAMLModel(MetaTrainer, keras.Model):
    """A ranking network split into a meta block (adapted per task) and a global block.

    Args:
      meta_block: Keras layer/model, encoded features -> meta embedding [batch, d]; or a
        `TaskParameterizedMetaBlock` that adapts a small per-task tensor (e.g. an ID embedding row); or a
        dict {task definition: meta block} over definitions of `spec.task_keys` (each adapts on its own
        tasks; the global block reads their embeddings concatenated in sorted definition order —
        `limaml_tf.definitions`, docs/task_definitions.md).
      global_block: Keras layer/model, encoded features + "meta_embedding" -> logits.
      spec: the FeatureSpec of the data (raw inputs are encoded inside the model).
      inner_steps: n, SGD steps per task in the inner loop (Newton steps with `inner_solver="ridge"`).
      inner_learning_rate: α, the task learning rate (0.5: the best of the α sweep on ML-100K's validation
        users, docs/protocols_ml100k; the demo's and the example configs' too).
      inner_solver: "sgd" (MAML's steps on the meta block's weights) or "ridge": the task's vector — the
        meta embedding's last k entries, read by a `FactorizedGlobalBlock` through <u, item factors> — is
        solved in closed form on the support set (`limaml_tf.closed_form`), its L2 weight λ learned
        (initialised at `ridge_l2`).
      head_only: only the meta block's last layer (`meta_block.head`) adapts per task (ANIL).
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
        from 2 inner steps on, and at n = 1 for chunks of up to `XLA_ONE_STEP_MAX_SLOTS` task slots —
        when the loop lowers to XLA (checked once per batch shape; else the TF graph). XLA compiles
        anew for each batch shape (seconds to a minute). Figures: docs/training_at_scale.md.

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
                 inner_learning_rate: float = 0.5, first_order: bool = False, adapt_global_block: bool = False,
                 eval_steps: int | None = None, eval_learning_rate: float | None = None,
                 max_tasks_per_chunk: int | str | None = None, jit_inner_loop: bool | str = False,
                 support_dropout: float = 0.0, mixed_loss_weight: float = 0.0,
                 learn_inner_learning_rate: bool = False, inner_solver: str = "sgd", head_only: bool = False,
                 ridge_l2: float = 1.0, **kwargs):
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
        self._init_step_mechanics(max_tasks_per_chunk, jit_inner_loop)
        if not 0.0 <= support_dropout < 1.0:
            raise ValueError(f"support_dropout must be in [0, 1), got {support_dropout}")
        self.support_dropout = float(support_dropout)
        self.mixed_loss_weight = non_negative_number("mixed_loss_weight", mixed_loss_weight)
        self.learn_inner_learning_rate = bool(learn_inner_learning_rate)
        self.inner_solver, self.head_only, self._adapted_meta = inner_solver, bool(head_only), None
        self.ridge = adaptation.RidgeL2(ridge_l2, name="ridge_l2") if inner_solver == "ridge" else None
        self._adapt_fns = Untracked()  # compiled adapt functions; not part of SavedModel exports
        dummy = self.encoder(self.spec.dummy_inputs(2))
        embedding = self.embed(dummy)
        self.global_logits(dummy, embedding)  # builds the blocks: the rates take their shapes
        self._adapted_meta = adaptation.check_options(self, int(embedding.shape[-1]))
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
                            _sample_loss(getattr(self, "loss", None)), self._adapted_meta)

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
        if self.ridge is not None:
            return closed_form.adapt_and_score(self.network, self._weights(), encoded, steps, self.ridge.l2, training,
                                               unadapted_loss)
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
        if self.ridge is not None:
            return closed_form.meta_embeddings(self.network, self._weights(), (support, tf.cast(support_label, dtype),
                                               tf.cast(support_mask, dtype)), latest, steps, self.ridge.l2, aggregation)
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

    # -- training (the step's mechanics: `limaml_tf.trainer`) --------------------
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

    def train_step(self, data):
        bundle = data[0] if isinstance(data, tuple) else data
        loss, grads, q_logits, encoded = self.compute_gradients(bundle)
        self._apply_gradients(grads)
        return self._logs(loss, encoded, q_logits)

    # -- evaluation ----------------------------------------------------------------
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
            "learn_inner_learning_rate": self.learn_inner_learning_rate, "inner_solver": self.inner_solver,
            "head_only": self.head_only, **({"ridge_l2": self.ridge.initial} if self.ridge is not None else {}),
            "limaml_version": limaml_tf.__version__,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        check_saved_version(config.pop("limaml_version", None), cls.__name__)
        config["meta_block"] = keras.saving.deserialize_keras_object(config["meta_block"])
        config["global_block"] = keras.saving.deserialize_keras_object(config["global_block"])
        return cls(**config)
