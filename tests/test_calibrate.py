"""Threshold calibration on held-out CelebA identities, and the registry thresholds it produced.

References: a brute-force NumPy scan over every candidate threshold (balanced accuracy, FAR floor
rule by counting), and, on the real data, a re-run of the calibration that produced the registry.
"""

import numpy as np
import pytest

from keras_facemargin.data.align import ARCFACE_TEMPLATE_112, transform_points, estimate_transform
from keras_facemargin.inference.calibrate import crop_from_arcface112, heldout_identities, thresholds_from_scores
from keras_facemargin.pretrained.registry import MODELS, get_model_info
from testing import DATA_DIR



def _brute(genuine, impostor, fars):
    cands = np.unique(np.concatenate([genuine, impostor]))
    bal = np.array([(np.mean(genuine > t) + np.mean(impostor <= t)) / 2 for t in cands])
    far_t = {}
    for f in fars:  # the smallest candidate t with #{impostor > t} / n <= f
        ok = [t for t in np.concatenate([[-np.inf], np.sort(impostor)]) if np.sum(impostor > t) <= f * impostor.size]
        far_t[f] = min(ok)
    return bal.max(), far_t


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_thresholds_match_a_brute_force_scan(seed):
    rng = np.random.default_rng(seed)
    genuine = rng.normal(0.6, 0.15, 400)
    impostor = rng.normal(0.1, 0.15, 3000)
    fars = (1e-1, 1e-2, 1e-3)
    out = thresholds_from_scores(genuine, impostor, fars)
    best, far_t = _brute(genuine, impostor, fars)
    assert out["balanced_accuracy"] == pytest.approx(best)
    t = out["thresholds"]["accuracy"]
    assert (np.mean(genuine > t) + np.mean(impostor <= t)) / 2 == pytest.approx(best)
    for f in fars:
        assert out["thresholds"][repr(f)] == pytest.approx(far_t[f])
        assert out["far"][repr(f)] <= f and out["far"][repr(f)] == np.mean(impostor > out["thresholds"][repr(f)])


def test_thresholds_refuse_empty_scores():
    with pytest.raises(ValueError, match="non-empty"):
        thresholds_from_scores([], [0.1])


def test_recrop_puts_the_template_points_on_the_target_template():
    crop = get_model_info("dlib_resnet_v1")["crop"]
    img = np.zeros((112, 112, 3), np.uint8)
    for k, (x, y) in enumerate(ARCFACE_TEMPLATE_112):  # five bright dots at the landmark positions
        img[int(round(y)) - 1:int(round(y)) + 2, int(round(x)) - 1:int(round(x)) + 2] = 50 * (k + 1)
    chip = crop_from_arcface112(img, crop)
    assert chip.shape == (150, 150, 3)
    M = estimate_transform(ARCFACE_TEMPLATE_112, 150, template=np.asarray(crop["template"]), weights=crop["weights"])
    mapped = transform_points(ARCFACE_TEMPLATE_112, M)
    for k, (x, y) in enumerate(mapped):  # each dot lands where the transform says, with its own value
        patch = chip[int(round(y)) - 1:int(round(y)) + 2, int(round(x)) - 1:int(round(x)) + 2, 0]
        assert abs(int(patch.max()) - 50 * (k + 1)) <= 8
    # the eyes (weight 1) land on the dlib template's eyes within 2 px
    np.testing.assert_allclose(mapped[:2], np.asarray(crop["template"])[:2], atol=2.0)


def test_every_calibrated_entry_has_ordered_thresholds():
    calibrated = [n for n, e in MODELS.items() if e.get("thresholds")]
    assert {"dlib_resnet_v1", "arcface_celeba_mbf"} <= set(calibrated)
    for name in calibrated:
        t = MODELS[name]["thresholds"]
        assert set(t) == {"0.01", "0.001", "0.0001", "accuracy"}, name
        assert t["0.01"] < t["0.001"] < t["0.0001"], name
        assert "held-out CelebA" in MODELS[name]["calibration"]["set"], name


@pytest.mark.real_data
@pytest.mark.skipif(not (DATA_DIR / "celeba_identities" / "color_arcface112").is_dir(),
                    reason="celeba_identities not found (set KFM_DATA_DIR)")
def test_heldout_identities_exclude_lfw_overlap_and_are_stable():
    from keras_facemargin.data import read_identity_list

    held = heldout_identities(DATA_DIR)
    assert len(held) == 50 and held == sorted(held) and held == heldout_identities(DATA_DIR)
    assert not set(held) & set(read_identity_list(DATA_DIR / "celeba_identities" / "lfw_overlap_candidates.tsv"))


@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.skipif(not (DATA_DIR / "celeba_identities" / "color_arcface112").is_dir(),
                    reason="celeba_identities not found (set KFM_DATA_DIR)")
@pytest.mark.parametrize("name", ["dlib_resnet_v1", "mbf_dlib_distill", "arcface_celeba_mbf"])
def test_registry_thresholds_reproduce(tmp_path, monkeypatch, name):
    import keras_facemargin as kfm
    from keras_facemargin.inference.calibrate import calibrate_verifier

    monkeypatch.setenv("KFM_CACHE_DIR", str(tmp_path))
    info = get_model_info(name)
    cal = calibrate_verifier(kfm.FaceVerifier(name, threshold=0.5), DATA_DIR)
    assert cal["num_genuine"] == info["calibration"]["num_genuine"]
    assert cal["num_impostor"] == info["calibration"]["num_impostor"]
    for key, value in info["thresholds"].items():
        assert cal["thresholds"][key] == pytest.approx(value, abs=2e-4), key
    for key, value in info["calibration"]["tar"].items():
        assert cal["tar"][key] == pytest.approx(value, abs=1e-3), key
