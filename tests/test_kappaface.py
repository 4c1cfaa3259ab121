"""KappaFace: formulas, memory buffer, momentum encoder, callback."""

import keras
import numpy as np
import pytest

import keras_facemargin as kfm
from keras_facemargin.layers import kappa_math
from numpy_reference import kappa_reference, l2n, vmf_like_cluster


def _clusters(rng, dim, spreads, counts):
    feats, labels = [], []
    for c, (spread, n) in enumerate(zip(spreads, counts)):
        mu = l2n(rng.standard_normal(dim))
        feats.append(vmf_like_cluster(rng, mu, n, spread))
        labels += [c] * n
    return np.concatenate(feats), np.array(labels)


def _sums(feats, labels, C):
    sums = np.zeros((C, feats.shape[1]))
    np.add.at(sums, labels, feats)
    return sums, np.bincount(labels, minlength=C)


def test_formulas_match_numpy_reference():
    rng = np.random.default_rng(0)
    dim, counts = 16, [40, 25, 60, 8, 33]
    feats, labels = _clusters(rng, dim, [0.05, 0.3, 0.6, 0.15, 1.2], counts)
    sums, seen = _sums(feats, labels, len(counts))
    kappa, psi = kappa_math.kappa_margin_weights(sums, seen, counts, dim, temperature=0.4, gamma=0.7)
    ref_kappa, ref_psi, ref_wk, ref_wp = kappa_reference(feats, labels, counts, dim)
    np.testing.assert_allclose(np.asarray(kappa), ref_kappa, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(psi), ref_psi, rtol=1e-5, atol=1e-6)
    # And the individual steps.
    r = np.asarray(kappa_math.mean_resultant_length(sums, seen))
    np.testing.assert_allclose(r, np.linalg.norm(sums, axis=1) / np.asarray(counts), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(kappa_math.population_weight(counts)), ref_wp, rtol=1e-6, atol=1e-7)
    wk = kappa_math.concentration_weight(kappa_math.standardize(ref_kappa.astype("float32")), 0.4)
    np.testing.assert_allclose(np.asarray(wk), ref_wk, rtol=1e-5)


def test_tighter_cluster_gets_larger_kappa_and_smaller_margin():
    rng = np.random.default_rng(1)
    dim, counts = 32, [50, 50, 50]
    feats, labels = _clusters(rng, dim, [0.1, 0.4, 1.0], counts)
    sums, seen = _sums(feats, labels, 3)
    kappa, psi = kappa_math.kappa_margin_weights(sums, seen, counts, dim)
    kappa, psi = np.asarray(kappa), np.asarray(psi)
    assert kappa[0] > kappa[1] > kappa[2]
    assert psi[0] < psi[1] < psi[2]  # equal populations: margin follows difficulty only


