"""Step and epoch checkpoints of a training run, with replica statistics synchronised before each save."""

import os
import shutil

import keras
import numpy as np

from keras_facemargin.callbacks.head_state import find_layers
from keras_facemargin.callbacks.monitoring import NonFiniteLossError
from keras_facemargin.callbacks.save_schedule import SaveSchedule
from keras_facemargin.callbacks.weights_checkpoint import latest_weights_checkpoint
from keras_facemargin.utils.cluster import task_info


def replica_local_variables(model):
    """BatchNormalization moving statistics, which every replica updates on its own.

    Keras 3's BatchNormalization keeps `moving_mean`/`moving_variance` with
    aggregation "none": under a multi-replica strategy each replica keeps the
    statistics of its own batches and reads return one replica's copy (tf.keras 2
    aggregated them with MEAN). The momentum encoder's copies are included. Other
    non-trainable state (KappaFace's kappa/psi, seed-generator states, ...) is
    either already synchronised or must not be averaged, so it is left out.
    """
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


class TrainingCheckpoint(SaveSchedule):
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
        _, index, _ = task_info()
        return os.path.join(self.directory + "_tmp", f"worker_{index}")

    def restore(self):
        """Restore the newest checkpoint of `directory`, if any; returns the global step (0 if none).

        The model and optimizer must be built (their variables created) first. A `directory` holding
        `WeightsCheckpoint` files (`ckpt-<step>.npz`, a JAX run's) and no tf.train checkpoint is refused
        (`ValueError`).
        """
        path = self._reader.latest_checkpoint
        if path is None:
            found = latest_weights_checkpoint(self.directory)
            if found:
                raise ValueError(
                    f"{self.directory} holds the WeightsCheckpoint {found} (a run on another backend, e.g. "
                    "backend='jax'), which this tf.train TrainingCheckpoint cannot restore. Resume it with that "
                    "backend (--backend jax), or start a new run (--name)."
                )
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
