"""Pins every private Keras / tf.distribute API of `keras_facemargin.utils.keras_compat` to the installed Keras.

Each test exercises one wrapper against what the public API shows (a public scope, a public
callback, a public layer), so a Keras release that moves or changes a private name fails here,
naming it, rather than inside a training step.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_facemargin.utils import keras_compat

MOVED = "Keras {} ({}) moved or changed it: update keras_facemargin/utils/keras_compat.py."


def _moved(name):
    return MOVED.format(keras.__version__, name)


def test_in_stateless_scope_is_true_exactly_inside_keras_stateless_scope():
    assert keras_compat.in_stateless_scope() is False, _moved("stateless_scope.in_stateless_scope")
    with keras.StatelessScope():
        assert keras_compat.in_stateless_scope() is True, _moved("stateless_scope.in_stateless_scope")
    assert keras_compat.in_stateless_scope() is False, _moved("stateless_scope.in_stateless_scope")


def test_in_symbolic_scope_is_true_exactly_while_keras_traces_a_layer():
    seen = []

    class Probe(keras.layers.Layer):
        def call(self, x):
            seen.append(keras_compat.in_symbolic_scope())
            return x

    Probe()(keras.Input((3,)))  # functional construction: a symbolic trace
    Probe()(np.zeros((1, 3), "float32"))  # an eager call
    assert seen == [True, False], _moved("symbolic_scope.in_symbolic_scope")


def test_symbolic_build_builds_the_compiled_metrics_from_shapes():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    compiled = [m for m in model.metrics if m.name == "compile_metrics"]
    assert compiled and not compiled[0].built
    done = keras_compat.symbolic_build(model, (keras.KerasTensor((None, 3)), keras.KerasTensor((None, 2))))
    assert done is True, _moved("Model._symbolic_build (absent)")
    assert compiled[0].built, _moved("Model._symbolic_build (built nothing)")


def test_callback_list_history_is_the_history_callback_the_list_added():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    callback_list = keras.callbacks.CallbackList(add_history=True, model=model)
    history = keras_compat.callback_list_history(callback_list)
    assert isinstance(history, keras.callbacks.History), _moved("CallbackList._history")
    assert any(cb is history for cb in callback_list.callbacks), _moved("CallbackList._history")


def test_optimizer_learning_rate_is_the_schedule_or_the_rate_given():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    assert keras_compat.optimizer_learning_rate(keras.optimizers.SGD(schedule)) is schedule, _moved(
        "BaseOptimizer._learning_rate"
    )
    rate = keras_compat.optimizer_learning_rate(keras.optimizers.SGD(0.25))
    assert float(keras.ops.convert_to_numpy(rate)) == pytest.approx(0.25)


def test_optimizer_variable_key_is_one_key_per_variable_whatever_object_is_passed():
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    a, b = keras.Variable(np.zeros(2, "float32")), keras.Variable(np.zeros(2, "float32"))
    optimizer.build([a, b])
    key = keras_compat.optimizer_variable_key(optimizer, a)
    assert key == keras_compat.optimizer_variable_key(optimizer, a.value), _moved("BaseOptimizer._var_key")
    assert key != keras_compat.optimizer_variable_key(optimizer, b), _moved("BaseOptimizer._var_key")


def test_replica_local_value_is_the_replicas_own_variable():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        variable = keras.Variable(np.arange(3, dtype="float32"), synchronization="on_read", aggregation="sum",
                                  trainable=False)
    assert isinstance(variable.value, tf.distribute.DistributedValues)
    local = keras_compat.replica_local_value(variable.value)
    assert isinstance(local, tf.Variable) and not isinstance(local, tf.distribute.DistributedValues), _moved(
        "DistributedValues._get_on_device_or_primary (TensorFlow)"
    )
    local.scatter_add(tf.IndexedSlices(tf.ones((1,)), tf.constant([1])))  # what the heads do with it
    np.testing.assert_array_equal(local.numpy(), [0.0, 2.0, 2.0])
    assert keras_compat.replica_local_value(tf.constant(1.0)) is None


def test_tensorflow_conv_replaced_routes_the_backend_convolutions_only_inside_the_block():
    calls = []

    def make_conv(original):
        def conv(*args, **kwargs):
            calls.append(1)
            return original(*args, **kwargs)

        return conv

    layer = keras.layers.Conv2D(4, 3, groups=2)
    x = np.random.default_rng(0).standard_normal((1, 5, 5, 4)).astype("float32")
    before = layer(x).numpy()
    with keras_compat.tensorflow_conv_replaced(make_conv):
        inside = layer(x).numpy()
    after = layer(x).numpy()
    assert len(calls) == 1, _moved("keras.src.backend.tensorflow.nn.conv")
    np.testing.assert_array_equal(inside, before)
    np.testing.assert_array_equal(after, before)
