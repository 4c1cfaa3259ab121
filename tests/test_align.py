"""Face alignment: template, transform estimation, warping, landmarks files, folder CLI, MTCNN."""

import importlib.util
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from keras_facemargin.data.align import (
    ARCFACE_TEMPLATE_112,
    align_face,
    align_folder,
    estimate_transform,
    parse_landmarks_file,
    reference_landmarks,
    select_face,
    transform_points,
)
from testing import REPO, load_script

HAS_MTCNN = importlib.util.find_spec("mtcnn") is not None


# ------------------------------------------------------------------ helpers
def random_similarity(rng, scale_range=(1.5, 3.0), max_angle=35.0, canvas=400):
    """2x3 similarity that maps the 112 template well inside a ``canvas`` image."""
    s = rng.uniform(*scale_range)
    a = np.deg2rad(rng.uniform(-max_angle, max_angle))
    R = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    c = ARCFACE_TEMPLATE_112.mean(0)
    centre = rng.uniform(0.4, 0.6, size=2) * canvas
    t = centre - R @ c
    return np.hstack([R, t[:, None]])


def blob_image(points, shape=(400, 400), sigma=3.0):
    """uint8 RGB image with a Gaussian dot (peak 250) at each sub-pixel point."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    img = np.zeros(shape)
    for x, y in points:
        img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))
    img = np.clip(np.round(250 * img), 0, 255).astype(np.uint8)
    return np.repeat(img[:, :, None], 3, axis=2)


def locate_dots(gray, threshold=40):
    """Intensity-weighted centroids of connected bright regions, without knowing where they are."""
    n, lab = cv2.connectedComponents((gray > threshold).astype(np.uint8))
    yy, xx = np.mgrid[0:gray.shape[0], 0:gray.shape[1]]
    w = gray.astype(np.float64)
    out = []
    for k in range(1, n):
        m = lab == k
        out.append([np.sum(xx[m] * w[m]) / np.sum(w[m]), np.sum(yy[m] * w[m]) / np.sum(w[m])])
    return np.array(out)


def umeyama_similarity(src, dst):
    """Independent reference: Umeyama (1991) least-squares similarity via SVD."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / len(src)
    U, D, Vt = np.linalg.svd(cov)
    S = np.eye(2)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[1, 1] = -1
    R = U @ S @ Vt
    scale = np.trace(np.diag(D) @ S) / s0.var(0).sum()
    t = mu_d - scale * R @ mu_s
    return np.hstack([scale * R, t[:, None]])


# ----------------------------------------------------------------- template
def test_template_values_and_scaling():
    expected = [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                [70.7299, 92.2041]]
    np.testing.assert_array_equal(ARCFACE_TEMPLATE_112, expected)
    assert ARCFACE_TEMPLATE_112[0, 0] < ARCFACE_TEMPLATE_112[1, 0]  # left eye is image-left
    np.testing.assert_allclose(reference_landmarks(112), expected)
    np.testing.assert_allclose(reference_landmarks(224), np.array(expected) * 2)
    # insightface estimate_norm: 128 -> same scale, shifted right by 8 px
    np.testing.assert_allclose(reference_landmarks(128), np.array(expected) + [8.0, 0.0])
    np.testing.assert_allclose(reference_landmarks(256), (np.array(expected) + [8.0, 0.0]) * 2)
    np.testing.assert_allclose(reference_landmarks(64), np.array(expected) * 64 / 112)
    with pytest.raises(ValueError, match="image_size"):
        reference_landmarks(0)


