"""5-point face alignment to the ArcFace (insightface) template.

Conventions:

* landmarks are ``(5, 2)`` float ``(x, y)`` pixel coordinates in the order
  **left eye, right eye, nose, left mouth corner, right mouth corner**, where
  "left" means *image-left* (smaller ``x``), exactly as :data:`ARCFACE_TEMPLATE_112`
  and as the ``mtcnn`` package names them (``left_eye``, ``right_eye``, ``nose``,
  ``mouth_left``, ``mouth_right``);
* the warp is a similarity transform (rotation, uniform scale, translation; no
  reflection) mapping the detected landmarks onto the template, applied with
  ``cv2.warpAffine`` (bilinear, constant black border) as insightface's ``norm_crop``.

Transform estimation (``method``):

* ``"lstsq"`` (default): closed-form least-squares similarity over all 5 points --
  the same solution as ``skimage.transform.SimilarityTransform.estimate`` used by
  insightface's ``face_align.estimate_norm``, so crops match insightface's preprocessing.
* ``"lmeds"`` / ``"ransac"``: ``cv2.estimateAffinePartial2D`` with that robust method
  (then Levenberg-Marquardt refinement on the inliers); more robust to one badly
  placed landmark, identical for consistent landmarks.

Template scaling for other output sizes follows insightface: ``size % 112 == 0`` ->
template scaled by ``size / 112``; ``size % 128 == 0`` -> scaled by ``size / 128`` and
shifted right by ``8 * size / 128`` (a 128 crop is the 112 face with a margin); any
other size -> scaled by ``size / 112`` (an extension; insightface asserts instead).

Landmarks come from a landmarks file (:func:`parse_landmarks_file`) or from the
``mtcnn`` package (:class:`MTCNNDetector`, optional dependency ``mtcnn==1.0.0``).
:func:`align_folder` (used by ``kfm align``) aligns a whole
``<identity>/<image>`` tree and reports every file as aligned, no_face or unreadable.

Example::

    lm = np.array([[107, 109], [145, 109], [127, 139], [110, 156], [143, 156]], np.float32)
    face = align_face(image_rgb, lm)            # (112, 112, 3) uint8
    M = estimate_transform(lm, image_size=112)  # (2, 3) float64, image -> crop
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import cv2
import numpy as np

from keras_facemargin.utils.folder_files import list_tree
from keras_facemargin.utils.images import read_photo

__all__ = [
    "ARCFACE_TEMPLATE_112",
    "reference_landmarks",
    "estimate_transform",
    "transform_points",
    "align_face",
    "parse_landmarks_file",
    "MTCNNDetector",
    "DETECT_MAX_SIDE",
    "select_face",
    "align_folder",
    "read_rgb",
    "write_report",
]

#: insightface ``arcface_dst`` for 112x112 crops: (x, y) of left eye, right eye, nose,
#: left mouth corner, right mouth corner (image-left first).
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
ARCFACE_TEMPLATE_112.setflags(write=False)

_METHODS = ("lstsq", "lmeds", "ransac")


def _check_size(image_size):
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size <= 0:
        raise ValueError(f"`image_size` must be a positive integer, got {image_size!r}.")
    return int(image_size)


def _as_landmarks(landmarks, name="landmarks5"):
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape == (10,):
        lm = lm.reshape(5, 2)
    if lm.shape != (5, 2):
        raise ValueError(f"`{name}` must have shape (5, 2) (or 10 values x1 y1 ... x5 y5), got {lm.shape}.")
    if not np.all(np.isfinite(lm)):
        raise ValueError(f"`{name}` contains NaN or infinite values.")
    return lm


def reference_landmarks(image_size: int = 112) -> np.ndarray:
    """ArcFace template for a square crop of ``image_size`` (insightface's scaling rule).

    Args:
        image_size: output side in pixels.

    Returns:
        float64 ``(5, 2)`` template.

    Example::

        reference_landmarks(224)  # ARCFACE_TEMPLATE_112 * 2
        reference_landmarks(128)  # ARCFACE_TEMPLATE_112 + [8, 0]
    """
    s = _check_size(image_size)
    dst = ARCFACE_TEMPLATE_112.copy()
    if s % 112 == 0 or s % 128 != 0:
        return dst * (s / 112.0)
    ratio = s / 128.0
    dst = dst * ratio
    dst[:, 0] += 8.0 * ratio
    return dst


def _lstsq_similarity(src, dst, weights=None):
    """Least-squares ``[[a, -b, tx], [b, a, ty]]`` with ``dst ~ M @ [src, 1]`` (Umeyama, no reflection);
    ``weights`` (one per point) weight each point's squared error."""
    n = src.shape[0]
    A = np.zeros((2 * n, 4))
    A[0::2] = np.stack([src[:, 0], -src[:, 1], np.ones(n), np.zeros(n)], 1)
    A[1::2] = np.stack([src[:, 1], src[:, 0], np.zeros(n), np.ones(n)], 1)
    sw = np.ones(2 * n) if weights is None else np.sqrt(np.repeat(np.asarray(weights, np.float64), 2))
    p, *_ = np.linalg.lstsq(A * sw[:, None], dst.reshape(-1) * sw, rcond=None)
    a, b, tx, ty = p
    return np.array([[a, -b, tx], [b, a, ty]])


def estimate_transform(landmarks5, image_size: int = 112, method: str = "lstsq", template=None,
                       weights=None) -> np.ndarray:
    """Similarity transform (2x3) mapping ``landmarks5`` onto the ArcFace template.

    Args:
        landmarks5: ``(5, 2)`` (or 10 flat values) landmark ``(x, y)`` in the source image,
            order left eye, right eye, nose, left mouth, right mouth (image-left first).
        image_size: side of the square output crop (template scaled by
            :func:`reference_landmarks`).
        method: ``"lstsq"`` (insightface / skimage least squares, default), ``"lmeds"``
            or ``"ransac"`` (``cv2.estimateAffinePartial2D``).
        template: optional ``(5, 2)`` destination points overriding the ArcFace template.
        weights: optional 5 non-negative point weights of the least-squares fit (``"lstsq"`` only),
            e.g. ``(1, 1, 0.25, 0, 0)`` to fit dlib's eye-driven chip from MTCNN's noisier nose and
            mouth points.

    Returns:
        float64 ``(2, 3)`` matrix ``M`` for ``cv2.warpAffine`` (source -> crop coordinates).

    Raises:
        ValueError: bad shapes, unknown method, or degenerate landmarks.

    Example::

        M = estimate_transform(lm, 112)
        transform_points(lm, M)  # ~ ARCFACE_TEMPLATE_112
    """
    src = _as_landmarks(landmarks5)
    dst = reference_landmarks(image_size) if template is None else _as_landmarks(template, "template")
    if method not in _METHODS:
        raise ValueError(f"`method` must be one of {_METHODS}, got {method!r}.")
    if np.max(np.ptp(src, axis=0)) < 1e-6:
        raise ValueError("`landmarks5` are degenerate (all points coincide).")
    if weights is not None:
        weights = np.asarray(weights, np.float64)
        if weights.shape != (5,) or not np.all(np.isfinite(weights)) or weights.min() < 0 or \
                np.count_nonzero(weights) < 2 or method != "lstsq":
            raise ValueError(f"`weights` must be 5 non-negative values, at least 2 positive, with method='lstsq'; "
                             f"got {weights.tolist()} ({method!r}).")
    if method == "lstsq":
        M = _lstsq_similarity(src, dst, weights)
    else:
        flag = cv2.LMEDS if method == "lmeds" else cv2.RANSAC
        M, _ = cv2.estimateAffinePartial2D(src.astype(np.float32).reshape(-1, 1, 2),
                                           dst.astype(np.float32).reshape(-1, 1, 2), method=flag)
        if M is None:
            raise ValueError(f"cv2.estimateAffinePartial2D ({method}) found no transform for {src.tolist()}.")
        M = M.astype(np.float64)
    if not np.all(np.isfinite(M)) or abs(np.linalg.det(M[:, :2])) < 1e-12:
        raise ValueError(f"Degenerate transform estimated from landmarks {src.tolist()}.")
    return M


def transform_points(points, M) -> np.ndarray:
    """Apply a 2x3 affine ``M`` to ``(n, 2)`` points: ``M[:, :2] @ p + M[:, 2]``."""
    p = np.asarray(points, np.float64).reshape(-1, 2)
    M = np.asarray(M, np.float64)
    if M.shape != (2, 3):
        raise ValueError(f"`M` must have shape (2, 3), got {M.shape}.")
    return p @ M[:, :2].T + M[:, 2]


def align_face(image, landmarks5, image_size: int = 112, method: str = "lstsq", border_value=0,
               template=None, weights=None) -> np.ndarray:
    """Warp ``image`` so that ``landmarks5`` land on the ArcFace template (insightface ``norm_crop``).

    Args:
        image: ``(H, W, C)`` or ``(H, W)`` array (any channel order; kept as is).
        landmarks5: ``(5, 2)`` landmarks in ``image`` (see :func:`estimate_transform`).
        image_size: side of the square output.
        method: transform estimator (see :func:`estimate_transform`).
        border_value: fill value outside the source image.
        template: optional ``(5, 2)`` destination points in the ``image_size`` crop (another model's
            crop geometry, e.g. the registry's ``crop["template"]``) instead of the ArcFace template.
        weights: optional point weights of the fit (see :func:`estimate_transform`).

    Returns:
        ``(image_size, image_size[, C])`` array of ``image``'s dtype.

    Example::

        face = align_face(rgb, detector.detect(rgb)[0]["landmarks"], 112)
    """
    img = np.asarray(image)
    if img.ndim not in (2, 3) or img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"`image` must have shape (H, W) or (H, W, C), got {img.shape}.")
    s = _check_size(image_size)
    M = estimate_transform(landmarks5, s, method=method, template=template, weights=weights)
    bv = border_value if np.ndim(border_value) else (float(border_value),) * 4
    return cv2.warpAffine(img, M, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=bv)


