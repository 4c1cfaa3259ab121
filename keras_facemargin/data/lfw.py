"""LFW (deep-funneled) pairs and face crops.

Layout expected under ``root`` (see ``shared/data/README.md``)::

    root/pairs.txt                       # View 2: "10 300", then 10 x (300 matched + 300 mismatched)
    root/images/<Name>/<Name>_NNNN.jpg   # 250x250 RGB, face centred but NOT ArcFace-aligned

Face crops (``align=``):

* ``"center"`` (default, no detector): the fixed box :data:`LFW_CENTER_CROP_BOX`
  ``(x0, y0, x1, y1) = (58, 49, 192, 183)`` (134x134 px) resized to ``image_size``.
  The box is the mean, over 320 random LFW images, of the region that MTCNN 5-point
  alignment maps onto the 112x112 ArcFace crop (per-coordinate std 6-7 px), so the
  crop has ArcFace geometry on average and matches
  :data:`~keras_facemargin.data.identity_folders.CELEBA_ARCFACE_CROP_BOX` for training.
* ``"mtcnn"``: 5-point alignment to the ArcFace template with landmarks from
  :class:`~keras_facemargin.data.align.MTCNNDetector` (optional ``mtcnn`` package).
  With several faces the large-and-central one is used
  (:func:`~keras_facemargin.data.align.select_face`); an image without a detected
  face falls back to the centre crop and is counted and listed in the returned info
  (and logged). MTCNN costs ~0.025-0.036 s/image batched on 2 CPU cores (measured: the
  7,701 images of the 6,000 pairs took 277 s on a busy machine, no image without a face,
  1,034 with several faces), so results are cached as ``.npz`` under ``cache_dir``.

The 10-fold protocol on these pairs is :func:`keras_facemargin.evaluation.lfw_verification`
(``data`` imports nothing from ``evaluation``).

Example::

    pairs = load_lfw_pairs(root)                      # 6000 pairs, fold k = pairs 600k..600k+599
    paths, ia, ib = pairs.unique_paths()
    images = load_lfw_images(paths, 112)              # uint8 (7701, 112, 112, 3) centre crops
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from keras_facemargin.data.align import MTCNNDetector, align_face, select_face
from keras_facemargin.utils.images import DEFAULT_MAX_IMAGE_PIXELS, check_max_pixels, read_image_file, resize_image
from keras_facemargin.errors import ImageFileError, PairsFileError

__all__ = [
    "LFW_CENTER_CROP_BOX",
    "LFWPairs",
    "LFWPairRecord",
    "parse_pairs",
    "load_lfw_pairs",
    "load_lfw_images",
    "default_cache_dir",
    "PairsFileError",
]

logger = logging.getLogger(__name__)

#: (x0, y0, x1, y1) in the 250x250 deep-funneled image; ArcFace-like geometry on average.
LFW_CENTER_CROP_BOX = (58, 49, 192, 183)


def default_cache_dir() -> Path:
    """``$KFM_CACHE_DIR`` if set, else ``~/.cache/keras_facemargin``."""
    env = os.environ.get("KFM_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "keras_facemargin"


@dataclass
class LFWPairs:
    """Parsed ``pairs.txt``. Unpacks as ``paths_a, paths_b, is_same = pairs``.

    Attributes:
        paths_a, paths_b: ``(n,)`` str arrays of absolute image paths.
        is_same: ``(n,)`` bool, True for matched (genuine) pairs.
        fold: ``(n,)`` int fold id (pairs ``k*2P .. (k+1)*2P-1`` form fold ``k``).
        num_folds: folds declared in the header.
        pairs_per_fold: matched (= mismatched) pairs per fold declared in the header.
    """

    paths_a: np.ndarray
    paths_b: np.ndarray
    is_same: np.ndarray
    fold: np.ndarray
    num_folds: int
    pairs_per_fold: int

    def __iter__(self):
        return iter((self.paths_a, self.paths_b, self.is_same))

    def __len__(self):
        return int(self.is_same.size)

    def unique_paths(self):
        """``(paths, index_a, index_b)``: sorted distinct paths and each side's index into them."""
        paths, inv = np.unique(np.concatenate([self.paths_a, self.paths_b]), return_inverse=True)
        n = len(self)
        return paths, inv[:n], inv[n:]


class LFWPairRecord(NamedTuple):
    """One line of ``pairs.txt`` (image numbers 1-based; ``fold`` 0-based; ``line`` 1-based)."""

    name1: str
    num1: int
    name2: str
    num2: int
    is_same: bool
    fold: int
    line: int


_MAX_IMAGE_NUMBER = 10**6


