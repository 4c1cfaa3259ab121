"""Margin heads against the NumPy reference of the papers' equations."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_facemargin import layers as L
from numpy_reference import (
    arcface_target,
    combined_target,
    cosface_target,
    cosines,
    margin_logits,
)
from testing import inputs_with_angles

C, D, S = 7, 6, 64.0

CASES = {
    "arcface": (lambda: L.ArcMarginDense(C, scale=S, margin=0.5), lambda c: arcface_target(c, 0.5)),
    "cosface": (lambda: L.CosMarginDense(C, scale=S, margin=0.35), lambda c: cosface_target(c, 0.35)),
    "combined_cm1": (
        lambda: L.CombinedMarginDense(C, scale=S, m1=1.0, m2=0.3, m3=0.2),
        lambda c: combined_target(c, 1.0, 0.3, 0.2),
    ),
    "combined_cm2": (
        lambda: L.CombinedMarginDense(C, scale=S, m1=0.9, m2=0.4, m3=0.15),
        lambda c: combined_target(c, 0.9, 0.4, 0.15),
    ),
    "sphere_style": (
        lambda: L.CombinedMarginDense(C, scale=S, m1=1.35, m2=0.0, m3=0.0),
        lambda c: combined_target(c, 1.35, 0.0, 0.0),
    ),
    "norm_softmax": (lambda: L.CosineDense(C, scale=S), lambda c: c),
    # A fresh KappaMarginDense has psi = 1, i.e. ArcFace with m0 (epoch 0).
    "kappaface_epoch0": (
        lambda: L.KappaMarginDense(C, class_counts=np.arange(1, C + 1), scale=S, margin=0.8, num_samples=10),
        lambda c: arcface_target(c, 0.8),
    ),
}


def _built(layer_fn, seed=0):
    layer = layer_fn()
    layer.build((None, D))
    rng = np.random.default_rng(seed)
    layer.kernel.assign(rng.standard_normal((D, C)).astype("float32"))
    return layer


@pytest.mark.parametrize("name", sorted(CASES))
def test_logits_match_reference(name):
    layer_fn, target = CASES[name]
    layer = _built(layer_fn)
    rng = np.random.default_rng(1)
    labels = np.array([0, C - 1, 3, 0, C - 1, 5, 2, 1])  # class boundaries included
    thetas = np.array([0.0, 1e-4, 0.7, 1.5, 2.4, np.pi - 0.3, np.pi - 1e-4, np.pi])
    x = inputs_with_angles(layer.kernel.numpy(), labels, thetas, rng)
    out = keras.ops.convert_to_numpy(layer([x, labels]))
    ref = margin_logits(x, layer.kernel.numpy(), labels, target, S)
    assert np.all(np.isfinite(out))
    # Cosines are clipped 1e-7 away from +-1, which moves theta by <= 5e-4 at the
    # very edges: 64 * 0.8 * 5e-4 = 0.03 in logits. Elsewhere float32 accuracy.
    edge = np.isin(np.arange(len(labels)), [0, 1, 6, 7])
    np.testing.assert_allclose(out[~edge], ref[~edge], rtol=1e-4, atol=2e-3)
    np.testing.assert_allclose(out[edge], ref[edge], atol=0.05)
    # Non-target columns are plain s*cos.
    mask = np.ones_like(ref, bool)
    mask[np.arange(len(labels)), labels] = False
    np.testing.assert_allclose(out[mask], S * cosines(x, layer.kernel.numpy())[mask], atol=2e-3)


@pytest.mark.parametrize("name", sorted(CASES))
def test_inference_returns_scaled_cosines(name):
    layer = _built(CASES[name][0])
    x = np.random.default_rng(2).standard_normal((5, D)).astype("float32")
    out = keras.ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(out, S * cosines(x, layer.kernel.numpy()), atol=2e-3)


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradients_match_finite_differences(name):
    """d(loss)/d(embeddings) and d(loss)/d(kernel) vs central differences of the reference."""
    layer_fn, target = CASES[name]
    layer = _built(layer_fn, seed=3)
    rng = np.random.default_rng(4)
    labels = np.array([0, C - 1, 2, 4])
    x = inputs_with_angles(layer.kernel.numpy(), labels, [0.4, 1.2, 2.0, 2.9], rng).astype("float64")
    wts = rng.standard_normal((len(labels), C))  # random cotangent: loss = sum(wts * logits)

    def ref_loss(xv, kv):
        return np.sum(wts * margin_logits(xv, kv, labels, target, S))

    xt = tf.Variable(x.astype("float32"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(wts.astype("float32") * layer([xt, labels]))
    gx, gk = tape.gradient(loss, [xt, layer.kernel.value])
    k = layer.kernel.numpy().astype("float64")
    h = 1e-6
    num_gx = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = h
        num_gx[idx] = (ref_loss(x + e, k) - ref_loss(x - e, k)) / (2 * h)
    num_gk = np.zeros_like(k)
    for idx in np.ndindex(k.shape):
        e = np.zeros_like(k)
        e[idx] = h
        num_gk[idx] = (ref_loss(x, k + e) - ref_loss(x, k - e)) / (2 * h)
    np.testing.assert_allclose(gx.numpy(), num_gx, rtol=2e-3, atol=2e-3 * np.abs(num_gx).max())
    np.testing.assert_allclose(gk.numpy(), num_gk, rtol=2e-3, atol=2e-3 * np.abs(num_gk).max())


@pytest.mark.parametrize("name", ["arcface", "combined_cm1", "combined_cm2", "sphere_style", "kappaface_epoch0"])
def test_target_logit_monotone_and_finite_gradients_over_all_angles(name):
    """Target logit strictly decreases with theta on [0, pi]; gradients finite at the ends."""
    layer = _built(CASES[name][0])
    thetas = np.linspace(0.0, np.pi, 2001)
    cos = tf.Variable(np.cos(thetas).astype("float32"))
    with tf.GradientTape() as tape:
        t = layer.target_logit(cos, tf.zeros(len(thetas), "int32"))
        total = tf.reduce_sum(t)
    grad = tape.gradient(total, cos).numpy()
    t = t.numpy()
    assert np.all(np.isfinite(t)) and np.all(np.isfinite(grad))
    assert np.all(np.diff(t) < 1e-6), "target logit must not increase with theta"
    # d target / d cos > 0: a larger cosine always gives a larger target logit.
    assert np.all(grad > 0)


def test_gradient_sign_pushes_target_up():
    """For cross-entropy the gradient moves the embedding towards its class centre."""
    layer = _built(CASES["arcface"][0])
    rng = np.random.default_rng(5)
    labels = np.array([1, 4])
    x = tf.Variable(inputs_with_angles(layer.kernel.numpy(), labels, [1.0, 2.0], rng))
    with tf.GradientTape() as tape:
        logits = layer([x, labels])
        loss = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    g = tape.gradient(loss, x).numpy()
    w = layer.kernel.numpy() / np.linalg.norm(layer.kernel.numpy(), axis=0)
    for i, y in enumerate(labels):
        assert -g[i].dot(w[:, y]) > 0


@pytest.mark.parametrize("name", ["arcface", "cosface", "kappaface_epoch0"])
def test_float16_inputs(name):
    layer = _built(CASES[name][0])
    rng = np.random.default_rng(6)
    labels = np.array([0, 6, 3])
    x = rng.standard_normal((3, D)).astype("float16")
    out16 = keras.ops.convert_to_numpy(layer([x, labels]))
    out32 = keras.ops.convert_to_numpy(layer([x.astype("float32"), labels]))
    assert out16.dtype == np.float32
    np.testing.assert_allclose(out16, out32, atol=1e-4)


def test_under_mixed_precision_head_stays_float32():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layer = L.ArcMarginDense(C)
        out = layer([np.ones((2, D), "float16"), np.array([0, 1])])
        assert layer.compute_dtype == "float32" and out.dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda: L.ArcMarginDense(1), "num_classes"),
        (lambda: L.ArcMarginDense(10, scale=0), "scale"),
        (lambda: L.ArcMarginDense(10, margin=-0.1), "margin"),
        (lambda: L.CosMarginDense(10, margin=float("nan")), "margin"),
        (lambda: L.CombinedMarginDense(10, m1=0), "m1"),
        (lambda: L.KappaMarginDense(3, class_counts=[1, 2], num_samples=3), "class_counts"),
        (lambda: L.KappaMarginDense(3, class_counts=[1, 0, 2], num_samples=3), "class_counts"),
        (lambda: L.KappaMarginDense(3, class_counts=[1, 1, 1], num_samples=3, temperature=0), "temperature"),
        (lambda: L.KappaMarginDense(3, class_counts=[1, 1, 1], num_samples=3, temperature=-1), "temperature"),
        (lambda: L.KappaMarginDense(3, class_counts=[1, 1, 1], num_samples=3, gamma=1.5), "gamma"),
        (lambda: L.KappaMarginDense(3, class_counts=[1, 1, 1], num_samples=3, gamma=-0.1), "gamma"),
        (lambda: L.KappaMarginDense(3, class_counts=[1, 1, 1]), "num_samples"),
        (lambda: L.KappaMarginDense(3, class_counts=[1, 1, 1], estimator="x"), "estimator"),
        (lambda: L.KappaMarginDense(3, class_counts=[1, 1, 1], num_samples=3, buffer_alpha=1.0), "buffer_alpha"),
        (lambda: L.KappaMarginDense(3, class_counts=[1, 1, 1], num_samples=3, target="x"), "target"),
    ],
)
def test_bad_arguments_name_the_argument(make, fragment):
    with pytest.raises(ValueError, match=fragment):
        make()


def test_labels_out_of_range_eager_and_compiled():
    layer = _built(CASES["arcface"][0])
    x = np.ones((2, D), "float32")
    for bad in ([0, C], [-1, 0]):
        with pytest.raises(ValueError, match="labels"):
            layer([x, np.array(bad)])

    @tf.function
    def compiled(x, y):
        return layer([x, y])

    with pytest.raises(tf.errors.InvalidArgumentError, match="labels"):
        compiled(x, tf.constant([0, C]))


def test_wrong_embedding_rank():
    layer = L.ArcMarginDense(C)
    with pytest.raises(ValueError, match="embeddings"):
        layer([np.ones((2, 3, D), "float32"), np.array([0, 1])])


@pytest.mark.parametrize("name", sorted(CASES))
def test_keras_file_round_trip(name, tmp_path):
    layer_fn, _ = CASES[name]
    emb = keras.Input((D,), name="emb")
    lab = keras.Input((), dtype="int32", name="lab")
    model = keras.Model([emb, lab], layer_fn()([emb, lab]))
    x = np.random.default_rng(7).standard_normal((4, D)).astype("float32")
    y = np.array([0, 1, C - 1, 3])
    head = model.layers[-1]
    if isinstance(head, L.KappaMarginDense):
        head.psi.assign(np.linspace(0.2, 1.0, C).astype("float32"))
    before = model.predict([x, y], verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.layers[-1].get_config() == head.get_config()
    np.testing.assert_allclose(loaded.predict([x, y], verbose=0), before, atol=1e-5)
    if isinstance(head, L.KappaMarginDense):
        np.testing.assert_allclose(loaded.layers[-1].psi.numpy(), head.psi.numpy())
