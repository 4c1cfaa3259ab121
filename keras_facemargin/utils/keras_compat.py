"""Every private Keras (and TensorFlow-distribute) API the package uses, each behind one small wrapper.

The only module of the package that imports ``keras.src``. Each wrapper says why the
public API does not suffice, and ``tests/test_keras_compat.py`` pins each one against
the installed Keras, so a Keras release that moves a private name fails there, with the
name in the message, instead of deep inside a training step. Checked with Keras 3.15.

Example:
    >>> import keras
    >>> with keras.StatelessScope():
    ...     in_stateless_scope()
    True
"""

import contextlib

import keras

try:
    from keras.src.backend.common import stateless_scope as _stateless_scope
    from keras.src.backend.common import symbolic_scope as _symbolic_scope
except ImportError as err:  # pragma: no cover - depends on the Keras release
    raise ImportError(
        f"keras_facemargin needs Keras' private scopes keras.src.backend.common.stateless_scope and "
        f"symbolic_scope, which Keras {keras.__version__} does not have ({err}). Update "
        "keras_facemargin/utils/keras_compat.py for this Keras (tests/test_keras_compat.py pins each API)."
    ) from err

__all__ = [
    "callback_list_history",
    "in_stateless_scope",
    "in_symbolic_scope",
    "optimizer_learning_rate",
    "optimizer_variable_key",
    "replica_local_value",
    "symbolic_build",
    "tensorflow_conv_replaced",
]


def in_stateless_scope():
    """True inside `keras.StatelessScope` (every JAX train step, `Layer.stateless_call`).

    Why private: Keras exports the scope (`keras.StatelessScope`) but not the query. The
    heads' state updates must go through `Variable.assign` there (the scope records the new
    values and the trainer writes them back) instead of scattering into the variable.

    Returns:
        bool.
    """
    return bool(_stateless_scope.in_stateless_scope())


def in_symbolic_scope():
    """True while Keras traces a layer on symbolic tensors (shape inference, `compute_output_spec`).

    Why private: no public equivalent. The heads skip their state updates there.

    Returns:
        bool.
    """
    return bool(_symbolic_scope.in_symbolic_scope())


def symbolic_build(model, data_batch):
    """Build a compiled model's loss and metrics from symbolic `data_batch` (`Model._symbolic_build`).

    Why private: Keras' JAX `fit` builds them from a first batch it draws from the dataset and
    then iterates the dataset again; a reshuffling dataset would then train on another batch
    order in the first `fit` of a process than in a resumed one. Building from shapes first
    keeps the order. No public API builds the compiled loss.

    Args:
        model: a compiled `keras.Model`.
        data_batch: `(x, y)` of `keras.KerasTensor`s shaped like one batch.

    Returns:
        True if the model was built, False if this Keras has no `_symbolic_build` (then `fit`
        builds it from its first batch, as it would without this call).
    """
    build = getattr(model, "_symbolic_build", None)
    if build is None:
        return False
    build(data_batch=data_batch)
    return True


def callback_list_history(callback_list):
    """The `keras.callbacks.History` a `keras.callbacks.CallbackList(add_history=True)` added.

    Why private: `CallbackList` keeps it as `_history`; a custom training loop returns it as
    `fit` does.

    Args:
        callback_list: a `keras.callbacks.CallbackList`.

    Returns:
        The `History` callback (None if the list has none).
    """
    return callback_list._history


def optimizer_learning_rate(optimizer):
    """The learning rate an optimizer was given: a float, a variable or a `LearningRateSchedule`.

    Why private: the public `optimizer.learning_rate` evaluates a schedule at the current
    iteration; the package evaluates it at other steps (the learning rate of a logged step).
    Falls back to the public attribute where the private one is absent.

    Args:
        optimizer: a Keras optimizer (not a `LossScaleOptimizer`: pass its `inner_optimizer`).
    """
    return optimizer._learning_rate if hasattr(optimizer, "_learning_rate") else optimizer.learning_rate


def optimizer_variable_key(optimizer, variable):
    """The key under which `optimizer` files `variable`'s slots: the same for a Keras variable, its
    `tf.Variable` and, under `tf.distribute`, each replica's component.

    Why private (`BaseOptimizer._var_key`): `update_step` receives a replica's component inside
    `extended.update`, a different Python object per replica; only this key maps it back to the
    variable the optimizer was built with (`training.sparse_sgd.RowSparseSGD`).

    Args:
        optimizer: a built or building Keras optimizer.
        variable: a Keras variable, its backend variable, or a replica's component of it.
    """
    return optimizer._var_key(variable)


def replica_local_value(value):
    """This replica's own copy of a `tf.distribute` distributed variable, or None if it has none.

    Why private (TensorFlow's `DistributedValues._get_on_device_or_primary`): TensorFlow does
    not implement scatter updates on the distributed wrapper of a `synchronization="on_read"`
    variable; the heads scatter into the replica's copy.

    Args:
        value: the TensorFlow value of a Keras variable (`variable.value`).
    """
    local = getattr(value, "_get_on_device_or_primary", None)
    return None if local is None else local()


@contextlib.contextmanager
def tensorflow_conv_replaced(make_conv):
    """Within the block, Keras' TensorFlow backend runs every convolution through `make_conv(original)`.

    Why private (a monkeypatch of ``keras.src.backend.tensorflow.nn.conv``): the backend runs
    grouped convolutions inside a `tf.function(jit_compile=True)`, which tf2onnx cannot inline;
    the ONNX export traces them as split -> conv -> concat instead. No public hook exists.

    Args:
        make_conv: `original -> conv`, where `conv(inputs, kernel, strides, padding, data_format,
            dilation_rate)` replaces the backend's function (and may call `original`).

    Example:
        >>> with tensorflow_conv_replaced(lambda original: original):
        ...     pass
    """
    from keras.src.backend.tensorflow import nn as tf_nn

    original = tf_nn.conv
    tf_nn.conv = make_conv(original)
    try:
        yield
    finally:
        tf_nn.conv = original