# ------------------------------------------------------------ landmarks files
_HEADER_WORDS = {"path", "file", "filename", "image", "image_id", "name"}


def parse_landmarks_file(path) -> dict:
    """Read a 5-point landmarks file: one line ``path x1 y1 x2 y2 x3 y3 x4 y4 x5 y5`` per image.

    Fields are separated by whitespace, or by commas when the line contains a comma
    (CSV; then paths may contain spaces). Blank lines and lines starting with ``#`` are
    ignored; a first line whose first field is a header word (``path``, ``file``,
    ``filename``, ``image``, ``image_id``, ``name``) is skipped. Point order is left eye,
    right eye, nose, left mouth, right mouth (image-left first). Paths are returned as
    given, normalised to forward slashes (relative paths are relative to the image root).

    Args:
        path: the landmarks file.

    Returns:
        ``{image_path: float64 (5, 2)}`` in file order.

    Raises:
        FileNotFoundError: missing file.
        ValueError: naming file and line, for a wrong field count, a non-numeric or
            non-finite coordinate, or a duplicated path.

    Example::

        # landmarks.txt:  alice/001.jpg 107 109 145 109 127 139 110 156 143 156
        lms = parse_landmarks_file("landmarks.txt")
        lms["alice/001.jpg"].shape  # (5, 2)
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Landmarks file not found: {p}")
    out = {}
    first = True
    with open(p, newline="", encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if "," in line:
                fields = [f.strip() for f in next(csv.reader([line]))]
            else:
                fields = line.split()
            if first and fields and fields[0].lower() in _HEADER_WORDS:
                first = False
                continue
            first = False
            if len(fields) != 11:
                raise ValueError(f"{p}:{lineno}: expected 11 fields (path and 10 coordinates), "
                                 f"got {len(fields)}: {line!r}")
            try:
                coords = np.array([float(v) for v in fields[1:]], np.float64)
            except ValueError:
                raise ValueError(f"{p}:{lineno}: non-numeric coordinate in {line!r}") from None
            if not np.all(np.isfinite(coords)):
                raise ValueError(f"{p}:{lineno}: non-finite coordinate in {line!r}")
            key = fields[0].replace("\\", "/")
            if key in out:
                raise ValueError(f"{p}:{lineno}: duplicate entry for {key!r}")
            out[key] = coords.reshape(5, 2)
    return out


# ------------------------------------------------------------------- detector
_MTCNN_KEYS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


#: Longer side (pixels) above which :class:`MTCNNDetector` detects on a downscaled copy. MTCNN
#: finds faces of 20 px and more (``min_face_size``), so at 2000 px every face of at least 1% of
#: the photo's longer side is still found (40 px in a 12-Mpx 4032x3024 phone photo, 80 px in a
#: 48-Mpx one), and faces that small hold little identity in a 112-px crop anyway. Detection
#: memory is then that of a 3-Mpx photo whatever the size (the original is only cropped).
DETECT_MAX_SIDE = 2000
#: Most pixels (after downscaling) that go into one detector call; equal-shape photos are
#: batched up to ``batch_size`` and this budget (16 LFW photos; 2 downscaled 48-Mpx photos).
DETECT_BATCH_PIXELS = 6_000_000


class MTCNNDetector:
    """Faces and 5 landmarks from the ``mtcnn`` package (``pip install mtcnn==1.0.0``; weights ship in the wheel).

    ``mtcnn``'s ``left_eye`` / ``mouth_left`` are image-left (measured: x=107 vs 145 on
    ``Aaron_Eckhart_0001``), so the keypoints map to the template order unchanged.
    Images of equal shape are detected in batches (measured on 2 CPU cores, 250x250 LFW:
    ~0.08 s/image one at a time, ~0.026 s/image in batches of 16).

    Large photos: a photo whose longer side exceeds ``max_side`` (:data:`DETECT_MAX_SIDE`) is
    detected on an area-downscaled copy; boxes and landmarks are mapped back to the original's
    pixel coordinates (pixel centres: ``x = (x_small + 0.5) / f - 0.5``), so callers crop from the
    original. Each NMS sees at most ``max_candidates`` candidates per image, the best-scoring ones
    (:mod:`keras_facemargin.data.mtcnn_stages`), so memory does not grow with the number of faces.
    Photos up to ``max_side`` with fewer candidates give ``mtcnn``'s detections exactly.

    Args:
        batch_size: images per ``detect_faces`` call (same-shape runs only).
        min_confidence: drop detections below this MTCNN confidence.
        max_side: longer side above which detection runs on a downscaled copy.
        max_candidates: candidates of one image kept (by score) before each NMS.
        **mtcnn_kwargs: passed to ``mtcnn.MTCNN`` (e.g. ``device="CPU:0"``).

    Example::

        det = MTCNNDetector()
        faces = det.detect(rgb_uint8)   # [{"box": (x, y, w, h), "confidence", "landmarks": (5, 2)}, ...]
    """

    def __init__(self, batch_size: int = 16, min_confidence: float = 0.0, max_side: int = DETECT_MAX_SIDE,
                 max_candidates: int | None = None, **mtcnn_kwargs):
        try:
            from mtcnn import MTCNN
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("MTCNN landmarks need the `mtcnn` package: pip install 'mtcnn==1.0.0' "
                              "(or keras_facemargin[align]).") from e
        from keras_facemargin.data.mtcnn_stages import NMS_MAX_CANDIDATES, bounded_stages

        for name, v in (("batch_size", batch_size), ("max_side", max_side)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"`{name}` must be a positive integer, got {v!r}.")
        self.batch_size = int(batch_size)
        self.min_confidence = float(min_confidence)
        self.max_side = int(max_side)
        self.max_candidates = NMS_MAX_CANDIDATES if max_candidates is None else int(max_candidates)
        self.mtcnn_kwargs = dict(mtcnn_kwargs)
        kwargs = dict(mtcnn_kwargs)
        kwargs.setdefault("stages", bounded_stages(self.max_candidates))
        self._mtcnn = MTCNN(**kwargs)

    @staticmethod
    def settings_for(batch_size=16, min_confidence=0.0, max_side=DETECT_MAX_SIDE, max_candidates=None,
                     **mtcnn_kwargs) -> dict:
        """Every setting that changes the detections (used as a cache key): this wrapper's
        ``batch_size`` (batched MTCNN moves a few landmarks by 1-2 px) and ``min_confidence``,
        the ``mtcnn.MTCNN`` arguments and the installed ``mtcnn`` version. ``max_side`` and
        ``max_candidates`` appear only when they differ from the defaults (with the defaults, photos
        up to 2000 px get the detections of earlier versions, so existing caches stay valid)."""
        from importlib.metadata import PackageNotFoundError, version

        from keras_facemargin.data.mtcnn_stages import NMS_MAX_CANDIDATES

        try:
            mtcnn_version = version("mtcnn")
        except PackageNotFoundError:  # pragma: no cover
            mtcnn_version = None
        out = {"detector": "MTCNNDetector", "batch_size": int(batch_size),
               "min_confidence": float(min_confidence),
               "mtcnn_kwargs": {k: mtcnn_kwargs[k] for k in sorted(mtcnn_kwargs)},
               "mtcnn_version": mtcnn_version}
        if int(max_side) != DETECT_MAX_SIDE:
            out["max_side"] = int(max_side)
        if max_candidates is not None and int(max_candidates) != NMS_MAX_CANDIDATES:
            out["max_candidates"] = int(max_candidates)
        return out

    def cache_settings(self) -> dict:
        """:meth:`settings_for` this detector."""
        return self.settings_for(self.batch_size, self.min_confidence, self.max_side, self.max_candidates,
                                 **self.mtcnn_kwargs)

    def _convert(self, dets, fx=1.0, fy=1.0):
        """mtcnn's dicts -> ours, mapped from a copy resized by ``(fx, fy)`` back to the original."""
        out = []
        for d in dets:
            conf = float(d["confidence"])
            if conf < self.min_confidence:
                continue
            kp = d["keypoints"]
            lm = np.array([[float(kp[k][0]), float(kp[k][1])] for k in _MTCNN_KEYS], np.float64)
            box = tuple(float(v) for v in d["box"])
            if fx != 1.0 or fy != 1.0:
                lm = (lm + 0.5) / (fx, fy) - 0.5
                x, y, w, h = box
                box = ((x + 0.5) / fx - 0.5, (y + 0.5) / fy - 0.5, w / fx, h / fy)
            out.append({"box": box, "confidence": conf, "landmarks": lm})
        return out

    def _detection_copy(self, image):
        """``(image to detect on, fx, fy)``: an area-downscaled copy when the longer side is over ``max_side``."""
        h, w = image.shape[:2]
        if max(h, w) <= self.max_side:
            return image, 1.0, 1.0
        f = self.max_side / max(h, w)
        nw, nh = max(1, int(round(w * f))), max(1, int(round(h * f)))
        small = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
        return small, nw / w, nh / h

    def detect(self, image) -> list:
        """Detections in one RGB uint8 ``(H, W, 3)`` image (see class docstring)."""
        return self.detect_batch([image])[0]

    def detect_batch(self, images) -> list:
        """Detections for each RGB uint8 image of a list (equal-shape runs are batched), in original coordinates."""
        images = [np.asarray(im) for im in images]
        for im in images:
            if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8 or 0 in im.shape:
                raise ValueError(f"MTCNN needs RGB uint8 (H, W, 3) images, got {im.dtype} {im.shape}.")
        results = [None] * len(images)
        i = 0
        while i < len(images):
            first, fx, fy = self._detection_copy(images[i])
            run, factors = [np.ascontiguousarray(first)], [(fx, fy)]
            budget = max(DETECT_BATCH_PIXELS, first.shape[0] * first.shape[1])
            j = i + 1
            while (j < len(images) and j - i < self.batch_size and images[j].shape == images[i].shape
                   and (j - i + 1) * first.shape[0] * first.shape[1] <= budget):
                small, fx, fy = self._detection_copy(images[j])
                run.append(np.ascontiguousarray(small))
                factors.append((fx, fy))
                j += 1
            res = [self._mtcnn.detect_faces(run[0])] if len(run) == 1 else self._mtcnn.detect_faces(run)
            for k, r in enumerate(res):
                results[i + k] = self._convert(r, *factors[k])
            i = j
        return results


