"""Training callbacks: throughput/lr logging, NaN guard, step checkpoints, history file, plots.

They are plain `keras.callbacks.Callback`s, used by `model.fit` and by the
custom loop of `keras_facemargin.training.custom_loop` alike.

Order matters at epoch ends: `KappaUpdater` (turns the epoch's features into
psi and resets the accumulators) must run before `TrainingCheckpoint`, so an
epoch-end checkpoint holds the state the next epoch starts from.
`keras_facemargin.training.trainer` builds the list in that order.
"""

import json
import math
import os
import shutil
import time
from pathlib import Path

import keras
import numpy as np


def current_lr(optimizer, step=None):
    """The optimizer's learning rate at `step` (default: its current iteration) as a float."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    lr = inner._learning_rate if hasattr(inner, "_learning_rate") else inner.learning_rate
    if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        step = int(inner.iterations.numpy()) if step is None else step
        return float(keras.ops.convert_to_numpy(lr(step)))
    return float(keras.ops.convert_to_numpy(inner.learning_rate))


def replica_local_variables(model):
    """BatchNormalization moving statistics, which every replica updates on its own.

    Keras 3's BatchNormalization keeps `moving_mean`/`moving_variance` with
    aggregation "none": under a multi-replica strategy each replica keeps the
    statistics of its own batches and reads return one replica's copy (tf.keras 2
    aggregated them with MEAN). The momentum encoder's copies are included. Other
    non-trainable state (KappaFace's kappa/psi, seed-generator states, ...) is
    either already synchronised or must not be averaged, so it is left out.
    """
    from keras_facemargin.callbacks import find_layers

    return [
        v
        for layer in find_layers(model, keras.layers.BatchNormalization)
        for v in (layer.moving_mean, layer.moving_variance)
        if v.aggregation == "none" and keras.backend.is_float_dtype(v.dtype)
    ]


def sync_replica_statistics(model, strategy):
    """Set each replica-local variable to its mean over all replicas (all workers included).

    Since an exponential moving average is linear in its inputs, averaging the
    replicas' moving statistics equals tracking the mean of the per-replica
    batch statistics, what tf.keras 2's `aggregation=MEAN` did at every step.
    Called before every checkpoint, so saved and restored values agree on all
    replicas and workers. A no-op with one replica.

    Args:
        model: the model.
        strategy: its `tf.distribute.Strategy`.
    """
    import tensorflow as tf

    if strategy is None or strategy.num_replicas_in_sync == 1:
        return
    variables = replica_local_variables(model)
    if not variables:
        return
    # One collective for all of them: flatten this worker's copies, replica by replica.
    locals_ = [strategy.experimental_local_results(v.value) for v in variables]
    flat = [tf.concat([tf.reshape(tf.cast(copies[r], "float32"), [-1]) for copies in locals_], 0)
            for r in range(len(locals_[0]))]
    order = iter(range(len(flat)))
    per_replica = strategy.experimental_distribute_values_from_function(lambda ctx: flat[next(order)])
    mean = strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)
    offset = 0
    for v in variables:  # cross-replica context: assign sets every local copy
        size = int(np.prod(v.shape))
        v.assign(tf.cast(tf.reshape(mean[offset:offset + size], v.shape), v.dtype))
        offset += size


class ThroughputLogger(keras.callbacks.Callback):
    """Writes `images_per_second` and `lr` into the epoch logs (and `lr` into batch logs).

    Args:
        global_batch_size: images per step over all replicas and workers.

    Example:
        >>> model.fit(ds, epochs=2, callbacks=[ThroughputLogger(512)])  # history["images_per_second"]
    """

    def __init__(self, global_batch_size):
        super().__init__()
        self.global_batch_size = int(global_batch_size)
        self._start = None
        self._steps = 0
        self._lr = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._steps = None, 0
        self._lr = current_lr(self.model.optimizer)

    def on_train_batch_begin(self, batch, logs=None):
        if self._start is None:  # from the first step on: excludes the pipeline warm-up wait
            self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1
        if logs is not None:
            logs["lr"] = self._lr

    def on_epoch_end(self, epoch, logs=None):
        elapsed = time.perf_counter() - (self._start or time.perf_counter())
        if logs is not None:
            logs["lr"] = self._lr
            logs["images_per_second"] = self._steps * self.global_batch_size / max(elapsed, 1e-9)


class NonFiniteLossError(RuntimeError):
    """Raised by `NaNGuard` when the training loss becomes NaN or infinite."""


class NaNGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite loss, naming the epoch, step and last good checkpoint.

    Unlike `keras.callbacks.TerminateOnNaN` it raises `NonFiniteLossError`
    right after the bad step, before any later callback (a checkpoint) can save
    the broken state, so the newest checkpoint stays the last good one.

    Args:
        checkpoint: an optional `TrainingCheckpoint` whose latest path goes into the message.

    Example:
        >>> model.fit(ds, callbacks=[NaNGuard(ckpt), KappaUpdater(), ckpt])
    """

    def __init__(self, checkpoint=None):
        super().__init__()
        self.checkpoint = checkpoint
        self.first_step = 0  # steps of the epoch done before this `fit` call (resumed epoch)
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        loss = float(np.asarray(loss))
        if math.isfinite(loss):
            return
        self.model.stop_training = True
        where = "no checkpoint was written"
        if self.checkpoint is not None and self.checkpoint.latest is not None:
            where = f"last good checkpoint: {self.checkpoint.latest} (global step {self.checkpoint.saved_step})"
        raise NonFiniteLossError(
            f"Training loss became {loss} at epoch {self._epoch} step {self.first_step + batch} (0-based); "
            f"stopped, {where}. Lower the learning rate or use mixed precision's loss scaling."
        )


class TrainingCheckpoint(keras.callbacks.Callback):
    """Fault-tolerant checkpoints of the whole training state (`tf.train.CheckpointManager`).

    A checkpoint holds every variable of the model (weights, BatchNorm
    statistics, KappaFace kappa/psi, the on_read feature sums/counts, the memory
    buffer or the momentum encoder), the optimizer (iterations, momentum slots,
    loss scale) and the global step `epoch * steps_per_epoch + steps done`. It
    is written every `save_every_steps` steps and at each epoch end. After
    `restore()`, the trainer restarts at `divmod(step, steps_per_epoch)` and
    skips the steps of that epoch already done, with a data order that depends
    only on (seed, epoch): nothing is lost, nothing is counted twice.

    Keras 3.15's `BackupAndRestore(save_freq=<int>)` saves mid-epoch weights and
    `{"epoch", "batch"}`, but restores only the epoch and restarts it from its
    first batch: the steps before the save run twice (KappaFace would count
    their features twice; the lr schedule advances twice). Hence this class.

    Under `MultiWorkerMirroredStrategy` every worker must call save (variables
    are read collectively); only the chief writes `directory`, the others a
    temporary folder that is deleted.

    Args:
        directory: checkpoint folder.
        model: the model (its optimizer is `model.optimizer` unless `optimizer` is given).
        steps_per_epoch: steps in an epoch S.
        save_every_steps: mid-epoch period in steps (0: epoch ends only).
        max_to_keep: checkpoints kept.
        optimizer: the optimizer, when it is not `model.optimizer` (custom loop).
        is_chief: whether this process writes `directory`.
        strategy: the model's strategy; with several replicas the replica-local
            BatchNorm statistics are averaged (`sync_replica_statistics`) before each save.

    Example:
        >>> ckpt = TrainingCheckpoint("run/checkpoints", model, steps_per_epoch=1000, save_every_steps=200)
        >>> step = ckpt.restore()            # 0 on a fresh run
        >>> initial_epoch, skip = divmod(step, 1000)
    """

    def __init__(self, directory, model, steps_per_epoch, save_every_steps=0, max_to_keep=2,
                 optimizer=None, is_chief=True, strategy=None):
        super().__init__()
        import tensorflow as tf

        self.directory = str(directory)
        self.steps_per_epoch = int(steps_per_epoch)
        self.save_every_steps = int(save_every_steps)
        self.is_chief = bool(is_chief)
        self.strategy = strategy
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        optimizer = optimizer if optimizer is not None else model.optimizer
        self._checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=self.step)
        write_dir = self.directory if self.is_chief else self._temp_dir()
        self._manager = tf.train.CheckpointManager(self._checkpoint, write_dir, max_to_keep=max_to_keep)
        self._reader = tf.train.CheckpointManager(self._checkpoint, self.directory, max_to_keep=max_to_keep)
        self.saved_step = None
        self.latest = self._reader.latest_checkpoint
        self.first_step = 0  # steps of the epoch done before this `fit` call (resumed epoch)
        self._state_model = model
        self._epoch = 0

    def _temp_dir(self):
        from keras_facemargin.training.strategy import task_info

        _, index, _ = task_info()
        return os.path.join(self.directory + "_tmp", f"worker_{index}")

    def restore(self):
        """Restore the newest checkpoint of `directory`, if any; returns the global step (0 if none).

        The model and optimizer must be built (their variables created) first.
        """
        path = self._reader.latest_checkpoint
        if path is None:
            return 0
        self._checkpoint.restore(path).assert_existing_objects_matched()
        self.latest = path
        self.saved_step = int(self.step.numpy())
        return self.saved_step

    def save(self, step):
        """Write a checkpoint at global step `step`; returns its path.

        Raises `NonFiniteLossError` instead of saving when a weight is NaN/inf,
        so the newest checkpoint is always a usable one.
        """
        import tensorflow as tf

        finite = all(bool(tf.reduce_all(tf.math.is_finite(v.value))) for v in self._state_model.trainable_variables)
        if not finite:
            raise NonFiniteLossError(
                f"Weights became NaN/inf by global step {step} (epoch {self._epoch}); not saving. "
                f"Last good checkpoint: {self.latest} (global step {self.saved_step})."
            )
        sync_replica_statistics(self._state_model, self.strategy)
        self.step.assign(int(step))
        path = self._manager.save(checkpoint_number=int(step))
        if not self.is_chief:
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)
            path = os.path.join(self.directory, os.path.basename(path))
        self.latest, self.saved_step = path, int(step)
        return path

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def _global_step(self, batch):
        # `batch` counts from 0 in every `fit` call; a resumed partial epoch
        # starts later, which `first_step` (set by the trainer) accounts for.
        return self._epoch * self.steps_per_epoch + self.first_step + batch + 1

    def on_train_batch_end(self, batch, logs=None):
        step = self._global_step(batch)
        in_epoch = step - self._epoch * self.steps_per_epoch
        if self.save_every_steps and step % self.save_every_steps == 0 and in_epoch < self.steps_per_epoch:
            self.save(step)

    def on_epoch_end(self, epoch, logs=None):
        self.save((epoch + 1) * self.steps_per_epoch)
        self.first_step = 0


