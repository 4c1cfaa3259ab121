"""Learning-rate schedules: the step-wise epoch decay of the ArcFace/KappaFace recipes."""

import keras
from keras import ops


def scaled_lr(lr, batch_size, reference_batch=512):
    """Linear scaling rule: `lr * batch_size / reference_batch`.

    Example:
        >>> scaled_lr(0.1, 256)
        0.05
    """
    if batch_size <= 0 or reference_batch <= 0:
        raise ValueError(
            f"`batch_size` and `reference_batch` must be positive. Received: {batch_size}, {reference_batch}"
        )
    return lr * batch_size / reference_batch


@keras.saving.register_keras_serializable(package="keras_facemargin")
class EpochStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """`lr = initial * factor ** (number of boundaries <= epoch)`, epoch = step // steps_per_epoch.

    The step is the optimizer's iteration count before the update, so every
    step of epoch `e` (steps `e*S .. e*S + S - 1`) uses the same lr, and the
    decay happens exactly at the epoch boundaries (Keras's
    `PiecewiseConstantDecay` switches one step late, at `step > boundary`).

    Args:
        initial_learning_rate: lr of epochs before the first boundary.
        steps_per_epoch: optimizer steps per epoch S (> 0).
        boundaries: epochs at whose start the lr is multiplied by `factor`
            (KappaFace/ArcFace MS1MV2: 10, 18, 22).
        factor: decay factor (0.1).

    Example:
        >>> sched = EpochStepDecay(0.1, steps_per_epoch=100, boundaries=(10, 18, 22))
        >>> float(sched(999)), float(sched(1000))   # last step of epoch 9, first of epoch 10
        (0.1, 0.01)
    """

    def __init__(self, initial_learning_rate, steps_per_epoch, boundaries=(10, 18, 22), factor=0.1):
        if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch <= 0:
            raise ValueError(f"`steps_per_epoch` must be a positive integer. Received: {steps_per_epoch!r}")
        boundaries = [int(b) for b in boundaries]
        if boundaries != sorted(set(boundaries)):
            raise ValueError(f"`boundaries` must be strictly increasing epochs. Received: {boundaries!r}")
        self.initial_learning_rate = float(initial_learning_rate)
        self.steps_per_epoch = steps_per_epoch
        self.boundaries = boundaries
        self.factor = float(factor)

    def lr_at_epoch(self, epoch):
        """The lr used throughout `epoch` (Python float)."""
        return self.initial_learning_rate * self.factor ** sum(epoch >= b for b in self.boundaries)

    def __call__(self, step):
        epoch = ops.floor_divide(ops.cast(step, "int64"), self.steps_per_epoch)
        passed = ops.zeros((), "float32")
        for b in self.boundaries:
            passed = passed + ops.cast(ops.greater_equal(epoch, b), "float32")
        return self.initial_learning_rate * ops.power(ops.cast(self.factor, "float32"), passed)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "steps_per_epoch": self.steps_per_epoch,
            "boundaries": list(self.boundaries),
            "factor": self.factor,
        }