def select_face(detections, image_shape):
    """Index of the face to keep among several: large and central (facenet's rule).

    Maximises ``w * h - 2 * ||box centre - image centre||^2`` (the rule of facenet's
    ``align_dataset_mtcnn.py``): the biggest face wins unless it is far off-centre,
    which suits photo collections where the subject is framed in the middle (LFW).

    Args:
        detections: list of dicts with ``"box": (x, y, w, h)``.
        image_shape: ``(H, W, ...)`` of the image.

    Returns:
        index into ``detections`` (``None`` if empty).
    """
    if not detections:
        return None
    h, w = image_shape[:2]
    scores = []
    for d in detections:
        x, y, bw, bh = d["box"]
        off = (x + bw / 2.0 - w / 2.0) ** 2 + (y + bh / 2.0 - h / 2.0) ** 2
        scores.append(bw * bh - 2.0 * off)
    return int(np.argmax(scores))


# ---------------------------------------------------------------- folder tool
def _natural_key(s):
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", s)] + [(2, 0, s)]


def _list_files(root: Path, follow_links=False):
    """``(files, refused)``: every regular file below ``root`` (hidden ones too), nothing opened.

    FIFOs, sockets, devices, dangling or looping links, links to folders and links out of ``root``
    are refused (:func:`keras_facemargin.utils.folder_files.list_tree`).
    """
    files, refused = list_tree(root, include_hidden=True, follow_links=follow_links)
    return sorted(files, key=_natural_key), refused


