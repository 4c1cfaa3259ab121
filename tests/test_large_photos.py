"""Large photos and crowds: detection on a downscaled copy, capped and blocked NMS (issue 23, part 2)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from keras_facemargin.data.mtcnn_stages import blocked_nms
from testing import REPO

mtcnn = pytest.importorskip("mtcnn")


def test_blocked_nms_equals_mtcnn_nms_on_random_boxes():
    """Independent reference: mtcnn's own N x N iou/nms, on boxes with many overlaps."""
    from mtcnn.utils.bboxes import iou, nms

    rng = np.random.default_rng(0)
    for n, method, thr in ((1, "union", 0.5), (700, "union", 0.5), (613, "union", 0.7), (900, "min", 0.7)):
        xy = rng.uniform(0, 300, (n, 2))
        wh = rng.uniform(5, 60, (n, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        expect = nms(iou(boxes, method=method), thr)
        np.testing.assert_array_equal(blocked_nms(boxes, thr, method, block=64), expect)


def _run(code, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=f"{REPO}:{REPO / 'tests'}")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)
    lines = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
    assert lines, p.stderr[-2000:]
    return json.loads(lines[-1][7:])


WORKER = r"""
import json, resource, sys
sys.path.insert(0, "benchmarks")
import large_photos as lp
from keras_facemargin.data.align import MTCNNDetector
from keras_facemargin.utils.images import read_photo
from keras_facemargin.utils.memory import peak_rss_mb
src, big, kw = {src!r}, {big!r}, {kw!r}
det = MTCNNDetector(**kw)
small, _ = read_photo(src)
ref = det.detect(small)
before = peak_rss_mb()
rgb, _ = read_photo(big)
try:
    found = det.detect(rgb)
    out = {{"boxes": [d["box"] for d in found], "ref": [d["box"] for d in ref], "lm": [d["landmarks"].tolist() for d in found],
            "ref_lm": [d["landmarks"].tolist() for d in ref]}}
except BaseException as e:
    out = {{"error": type(e).__name__}}
out["before_mb"] = before
out["peak_mb"] = peak_rss_mb()
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def big_photo(tmp_path_factory, data_dir):
    src = data_dir / "lfw" / "images" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg"
    if not src.is_file():
        pytest.skip(f"{src} not found")
    sys.path.insert(0, str(REPO / "benchmarks"))
    import large_photos as lp
    from keras_facemargin.utils.images import read_photo

    rgb, _ = read_photo(src)
    path = lp.write_jpeg(tmp_path_factory.mktemp("big") / "48mpx.jpg", lp.build_photo(rgb, (6000, 8000), 8, (3100, 2200)))
    return src, path


def test_48mpx_photo_detects_the_face_in_bounded_memory(big_photo):
    """The face of an 8000x6000 photo is found where the small original's face is (scaled), and the
    detection adds < 700 MB to the process peak (full-resolution detection: several GB)."""
    src, big = big_photo
    res = _run(WORKER.format(src=str(src), big=str(big), kw={}))
    assert "error" not in res, res
    assert len(res["boxes"]) == 1 and len(res["ref"]) == 1
    x, y, w, h = res["ref"][0]
    expect = np.array([x * 8 + 3100, y * 8 + 2200, w * 8, h * 8])
    got = np.array(res["boxes"][0])
    assert np.all(np.abs(got - expect) < 0.08 * w * 8), (got, expect)
    lm_expect = np.array(res["ref_lm"][0]) * 8 + [3100, 2200]
    assert np.max(np.abs(np.array(res["lm"][0]) - lm_expect)) < 0.05 * w * 8
    assert res["peak_mb"] - res["before_mb"] < 700, res


def test_48mpx_without_the_downscale_exceeds_the_bound(big_photo):
    """The same photo with the limits off goes over the bound (or fails): the check above can fail."""
    src, big = big_photo
    code = "import resource; resource.setrlimit(resource.RLIMIT_AS, (12 << 30, 12 << 30))\n" + WORKER.format(
        src=str(src), big=str(big), kw={"max_side": 10**6, "max_candidates": 10**9})
    res = _run(code)
    assert "error" in res or res["peak_mb"] - res["before_mb"] >= 700, res
