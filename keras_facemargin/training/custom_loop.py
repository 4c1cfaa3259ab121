"""A custom training loop (`strategy.run` + `GradientTape`) driving ordinary Keras callbacks.

Used for `MultiWorkerMirroredStrategy`, under which Keras 3.15's `fit` fails
(keras-team/keras#20585). It works under any strategy. The loop calls the
callbacks' hooks as `fit` does, so `KappaUpdater` (epoch-end kappa/psi update
in cross-replica context, where reading the on_read accumulators sums over all
replicas of all workers), `TrainingCheckpoint`, `NaNGuard`,
`ThroughputLogger`, `HistoryFile` and Keras' progress bar have the same
effects; the lr schedule lives in the optimizer.
"""

import keras
import numpy as np

from keras_facemargin.utils import keras_compat


class CustomLoop:
    """Trains `model` with `strategy.run` and a `tf.GradientTape`.

    Each replica computes the sum of its per-example losses divided by the
    global batch size (plus the model's regularisation losses divided by the
    number of replicas); the Keras optimizer all-reduces (sums) the gradients.
    With a `LossScaleOptimizer` the loss is scaled before differentiation.

    Args:
        model: the model (e.g. `FaceRecognizer`), created in `strategy.scope()`.
        optimizer: a Keras 3 optimizer created in `strategy.scope()`.
        strategy: the `tf.distribute.Strategy`.
        global_batch_size: images per step over all replicas and workers.
        loss: a Keras loss; default `SparseCategoricalCrossentropy(from_logits=True)`.

    Example:
        >>> loop = CustomLoop(model, optimizer, strategy, global_batch_size=512)
        >>> history = loop.fit(lambda epoch: make_epoch_dataset(epoch), epochs=24, steps_per_epoch=11372,
        ...                    callbacks=[KappaUpdater(), checkpoint])
    """

    def __init__(self, model, optimizer, strategy, global_batch_size, loss=None):
        import tensorflow as tf

        self.model = model
        self.optimizer = optimizer
        self.strategy = strategy
        self.global_batch_size = int(global_batch_size)
        loss = loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        self.loss = _unreduced(loss)
        self._train_step = tf.function(self._distributed_step)

    def _replica_step(self, inputs):
        import tensorflow as tf

        x, y = inputs
        model, optimizer = self.model, self.optimizer
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            per_example = self.loss(y, logits)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.global_batch_size)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            scaled = optimizer.scale_loss(loss) if hasattr(optimizer, "scale_loss") else loss
        variables = model.trainable_variables
        grads = tape.gradient(scaled, variables)
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    def _distributed_step(self, iterator):
        import tensorflow as tf

        per_replica = self.strategy.run(self._replica_step, args=(next(iterator),))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def fit(self, dataset_fn, epochs, steps_per_epoch, initial_epoch=0, initial_step=0,
            callbacks=(), verbose=1):
        """Train from (`initial_epoch`, `initial_step`) to the end of epoch `epochs - 1`.

        Args:
            dataset_fn: `(epoch, skip) -> dataset` or `epoch -> dataset`, a
                distributed dataset or a `tf.data.Dataset` yielding `(inputs,
                labels)` global batches (a plain dataset is distributed with
                `strategy.experimental_distribute_dataset`). Its order must depend
                only on the epoch for exact resumption. A function taking `skip`
                returns the epoch's batches after its first `skip` steps (needed
                for a distributed dataset, e.g. `distribute_datasets_from_function`
                under `MultiWorkerMirroredStrategy`, whose per-worker pipelines
                only the caller can skip); a one-argument function's
                `tf.data.Dataset` is skipped here.
            epochs: index of the last epoch + 1.
            steps_per_epoch: steps S per epoch.
            initial_epoch: first epoch (after a restore).
            initial_step: steps of `initial_epoch` already done; that many
                batches of its dataset are skipped.
            callbacks: Keras callbacks.
            verbose: 0 silent, 1 progress bar, 2 one line per epoch.

        Returns:
            A `keras.callbacks.History` of the epochs run.
        """

        callback_list = keras.callbacks.CallbackList(
            list(callbacks), add_history=True, add_progbar=verbose != 0, model=self.model,
            verbose=verbose, epochs=epochs, steps=steps_per_epoch,
        )
        self.model.stop_training = False
        callback_list.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            skip = initial_step if epoch == initial_epoch else 0
            for cb in callback_list.callbacks:
                if hasattr(cb, "first_step"):
                    cb.first_step = skip
            iterator = iter(self._epoch_dataset(dataset_fn, epoch, skip))
            callback_list.on_epoch_begin(epoch)
            total, logs = 0.0, {}
            for batch in range(steps_per_epoch - skip):
                callback_list.on_train_batch_begin(batch)
                loss = float(self._train_step(iterator))
                total += loss
                logs = {"loss": total / (batch + 1)}
                callback_list.on_train_batch_end(batch, logs)
                if self.model.stop_training:
                    break
            epoch_logs = dict(logs)
            callback_list.on_epoch_end(epoch, epoch_logs)
            if self.model.stop_training:
                break
        callback_list.on_train_end(logs=epoch_logs if epochs > initial_epoch else {})
        return keras_compat.callback_list_history(callback_list)

    def _epoch_dataset(self, dataset_fn, epoch, skip):
        """The distributed batches of `epoch` after its first `skip` steps (see `fit`'s `dataset_fn`)."""
        import tensorflow as tf

        if _takes_skip(dataset_fn):
            dataset = dataset_fn(epoch, skip)
        else:
            dataset = dataset_fn(epoch)
            if isinstance(dataset, tf.data.Dataset):
                dataset = dataset.skip(skip)
            elif skip:
                raise ValueError(
                    f"`initial_step`={skip} needs `dataset_fn` to skip the steps already done: it returned a "
                    f"{type(dataset).__name__}, which cannot be skipped after distribution. Return a "
                    "tf.data.Dataset, or accept a second argument `skip` and return the batches after the "
                    "first `skip` steps, e.g. `lambda epoch, skip: make(epoch).skip(skip)` inside "
                    "`distribute_datasets_from_function`."
                )
        if isinstance(dataset, tf.data.Dataset):
            dataset = self.strategy.experimental_distribute_dataset(dataset)
        return dataset


def _takes_skip(fn):
    """Whether `fn` can be called as `fn(epoch, skip)`."""
    import inspect

    try:
        inspect.signature(fn).bind(0, 0)
    except TypeError:
        return False
    except ValueError:  # no signature (a builtin): the documented one-argument form
        return False
    return True


def _unreduced(loss):
    """A shallow copy of `loss` returning per-example values.

    Not a config round trip (nor `copy.copy`, which Keras routes through the
    config): `PartialFCLoss` holds its layer outside its config.
    """
    clone = object.__new__(type(loss))
    clone.__dict__.update(vars(loss))
    clone.reduction = None
    return clone


def model_state(model):
    """`{variable path: numpy value}` of every model variable (for comparisons and tests)."""
    return {v.path: np.asarray(keras.ops.convert_to_numpy(v.value)) for v in model.variables}
