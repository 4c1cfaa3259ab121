"""The loss zoo against float64 NumPy references written from the papers' equations."""

import itertools
import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_facemargin as kfm
from keras_facemargin import layers as L
from keras_facemargin.callbacks import SphereFaceAnnealing
from numpy_reference import arcface_target, margin_logits
from numpy_reference_zoo import (
    adaface_logits,
    angular_triplet,
    center_loss_and_update,
    central_difference,
    cosines,
    curricular_logits,
    expface_target,
    inter_extra,
    intra_extra,
    ldam_margins,
    magface_logits_and_reg,
    softmax_logits,
    sphere_lambda_schedule,
    sphere_logits,
    x2softmax_target,
)
from testing import inputs_with_angles

C, D, S = 7, 6, 64.0
COUNTS = np.array([50, 20, 10, 5, 3, 2, 1])
KAPPA_PSI = np.linspace(0.2, 1.0, C).astype("float32")


def _target_case(make, target, scale=S):
    """A head whose only change is the target logit: reference via `margin_logits`."""
    return make, None, lambda x, k, y, layer, frozen: (margin_logits(x, k, y, lambda c: target(c, y), scale), 0.0)


def _set(**values):
    def setup(layer):
        for name, value in values.items():
            getattr(layer, name).assign(value)

    return setup


# name -> (factory, setup(layer) or None, reference(x, kernel, labels, layer, frozen) -> (logits, extra loss));
# `frozen` is the unperturbed x: AdaFace detaches the norms, so its reference
# reads them from `frozen` while finite differences move x.
CASES = {
    "softmax": (
        lambda: L.SoftmaxDense(C),
        lambda layer: layer.bias.assign(np.linspace(-1, 1, C).astype("float32")),
        lambda x, k, y, layer, frozen: (softmax_logits(x, k, layer.bias.numpy()), 0.0),
    ),
    "sphereface_annealed": (
        lambda: L.SphereMarginDense(C),
        _set(annealing_lambda=5.0),
        lambda x, k, y, layer, frozen: (sphere_logits(x, k, y, 4, 5.0), 0.0),
    ),
    "sphereface_pure_m3": (
        lambda: L.SphereMarginDense(C, margin=3),
        None,
        lambda x, k, y, layer, frozen: (sphere_logits(x, k, y, 3, 0.0), 0.0),
    ),
    "curricularface": (
        lambda: L.CurricularMarginDense(C),
        _set(t=0.3),
        lambda x, k, y, layer, frozen: (curricular_logits(x, k, y, 0.3, training=False)[0], 0.0),
    ),
    "magface": (
        lambda: L.MagMarginDense(C),
        None,
        lambda x, k, y, layer, frozen: magface_logits_and_reg(x, k, y),
    ),
    "magface_hard": (
        lambda: L.MagMarginDense(C, easy_margin=False),
        None,
        lambda x, k, y, layer, frozen: magface_logits_and_reg(x, k, y, easy=False),
    ),
    "adaface": (
        lambda: L.AdaMarginDense(C),
        _set(batch_mean=25.0, batch_std=10.0),
        lambda x, k, y, layer, frozen: (
            adaface_logits(x, k, y, 25.0, 10.0, training=False, frozen_norms_of=frozen)[0],
            0.0,
        ),
    ),
    "expface": _target_case(lambda: L.ExpMarginDense(C), lambda c, y: expface_target(c, 0.7)),
    "x2softmax": _target_case(lambda: L.X2SoftmaxDense(C), lambda c, y: x2softmax_target(c)),
    "ldam": _target_case(
        lambda: L.LDAMDense(C, class_counts=COUNTS), lambda c, y: c - ldam_margins(COUNTS)[y], scale=30.0
    ),
    "kappaface_exp": (
        lambda: L.KappaMarginDense(C, class_counts=COUNTS, margin=0.3, target="exp", num_samples=10),
        _set(psi=KAPPA_PSI),
        lambda x, k, y, layer, frozen: (
            margin_logits(x, k, y, lambda c: expface_target(c, 1 - 0.3 * KAPPA_PSI[y].astype(float)), S),
            0.0,
        ),
    ),
    "intra": (
        lambda: L.IntraLossDense(C),
        None,
        lambda x, k, y, layer, frozen: (S * cosines(x, k), intra_extra(x, k, y)),
    ),
    "inter": (
        lambda: L.InterLossDense(C),
        None,
        lambda x, k, y, layer, frozen: (S * cosines(x, k), inter_extra(k, y)),
    ),
    "centerloss": (
        lambda: L.CenterLossDense(C),
        lambda layer: layer.centers.assign(np.random.default_rng(9).standard_normal((C, D)).astype("float32")),
        lambda x, k, y, layer, frozen: (
            softmax_logits(x, k, layer.bias.numpy()),
            center_loss_and_update(x, y, layer.centers.numpy())[0],
        ),
    ),
    # SubFace at inference is its wrapped head (the training path is tested below).
    "subface_inference": _target_case(lambda: L.SubFaceDense(C, head="arcface"), lambda c, y: arcface_target(c, 0.5)),
}
# Feature norms: MagFace/AdaFace need norms across their ranges; the rest any.
NORM_RANGE = {"magface": (5.0, 120.0), "magface_hard": (5.0, 120.0), "adaface": (5.0, 60.0)}