def _image_number(num, src, lineno):
    if not (num.isascii() and num.isdigit()) or len(num) > 7:
        raise PairsFileError(src, f"image number {num[:20]!r} is not an integer in [1, {_MAX_IMAGE_NUMBER}]",
                             line=lineno)
    k = int(num)
    if not 1 <= k <= _MAX_IMAGE_NUMBER:
        raise PairsFileError(src, f"image number {k} must be in [1, {_MAX_IMAGE_NUMBER}] (1-based)", line=lineno)
    return k


def _person_name(name, src, lineno):
    """A ``pairs.txt`` name must be one folder name inside ``images/``: no separators, ``..`` or NUL."""
    if name in (".", "..") or any(c in name for c in "/\\\0:") or len(name) > 255 or not name.isprintable():
        raise PairsFileError(src, f"name {name[:60]!r} is not a folder name inside the images folder "
                             "(no '/', '\\', ':', '..' or control characters)", line=lineno)
    return name


def parse_pairs(path) -> list:
    """Parse an LFW View 2 ``pairs.txt`` into :class:`LFWPairRecord` s, in file order.

    Header ``F P``; then ``F`` folds of ``P`` matched lines ``name i j`` followed by
    ``P`` mismatched lines ``name1 i name2 j``. Blank lines are ignored.

    Args:
        path: the pairs file.

    Returns:
        list of ``2 * F * P`` :class:`LFWPairRecord` (matched pairs have ``name1 == name2``).

    Raises:
        OSError: missing or unreadable file (``FileNotFoundError`` when missing).
        PairsFileError: (a ValueError) naming file and line, for a file that is not UTF-8, a
            malformed header or line, a line of the wrong kind for its position, a wrong
            number of lines, a name that is not a single folder name (``..``, ``/``, absolute
            paths are refused, so every path stays inside ``images/``) or an image number
            outside ``[1, 10**6]``.

    Example::

        recs = parse_pairs("../shared/data/lfw/pairs.txt")
        recs[0]  # LFWPairRecord(name1='Abel_Pacheco', num1=1, name2='Abel_Pacheco', num2=4, is_same=True, ...)
    """
    src = Path(path)
    if not src.is_file():
        raise FileNotFoundError(f"LFW pairs file not found: {src}")
    raw = src.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise PairsFileError(src, f"not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})",
                             line=line) from None
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        raise PairsFileError(src, "NUL byte in a text file", line=line)
    lines = [(i, ln.split()) for i, ln in enumerate(text.split("\n"), 1) if ln.strip()]
    if not lines:
        raise PairsFileError(src, "empty file")
    hl, header = lines[0]
    try:
        if len(header) != 2 or not all(h.isascii() and h.isdigit() and len(h) <= 9 for h in header):
            raise ValueError
        num_folds, per_fold = int(header[0]), int(header[1])
        if num_folds < 1 or per_fold < 1:
            raise ValueError
    except ValueError:
        raise PairsFileError(src, f"header must be '<folds> <pairs per fold>' (positive integers), got "
                             f"{' '.join(header)[:80]!r}", line=hl) from None
    body = lines[1:]
    expected = 2 * num_folds * per_fold
    if len(body) != expected:
        raise PairsFileError(src, f"header '{num_folds} {per_fold}' implies {expected} pair lines, "
                             f"found {len(body)}")
    out = []
    for k, (lineno, f) in enumerate(body):
        fold, pos = divmod(k, 2 * per_fold)
        matched = pos < per_fold
        if matched and len(f) != 3:
            raise PairsFileError(src, f"expected a matched pair 'name i j' (fold {fold}, line {pos + 1} of "
                                 f"the fold), got {' '.join(f)[:80]!r}", line=lineno)
        if not matched and len(f) != 4:
            raise PairsFileError(src, f"expected a mismatched pair 'name1 i name2 j' (fold {fold}, line "
                                 f"{pos + 1} of the fold), got {' '.join(f)[:80]!r}", line=lineno)
        n1, i1, n2, i2 = (f[0], f[1], f[0], f[2]) if matched else f
        out.append(LFWPairRecord(_person_name(n1, src, lineno), _image_number(i1, src, lineno),
                                 _person_name(n2, src, lineno), _image_number(i2, src, lineno),
                                 matched, fold, lineno))
    return out


