"""The paper's training speed-ups as options (LiMAML §5, Table 6), and tf.distribute helpers.

* large task batches with the outer (global) learning rate scaled linearly with the
  number of tasks per batch: `lr = base_lr * tasks_per_batch / base_tasks`;
* global-norm clipping of the outer gradient (default 1.0);
* linear warm-up then cosine decay (`keras.optimizers.schedules.CosineDecay`);
* `n` (inner steps) is the model's `inner_steps` (paper: n = 1 is as good as 5).

Distributed training is plain Keras: build and compile the model under a
`tf.distribute` strategy's scope and call `fit` with a dataset of *global* task batches.
Each replica runs the inner loops of its share of the tasks; the outer gradients are
all-reduced once per step (see `LiMAMLModel.train_step`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import warnings

import keras
import tensorflow as tf


def scaled_learning_rate(tasks_per_batch: int, base_lr: float = 3e-3, base_tasks: int = 32) -> float:
    """Linear scaling rule: the outer learning rate grows with the (global) tasks per batch."""
    if tasks_per_batch < 1 or base_tasks < 1:
        raise ValueError(f"tasks_per_batch and base_tasks must be >= 1, got {tasks_per_batch}, {base_tasks}")
    return base_lr * tasks_per_batch / base_tasks


def make_schedule(peak_lr: float, warmup_steps: int = 0, decay_steps: int | None = None, alpha: float = 0.1):
    """Linear warm-up from 0 to `peak_lr` over `warmup_steps`, then cosine decay to `alpha * peak_lr`
    over `decay_steps`. Without `decay_steps` and warm-up: the constant `peak_lr`."""
    if warmup_steps < 0 or (decay_steps is not None and decay_steps < 1):
        raise ValueError(f"warmup_steps must be >= 0 and decay_steps >= 1, got {warmup_steps}, {decay_steps}")
    if not warmup_steps and decay_steps is None:
        return peak_lr
    if not warmup_steps:
        return keras.optimizers.schedules.CosineDecay(peak_lr, decay_steps, alpha=alpha)
    # decay_steps=None: warm up, then hold (a decay too long to matter)
    return keras.optimizers.schedules.CosineDecay(0.0, decay_steps or 2**31 - 1, alpha=alpha,
                                                  warmup_target=peak_lr, warmup_steps=warmup_steps)


def make_optimizer(tasks_per_batch: int, base_lr: float = 3e-3, base_tasks: int = 32, clipnorm: float | None = 1.0,
                   warmup_steps: int = 0, decay_steps: int | None = None, alpha: float = 0.1,
                   optimizer: str = "adam") -> keras.optimizers.Optimizer:
    """The outer-loop optimizer with the paper's settings.

    Args:
      tasks_per_batch: tasks per *global* batch (all replicas together).
      base_lr, base_tasks: the learning rate that suits `base_tasks` tasks per batch; scaled linearly.
      clipnorm: global-norm clip of the outer gradient (None: no clipping).
      warmup_steps, decay_steps, alpha: see `make_schedule`.
      optimizer: a Keras optimizer name ("adam", "adamw", "sgd", ...).
    """
    lr = make_schedule(scaled_learning_rate(tasks_per_batch, base_lr, base_tasks), warmup_steps, decay_steps, alpha)
    return keras.optimizers.get({"class_name": optimizer,
                                 "config": {"learning_rate": lr, "global_clipnorm": clipnorm}})


def build_models(spec, inner_learning_rate: float = 0.5, learning_rate: float = 3e-3, inner_steps: int = 1,
                 embedding_dim: int = 8, tasks_per_batch: int = 32, total_steps: int | None = None):
    """LiMAML and the vanilla baseline on the same blocks (`MLPMetaBlock` + `MLPGlobalBlock`), compiled:
    the demo's pair. The outer optimizer has the paper's settings (learning rate for 32 tasks scaled to
    `tasks_per_batch`, global-norm clip 1.0, 5 % warm-up then cosine decay over `total_steps`)."""
    from limaml_tf.blocks import MLPGlobalBlock, MLPMetaBlock
    from limaml_tf.model import LiMAMLModel
    from limaml_tf.vanilla import VanillaModel

    def blocks():
        return (MLPMetaBlock(spec.meta_features, output_dim=embedding_dim),
                MLPGlobalBlock(spec.other_features))

    limaml = LiMAMLModel(*blocks(), spec, inner_steps=inner_steps, inner_learning_rate=inner_learning_rate,
                         name="limaml")
    vanilla = VanillaModel(*blocks(), spec, eval_learning_rate=inner_learning_rate, name="vanilla")
    warmup = max(1, total_steps // 20) if total_steps else 0
    for m in (limaml, vanilla):
        m.compile(optimizer=make_optimizer(tasks_per_batch, learning_rate, warmup_steps=warmup, decay_steps=total_steps))
    return limaml, vanilla


def logical_cpus(count: int) -> list:
    """Splits the first CPU into `count` logical devices (call before TensorFlow touches any device);
    MirroredStrategy then runs one replica per logical device. For tests and benchmarks on CPU."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def multi_worker_config(ports: list[int], index: int, host: str = "localhost") -> str:
    """TF_CONFIG of worker `index` of a cluster of local workers listening on `ports`."""
    return json.dumps({"cluster": {"worker": [f"{host}:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def is_chief() -> bool:
    """True on the process that should write artifacts: the "chief" task if the cluster has one,
    else worker 0, or the only process (no TF_CONFIG)."""
    config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task = config.get("task", {})
    if "chief" in config.get("cluster", {}):
        return task.get("type") == "chief"
    return int(task.get("index", 0)) == 0


# -- fit as the command line runs it ---------------------------------------------------------

class EpochProgress(keras.callbacks.Callback):
    """One progress bar over the epochs of `fit` (on stdout, the last logs as its postfix), instead of
    Keras' line per epoch."""

    def __init__(self, desc: str):
        super().__init__()
        self.desc, self.bar = desc, None

    def on_epoch_begin(self, epoch, logs=None):
        if self.bar is None:  # a resumed run starts past 0
            from tqdm.auto import tqdm
            self.bar = tqdm(total=self.params["epochs"], initial=epoch, desc=self.desc, unit="epoch",
                            file=sys.stdout, dynamic_ncols=True)

    def on_epoch_end(self, epoch, logs=None):
        self.bar.set_postfix({k: f"{v:.4f}" for k, v in (logs or {}).items()}, refresh=False)
        self.bar.update(1)

    def on_train_end(self, logs=None):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def backup_epoch(backup_dir: str) -> int | None:
    """The epoch a `BackupAndRestore` backup in `backup_dir` resumes at (None: no backup). Its metadata
    file, if a kill cut it short, is replaced by the previous copy (Keras only falls back on a weights
    file it cannot read)."""
    path = os.path.join(backup_dir, "training_metadata.json")
    for candidate in (path, path + ".bkp"):
        try:
            with open(candidate) as f:
                epoch = int(json.load(f)["epoch"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if candidate != path:
            os.replace(candidate, path)
        return epoch
    if os.path.exists(path):
        os.remove(path)  # unreadable and no previous copy: restart the epoch count, keep the weights
    return None


def fit(model, dataset, epochs: int, backup_dir: str | None = None, log_dir: str | None = None,
        verbose: int = 0, callbacks=()) -> keras.callbacks.History:
    """`model.fit` as `limaml train` / `limaml demo` run it.

    * `backup_dir`: `keras.callbacks.BackupAndRestore` keeps the weights and optimizer state of the last
      completed epoch there; after a crash or a kill, the same call resumes from it (the remaining
      epochs see a different shuffling order than an uninterrupted run). Deleted when `fit` completes.
    * `log_dir`: TensorBoard logs (loss and metrics per epoch).
    * `verbose=0`: one progress bar over the epochs instead of Keras' output.
    The dataset shuffles itself, so `shuffle=False` (Keras ignores it for a dataset, with a warning).
    """
    cbs = []
    if backup_dir:
        epoch = backup_epoch(backup_dir)
        if epoch:
            print(f"[train] {model.name}: resuming at epoch {epoch + 1}/{epochs} from the backup in {backup_dir}")
        cbs.append(keras.callbacks.BackupAndRestore(backup_dir, double_checkpoint=True))
    if log_dir:
        cbs.append(keras.callbacks.TensorBoard(log_dir, write_graph=False))
    if not verbose:
        cbs.append(EpochProgress(f"[train] {model.name}"))
    with keras_saving_warning_filtered():  # the backup saves weights every epoch
        return model.fit(dataset, epochs=epochs, verbose=verbose, shuffle=False, callbacks=cbs + list(callbacks))


@contextlib.contextmanager
def keras_saving_warning_filtered():
    """Saving a Keras 3.15 model's weights under NumPy 2 warns about Keras' own variables (their
    `__array__` lacks the `copy` keyword, keras-team/keras#21288): not about the caller's code, so
    filtered where this package saves (backups, .keras files)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "__array__ implementation doesn't accept a copy keyword", DeprecationWarning)
        yield


def save_model(model, path: str) -> str:
    """`model.save(path)` (a .keras file) through a temp file and a rename: a crash never leaves a cut
    .keras file (and without Keras' NumPy 2 warning, see `keras_saving_warning_filtered`)."""
    from limaml_tf.artifacts import temp_prefix, output_errors, remove_stale

    parent = os.path.dirname(os.path.abspath(path))
    with output_errors(path):
        os.makedirs(parent, exist_ok=True)
        remove_stale(parent)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".keras", dir=parent)
        os.close(fd)
    try:
        with keras_saving_warning_filtered(), output_errors(path):
            model.save(tmp)
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_model(path: str):
    """A .keras file saved by this package (LiMAMLModel / VanillaModel with built-in or registered blocks)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model {path!r} does not exist: give a .keras file written by model.save, "
                                "limaml_tf.training.save_model or limaml train")
    import limaml_tf.model  # noqa: F401 (registers the classes .keras files name)
    import limaml_tf.vanilla  # noqa: F401

    return keras.saving.load_model(path)
