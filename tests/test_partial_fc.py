"""Partial FC (`PartialFC`, `PartialFCLoss`): sampled class centres for every registry head.

References: the unwrapped head (sample_rate=1, and the sampled path when the sample is every
class), a NumPy margin-softmax on the sampled columns, the full head with the unsampled columns
masked out (gradients), NumPy KappaFace targets with psi of the true class, binomial inclusion
frequencies, and 2-replica / 2-worker runs in fresh processes (tests/partial_fc_script.py).
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_facemargin import FaceRecognizer
from keras_facemargin.layers import (
    ArcMarginDense,
    CosineDense,
    KappaMarginDense,
    LDAMDense,
    PartialFC,
    PartialFCLoss,
    SampleBudgetError,
    registry,
)
from keras_facemargin.layers.partial_fc import sample_budget, sample_classes
from testing import repo_env, result_of, run_workers

HERE = Path(__file__).parent
SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
RNG = np.random.default_rng(0)


def make_head(name, num_classes, num_samples=8, seed=0):
    keras.utils.set_random_seed(seed)
    counts = np.arange(num_classes) % 7 + 1
    extra = {"seed": 3} if name == "subface" else {}
    return registry.build_head(name, num_classes, class_counts=counts, num_samples=num_samples,
                               run_options={"scale": 16.0}, **extra)


def inputs_for(name, x, y):
    return [x, y, np.arange(len(y), dtype="int32")] if "kappa" in name else [x, y]


def dense(grad):
    return np.asarray(tf.convert_to_tensor(grad))


def step(layer, inputs, y, loss_fn, variables):
    """Logits, total loss (+ the layer's add_loss terms) and gradients of one training call."""
    with tf.GradientTape() as tape:
        logits = layer(inputs, training=True)
        loss = loss_fn(y, logits) + sum(layer.losses)
    return logits.numpy(), float(loss), tape.gradient(loss, variables)


# -- sample_rate = 1: the head itself ----------------------------------------------------------------
@pytest.mark.parametrize("name", ["arcface", "kappaface", "curricularface", "centerloss"])
def test_rate_one_is_the_full_head_exactly(name):
    C, x, y = 12, RNG.standard_normal((6, 8)).astype("float32"), np.array([0, 3, 3, 7, 11, 5], "int32")
    pfc, full = PartialFC(make_head(name, C), sample_rate=1.0), make_head(name, C)
    for layer in (pfc, full):
        layer(inputs_for(name, x, y), training=False)
    for a, b in zip(pfc.weights, full.weights):
        a.assign(b.value)
    got = step(pfc, inputs_for(name, x, y), y, PartialFCLoss(pfc), pfc.trainable_variables)
    ref = step(full, inputs_for(name, x, y), y, SCE, full.trainable_variables)
    np.testing.assert_array_equal(got[0], ref[0])
    assert got[1] == ref[1]
    for g, r in zip(got[2], ref[2]):
        np.testing.assert_array_equal(dense(g), dense(r))
    for a, b in zip(pfc.weights, full.weights):  # state updates too
        np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value))
    assert registry.build_head("arcface", C, sample_rate=1.0).__class__ is ArcMarginDense


# -- sample_rate < 1 against NumPy -----------------------------------------------------------------
def numpy_arcface(cos_t, m):
    theta = np.arccos(np.clip(cos_t, -1 + 1e-7, 1 - 1e-7))
    return np.where(theta + m <= np.pi, np.cos(theta + m), cos_t - m * np.sin(m))