def load_lfw_pairs(root, pairs_file: str = "pairs.txt", images_dir: str = "images",
                   check_exists: bool = True) -> LFWPairs:
    """Parse LFW View 2 ``pairs.txt`` into pair paths and labels, in file order.

    Lines are parsed by :func:`parse_pairs`; image ``i`` of ``name`` is
    ``images/<name>/<name>_<i:04d>.jpg``.

    Args:
        root: LFW folder holding ``pairs_file`` and ``images_dir``.
        pairs_file, images_dir: names relative to ``root`` (or absolute).
        check_exists: raise if any referenced image is missing.

    Returns:
        :class:`LFWPairs` (``2 * F * P`` pairs; fold ``k`` = pairs ``2Pk .. 2P(k+1)-1``).

    Raises:
        FileNotFoundError: missing ``pairs_file`` / ``images_dir`` / images (names the
            first missing files and the lines referencing them).
        PairsFileError: (a ValueError) malformed file (see :func:`parse_pairs`); every path
            it yields lies inside ``images_dir``.

    Example::

        a, b, same = load_lfw_pairs("../shared/data/lfw")
        len(same), same.sum()  # (6000, 3000)
    """
    root = Path(root)
    src = root / pairs_file
    img_root = root / images_dir
    recs = parse_pairs(src)
    if check_exists and not img_root.is_dir():
        raise FileNotFoundError(f"LFW images folder not found: {img_root}")
    pa = [str(img_root / r.name1 / f"{r.name1}_{r.num1:04d}.jpg") for r in recs]
    pb = [str(img_root / r.name2 / f"{r.name2}_{r.num2:04d}.jpg") for r in recs]
    if check_exists:
        missing = [(p, r.line) for a, b, r in zip(pa, pb, recs) for p in (a, b) if not os.path.isfile(p)]
        if missing:
            uniq = sorted({p for p, _ in missing})
            show = "; ".join(f"{p} (line {ln})" for p, ln in missing[:5])
            raise FileNotFoundError(f"{src}: {len(uniq)} referenced image(s) missing, e.g. {show}")
    fold = np.array([r.fold for r in recs], np.int64)
    num_folds = int(fold.max()) + 1
    return LFWPairs(np.array(pa), np.array(pb), np.array([r.is_same for r in recs], bool), fold,
                    num_folds, len(recs) // (2 * num_folds))


def _crop_resize(img, box, image_size):
    x0, y0, x1, y1 = box
    h, w = img.shape[:2]
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        # pad with black where the box leaves the image (keeps geometry)
        pad = max(0, -x0, -y0, x1 - w, y1 - h)
        img = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        x0, x1, y0, y1 = x0 + pad, x1 + pad, y0 + pad, y1 + pad
    crop = img[y0:y1, x0:x1]
    if crop.shape[0] == image_size[0] and crop.shape[1] == image_size[1]:
        return np.ascontiguousarray(crop)
    return resize_image(crop, image_size)


def _check_box(crop):
    try:
        box = tuple(int(v) for v in crop)
    except (TypeError, ValueError):
        raise ValueError(f"`crop` must be (x0, y0, x1, y1) integers, got {crop!r}.") from None
    if len(box) != 4 or box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"`crop` must be (x0, y0, x1, y1) with x1 > x0 and y1 > y0, got {crop!r}.")
    return box


def _detector_settings(detector):
    """Cache-key description of a detector: its ``cache_settings()`` when it has one (as
    :class:`MTCNNDetector`), else its class and all its public attributes (thresholds, batch
    size, ...); values without a JSON form go in by ``repr``."""
    if detector is None:
        return MTCNNDetector.settings_for()
    if callable(getattr(detector, "cache_settings", None)):
        return detector.cache_settings()
    cls = type(detector)
    attrs = {k: v for k, v in sorted(vars(detector).items()) if not k.startswith("_")} \
        if hasattr(detector, "__dict__") else {}
    return {"detector": f"{cls.__module__}.{cls.__qualname__}", "attributes": attrs}


