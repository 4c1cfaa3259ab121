"""benchmarks/zoo_lfw.py: its face-choice reference and fallback (the LFW runs themselves are benchmarks)."""

import numpy as np
import pytest

from testing import load_script


@pytest.fixture(scope="module")
def zoo():
    module = load_script("benchmarks/zoo_lfw.py")
    return module


def test_subject_is_the_detection_nearest_the_centre(zoo):
    dets = [{"box": (0, 0, 120, 120)}, {"box": (100, 100, 50, 50)}, {"box": (180, 10, 60, 60)}]
    assert zoo.subject_index(dets, (250, 250, 3)) == 1  # centre (125, 125) is exactly at the image centre


def test_centre_fallback_is_a_centred_face_with_template_landmarks(zoo):
    from keras_facemargin.data.align import ARCFACE_TEMPLATE_112, estimate_transform, transform_points

    d = zoo.centre_fallback((250, 250, 3))
    x, y, w, h = d["box"]
    assert abs(x + w / 2 - 125) < 1e-9 and abs(y + h / 2 - 125) < 1e-9
    M = estimate_transform(d["landmarks"], 112)  # the box maps onto the ArcFace crop
    np.testing.assert_allclose(transform_points(d["landmarks"], M), ARCFACE_TEMPLATE_112, atol=1e-6)