def test_smaller_class_gets_larger_population_weight():
    w = np.asarray(kappa_math.population_weight([1, 5, 50, 100]))
    assert w[0] > w[1] > w[2] > w[3] > 0
    np.testing.assert_allclose(w[3], (np.cos(np.pi / 1.05) + 1) / 2, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(w[0], (np.cos(np.pi * 1 / 105) + 1) / 2, rtol=1e-6)


def test_saturated_and_unseen_classes():
    dim = 8
    e = np.eye(dim)
    # class 0: single image (r = 1 -> infinite kappa), class 1: two spread images,
    # class 2: three images, class 3: never seen this epoch.
    sums = np.stack([e[0], e[0] + e[1], e[0] + e[1] + e[2], np.zeros(dim)])
    seen = np.array([1, 2, 3, 0])
    kappa, psi = kappa_math.kappa_margin_weights(sums, seen, [1, 2, 3, 4], dim)
    kappa, psi = np.asarray(kappa), np.asarray(psi)
    assert np.all(np.isfinite(kappa)) and np.all(np.isfinite(psi))
    r1, r2 = np.sqrt(2) / 2, np.sqrt(3) / 3
    k1, k2 = r1 * (dim - r1**2) / (1 - r1**2), r2 * (dim - r2**2) / (1 - r2**2)
    np.testing.assert_allclose(kappa[:3], [max(k1, k2), k1, k2], rtol=1e-5)
    np.testing.assert_allclose(kappa[3], kappa[:3].mean(), rtol=1e-5)  # neutral


def _kappa_head(C=4, n=12, d=5, **kw):
    head = kfm.layers.KappaMarginDense(C, class_counts=[3] * C, num_samples=n, scale=10.0, **kw)
    head.build((None, d))
    return head


def test_memory_buffer_update_eq5():
    rng = np.random.default_rng(2)
    head = _kappa_head(buffer_alpha=0.3)
    f1 = rng.standard_normal((4, 5)).astype("float32")
    idx, y = np.array([0, 5, 7, 11]), np.array([0, 1, 1, 3])
    head([f1, y, idx], training=True)
    mem = head.memory.numpy()
    np.testing.assert_allclose(mem[idx], l2n(f1), atol=1e-6)  # first visit: the feature itself
    assert np.all(mem[[1, 2, 3, 4, 6, 8, 9, 10]] == 0)
    f2 = rng.standard_normal((4, 5)).astype("float32")
    head([f2, y, idx], training=True)
    expected = l2n(0.3 * l2n(f1) + 0.7 * l2n(f2))
    np.testing.assert_allclose(head.memory.numpy()[idx], expected, atol=1e-6)
    sums = np.asarray(head.feature_sums.value)
    ref = np.zeros((4, 5))
    np.add.at(ref, y, l2n(f1))
    np.add.at(ref, y, expected)
    np.testing.assert_allclose(sums, ref, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(head.feature_counts.value), [2, 4, 0, 2])
    # Inference and training=False never touch the state.
    head([f2, y, idx], training=False)
    head(f2)
    np.testing.assert_allclose(np.asarray(head.feature_sums.value), ref, atol=1e-5)


def test_memory_buffer_float16_storage():
    head = _kappa_head(buffer_dtype="float16")
    f = np.random.default_rng(3).standard_normal((2, 5)).astype("float32")
    head([f, np.array([0, 1]), np.array([2, 3])], training=True)
    assert head.memory.dtype == "float16"
    np.testing.assert_allclose(head.memory.numpy()[[2, 3]].astype("float32"), l2n(f), atol=1e-3)


def test_sample_index_out_of_range_and_missing():
    head = _kappa_head()
    f = np.ones((2, 5), "float32")
    with pytest.raises(ValueError, match="sample_index"):
        head([f, np.array([0, 1]), np.array([0, 12])], training=True)
    with pytest.raises(ValueError, match="sample_index"):
        head([f, np.array([0, 1])], training=True)


def test_update_margins_assigns_psi_and_resets():
    rng = np.random.default_rng(4)
    C, d = 4, 5
    head = kfm.layers.KappaMarginDense(C, class_counts=[9, 3, 5, 1], num_samples=20, margin=0.8)
    head.build((None, d))
    feats = rng.standard_normal((18, d)).astype("float32")
    labels = np.array([0] * 9 + [1] * 3 + [2] * 5 + [3])
    head([feats, labels, np.arange(18)], training=True)
    stats = head.update_margins()
    ref_kappa, ref_psi, _, _ = kappa_reference(l2n(feats), labels, [9, 3, 5, 1], d)
    # class 3 has one image: r = 1, kappa takes the max of the others.
    ref_kappa[3] = ref_kappa[:3].max()
    z = (ref_kappa - ref_kappa.mean()) / ref_kappa.std()
    w_pop = (np.cos(np.pi * np.array([9, 3, 5, 1]) / (1.05 * 9)) + 1) / 2
    ref_psi = 0.7 * (1 - 1 / (1 + np.exp(-0.4 * z))) + 0.3 * w_pop
    np.testing.assert_allclose(head.kappa.numpy(), ref_kappa, rtol=1e-4)
    np.testing.assert_allclose(head.psi.numpy(), ref_psi, rtol=1e-5)
    np.testing.assert_allclose(stats["margin_mean"], 0.8 * ref_psi.mean(), rtol=1e-5)
    assert stats["kappa_classes_seen"] == 4
    assert not np.asarray(head.feature_sums.value).any() and not np.asarray(head.feature_counts.value).any()
    # The new margins are used by the next forward pass.
    np.testing.assert_allclose(np.asarray(head.margins()), 0.8 * ref_psi, rtol=1e-5)


def _tiny_backbone(d=6, name="tiny"):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(d, name="fc")(x), name=name)


