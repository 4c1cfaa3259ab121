"""When a training checkpoint is written: every `save_every_steps` global steps and at each epoch end."""

import keras


class SaveSchedule(keras.callbacks.Callback):
    """Base of the checkpoint callbacks: calls `self.save(global_step)` on schedule.

    Subclasses set `steps_per_epoch`, `save_every_steps` (0: epoch ends only) and `first_step`
    (steps of the epoch done before this `fit` call, for a resumed epoch; the trainer sets it),
    and implement `save(step)`. Mid-epoch saves skip the epoch's last step, which the epoch-end
    save covers.

    Example:
        >>> class Print(SaveSchedule):
        ...     def __init__(self):
        ...         super().__init__(); self.steps_per_epoch, self.save_every_steps = 10, 4
        ...     def save(self, step): print(step)
    """

    steps_per_epoch = 1
    save_every_steps = 0
    first_step = 0
    _epoch = 0

    def save(self, step):
        raise NotImplementedError

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
