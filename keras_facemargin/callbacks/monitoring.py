"""Callbacks that watch a run: throughput and learning rate in the logs, a guard against non-finite losses."""

import math
import time

import keras
import numpy as np

from keras_facemargin.errors import NonFiniteLossError  # noqa: F401  (re-exported)
from keras_facemargin.utils.keras_compat import optimizer_learning_rate


def current_lr(optimizer, step=None):
    """The optimizer's learning rate at `step` (default: its current iteration) as a float."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    lr = optimizer_learning_rate(inner)
    if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        step = int(inner.iterations.numpy()) if step is None else step
        return float(keras.ops.convert_to_numpy(lr(step)))
    return float(keras.ops.convert_to_numpy(inner.learning_rate))



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


