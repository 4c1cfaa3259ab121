"""Callbacks of the loss zoo: SphereFace's lambda annealing."""

import keras

from keras_facemargin.callbacks import find_layers
from keras_facemargin.layers.cosine_dense import _check_nonnegative, _check_positive
from keras_facemargin.layers.sphereface import SphereMarginDense, sphereface_lambda


class SphereFaceAnnealing(keras.callbacks.Callback):
    """Anneals the A-Softmax target towards the margin, every training batch.

    Before batch `i` (counting from 1 over the whole fit, like the official
    Caffe `MarginInnerProductLayer`, which increments its iteration counter
    before computing lambda) every `SphereMarginDense` in the model gets
    `lambda = max(lambda_min, base * (1 + gamma * i)^(-power))`. Defaults are
    the official SphereFace prototxt's (base 1000, gamma 0.12, power 1,
    lambda_min 5). The current value is written to the batch logs as `lambda`.

    Args:
        base, gamma, power, lambda_min: the schedule.
        initial_iteration: iterations already done (to resume training).

    Example:
        >>> model.fit(ds, epochs=10, callbacks=[SphereFaceAnnealing()])
    """

    def __init__(self, base=1000.0, gamma=0.12, power=1.0, lambda_min=5.0, initial_iteration=0):
        super().__init__()
        self.base = _check_nonnegative("base", base)
        self.gamma = _check_nonnegative("gamma", gamma)
        self.power = _check_positive("power", power)
        self.lambda_min = _check_nonnegative("lambda_min", lambda_min)
        if not isinstance(initial_iteration, int) or initial_iteration < 0:
            raise ValueError(f"`initial_iteration` must be an integer >= 0. Received: {initial_iteration!r}")
        self.iteration = initial_iteration
        self.value = None

    def on_train_batch_begin(self, batch, logs=None):
        layers = find_layers(self.model, SphereMarginDense)
        if not layers:
            raise ValueError("SphereFaceAnnealing found no SphereMarginDense layer in the model.")
        self.iteration += 1
        self.value = sphereface_lambda(self.iteration, self.base, self.gamma, self.power, self.lambda_min)
        for layer in layers:
            layer.annealing_lambda.assign(self.value)

    def on_train_batch_end(self, batch, logs=None):
        if logs is not None and self.value is not None:
            logs["lambda"] = self.value
