"""Small helpers shared by the loss-zoo heads (not part of the public API)."""

import math

import keras
from keras import ops



def safe_norm(x, axis=-1):
    """||x|| whose value and gradient stay finite at x = 0 (gradient 0 there)."""
    return ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=axis), 1e-24))


def add_loss_if_concrete(layer, loss):
    """`layer.add_loss(loss)` except while Keras traces the layer symbolically."""
    if ops.is_tensor(loss) and not isinstance(loss, keras.KerasTensor):
        layer.add_loss(loss)


def target_cosine(cos, labels):
    """cos(theta_y) of each row, (B,)."""
    return ops.take_along_axis(cos, ops.expand_dims(labels, -1), axis=-1)[:, 0]


def check_finite(name, value):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number. Received: {name}={value!r}")
    return float(value)