def test_momentum_encoder_ema_eq7():
    keras.utils.set_random_seed(0)
    C, m = 3, 0.9
    head = kfm.layers.KappaMarginDense(
        C, class_counts=[2, 2, 2], estimator="momentum_encoder", encoder_momentum=m, scale=8.0
    )
    model = kfm.FaceRecognizer(_tiny_backbone(), head)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    images = rng.standard_normal((6, 8, 8, 3)).astype("float32")
    labels = np.array([0, 0, 1, 1, 2, 2])
    w0 = [w.copy() for w in model.backbone.get_weights()]
    assert all(np.array_equal(a, b) for a, b in zip(model.momentum_encoder.get_weights(), w0))
    model.train_on_batch({"images": images, "labels": labels}, labels)
    w1 = model.backbone.get_weights()
    assert any(not np.allclose(a, b) for a, b in zip(w0, w1)), "backbone should have trained"
    # EMA before the step: m*w0 + (1-m)*w0 = w0 (all weights, BN statistics included).
    for e, a in zip(model.momentum_encoder.get_weights(), w0):
        np.testing.assert_allclose(e, a, rtol=1e-6, atol=1e-7)
    model.head.reset_accumulators()
    model.train_on_batch({"images": images, "labels": labels}, labels)
    enc = model.momentum_encoder.get_weights()
    for e, a, b in zip(enc, w0, w1):
        np.testing.assert_allclose(e, m * a + (1 - m) * b, rtol=1e-5, atol=1e-6)
    # The accumulated features are the encoder's (inference mode) features.
    feats = l2n(model.momentum_encoder.predict(images, verbose=0))
    ref = np.zeros((C, 6))
    np.add.at(ref, labels, feats)
    np.testing.assert_allclose(np.asarray(model.head.feature_sums.value), ref, atol=1e-4)
    assert model.momentum_encoder.trainable_weights == []


def test_fit_with_kappa_updater_logs_and_changes_margins():
    keras.utils.set_random_seed(1)
    C, n = 4, 32
    rng = np.random.default_rng(1)
    labels = rng.integers(0, C, n)
    counts = np.bincount(labels, minlength=C)
    head = kfm.layers.KappaMarginDense(C, class_counts=counts, num_samples=n, scale=8.0)
    model = kfm.FaceRecognizer(_tiny_backbone(), head)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = {"images": rng.standard_normal((n, 8, 8, 3)).astype("float32"), "labels": labels, "index": np.arange(n)}
    hist = model.fit(x, labels, batch_size=8, epochs=2, verbose=0, callbacks=[kfm.callbacks.KappaUpdater()])
    for key in ("kappa_min", "kappa_mean", "kappa_max", "margin_min", "margin_mean", "margin_max"):
        assert len(hist.history[key]) == 2 and np.all(np.isfinite(hist.history[key]))
    assert hist.history["margin_min"][-1] < hist.history["margin_max"][-1] <= 0.8
    assert not np.allclose(head.psi.numpy(), 1.0)


def test_kappa_updater_without_kappa_head_errors():
    model = kfm.FaceRecognizer(_tiny_backbone(), kfm.layers.ArcMarginDense(3))
    cb = kfm.callbacks.KappaUpdater()
    cb.set_model(model)
    with pytest.raises(ValueError, match="KappaMarginDense"):
        cb.on_epoch_end(0, {})


@pytest.mark.parametrize("estimator", ["memory_buffer", "momentum_encoder"])
def test_face_recognizer_keras_round_trip(estimator, tmp_path):
    C, n = 3, 6
    head = kfm.layers.KappaMarginDense(C, class_counts=[2, 2, 2], num_samples=n, estimator=estimator, scale=8.0)
    model = kfm.FaceRecognizer(_tiny_backbone(), head)
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(2)
    x = {"images": rng.standard_normal((n, 8, 8, 3)).astype("float32"), "labels": np.array([0, 0, 1, 1, 2, 2]), "index": np.arange(n)}
    model.fit(x, x["labels"], batch_size=3, epochs=1, verbose=0, callbacks=[kfm.callbacks.KappaUpdater()])
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.head.psi.numpy(), model.head.psi.numpy())
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    np.testing.assert_allclose(
        loaded.embedder.predict(x["images"], verbose=0), model.embedder.predict(x["images"], verbose=0), atol=1e-6
    )
    emb = model.embedder.predict(x["images"], verbose=0)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    if estimator == "memory_buffer":
        np.testing.assert_allclose(loaded.head.memory.numpy(), model.head.memory.numpy())
    else:
        for a, b in zip(loaded.momentum_encoder.get_weights(), model.momentum_encoder.get_weights()):
            np.testing.assert_allclose(a, b)