# ---------------------------------------------------------------- alignment
@pytest.mark.parametrize("method", ["lstsq", "lmeds", "ransac"])
@pytest.mark.parametrize("size", [112, 128, 96])
def test_align_synthetic_dots_land_on_template(method, size):
    rng = np.random.default_rng(size + len(method))
    for _ in range(3):
        A = random_similarity(rng)
        lm = transform_points(ARCFACE_TEMPLATE_112 * 1.0, A)  # landmarks in the "photo"
        img = blob_image(lm, sigma=1.2 * np.linalg.norm(A[:, 0]))
        M = estimate_transform(lm, size, method=method)
        ref = reference_landmarks(size)
        # (1) transformed coordinates
        assert np.abs(transform_points(lm, M) - ref).max() < 1e-3
        # (2) dots located in the warped image, matched to the nearest template point
        warped = align_face(img, lm, size, method=method)
        assert warped.shape == (size, size, 3) and warped.dtype == np.uint8
        dots = locate_dots(warped[:, :, 0])
        assert len(dots) == 5, f"expected 5 dots, found {len(dots)}"
        d = np.linalg.norm(dots[:, None, :] - ref[None, :, :], axis=2)
        assert sorted(d.argmin(1).tolist()) == [0, 1, 2, 3, 4]
        assert d.min(1).max() < 1.0, d.min(1)


def test_lstsq_matches_umeyama_reference_on_noisy_landmarks():
    rng = np.random.default_rng(0)
    for _ in range(20):
        lm = transform_points(ARCFACE_TEMPLATE_112, random_similarity(rng)) + rng.normal(0, 3, (5, 2))
        M = estimate_transform(lm, 112)
        np.testing.assert_allclose(M, umeyama_similarity(lm, ARCFACE_TEMPLATE_112), atol=1e-8)
        assert np.linalg.det(M[:, :2]) > 0  # no reflection
        # robust estimators: same kind of transform, close on mildly noisy points
        M2 = estimate_transform(lm, 112, method="lmeds")
        np.testing.assert_allclose(M2[:, :2] @ M2[:, :2].T, np.eye(2) * np.linalg.det(M2[:, :2]), atol=1e-6)


def test_mirrored_landmarks_give_rotation_not_reflection():
    lm = ARCFACE_TEMPLATE_112.copy()
    lm[:, 0] = 112 - lm[:, 0]  # horizontally mirrored face
    M = estimate_transform(lm, 112)
    assert np.linalg.det(M[:, :2]) > 0


def test_estimate_transform_errors():
    with pytest.raises(ValueError, match=r"\(5, 2\)"):
        estimate_transform(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="degenerate"):
        estimate_transform(np.ones((5, 2)))
    with pytest.raises(ValueError, match="method"):
        estimate_transform(ARCFACE_TEMPLATE_112, method="svd")
    with pytest.raises(ValueError, match="NaN"):
        estimate_transform(np.full((5, 2), np.nan))
    # flat 10-value form accepted
    np.testing.assert_allclose(estimate_transform(ARCFACE_TEMPLATE_112.reshape(-1)),
                               [[1, 0, 0], [0, 1, 0]], atol=1e-9)


def test_select_face_prefers_large_central():
    dets = [{"box": (0, 0, 60, 60)}, {"box": (100, 100, 50, 50)}, {"box": (20, 20, 10, 10)}]
    assert select_face(dets, (250, 250, 3)) == 1  # central beats slightly larger corner face
    assert select_face([{"box": (0, 0, 200, 200)}, {"box": (110, 110, 30, 30)}], (250, 250)) == 0
    assert select_face([], (10, 10)) is None


# ----------------------------------------------------------- landmarks file
def test_parse_landmarks_file_formats(tmp_path):
    vals = " ".join(str(v) for v in ARCFACE_TEMPLATE_112.reshape(-1))
    f = tmp_path / "lm.txt"
    f.write_text(f"# comment\n\nalice/001.jpg {vals}\nbob\\002.jpg {vals}\n")
    lms = parse_landmarks_file(f)
    assert list(lms) == ["alice/001.jpg", "bob/002.jpg"]
    np.testing.assert_allclose(lms["alice/001.jpg"], ARCFACE_TEMPLATE_112)
    c = tmp_path / "lm.csv"
    c.write_text("path,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5\n" + f"my dir/a b.jpg,{vals.replace(' ', ',')}\n")
    assert list(parse_landmarks_file(c)) == ["my dir/a b.jpg"]