class HistoryFile(keras.callbacks.Callback):
    """Appends each epoch's logs as one JSON line to `path` (survives restarts).

    `read_history(path)` returns them as `{key: [values per epoch]}`, keeping the
    last record of an epoch written twice.

    Args:
        path: the `.jsonl` file.
        enabled: write only when True (False on non-chief workers).
    """

    def __init__(self, path, enabled=True):
        super().__init__()
        self.path = Path(path)
        self.enabled = enabled

    def on_epoch_end(self, epoch, logs=None):
        if not self.enabled:
            return
        record = {"epoch": int(epoch)}
        for key, value in (logs or {}).items():
            try:
                record[key] = float(np.asarray(value))
            except (TypeError, ValueError):
                continue
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def read_history(path, before_epoch=None):
    """`{key: [value per epoch]}` from a `HistoryFile`, epochs sorted, `epoch` included.

    Args:
        path: the `.jsonl` file (missing: empty history).
        before_epoch: keep only epochs `< before_epoch`.
    """
    path = Path(path)
    by_epoch = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                by_epoch[record["epoch"]] = record
    epochs = sorted(e for e in by_epoch if before_epoch is None or e < before_epoch)
    keys = sorted({k for e in epochs for k in by_epoch[e]})
    return {k: [by_epoch[e].get(k, float("nan")) for e in epochs] for k in keys}