@pytest.mark.parametrize("graph", [False, True])
def test_sampled_loss_equals_numpy_and_only_sampled_rows_get_gradients(graph):
    C, d, s, m = 200, 8, 16.0, 0.5
    x = np.random.default_rng(20).standard_normal((8, d)).astype("float32")  # own generator: order-independent
    y = np.array([3, 199, 57, 3, 120, 88, 199, 5], "int32")
    keras.utils.set_random_seed(1)
    pfc = PartialFC(ArcMarginDense(C, scale=s, margin=m), sample_rate=0.1, seed=7)
    pfc(x)
    kernel, loss_fn = pfc.core.kernel, PartialFCLoss(pfc)
    assert pfc.num_sample == 20 and tuple(kernel.shape) == (C, d)

    def run(x, y):
        with tf.GradientTape() as tape:
            logits = pfc([x, y], training=True)
            loss = loss_fn(y, logits)
        return logits, loss, tape.gradient(loss, kernel.value)

    logits, loss, grad = (tf.function(run) if graph else run)(x, y)
    classes = pfc.sampled_classes.numpy()
    assert len(classes) == 20 and np.all(np.diff(classes) > 0) and set(y) <= set(classes)

    # NumPy margin softmax on the sampled columns, labels remapped into the set.
    W = kernel.numpy()
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    wn = W[classes] / np.linalg.norm(W[classes], axis=1, keepdims=True)
    cos = np.clip(xn @ wn.T, -1, 1).astype("float64")
    cols = np.searchsorted(classes, y)
    ref = s * cos
    ref[np.arange(8), cols] = s * numpy_arcface(cos[np.arange(8), cols], m)
    ref_loss = np.mean(np.log(np.exp(ref).sum(axis=1)) - ref[np.arange(8), cols])
    np.testing.assert_allclose(logits.numpy(), ref, atol=2e-5)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)

    # Gradient: IndexedSlices of the sampled rows; every other row exactly zero.
    assert isinstance(grad, tf.IndexedSlices)
    np.testing.assert_array_equal(np.sort(grad.indices.numpy()), classes)
    g = dense(grad)
    outside = np.setdiff1d(np.arange(C), classes)
    assert np.all(g[outside] == 0.0) and np.all(np.abs(g[y]).sum(axis=1) > 0)
    # ... and it is the full head's gradient with the unsampled columns masked out.
    full = ArcMarginDense(C, scale=s, margin=m)
    full(x)
    full.kernel.assign(W.T)
    with tf.GradientTape() as tape:
        masked = tf.where(np.isin(np.arange(C), classes)[None], full([x, y], training=True), -np.inf)
        full_loss = SCE(y, masked)
    np.testing.assert_allclose(float(full_loss), float(loss), rtol=1e-6)
    # float32 sums of 20 sampled vs. 200 masked columns differ in rounding only (~1e-6 at s=16).
    np.testing.assert_allclose(g, dense(tape.gradient(full_loss, full.kernel.value)).T, atol=5e-6)


@pytest.mark.parametrize("name", registry.head_names())
def test_sampling_every_class_equals_the_full_head(name):
    """rate 0.95 of 10 classes samples all 10: the sampled path (gather, remap, margin, state) is the head."""
    C, x, y = 10, RNG.standard_normal((6, 8)).astype("float32"), np.array([9, 2, 2, 5, 0, 7], "int32")
    pfc, full = PartialFC(make_head(name, C), sample_rate=0.95), make_head(name, C)
    assert pfc.num_sample == C and pfc.sampled
    for layer in (pfc, full):
        layer(inputs_for(name, x, y), training=False)
    for a, b in zip(pfc.core.weights, full.weights if pfc.core is pfc.head else full.head.weights):
        a.assign(np.asarray(b.value).T if a is pfc.core.kernel else b.value)
    got = step(pfc, inputs_for(name, x, y), y, PartialFCLoss(pfc), pfc.trainable_variables)
    ref = step(full, inputs_for(name, x, y), y, SCE, full.trainable_variables)
    np.testing.assert_array_equal(pfc.sampled_classes.numpy(), np.arange(C))
    np.testing.assert_allclose(got[0], ref[0], atol=5e-5)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-5)
    for g, r, v in zip(got[2], ref[2], pfc.trainable_variables):
        g, r = dense(g), dense(r)
        np.testing.assert_allclose(g, r.T if v is pfc.core.kernel else r, atol=5e-5)
    core_full = full.head if pfc.core is not pfc.head else full
    for a, b in zip(pfc.core.non_trainable_weights, core_full.non_trainable_weights):  # state, by true id
        np.testing.assert_allclose(np.asarray(a.value), np.asarray(b.value), atol=1e-5, err_msg=a.path)


