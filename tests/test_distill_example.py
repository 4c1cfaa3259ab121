"""examples/distill_dlib.py: the distillation term against NumPy, and the training model of each mode."""

import numpy as np
import pytest

from testing import load_script


@pytest.fixture(scope="module")
def distill():
    module = load_script("examples/distill_dlib.py")
    module.CosineDistance = module._register()
    return module


def test_distillation_term_is_one_minus_cosine(distill):
    rng = np.random.default_rng(0)
    s = rng.normal(size=(6, 128)).astype("f4")
    t = rng.normal(size=(6, 128)).astype("f4")
    t[0] = 3 * s[0]  # same direction: no loss
    ref = 1 - np.sum(s * t, 1) / np.linalg.norm(s, axis=1) / np.linalg.norm(t, axis=1)
    got = np.asarray(distill.CosineDistance()([s, t]))
    np.testing.assert_allclose(got, ref, atol=1e-6)
    assert abs(got[0]) < 1e-6


@pytest.mark.parametrize("mode, outputs", [("distill", {"distill"}), ("arcface", {"logits"}),
                                           ("distill_arcface", {"distill", "logits"}),
                                           ("distill_kappaface", {"distill", "logits"})])
def test_training_model_per_mode(distill, mode, outputs):
    args = distill.parse_args(["--mode", mode])
    backbone = distill.build_student(args)
    assert backbone.count_params() <= 2_000_000 and backbone.output_shape == (None, 128)
    counts = np.full(5, 4)
    model = distill.build_training_model(args, backbone, 5, counts, 20)
    assert set(model.output) == outputs
    batch = {"images": np.zeros((4, 112, 112, 3), "f4"), "labels": np.arange(4, dtype="i4"),
             "index": np.arange(4, dtype="i4"), "teacher": np.ones((4, 128), "f4")}
    out = model(batch, training=False)
    if "distill" in outputs:
        assert tuple(out["distill"].shape) == (4,)
    if "logits" in outputs:
        assert tuple(out["logits"].shape) == (4, 5)


def test_centred_teacher_is_the_renormalised_residual(distill):
    rng = np.random.default_rng(1)
    common = rng.normal(size=128)
    t = common + 0.3 * rng.normal(size=(50, 128))
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    got = distill.center_teacher(t.astype("f4"))
    ref = t - t.mean(0)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    raw_cos = (t @ t.T)[np.triu_indices(50, 1)].mean()
    centred_cos = (got @ got.T)[np.triu_indices(50, 1)].mean()
    assert raw_cos > 0.8 and abs(centred_cos) < 0.05  # the shared direction is gone
