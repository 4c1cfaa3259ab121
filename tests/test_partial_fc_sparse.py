"""RowSparseSGD on PartialFC's class centres against a NumPy reference of its lazy-row definition."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_facemargin.errors import SparseUpdateError
from keras_facemargin.layers import ArcMarginDense, PartialFC, PartialFCLoss
from keras_facemargin.training.sparse_sgd import RowSparseSGD

LR, MU, WD = 0.1, 0.9, 5e-3


def run(layer, optimizer, xs, ys):
    """Train steps; returns the sampled set and the kernel gradient rows of each step."""
    loss_fn, record = PartialFCLoss(layer), []
    for x, y in zip(xs, ys):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, layer([x, y], training=True))
        grads = tape.gradient(loss, layer.trainable_variables)
        g = grads[0]
        record.append((layer.sampled_classes.numpy().copy(), tf.convert_to_tensor(g).numpy()))
        optimizer.apply_gradients(zip(grads, layer.trainable_variables))
    return record


def numpy_lazy_sgd(w, record, nesterov=False):
    """The definition: sampled rows get Keras SGD (decoupled decay, m = mu m - lr g); others are frozen."""
    w, m = w.astype("float64"), np.zeros_like(w, "float64")
    for classes, g in record:
        s = classes
        w[s] -= LR * WD * w[s]
        m[s] = MU * m[s] - LR * g[s]
        w[s] += MU * m[s] - LR * g[s] if nesterov else m[s]
    return w, m


def make(C, rate, seed=0):
    keras.utils.set_random_seed(seed)
    layer = PartialFC(ArcMarginDense(C, scale=16.0), sample_rate=rate, seed=3)
    layer(np.zeros((1, 8), "float32"))
    return layer


@pytest.mark.parametrize("nesterov", [False, True])
def test_sampled_rows_follow_the_reference_and_others_are_bit_identical(nesterov):
    C, rng = 40, np.random.default_rng(0)
    layer = make(C, 0.25)
    w0 = layer.core.kernel.numpy().copy()
    xs = [rng.standard_normal((4, 8)).astype("float32") for _ in range(5)]
    ys = [rng.integers(0, 20, 4).astype("int32") for _ in range(5)]  # classes 20..39 only as negatives
    opt = RowSparseSGD(LR, momentum=MU, weight_decay=WD, nesterov=nesterov)
    record = run(layer, opt, xs, ys)
    assert len({tuple(c) for c, _ in record}) == 5  # different sets every step
    ref_w, ref_m = numpy_lazy_sgd(w0, record, nesterov)
    np.testing.assert_allclose(layer.core.kernel.numpy(), ref_w, rtol=1e-5, atol=1e-6)
    slot = opt.momentums[0].numpy()
    np.testing.assert_allclose(slot, ref_m, rtol=1e-5, atol=1e-7)
    never = np.setdiff1d(np.arange(C), np.concatenate([c for c, _ in record]))
    assert len(never) > 0
    np.testing.assert_array_equal(layer.core.kernel.numpy()[never], w0[never])
    assert not np.any(slot[never])
    # Dense Keras SGD moves every row with momentum and decay: the semantics differ.
    assert not np.allclose(ref_w, numpy_dense(w0, record))


def numpy_dense(w, record):
    w, m = w.astype("float64"), np.zeros_like(w, "float64")
    for _, g in record:
        w -= LR * WD * w
        m = MU * m - LR * g
        w += m
    return w


def test_every_row_sampled_every_step_equals_dense_keras_sgd():
    C, rng = 10, np.random.default_rng(1)
    xs = [rng.standard_normal((4, 8)).astype("float32") for _ in range(4)]
    ys = [rng.integers(0, C, 4).astype("int32") for _ in range(4)]
    a, b = make(C, 0.95), make(C, 0.95)  # K = ceil(9.5) = C: the sampled path with every row
    assert a.num_sample == C and a.sampled
    b.set_weights(a.get_weights())
    run(a, RowSparseSGD(LR, momentum=MU, weight_decay=WD), xs, ys)
    run(b, keras.optimizers.SGD(LR, momentum=MU, weight_decay=WD), xs, ys)
    np.testing.assert_allclose(a.core.kernel.numpy(), b.core.kernel.numpy(), rtol=1e-5, atol=1e-6)


def test_rate_one_equals_dense_keras_sgd():
    C, rng = 12, np.random.default_rng(2)
    xs = [rng.standard_normal((4, 8)).astype("float32") for _ in range(3)]
    ys = [rng.integers(0, C, 4).astype("int32") for _ in range(3)]
    heads = []
    for opt in (RowSparseSGD(LR, momentum=MU, weight_decay=WD), keras.optimizers.SGD(LR, momentum=MU, weight_decay=WD)):
        keras.utils.set_random_seed(0)
        layer = PartialFC(ArcMarginDense(C, scale=16.0), sample_rate=1.0)
        for x, y in zip(xs, ys):
            with tf.GradientTape() as tape:
                loss = PartialFCLoss(layer)(y, layer([x, y], training=True))
            opt.apply_gradients(zip(tape.gradient(loss, layer.trainable_variables), layer.trainable_variables))
        heads.append(layer.trainable_variables[0].numpy())
    np.testing.assert_allclose(heads[0], heads[1], rtol=1e-6, atol=1e-7)


def test_fit_uses_the_sparse_update_and_dense_gradient_is_refused():
    C, rng = 30, np.random.default_rng(3)
    inputs = keras.Input((8,))
    emb = keras.layers.Dense(8)(inputs)
    labels = keras.Input((), dtype="int32")
    layer = PartialFC(ArcMarginDense(C, scale=16.0), sample_rate=0.2)
    model = keras.Model([inputs, labels], layer([emb, labels]))
    model.compile(optimizer=RowSparseSGD(LR, momentum=MU, weight_decay=WD), loss=PartialFCLoss(layer))
    w0 = layer.core.kernel.numpy().copy()
    x, y = rng.standard_normal((8, 8)).astype("float32"), rng.integers(0, 4, 8).astype("int32")
    model.fit([x, y], y, batch_size=8, epochs=1, verbose=0)
    changed = np.any(layer.core.kernel.numpy() != w0, axis=1)
    assert changed.sum() == layer.num_sample  # exactly the sampled rows moved
    np.testing.assert_array_equal(np.flatnonzero(changed), layer.sampled_classes.numpy())
    opt = RowSparseSGD(LR, momentum=MU)
    opt.build(layer.trainable_variables)
    with pytest.raises(SparseUpdateError, match="dense_fallback"):
        opt.apply_gradients([(tf.zeros_like(layer.core.kernel), layer.core.kernel)])