@pytest.mark.parametrize("name", registry.head_names())
def test_every_head_trains_a_sampled_step(name):
    C, x = 40, RNG.standard_normal((6, 8)).astype("float32")
    y = np.array([39, 2, 2, 17, 30, 8], "int32")
    pfc = PartialFC(make_head(name, C), sample_rate=0.25)
    pfc(inputs_for(name, x, y), training=False)
    before = {v.path: np.asarray(v.value).copy() for v in pfc.weights}
    optimizer = keras.optimizers.SGD(0.5, momentum=0.9)
    _, loss, grads = step(pfc, inputs_for(name, x, y), y, PartialFCLoss(pfc), pfc.trainable_variables)
    optimizer.apply_gradients(zip(grads, pfc.trainable_variables))
    classes = pfc.sampled_classes.numpy()
    assert math.isfinite(loss) and len(classes) == 10 and set(y) <= set(classes)
    assert int(pfc.sample_step.numpy()) == 1
    kernel = np.asarray(pfc.core.kernel.value)
    old = before[pfc.core.kernel.path]
    outside = np.setdiff1d(np.arange(C), classes)
    np.testing.assert_array_equal(kernel[outside], old[outside])  # first momentum step: no gradient, no move
    assert np.all(np.any(kernel[np.unique(y)] != old[np.unique(y)], axis=1))
    if name == "centerloss":  # centres move for the true classes only
        moved = np.flatnonzero(np.any(pfc.core.centers.numpy() != before[pfc.core.centers.path], axis=1))
        np.testing.assert_array_equal(moved, np.unique(y))


# -- class-indexed state by the TRUE class id ------------------------------------------------------
@pytest.mark.parametrize("target", ["arc", "cos", "exp"])
def test_kappaface_margin_is_psi_of_the_true_class(target):
    C, d, s, m0 = 100, 8, 16.0, 0.5
    x = RNG.standard_normal((4, d)).astype("float32")
    y = np.array([97, 98, 63, 97], "int32")
    counts = np.arange(C) + 1
    keras.utils.set_random_seed(2)
    head = KappaMarginDense(C, class_counts=counts, num_samples=4, scale=s, margin=m0, target=target)
    pfc = PartialFC(head, sample_rate=0.1)
    pfc([x, y, np.arange(4, dtype="int32")], training=False)
    psi = np.linspace(0.2, 1.0, C).astype("float32")
    head.psi.assign(psi)
    logits = pfc([x, y, np.arange(4, dtype="int32")], training=True).numpy()
    classes = pfc.sampled_classes.numpy()
    cols = np.searchsorted(classes, y)
    assert np.all(cols != y)
    W = head.kernel.numpy()
    cos_t = np.sum((x / np.linalg.norm(x, axis=1, keepdims=True)) * (W[y] / np.linalg.norm(W[y], axis=1, keepdims=True)), 1)

    def expected(margin):
        if target == "arc":
            return s * numpy_arcface(cos_t, margin)
        if target == "cos":
            return s * (cos_t - margin)
        theta = np.arccos(np.clip(cos_t, -1 + 1e-7, 1 - 1e-7))
        return s * np.cos(np.pi * (theta / np.pi) ** (1 - margin))

    got = logits[np.arange(4), cols]
    np.testing.assert_allclose(got, expected(psi[y] * m0), atol=1e-4)
    # A remapped-index implementation (psi[cols], the official code's partial-FC path) is far off.
    assert np.all(np.abs(got - expected(psi[cols] * m0)) > 0.05)
    # The accumulators and the memory buffer see every sample under its true class.
    np.testing.assert_array_equal(head.feature_counts.numpy(), np.bincount(y, minlength=C))
    feats = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(head.memory.numpy(), feats, atol=1e-6)
    ref_sums = np.zeros((C, d), "float32")
    np.add.at(ref_sums, y, feats)
    np.testing.assert_allclose(head.feature_sums.numpy(), ref_sums, atol=1e-6)


