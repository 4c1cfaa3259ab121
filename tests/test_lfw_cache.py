"""load_lfw_images(align="mtcnn") cache key: every detector setting that changes the result."""

import cv2
import numpy as np

from keras_facemargin.data.align import ARCFACE_TEMPLATE_112, DETECT_MAX_SIDE, MTCNNDetector
from keras_facemargin.data.mtcnn_stages import NMS_MAX_CANDIDATES
from keras_facemargin.data.lfw import load_lfw_images


class ScaledTemplateDetector:
    """Deterministic stand-in for MTCNN: one face whose landmarks depend on a setting."""

    def __init__(self, scale, min_confidence=0.0, batch_size=16):
        self.scale, self.min_confidence, self.batch_size = scale, min_confidence, batch_size

    def detect_batch(self, images):
        lm = ARCFACE_TEMPLATE_112 * self.scale
        return [[{"box": (0, 0, 10, 10), "confidence": 1.0, "landmarks": lm}] for _ in images]


def test_mtcnn_cache_key_includes_all_detector_settings(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        p = tmp_path / f"img{i}.png"
        cv2.imwrite(str(p), rng.integers(0, 256, (250, 250, 3), dtype=np.uint8))
        paths.append(str(p))
    kw = dict(align="mtcnn", cache_dir=tmp_path / "cache", progress=False, return_info=True)
    a, info_a = load_lfw_images(paths, 32, detector=ScaledTemplateDetector(1.0), **kw)
    again, info_again = load_lfw_images(paths, 32, detector=ScaledTemplateDetector(1.0), **kw)
    assert info_again["from_cache"] and np.array_equal(again, a)
    # Same min_confidence and batch_size, another threshold-like setting: not the cached result.
    b, info_b = load_lfw_images(paths, 32, detector=ScaledTemplateDetector(2.0), **kw)
    assert not info_b["from_cache"] and info_b["cache_file"] != info_a["cache_file"]
    assert not np.array_equal(a, b)


def test_mtcnn_detector_cache_settings_include_mtcnn_arguments():
    base = MTCNNDetector.settings_for()
    assert base["batch_size"] == 16 and base["min_confidence"] == 0.0 and base["mtcnn_kwargs"] == {}
    other = MTCNNDetector.settings_for(stages="face_detection_only")
    assert other != base and other["mtcnn_kwargs"] == {"stages": "face_detection_only"}
    det = MTCNNDetector.__new__(MTCNNDetector)  # settings only: no model needed
    det.batch_size, det.min_confidence, det.mtcnn_kwargs = 8, 0.5, {"device": "CPU:0"}
    det.max_side, det.max_candidates = DETECT_MAX_SIDE, NMS_MAX_CANDIDATES
    assert det.cache_settings() == MTCNNDetector.settings_for(8, 0.5, device="CPU:0")
    # The large-photo settings change the detections only when they differ from the defaults,
    # so the defaults keep the existing caches valid and other values get their own cache key.
    assert "max_side" not in base and "max_candidates" not in base
    det.max_side = 1000
    assert det.cache_settings()["max_side"] == 1000 and det.cache_settings() != base
    assert MTCNNDetector.settings_for(max_candidates=64)["max_candidates"] == 64