def load_lfw_images(paths, image_size: int = 112, align: str = "center", crop=LFW_CENTER_CROP_BOX,
                    cache_dir=None, cache="auto", detector=None, progress: bool = True,
                    return_info: bool = False, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS):
    """Load LFW images as uint8 ``(N, image_size, image_size, 3)`` RGB face crops.

    Args:
        paths: image paths (e.g. from :meth:`LFWPairs.unique_paths`).
        image_size: output side.
        align: ``"center"`` (fixed ``crop`` box resized) or ``"mtcnn"`` (5-point ArcFace
            alignment; images without a detected face fall back to the ``crop`` box).
        crop: ``(x0, y0, x1, y1)`` box for ``"center"`` and the fallback; default
            :data:`LFW_CENTER_CROP_BOX`.
        cache_dir: folder for the ``.npz`` cache (default :func:`default_cache_dir`).
        cache: ``True``/``False``/``"auto"`` (``"auto"``: cache ``"mtcnn"`` results only).
            The key hashes the settings (size, align, crop and, for ``"mtcnn"``, every detector
            setting: ``detector.cache_settings()`` when defined, as for :class:`MTCNNDetector`
            (``batch_size``, ``min_confidence``, ``mtcnn.MTCNN`` arguments, ``mtcnn`` version),
            else the detector's class and public attributes) and every path with its size and
            mtime.
        detector: a :class:`MTCNNDetector`-like object (default: a new ``MTCNNDetector``).
        progress: tqdm progress bar.
        return_info: also return ``{"no_face": [paths], "multiple_faces": int, "cache_file": str|None,
            "from_cache": bool}``.
        max_image_pixels: largest ``height * width`` decoded (read from the header first).

    Returns:
        uint8 array, or ``(array, info)`` with ``return_info``.

    Raises:
        FileNotFoundError: a missing image. ImageFileError: (a ValueError naming the file) an
        undecodable or over-cap image. ValueError: bad arguments.

    Example::

        paths, ia, ib = load_lfw_pairs(root).unique_paths()
        imgs = load_lfw_images(paths, 112)                 # centre crop, ~10 s for 7,701 images
        imgs = load_lfw_images(paths, 112, align="mtcnn")  # ~4-5 min first time, then cached
    """
    from tqdm.auto import tqdm

    if align not in ("center", "mtcnn"):
        raise ValueError(f"`align` must be 'center' or 'mtcnn', got {align!r}.")
    if cache not in (True, False, "auto"):
        raise ValueError(f"`cache` must be True, False or 'auto', got {cache!r}.")
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size <= 0:
        raise ValueError(f"`image_size` must be a positive integer, got {image_size!r}.")
    size = int(image_size)
    box = _check_box(crop)
    cap = check_max_pixels(max_image_pixels)
    paths = [str(p) for p in np.asarray(paths).reshape(-1)]
    if not paths:
        raise ValueError("`paths` is empty.")
    use_cache = cache is True or (cache == "auto" and align == "mtcnn")
    cache_file = None
    if use_cache:
        settings = {"v": 1, "size": size, "align": align, "crop": box}
        if align == "mtcnn":  # every detector setting that changes the landmarks
            settings["detector"] = _detector_settings(detector)
        h = hashlib.sha1(json.dumps(settings, sort_keys=True, default=repr).encode())
        for p in paths:
            try:
                st = os.stat(p)
            except OSError:
                raise FileNotFoundError(f"LFW image not found: {p}") from None
            # the resolved path: the same images named relatively or absolutely share one cache
            h.update(f"\n{os.path.realpath(p)}\t{st.st_size}\t{st.st_mtime_ns}".encode())
        cdir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        cache_file = cdir / f"lfw_{align}_{size}_{h.hexdigest()[:16]}.npz"
        if cache_file.is_file():
            with np.load(cache_file, allow_pickle=False) as z:
                images = z["images"]
                info = {"no_face": [str(p) for p in z["no_face"]], "multiple_faces": int(z["multiple_faces"]),
                        "cache_file": str(cache_file), "from_cache": True}
            if images.shape == (len(paths), size, size, 3):
                return (images, info) if return_info else images
            logger.warning("Ignoring cache %s with unexpected shape %s.", cache_file, images.shape)
    if align == "mtcnn" and detector is None:
        detector = MTCNNDetector()
    images = np.empty((len(paths), size, size, 3), np.uint8)
    no_face, multiple = [], 0
    chunk = max(1, int(getattr(detector, "batch_size", 16))) if align == "mtcnn" else 256
    with tqdm(total=len(paths), desc=f"LFW ({align})", unit="img", disable=not progress) as bar:
        for start in range(0, len(paths), chunk):
            batch = []
            for p in paths[start:start + chunk]:
                if not os.path.isfile(p):
                    raise FileNotFoundError(f"LFW image not found: {p}")
                img, why = read_image_file(p, cap)
                if img is None:
                    raise ImageFileError(p, None, "bad_image", f"cannot decode LFW image: {why}")
                batch.append(img)
            dets = detector.detect_batch(batch) if align == "mtcnn" else [None] * len(batch)
            for k, (img, d) in enumerate(zip(batch, dets)):
                i = start + k
                if align == "mtcnn" and d:
                    j = 0 if len(d) == 1 else select_face(d, img.shape)
                    multiple += len(d) > 1
                    images[i] = align_face(img, d[j]["landmarks"], size)
                else:
                    if align == "mtcnn":
                        no_face.append(paths[i])
                    images[i] = _crop_resize(img, box, (size, size))
            bar.update(len(batch))
    if no_face:
        logger.warning("MTCNN found no face in %d of %d LFW images; used the centre crop %s for them "
                       "(first: %s).", len(no_face), len(paths), box, no_face[0])
    info = {"no_face": no_face, "multiple_faces": multiple,
            "cache_file": str(cache_file) if cache_file else None, "from_cache": False}
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        from keras_facemargin.utils.atomic import atomic_writer

        with atomic_writer(cache_file, "wb") as f:  # unique temporary file, fsync, os.replace
            np.savez(f, images=images, paths=np.array(paths), no_face=np.array(no_face, dtype=str),
                     multiple_faces=np.int64(multiple))
    return (images, info) if return_info else images