def test_ldam_margin_of_the_true_class():
    C, s = 60, 16.0
    x, y = RNG.standard_normal((3, 8)).astype("float32"), np.array([59, 58, 40], "int32")
    counts = np.arange(C) + 1
    keras.utils.set_random_seed(3)
    head = LDAMDense(C, class_counts=counts, scale=s)
    pfc = PartialFC(head, sample_rate=0.1)
    logits = pfc([x, y], training=True).numpy()
    cols = np.searchsorted(pfc.sampled_classes.numpy(), y)
    W = head.kernel.numpy()
    cos_t = np.sum((x / np.linalg.norm(x, axis=1, keepdims=True)) * (W[y] / np.linalg.norm(W[y], axis=1, keepdims=True)), 1)
    delta = counts ** -0.25 * (0.5 / (counts ** -0.25).max())
    np.testing.assert_allclose(logits[np.arange(3), cols], s * (cos_t - delta[y]), atol=1e-4)


# -- the sampler: uniform, stateless, seeded by the step -------------------------------------------
def test_sampler_is_uniform_keeps_positives_and_depends_only_on_labels_step_seed():
    C, K, T = 500, 60, 400
    positives = np.array([0, 7, 7, 499, 250], "int32")
    draw = tf.function(lambda t: sample_classes(positives, t, C, K, seed=11))
    sets = np.stack([draw(tf.constant(t))[0].numpy() for t in range(T)])
    assert sets.shape == (T, K) and np.all(np.diff(sets, axis=1) > 0)
    assert np.all(np.isin(np.unique(positives), sets))
    counts = np.bincount(sets.ravel(), minlength=C)
    negatives = np.setdiff1d(np.arange(C), positives)
    p = (K - 4) / (C - 4)
    sigma = math.sqrt(T * p * (1 - p))
    assert abs(counts[negatives].mean() - T * p) < 1e-9 * T  # exactly K - |P| negatives per step
    assert np.abs(counts[negatives] - T * p).max() < 5 * sigma
    # Consecutive steps overlap as two independent draws would.
    overlap = np.mean([len(np.intersect1d(a, b)) - 4 for a, b in zip(sets[:-1], sets[1:])])
    assert abs(overlap - (K - 4) * p) < 1.5
    # No RNG state: the global seed, eager vs graph, and repeated calls do not matter.
    keras.utils.set_random_seed(123)
    np.testing.assert_array_equal(sample_classes(positives, 17, C, K, seed=11)[0].numpy(), sets[17])
    assert not np.array_equal(sample_classes(positives, 17, C, K, seed=12)[0].numpy(), sets[17])
    assert int(sample_classes(positives, 0, C, K, seed=11)[1]) == 4
    assert sample_budget(0.1, 1000) == 100 and sample_budget(0.1, 360232) == 36024
    assert sample_budget(0.01, 2_000_000) == 20000 and sample_budget(1e-9, 10) == 1


