"""Crop geometry per model: weighted similarity fits and the registry's crop entries."""

import numpy as np
import pytest

from keras_facemargin.data.align import estimate_transform, transform_points
from keras_facemargin.inference.verifier import ConfigurationError, _check_crop
from keras_facemargin.pretrained.registry import get_model_info


def test_weights_on_the_eyes_only_map_the_eyes_exactly():
    # Two points fix a similarity: with all weight on the eyes they land exactly on the template's eyes.
    rng = np.random.default_rng(0)
    template = np.asarray(get_model_info("dlib_resnet_v1")["crop"]["template"])
    src = template * 1.7 + [30.0, 12.0] + rng.normal(0, 4.0, (5, 2))
    M = estimate_transform(src, 150, template=template, weights=[1, 1, 0, 0, 0])
    np.testing.assert_allclose(transform_points(src[:2], M), template[:2], atol=1e-9)
    # equal weights do not (the noise moves them)
    M5 = estimate_transform(src, 150, template=template)
    assert np.abs(transform_points(src[:2], M5) - template[:2]).max() > 0.1


def test_weighted_fit_matches_a_duplicated_point_fit():
    # weight 2 on a point == that point listed twice in an unweighted least-squares fit
    from keras_facemargin.data.align import _lstsq_similarity

    rng = np.random.default_rng(1)
    src, dst = rng.normal(size=(5, 2)) * 30, rng.normal(size=(5, 2)) * 30
    weighted = _lstsq_similarity(src, dst, [2, 1, 1, 1, 1])
    duplicated = _lstsq_similarity(np.vstack([src, src[:1]]), np.vstack([dst, dst[:1]]))
    np.testing.assert_allclose(weighted, duplicated, atol=1e-9)


@pytest.mark.parametrize("crop, match", [
    ({"kind": "x", "size": 150}, "template"),
    ({"kind": "x", "size": 8, "template": [[1, 1]] * 5}, "size"),
    ({"kind": "x", "size": 150, "template": [[1, 1]] * 4}, "template"),
    ({"kind": "x", "size": 150, "template": [[1, 1]] * 4 + [[200, 1]]}, "inside"),
    ({"kind": "x", "size": 150, "template": [[1, 1]] * 5, "weights": [1, 0, 0, 0, 0]}, "at least 2"),
    ({"kind": "x", "size": 150, "template": [[1, 1]] * 5, "weights": [1, 1, -1, 0, 0]}, "non-negative"),
])
def test_bad_crop_geometry_is_a_configuration_error(crop, match):
    with pytest.raises(ConfigurationError, match=match):
        _check_crop(crop)


def test_bad_fit_weights_are_refused():
    lm = np.array([[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]])
    with pytest.raises(ValueError, match="weights"):
        estimate_transform(lm, 112, weights=[1, 1, 1])
    with pytest.raises(ValueError, match="weights"):
        estimate_transform(lm, 112, method="lmeds", weights=[1, 1, 1, 1, 1])