def read_rgb(path):
    """Read a photo as RGB uint8 ``(H, W, 3)``; ``None`` when it is not a readable photo.

    Goes through the package's capped photo reader (:func:`keras_facemargin.utils.images.read_photo`);
    use that function for the reason.
    """
    img, _ = read_photo(path)
    return img


def align_folder(input_dir, output_dir, landmarks=None, image_size: int = 112, detector=None,
                 method: str = "lstsq", output_ext: str | None = None, jpeg_quality: int = 95,
                 progress: bool = True, chunk_size: int = 64, follow_links: bool = False) -> dict:
    """Align every file under ``input_dir`` into ``output_dir`` with the same relative paths.

    Every file found (recursively, hidden files included) ends up in exactly one of
    the report's ``aligned``, ``no_face`` or ``unreadable`` lists -- nothing is skipped
    silently. With several faces the one chosen by :func:`select_face` is aligned and
    the file is also listed under ``multiple_faces``. The job goes on past every bad entry:
    FIFOs, sockets, devices, dangling or looping symbolic links, links to folders (not followed)
    and links whose target lies outside ``input_dir`` are never opened and are listed under
    ``unreadable`` with reason ``not_a_file`` / ``outside_root``; a file over the photo limits
    (256 MiB, 120 Mpx) is refused before it is read (``too_large``). Paths keep the file
    system's name (undecodable bytes as surrogate escapes, which the JSON report writes as
    ``\\udcNN``), so any name (newlines, 250 bytes, not UTF-8) is aligned like the others.

    Args:
        input_dir: root of the raw photos, e.g. ``<identity>/*.jpg``.
        output_dir: destination root (created; existing files are overwritten).
        landmarks: ``None`` (detect with ``detector``), a landmarks-file path, or a dict
            ``{relative_path: (5, 2)}``; keys are paths relative to ``input_dir``. Files
            without an entry go to ``no_face`` (reason ``"not in landmarks file"``).
        image_size: output side.
        detector: object with ``detect_batch(list_of_rgb) -> [[{"box", "confidence",
            "landmarks"}, ...], ...]``; default :class:`MTCNNDetector` when ``landmarks`` is None.
        method: transform estimator (see :func:`estimate_transform`).
        output_ext: e.g. ``".png"``; default keeps each input's extension.
        jpeg_quality: quality for JPEG outputs.
        progress: show a tqdm progress bar.
        chunk_size: images read (and detected) together.
        follow_links: also read symbolic links to files outside ``input_dir`` (default: refused,
            ``outside_root``).

    Returns:
        report dict: ``input_dir``, ``output_dir``, ``image_size``, ``landmarks_source``,
        ``counts`` (``total``, ``aligned``, ``no_face``, ``unreadable``, ``multiple_faces``),
        ``aligned`` (``{"path", "output", "num_faces", "confidence"}``), ``no_face``
        (``{"path", "reason"}``), ``unreadable`` (``{"path", "error", "reason"}``; reason ``not_a_file``, ``outside_root``,
        ``not_found``, ``not_an_image``, ``unreadable`` or ``too_large``), ``multiple_faces``
        (``{"path", "num_faces", "chosen"}``), ``unused_landmarks`` (landmark entries
        matching no input file).

    Example::

        report = align_folder("raw/", "aligned/", landmarks="landmarks.txt")
        report["counts"]  # {'total': 3, 'aligned': 1, 'no_face': 1, 'unreadable': 1, ...}
    """
    from tqdm.auto import tqdm

    in_root, out_root = Path(input_dir), Path(output_dir)
    if not in_root.is_dir():
        raise FileNotFoundError(f"Input folder not found: {in_root}")
    s = _check_size(image_size)
    if in_root.resolve() == out_root.resolve():
        raise ValueError("`output_dir` must differ from `input_dir` (inputs would be overwritten).")
    if in_root.resolve() in out_root.resolve().parents:
        raise ValueError("`output_dir` must not lie inside `input_dir` (outputs would become inputs).")
    lm_map, source = None, "detector"
    if landmarks is not None:
        if isinstance(landmarks, dict):
            lm_map, source = {str(k).replace("\\", "/"): _as_landmarks(v) for k, v in landmarks.items()}, "dict"
        else:
            lm_map, source = parse_landmarks_file(landmarks), str(landmarks)
    elif detector is None:
        detector = MTCNNDetector()
    files, refused = _list_files(in_root, follow_links)
    if output_ext is not None:  # e.g. a.jpg and a.png would both become a.png
        outputs = {}
        for rel in files:
            out_rel = Path(rel).with_suffix(output_ext).as_posix()
            if out_rel in outputs:
                raise ValueError(f"Inputs {outputs[out_rel]!r} and {rel!r} would both be written to "
                                 f"{out_rel!r} with output_ext={output_ext!r}; rename one, or keep the "
                                 "input extensions (output_ext=None). Nothing was written.")
            outputs[out_rel] = rel
    out_root.mkdir(parents=True, exist_ok=True)
    report = {"input_dir": str(in_root), "output_dir": str(out_root), "image_size": s,
              "landmarks_source": source, "method": method, "face_selection":
              "max(w*h - 2*||box centre - image centre||^2) (facenet)",
              "aligned": [], "no_face": [], "unreadable": [], "multiple_faces": [], "unused_landmarks": []}
    used = set()
    for r in refused:  # never opened: not a regular file of the tree
        report["unreadable"].append({"path": r.path, "error": f"{r.reason}: {r.detail}", "reason": r.reason})

    def _write(rel, img_rgb, lm):
        out_rel = rel if output_ext is None else str(Path(rel).with_suffix(output_ext))
        out_path = out_root / out_rel
        out_path.parent.mkdir(parents=True, exist_ok=True)
        face = align_face(img_rgb, lm, s, method=method)
        ext = out_path.suffix.lower()
        params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if ext in (".jpg", ".jpeg") else []
        try:
            ok, buf = cv2.imencode(ext if ext else ".png", cv2.cvtColor(face, cv2.COLOR_RGB2BGR), params)
        except cv2.error as e:
            raise ValueError(f"Cannot encode output {out_path} (extension {ext!r}): {e}") from None
        if not ok:
            raise ValueError(f"Cannot encode output {out_path} (extension {ext!r}).")
        buf.tofile(str(out_path))
        return Path(out_rel).as_posix()

    bar = tqdm(total=len(files), desc="align", unit="img", disable=not progress)
    for start in range(0, len(files), max(1, int(chunk_size))):
        chunk = files[start:start + max(1, int(chunk_size))]
        imgs = {}
        for rel in chunk:
            try:
                img, problem = read_photo(in_root / rel)
                err = None if problem is None else f"{problem[0]}: {problem[1]}"
                reason = None if problem is None else problem[0]
            except OSError as e:
                img, err, reason = None, f"{type(e).__name__}: {e}", "unreadable"
            if img is None:
                report["unreadable"].append({"path": rel, "error": err, "reason": reason})
            else:
                imgs[rel] = img
        if lm_map is not None:
            found = {}
            for rel in imgs:
                if rel in lm_map:
                    used.add(rel)
                    found[rel] = [{"box": None, "confidence": None, "landmarks": lm_map[rel]}]
                else:
                    found[rel] = None
        else:
            rels = list(imgs)
            found = dict(zip(rels, detector.detect_batch([imgs[r] for r in rels]))) if rels else {}
        for rel, img in imgs.items():
            dets = found[rel]
            if not dets:
                reason = "not in landmarks file" if lm_map is not None else "no face detected"
                report["no_face"].append({"path": rel, "reason": reason})
                continue
            k = 0 if len(dets) == 1 else select_face(dets, img.shape)
            if len(dets) > 1:
                report["multiple_faces"].append({"path": rel, "num_faces": len(dets), "chosen": k})
            try:
                out_rel = _write(rel, img, dets[k]["landmarks"])
            except ValueError as e:
                report["no_face"].append({"path": rel, "reason": f"alignment failed: {e}"})
                continue
            report["aligned"].append({"path": rel, "output": out_rel, "num_faces": len(dets),
                                      "confidence": dets[k]["confidence"]})
        bar.update(len(chunk))
    bar.close()
    if lm_map is not None:
        report["unused_landmarks"] = sorted(set(lm_map) - used, key=_natural_key)
    report["counts"] = {"total": len(files) + len(refused), **{k: len(report[k]) for k in
                                                ("aligned", "no_face", "unreadable", "multiple_faces")}}
    assert sum(report["counts"][k] for k in ("aligned", "no_face", "unreadable")) == report["counts"]["total"]
    return report


def write_report(report: dict, path) -> None:
    """Write an :func:`align_folder` report as indented JSON, atomically (a crash leaves the old file or the new).

    Example::

        write_report(align_folder("raw", "aligned"), "aligned/align_report.json")
    """
    from keras_facemargin.utils.atomic import atomic_write_json

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, report, indent=2)