def test_resume_mid_epoch_draws_the_same_sets(tmp_path):
    C, n, batch = 30, 48, 8
    images = RNG.standard_normal((n, 4, 4, 3)).astype("float32")
    labels = RNG.integers(0, C, n).astype("int32")
    ds = tf.data.Dataset.from_tensor_slices(({"images": images, "labels": labels}, labels)).batch(batch)

    class Record(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.sets = []

        def on_train_batch_end(self, batch, logs=None):
            self.sets.append(self.model.head.sampled_classes.numpy().copy())

    def model(seed):
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((4, 4, 3))
        backbone = keras.Model(inputs, keras.layers.Dense(6)(keras.layers.Flatten()(inputs)))
        head = PartialFC(ArcMarginDense(C, scale=16.0), sample_rate=0.4, seed=0)
        m = FaceRecognizer(backbone, head)
        m.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=PartialFCLoss(head))
        m({"images": images[:1], "labels": labels[:1]}, training=False)
        m.optimizer.build(m.trainable_variables)
        return m

    straight, record = model(0), Record()
    straight.fit(ds, epochs=1, verbose=0, callbacks=[record], shuffle=False)
    first = model(0)
    first.fit(ds.take(3), epochs=1, verbose=0, shuffle=False)
    path = tf.train.Checkpoint(model=first, optimizer=first.optimizer).save(str(tmp_path / "ckpt"))
    resumed, record2 = model(99), Record()  # another global seed: no RNG state is involved
    tf.train.Checkpoint(model=resumed, optimizer=resumed.optimizer).restore(path).assert_consumed()
    assert int(resumed.head.sample_step.numpy()) == 3
    resumed.fit(ds.skip(3), epochs=1, verbose=0, callbacks=[record2], shuffle=False)
    assert len(record.sets) == 6 and len(record2.sets) == 3
    for a, b in zip(record.sets[3:], record2.sets):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(record.sets[0], s) for s in record.sets[1:])
    for a, b in zip(straight.weights, resumed.weights):
        np.testing.assert_allclose(np.asarray(a.value), np.asarray(b.value), atol=1e-6)


def _tiny_recognizer(C, images, labels, rate=0.4, lr=0.1, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(images.shape[1:])
    backbone = keras.Model(inputs, keras.layers.Dense(6)(keras.layers.Flatten()(inputs)))
    head = PartialFC(ArcMarginDense(C, scale=16.0), sample_rate=rate, seed=0)
    model = FaceRecognizer(backbone, head)
    model.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9), loss=PartialFCLoss(head))
    model({"images": images[:1], "labels": labels[:1]}, training=False)
    return model


def test_fit_loss_remaps_with_this_steps_set():
    """Under `fit` the loss reads the set the layer drew in the same step (not the previous one)."""
    C, n = 30, 16
    images = RNG.standard_normal((n, 4, 4, 3)).astype("float32")
    labels = RNG.integers(0, C, n).astype("int32")
    model = _tiny_recognizer(C, images, labels, lr=0.0)  # weights stay fixed: a NumPy reference is exact
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append((model.head.sampled_classes.numpy().copy(), float(logs["loss"])))

    ds = tf.data.Dataset.from_tensor_slices(({"images": images, "labels": labels}, labels)).batch(8)
    model.fit(ds, epochs=1, verbose=0, callbacks=[Record()], shuffle=False)
    emb = model.backbone.predict(images, verbose=0)
    xn = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    W = model.head.core.kernel.numpy()
    losses = []
    for t, (classes, _) in enumerate(seen):
        y, x = labels[8 * t: 8 * t + 8], xn[8 * t: 8 * t + 8]
        wn = W[classes] / np.linalg.norm(W[classes], axis=1, keepdims=True)
        cos = np.clip(x @ wn.T, -1, 1).astype("float64")
        cols = np.searchsorted(classes, y)
        ref = 16.0 * cos
        ref[np.arange(8), cols] = 16.0 * numpy_arcface(cos[np.arange(8), cols], 0.5)
        losses.append(np.mean(np.log(np.exp(ref).sum(axis=1)) - ref[np.arange(8), cols]))
    assert not np.array_equal(seen[0][0], seen[1][0])
    np.testing.assert_allclose([seen[0][1], seen[1][1]], [losses[0], np.mean(losses)], rtol=1e-5)  # running mean


def test_saved_model_keeps_the_counter_and_infers_on_all_classes(tmp_path):
    C, n = 30, 8
    images = RNG.standard_normal((n, 4, 4, 3)).astype("float32")
    labels = RNG.integers(0, C, n).astype("int32")
    model = _tiny_recognizer(C, images, labels)
    model.fit({"images": images, "labels": labels}, labels, batch_size=4, epochs=1, verbose=0, shuffle=False)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.head, PartialFC) and int(loaded.head.sample_step.numpy()) == 2
    np.testing.assert_array_equal(loaded.embedder.predict(images, verbose=0), model.embedder.predict(images, verbose=0))
    logits = loaded({"images": images}, training=False).numpy()  # inference: s*cos over all C classes
    emb = model.backbone.predict(images, verbose=0)
    W = model.head.core.kernel.numpy()
    ref = 16.0 * (emb / np.linalg.norm(emb, axis=1, keepdims=True)) @ (W / np.linalg.norm(W, axis=1, keepdims=True)).T
    assert logits.shape == (n, C)
    np.testing.assert_allclose(logits, ref, atol=1e-4)