def truncate_history(path, before_epoch):
    """Drop the records of epochs `>= before_epoch` (a resumed run rewrites them)."""
    path = Path(path)
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["epoch"] < before_epoch]
    path.write_text("".join(line + "\n" for line in keep))


def plot_training(history, path, margins=None, title=None):
    """PNG of the loss, the mean kappa per epoch and the margin histogram (KappaFace Fig. 5).

    Args:
        history: `{key: [value per epoch]}` with `loss` and, for KappaFace, `kappa_mean`.
        path: PNG path.
        margins: per-class margins `psi * m0` at the last epoch (None: panel omitted).
        title: figure title.

    Returns:
        The path written, or None when matplotlib is not installed (a message is printed).

    Example:
        >>> plot_training(read_history("run/history.jsonl"), "run/training.png", head.margins())
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the training plot (pip install matplotlib).")
        return None
    panels = [("loss", "training loss")]
    if history.get("kappa_mean"):
        panels.append(("kappa_mean", "mean kappa"))
    if margins is not None:
        panels.append(("margins", "margin psi * m0"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    epochs = history.get("epoch") or list(range(len(history.get("loss", []))))
    for ax, (key, label) in zip(axes[0], panels):
        if key == "margins":
            ax.hist(np.asarray(margins).ravel(), bins=40, color="tab:orange")
            ax.set_xlabel("margin (last epoch)")
            ax.set_ylabel("classes")
        else:
            ax.plot([e + 1 for e in epochs], history.get(key, []), marker="o")
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
        ax.set_title(label)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