def _kernel(layer):
    return (layer.head if isinstance(layer, L.SubFaceDense) else layer).kernel


def _built(name, seed=0):
    make, setup, _ = CASES[name]
    layer = make()
    layer.build((None, D))
    _kernel(layer).assign(np.random.default_rng(seed).standard_normal((D, C)).astype("float32"))
    if setup is not None:
        setup(layer)
    return layer


def _forward(layer, x, labels, training=False):
    """(logits, sum of the losses the call added) as tensors."""
    out = layer([x, labels], training=training)
    extra = tf.add_n(layer.losses) if layer.losses else tf.constant(0.0)
    return out, extra


@pytest.mark.parametrize("name", sorted(CASES))
def test_logits_and_extra_loss_match_reference(name):
    layer = _built(name)
    k = _kernel(layer).numpy()
    labels = np.array([0, C - 1, 3, 0, C - 1, 5, 2, 1])
    thetas = np.array([0.0, 1e-4, 0.7, 1.5, 2.4, np.pi - 0.3, np.pi - 1e-4, np.pi])
    x = inputs_with_angles(k, labels, thetas, np.random.default_rng(1), NORM_RANGE.get(name, (0.5, 3.0)))
    out, extra = _forward(layer, x, labels)
    out = out.numpy()
    ref, ref_extra = CASES[name][2](x.astype("float64"), k.astype("float64"), labels, layer, x.astype("float64"))
    assert np.all(np.isfinite(out))
    # Cosines are clipped 1e-7 from +-1 (theta moves <= 5e-4) at the edge rows;
    # X2-Softmax's slope there is 2|a|pi s = 362 per radian, hence the scaling.
    edge = np.isin(np.arange(len(labels)), [0, 1, 6, 7])
    big = np.abs(ref).max()
    np.testing.assert_allclose(out[~edge], ref[~edge], rtol=1e-4, atol=2e-5 * big + 2e-3)
    np.testing.assert_allclose(out[edge], ref[edge], atol=0.05 * max(1.0, big / S))
    np.testing.assert_allclose(float(extra), ref_extra, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradients_match_finite_differences(name):
    """d/d(embeddings) and d/d(kernel) of sum(w * logits) + added losses vs the reference."""
    layer = _built(name, seed=3)
    rng = np.random.default_rng(4)
    labels = np.array([0, C - 1, 2, 4])
    k = _kernel(layer).numpy().astype("float64")
    x = inputs_with_angles(k, labels, [0.4, 1.2, 2.0, 2.9], rng, NORM_RANGE.get(name, (0.5, 3.0))).astype("float64")
    wts = rng.standard_normal((len(labels), C))
    reference = CASES[name][2]

    def ref_loss(xv, kv):
        logits, extra = reference(xv, kv, labels, layer, x)
        return np.sum(wts * logits) + extra

    xt = tf.Variable(x.astype("float32"))
    kernel = _kernel(layer).value
    with tf.GradientTape() as tape:
        out, extra = _forward(layer, xt, labels)
        loss = tf.reduce_sum(wts.astype("float32") * out) + extra
    gx, gk = tape.gradient(loss, [xt, kernel])
    num_gx = central_difference(lambda z: ref_loss(z, k), x)
    num_gk = central_difference(lambda z: ref_loss(x, z), k)
    # Sign and magnitude: elementwise within 0.3% of the largest component.
    np.testing.assert_allclose(gx.numpy(), num_gx, rtol=3e-3, atol=3e-3 * np.abs(num_gx).max())
    np.testing.assert_allclose(gk.numpy(), num_gk, rtol=3e-3, atol=3e-3 * np.abs(num_gk).max())


@pytest.mark.parametrize("name", sorted(CASES))
def test_edges_theta_zero_and_pi_have_finite_gradients(name):
    layer = _built(name)
    k = _kernel(layer).numpy()
    labels = np.array([1, 2, 3, 4])
    x = tf.Variable(inputs_with_angles(k, labels, [0.0, 1e-6, np.pi - 1e-6, np.pi], np.random.default_rng(2)))
    with tf.GradientTape() as tape:
        out, extra = _forward(layer, x, labels)
        loss = tf.reduce_sum(out) + extra
    gx, gk = tape.gradient(loss, [x, _kernel(layer).value])
    assert np.all(np.isfinite(out.numpy()))
    assert np.all(np.isfinite(gx.numpy())) and np.all(np.isfinite(gk.numpy()))


@pytest.mark.parametrize("name", ["magface", "magface_hard", "adaface", "sphereface_annealed", "centerloss"])
def test_zero_norm_feature_is_finite(name):
    layer = _built(name)
    k = _kernel(layer).numpy()
    labels = np.array([1, 2, 3])
    x = inputs_with_angles(k, labels, [0.5, 1.0, 2.0], np.random.default_rng(5), NORM_RANGE.get(name, (0.5, 3.0)))
    x[1] = 0.0
    xt = tf.Variable(x)
    with tf.GradientTape() as tape:
        out, extra = _forward(layer, xt, labels, training=True)
        loss = keras.losses.sparse_categorical_crossentropy(labels, out, from_logits=True)
        loss = tf.reduce_mean(loss) + extra
    grads = tape.gradient(loss, [xt, _kernel(layer).value])
    assert np.all(np.isfinite(out.numpy())) and np.isfinite(float(loss))
    assert all(np.all(np.isfinite(g.numpy())) for g in grads)
    if name.startswith("magface"):
        ref, ref_extra = magface_logits_and_reg(
            x.astype("float64"), k.astype("float64"), labels, easy=name == "magface"
        )
        np.testing.assert_allclose(out.numpy(), ref, rtol=1e-4, atol=2e-3)
        np.testing.assert_allclose(float(extra), ref_extra, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_float16_inputs(name):
    layer = _built(name)
    rng = np.random.default_rng(6)
    labels = np.array([0, 6, 3])
    lo, hi = NORM_RANGE.get(name, (0.5, 3.0))
    x = (rng.standard_normal((3, D)) / math.sqrt(D) * (lo + hi) / 2).astype("float16")
    out16 = layer([x, labels]).numpy()
    out32 = layer([x.astype("float32"), labels]).numpy()
    assert out16.dtype == np.float32
    np.testing.assert_allclose(out16, out32, atol=1e-3)


def test_gradient_sign_pulls_towards_the_class_centre():
    """Cross-entropy gradients move each embedding towards its centre, for every margin head."""
    for name in ["sphereface_annealed", "curricularface", "magface", "adaface", "expface", "x2softmax", "ldam"]:
        layer = _built(name)
        k = _kernel(layer).numpy()
        labels = np.array([1, 4])
        norm_range = NORM_RANGE.get(name, (0.5, 3.0))
        x = tf.Variable(inputs_with_angles(k, labels, [1.0, 2.0], np.random.default_rng(7), norm_range))
        with tf.GradientTape() as tape:
            loss = keras.losses.sparse_categorical_crossentropy(labels, layer([x, labels]), from_logits=True)
        g = tape.gradient(loss, x).numpy()
        w = k / np.linalg.norm(k, axis=0)
        for i, y in enumerate(labels):
            assert -g[i].dot(w[:, y]) > 0, name


# -- state updates against the reference recurrences ------------------------------
def _batches(n, rng, kernel, norm_range=(0.5, 3.0), size=5):
    out = []
    for _ in range(n):
        labels = rng.integers(0, C, size)
        x = inputs_with_angles(kernel, labels, rng.uniform(0.2, 2.8, size), rng, norm_range)
        out.append((x, labels))
    return out


def test_curricularface_t_follows_the_ema_and_modulates_hard_negatives():
    layer = _built("curricularface")
    layer.t.assign(0.0)
    k = _kernel(layer).numpy().astype("float64")
    t = 0.0
    for x, y in _batches(3, np.random.default_rng(10), k):
        out = layer([x, y], training=True).numpy()
        ref, t = curricular_logits(x.astype("float64"), k, y, t, training=True)
        np.testing.assert_allclose(float(layer.t.numpy()), t, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=2e-3)
    assert t != 0.0
    # Inference (and training=False) leaves t alone.
    layer([x, y], training=False)
    np.testing.assert_allclose(float(layer.t.numpy()), t, rtol=1e-5)


def test_curricularface_hard_negatives_are_reweighted():
    """With t = 1 a hard negative cos_j becomes cos_j (1 + cos_j) > cos_j; easy ones stay."""
    layer = _built("curricularface")
    layer.t.assign(1.0)
    k = _kernel(layer).numpy()
    labels = np.array([0])
    x = inputs_with_angles(k, labels, [1.4], np.random.default_rng(11))
    cos = cosines(x, k)[0]
    out = layer([x, labels]).numpy()[0] / S
    phi = math.cos(1.4 + 0.5)
    for j in range(1, C):
        expected = cos[j] * (1 + cos[j]) if cos[j] > phi else cos[j]
        assert out[j] == pytest.approx(expected, abs=1e-5)


def test_adaface_batch_statistics_follow_the_ema():
    layer = _built("adaface")
    layer.batch_mean.assign(20.0)
    layer.batch_std.assign(100.0)
    k = _kernel(layer).numpy().astype("float64")
    mean, std = 20.0, 100.0
    for x, y in _batches(3, np.random.default_rng(12), k, (5.0, 60.0)):
        out = layer([x, y], training=True).numpy()
        ref, mean, std = adaface_logits(x.astype("float64"), k, y, mean, std, training=True)
        np.testing.assert_allclose(float(layer.batch_mean.numpy()), mean, rtol=1e-5)
        np.testing.assert_allclose(float(layer.batch_std.numpy()), std, rtol=1e-5)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=2e-3)
    layer([x, y], training=False)
    np.testing.assert_allclose(float(layer.batch_mean.numpy()), mean, rtol=1e-5)


def test_sphereface_annealing_callback_follows_the_caffe_schedule():
    emb, lab = keras.Input((D,)), keras.Input((), dtype="int32")
    head = L.SphereMarginDense(C)
    model = keras.Model([emb, lab], head([emb, lab]))
    model.compile(optimizer="sgd", loss="mse")
    model.optimizer.build(model.trainable_variables)
    callback = SphereFaceAnnealing()
    callback.set_model(model)
    expected = sphere_lambda_schedule(2000)
    for i in range(2000):
        model.optimizer.iterations.assign(i)  # the step about to run
        callback.on_train_batch_begin(i)
        if i in (0, 1, 9, 299, 1999):
            assert float(head.annealing_lambda.numpy()) == pytest.approx(expected[i], rel=1e-6)
    assert expected[0] == pytest.approx(1000 / 1.12) and expected[-1] == 5.0
    # A resumed run (restored optimizer) continues the schedule, whatever the batch number.
    model.optimizer.iterations.assign(9)
    SphereFaceAnnealing().set_model(model)
    resumed = SphereFaceAnnealing()
    resumed.set_model(model)
    resumed.on_train_batch_begin(0)
    assert float(head.annealing_lambda.numpy()) == pytest.approx(expected[9], rel=1e-6)


def test_center_loss_centres_follow_the_paper_update():
    layer = _built("centerloss")
    rng = np.random.default_rng(13)
    for _ in range(2):
        labels = np.array([0, 0, 3, 5, 3, 0])
        x = rng.standard_normal((6, D)).astype("float32")
        before = layer.centers.numpy().astype("float64")
        _, extra = _forward(layer, x, labels, training=True)
        ref_loss, ref_centres = center_loss_and_update(x, labels, before)
        np.testing.assert_allclose(float(extra), ref_loss, rtol=1e-5)
        np.testing.assert_allclose(layer.centers.numpy(), ref_centres, rtol=1e-5, atol=1e-6)
        assert not np.allclose(layer.centers.numpy(), before)


def test_subface_training_uses_one_random_subspace():
    layer = L.SubFaceDense(C, head="arcface", num_subspaces=2, seed=1)
    layer.build((None, D))
    k = layer.head.kernel.numpy().astype("float64")
    labels = np.array([0, 3, 6, 2])
    x = np.random.default_rng(14).standard_normal((4, D))
    seen = set()
    for _ in range(4):
        out = layer([x.astype("float32"), labels], training=True).numpy()
        arc = lambda c: arcface_target(c, 0.5)  # noqa: E731
        subsets = itertools.combinations(range(D), D // 2)
        matches = [idx for idx in subsets if np.allclose(out, margin_logits(x[:, idx], k[idx, :], labels, arc, S), atol=2e-3)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 1, "the subspace must change between steps"
    full = margin_logits(x, k, labels, lambda c: arcface_target(c, 0.5), S)
    np.testing.assert_allclose(layer([x.astype("float32"), labels], training=False).numpy(), full, atol=2e-3)


def test_subface_wraps_stateful_heads_and_rejects_kappaface():
    layer = L.SubFaceDense(C, head="curricularface", num_subspaces=3, seed=0)
    x = np.random.default_rng(15).standard_normal((4, D)).astype("float32")
    layer([x, np.array([0, 1, 2, 3])], training=True)
    assert float(layer.head.t.numpy()) != 0.0
    with pytest.raises(ValueError, match="head"):
        L.SubFaceDense(C, head=L.KappaMarginDense(C, class_counts=COUNTS, num_samples=4))


def test_angular_triplet_loss_value_and_gradient():
    rng = np.random.default_rng(16)
    labels = np.array([0, 0, 1, 1, 2, 0])
    x = rng.standard_normal((6, 4))
    loss = L.AngularTripletLoss(margin=0.35)
    value = float(loss(labels, x.astype("float32")))
    assert value == pytest.approx(angular_triplet(x, labels), rel=1e-4)
    xt = tf.Variable(x.astype("float32"))
    with tf.GradientTape() as tape:
        v = loss(labels, xt)
    g = tape.gradient(v, xt).numpy()
    num = central_difference(lambda z: angular_triplet(z, labels), x)
    np.testing.assert_allclose(g, num, rtol=3e-3, atol=3e-3 * np.abs(num).max())
    assert float(loss(np.array([0, 1, 2]), x[:3].astype("float32"))) == 0.0  # no positives


def test_kappaface_exp_target_follows_psi_and_keeps_existing_targets():
    layer = _built("kappaface_exp")
    labels = np.arange(C)
    k = _kernel(layer).numpy()
    x = inputs_with_angles(k, labels, np.full(C, 1.0), np.random.default_rng(17))
    out = layer([x, labels]).numpy()[labels, labels] / S
    expected = np.cos(np.pi * (1.0 / np.pi) ** (1 - 0.3 * KAPPA_PSI))
    np.testing.assert_allclose(out, expected, atol=1e-4)
    assert np.all(np.diff(out) < 0)  # larger psi, larger margin
    with pytest.raises(ValueError, match="margin"):
        L.KappaMarginDense(C, class_counts=COUNTS, num_samples=4, target="exp", margin=1.0)


# -- registry, serialisation, training ----------------------------------------------
ZOO_NAMES = [
    "softmax", "sphereface", "curricularface", "magface", "adaface", "expface", "x2softmax",
    "subface", "intra", "inter", "centerloss", "ldam", "kappaface_cos", "kappaface_exp",
]


def test_every_zoo_head_is_registered_and_builds():
    assert set(ZOO_NAMES) <= set(L.head_names())
    x = np.random.default_rng(18).standard_normal((3, D)).astype("float32")
    for name in L.head_names():
        head = L.build_head(name, C, class_counts=COUNTS, num_samples=3)
        out = head([x, np.array([0, 1, 2])])
        assert tuple(out.shape) == (3, C), name


@pytest.mark.parametrize("name", sorted(CASES))
def test_keras_file_round_trip(name, tmp_path):
    emb = keras.Input((D,), name="emb")
    lab = keras.Input((), dtype="int32", name="lab")
    model = keras.Model([emb, lab], CASES[name][0]()([emb, lab]))
    head = model.layers[-1]
    if CASES[name][1] is not None:
        CASES[name][1](head)
    x = np.random.default_rng(7).standard_normal((4, D)).astype("float32") * 20
    y = np.array([0, 1, C - 1, 3])
    before = model.predict([x, y], verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert type(loaded.layers[-1]) is type(head)
    as_json = lambda layer: json.loads(json.dumps(layer.get_config()))  # noqa: E731 (tuples vs lists)
    assert as_json(loaded.layers[-1]) == as_json(head)
    np.testing.assert_allclose(loaded.predict([x, y], verbose=0), before, rtol=1e-5, atol=1e-4)


@pytest.mark.slow
def test_face_recognizer_fit_step_with_every_registered_head():
    rng = np.random.default_rng(19)
    data = {
        "images": rng.standard_normal((8, 5)).astype("float32"),
        "labels": rng.integers(0, C, 8),
        "index": np.arange(8),
    }
    counts = np.bincount(data["labels"], minlength=C) + 1
    for name in L.head_names():
        backbone = keras.Sequential([keras.Input((5,)), keras.layers.Dense(D)])
        head = L.build_head(name, C, class_counts=counts, num_samples=8)
        if name == "centerloss":
            head.build((None, D))
            centres_before = head.centers.numpy()
        model = kfm.FaceRecognizer(backbone, head)
        model.compile(
            optimizer=keras.optimizers.SGD(0.01),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            run_eagerly=False,  # the compiled (tf.function) path, where state updates run in a graph
        )
        callbacks = [SphereFaceAnnealing()] if name == "sphereface" else []
        history = model.fit(data, data["labels"], batch_size=8, epochs=1, verbose=0, callbacks=callbacks)
        assert np.isfinite(history.history["loss"][0]), name
        # State updated inside the compiled step.
        if name == "curricularface":
            assert float(head.t.numpy()) != 0.0
        if name == "adaface":
            assert float(head.batch_mean.numpy()) != 20.0
        if name == "sphereface":
            assert float(head.annealing_lambda.numpy()) == pytest.approx(1000 / 1.12, rel=1e-6)
        if name == "centerloss":
            assert not np.allclose(head.centers.numpy(), centres_before)


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda: L.SoftmaxDense(1), "num_classes"),
        (lambda: L.SphereMarginDense(C, margin=5), "margin"),
        (lambda: L.SphereMarginDense(C, margin=4.0), "margin"),
        (lambda: L.CurricularMarginDense(C, t_momentum=2.0), "t_momentum"),
        (lambda: L.MagMarginDense(C, lower_norm=50, upper_norm=10), "upper_norm"),
        (lambda: L.MagMarginDense(C, lower_margin=0.9, upper_margin=0.5), "upper_margin"),
        (lambda: L.AdaMarginDense(C, h=0), "h"),
        (lambda: L.ExpMarginDense(C, margin=1.5), "margin"),
        (lambda: L.X2SoftmaxDense(C, a=0.5), "`a`"),
        (lambda: L.LDAMDense(C, class_counts=[1, 2]), "class_counts"),
        (lambda: L.CenterLossDense(C, center_alpha=1.5), "center_alpha"),
        (lambda: L.SubFaceDense(C, num_subspaces=0), "num_subspaces"),
        (lambda: L.SubFaceDense(C, head=L.ArcMarginDense(C + 1)), "num_classes"),
        (lambda: SphereFaceAnnealing(power=0), "power"),
    ],
)
def test_bad_arguments_name_the_argument(make, fragment):
    with pytest.raises(ValueError, match=fragment):
        make()