def test_trainer_runs_with_a_sample_rate(tmp_path):
    from keras_facemargin.training import get_experiment, run

    config = get_experiment(
        "synthetic", name="pfc", output=str(tmp_path), synthetic_identities=16, synthetic_heldout=0, image_size=32,
        embedding_dim=16, backbone_kwargs={"stage_blocks": [1, 1, 1, 1], "stage_filters": [4, 8, 8, 8]}, scale=16.0,
        batch_size=8, lr_reference_batch=8, epochs=1, lr_steps=(1,), steps_per_epoch=2, save_every_steps=0,
        sample_rate=0.5, plots=False, verbose=0)
    results = run(config)
    assert len(results["history"]["loss"]) == 1 and math.isfinite(results["history"]["loss"][0])
    ckpt = tf.train.latest_checkpoint(str(tmp_path / "pfc" / "checkpoints"))
    names = [name for name, _ in tf.train.list_variables(ckpt)]
    assert any("sample_step" in name for name in names) and any("feature_sums" in name for name in names)


# -- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [0, 0.0, -0.1, 1.5, float("nan"), float("inf"), True, "0.1", None])
def test_sample_rate_outside_0_1_is_refused(rate):
    with pytest.raises(ValueError, match="sample_rate"):
        PartialFC(ArcMarginDense(10), sample_rate=rate)


def test_bad_heads_are_refused():
    built = ArcMarginDense(10)
    built(np.zeros((1, 4), "float32"))
    with pytest.raises(ValueError, match="unbuilt head"):
        PartialFC(built, sample_rate=0.5)
    PartialFC(built, sample_rate=1.0)  # the head as is
    with pytest.raises(ValueError, match="head"):
        PartialFC(keras.layers.Dense(10), sample_rate=0.5)
    with pytest.raises(ValueError, match="seed"):
        PartialFC(ArcMarginDense(10), sample_rate=0.5, seed=1.5)

    class Custom(CosineDense):
        def logits_from_cosine(self, cos, labels, embeddings=None, training=None):
            return cos

    with pytest.raises(NotImplementedError, match="partial_fc_logits"):
        PartialFC(Custom(10), sample_rate=0.5)
    with pytest.raises(ValueError, match="PartialFC layer"):
        PartialFCLoss()(np.zeros(2, "int32"), np.zeros((2, 3), "float32"))


def test_more_distinct_classes_than_the_budget_is_refused():
    C, x = 20, RNG.standard_normal((3, 4)).astype("float32")
    pfc = PartialFC(ArcMarginDense(C), sample_rate=0.1)  # K = 2
    pfc([x, np.array([1, 5, 1], "int32")], training=True)  # two distinct classes: fits
    with pytest.raises(SampleBudgetError, match=r"num_sample=ceil\(sample_rate \* C\)=2.*3 distinct"):
        pfc([x, np.array([1, 5, 9], "int32")], training=True)
    graph = tf.function(lambda x, y: pfc([x, y], training=True))
    with pytest.raises(tf.errors.InvalidArgumentError, match="more distinct classes than PartialFC samples"):
        graph(x, np.array([1, 5, 9], "int32"))
    assert np.all(np.isfinite(graph(x, np.array([1, 5, 5], "int32")).numpy()))