@pytest.mark.parametrize("body,match", [
    ("a.jpg 1 2 3\n", r"lm.txt:1: expected 11 fields"),
    ("a.jpg 1 2 3 4 5 6 7 8 9 x\n", r"lm.txt:1: non-numeric"),
    ("# c\na.jpg 1 2 3 4 5 6 7 8 9 10\na.jpg 1 2 3 4 5 6 7 8 9 10\n", r"lm.txt:3: duplicate"),
    ("a.jpg 1 2 3 4 5 6 7 8 9 nan\n", r"lm.txt:1: non-finite"),
])
def test_parse_landmarks_file_errors_name_file_and_line(tmp_path, body, match):
    f = tmp_path / "lm.txt"
    f.write_text(body)
    with pytest.raises(ValueError, match=match):
        parse_landmarks_file(f)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        parse_landmarks_file(tmp_path / "missing.txt")


# --------------------------------------------------------------- folder / CLI
def _make_raw_folder(root):
    rng = np.random.default_rng(1)
    A = random_similarity(rng, scale_range=(2.0, 2.5), max_angle=15, canvas=400)
    lm = transform_points(ARCFACE_TEMPLATE_112, A)
    (root / "alice").mkdir(parents=True)
    (root / "bob").mkdir()
    cv2.imwrite(str(root / "alice" / "face.png"), blob_image(lm))  # PNG: exact dots
    cv2.imwrite(str(root / "bob" / "blank.jpg"), np.full((300, 300, 3), 128, np.uint8))
    (root / "bob" / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    return lm


@pytest.mark.slow
def test_align_faces_cli_reports_every_file(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "aligned"
    lm = _make_raw_folder(raw)
    lmf = tmp_path / "landmarks.txt"
    lmf.write_text("alice/face.png " + " ".join(f"{v:.4f}" for v in lm.reshape(-1)) + "\n"
                   "carol/missing.jpg " + " ".join("1" for _ in range(10)) + "\n")
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "align_faces.py"), "--input", str(raw),
                           "--output", str(out), "--landmarks", str(lmf), "--size", "112", "--no-progress"],
                          capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "aligned 1, no face 1, unreadable 1" in proc.stdout
    report = json.loads((out / "align_report.json").read_text())
    assert [a["path"] for a in report["aligned"]] == ["alice/face.png"]
    assert report["no_face"] == [{"path": "bob/blank.jpg", "reason": "not in landmarks file"}]
    assert [u["path"] for u in report["unreadable"]] == ["bob/broken.jpg"]
    assert report["unused_landmarks"] == ["carol/missing.jpg"]
    assert report["counts"] == {"total": 3, "aligned": 1, "no_face": 1, "unreadable": 1, "multiple_faces": 0}
    warped = cv2.imread(str(out / "alice" / "face.png"))
    assert warped.shape == (112, 112, 3)
    dots = locate_dots(warped[:, :, 0])
    d = np.linalg.norm(dots[:, None] - ARCFACE_TEMPLATE_112[None], axis=2)
    assert len(dots) == 5 and d.min(1).max() < 1.0
    assert not (out / "bob").exists() or not any((out / "bob").iterdir())
    # --strict turns "not everything aligned" into exit status 1 (in-process: saves a TF start-up)
    tool = load_script("tools/align_faces.py")
    argv = ["--input", str(raw), "--output", str(tmp_path / "o2"), "--landmarks", str(lmf), "--no-progress"]
    assert tool.main(argv + ["--strict"]) == 1
    assert tool.main(argv + ["--report", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["counts"]["aligned"] == 1
    assert tool.main(["--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o3"),
                      "--landmarks", str(lmf)]) == 2


class FakeDetector:
    """Detector stub: no face in uniform images, else one face plus a small off-centre one."""

    def __init__(self, lm):
        self.lm = lm

    def detect_batch(self, images):
        out = []
        for im in images:
            if im.std() == 0:
                out.append([])
            else:
                out.append([{"box": (0, 0, 20, 20), "confidence": 0.9, "landmarks": self.lm + 500},
                            {"box": (100, 100, 200, 200), "confidence": 0.99, "landmarks": self.lm}])
        return out


def test_align_folder_with_detector_multiple_and_no_face(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "aligned"
    lm = _make_raw_folder(raw)
    report = align_folder(raw, out, detector=FakeDetector(lm), image_size=128, progress=False,
                          output_ext=".png")
    assert report["counts"] == {"total": 3, "aligned": 1, "no_face": 1, "unreadable": 1, "multiple_faces": 1}
    assert report["no_face"] == [{"path": "bob/blank.jpg", "reason": "no face detected"}]
    assert report["multiple_faces"] == [{"path": "alice/face.png", "num_faces": 2, "chosen": 1}]
    warped = cv2.imread(str(out / "alice" / "face.png"))
    dots = locate_dots(warped[:, :, 0])
    d = np.linalg.norm(dots[:, None] - reference_landmarks(128)[None], axis=2)
    assert len(dots) == 5 and d.min(1).max() < 1.0
    with pytest.raises(ValueError, match="inside"):
        align_folder(raw, raw / "sub", landmarks={}, progress=False)
    with pytest.raises(FileNotFoundError, match="nope"):
        align_folder(tmp_path / "nope", out, landmarks={}, progress=False)


# -------------------------------------------------------------------- MTCNN
def test_mtcnn_on_real_lfw_image(data_dir):
    if not HAS_MTCNN:
        pytest.skip("mtcnn not installed (pip install 'mtcnn==1.0.0')")
    from keras_facemargin.data.align import MTCNNDetector, read_rgb

    path = data_dir / "lfw" / "images" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    det = MTCNNDetector()
    img = read_rgb(path)
    faces = det.detect(img)
    assert len(faces) == 1 and faces[0]["confidence"] > 0.9
    lm = faces[0]["landmarks"]
    # template order: eyes above nose above mouth; "left" = image-left
    assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]
    assert max(lm[0, 1], lm[1, 1]) < lm[2, 1] < min(lm[3, 1], lm[4, 1])
    aligned = align_face(img, lm, 112)
    # independent check: detect again on the aligned crop; landmarks should sit on the template
    again = det.detect(aligned)
    assert len(again) >= 1
    k = select_face(again, aligned.shape)
    err = np.linalg.norm(again[k]["landmarks"] - ARCFACE_TEMPLATE_112, axis=1)
    assert err.mean() < 4.0, err  # MTCNN keypoints are integer-rounded and jitter ~2-3 px (measured 2.4)


def test_align_folder_refuses_output_ext_collisions_before_writing(tmp_path):
    img = np.zeros((40, 40, 3), np.uint8)
    (tmp_path / "raw" / "p").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "raw" / "p" / "a.jpg"), img)
    cv2.imwrite(str(tmp_path / "raw" / "p" / "a.png"), img)
    lms = {f"p/a.{e}": ARCFACE_TEMPLATE_112 / 3 for e in ("jpg", "png")}
    with pytest.raises(ValueError, match=r"'p/a\.(jpg|png)' and 'p/a\.(jpg|png)' would both be written to 'p/a\.png'"):
        align_folder(tmp_path / "raw", tmp_path / "out", landmarks=lms, image_size=16, output_ext=".png",
                     progress=False)
    assert not (tmp_path / "out").exists()
    report = align_folder(tmp_path / "raw", tmp_path / "out", landmarks=lms, image_size=16, progress=False)
    assert report["counts"]["aligned"] == 2  # extensions kept: no collision