def test_config_and_glint360k_experiment():
    from keras_facemargin.training import get_experiment
    from keras_facemargin.training.heads import build_head

    cfg = get_experiment("glint360k")
    assert (cfg.loss, cfg.margin, cfg.sample_rate, cfg.batch_size, cfg.epochs) == ("cosface", 0.4, 0.1, 1024, 20)
    assert cfg.lr_steps == (8, 12, 15, 18) and cfg.effective_lr == pytest.approx(0.2)
    for bad in (0, 1.01, True):
        with pytest.raises(ValueError, match="sample_rate"):
            get_experiment("synthetic", sample_rate=bad)
    head = build_head("kappaface", 50, class_counts=np.ones(50), num_samples=50, sample_rate=0.1)
    assert isinstance(head, PartialFC) and isinstance(head.head, KappaMarginDense) and head.num_sample == 5
    from examples.train_ms1mv2 import config_from_args, parse_args

    assert config_from_args(parse_args(["--sample-rate", "0.1"])).sample_rate == 0.1


@pytest.mark.parametrize("name", ["kappaface", "subface"])
def test_partial_fc_round_trips_through_keras_config(name):
    pfc = PartialFC(make_head(name, 10, num_samples=4), sample_rate=0.3, seed=4)
    x, y = RNG.standard_normal((4, 8)).astype("float32"), np.array([1, 2, 2, 1], "int32")
    pfc(inputs_for(name, x, y), training=True)  # built: the config carries build configs
    clone = keras.saving.deserialize_keras_object(json.loads(json.dumps(keras.saving.serialize_keras_object(pfc))))
    assert (clone.sample_rate, clone.seed, clone.num_sample) == (0.3, 4, 3) and type(clone.head) is type(pfc.head)
    assert clone.core.class_major_kernel and tuple(clone.core.kernel.shape) == (10, 8)  # built by the wrapper
    clone.set_weights(pfc.get_weights())
    np.testing.assert_array_equal(clone(x).numpy(), pfc(x).numpy())


# -- 2 replicas, 2 workers (fresh processes) -------------------------------------------------------
def _check_sets(out):
    C, K = 40, 10
    for name, per_step in out["a"]["sets"].items():
        for t, (global_labels, sets) in enumerate(zip(out["a"]["global_labels"], per_step)):
            assert len(global_labels) == 8
            for s in sets:  # every replica of this process drew the same set
                assert s == sets[0], name
            ref = sample_classes(np.asarray(global_labels, "int32"), t, C, K, seed=0)[0].numpy()
            np.testing.assert_array_equal(sets[0], ref, err_msg=name)  # what one device draws for the global batch
            assert set(global_labels) <= set(sets[0])
    assert set(out["a"]["sample_steps"].values()) == {2}
    assert out["a"]["grad_types"] == {"replica": "IndexedSlices", "all_reduced": "IndexedSlices"}
    assert len(out["b"]["loss"]) == 2 and all(map(math.isfinite, out["b"]["loss"]))
    assert out["b"]["sample_step"] == 4 and np.ptp(out["b"]["psi"]) > 0


@pytest.mark.distributed
@pytest.mark.slow
def test_two_replicas_draw_the_same_set_and_every_head_trains(tmp_path):
    proc = subprocess.run([sys.executable, str(HERE / "partial_fc_script.py"), "mirrored", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=repo_env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = result_of(proc.stdout, proc.stderr)
    assert out["replicas"] == 2
    _check_sets(out)
    for sets in out["a"]["final_sets"].values():  # the on_read variable's two copies
        assert len(sets) == 2 and sets[0] == sets[1]


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.xdist_group('tf_config_workers')
def test_two_workers_draw_the_same_set_and_end_identical(tmp_path):
    outputs = run_workers(HERE / "partial_fc_script.py", lambda i: ["multiworker", str(tmp_path)])
    assert [o["replicas"] for o in outputs] == [2, 2]
    for out in outputs:
        _check_sets(out)
    assert outputs[0]["a"]["sets"] == outputs[1]["a"]["sets"]
    a, b = (np.load(tmp_path / f"state_{i}.npz") for i in range(2))
    assert a.files == b.files
    different = [k for k in a.files if not np.array_equal(a[k], b[k])]
    assert not different, different  # class centres, momentum-trained backbone, KappaFace state, counters
