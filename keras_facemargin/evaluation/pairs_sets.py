"""Image-folder + pairs-file verification sets (LFW, CFP) as :class:`~.bin_sets.PairSet`.

LFW (View 2, http://vis-www.cs.umass.edu/lfw/, ``pairs.txt``)::

    <root>/pairs.txt                      first line "10 300": 10 folds x (300 matched + 300 mismatched)
                                          matched:    "name  i  j"       (1-based image numbers)
                                          mismatched: "name1 i name2 j"
    <root>/images/<name>/<name>_NNNN.jpg  NNNN = 4-digit image number

Pairs keep the file order; fold ``k`` is the ``k``-th block of 600 lines (the official
10 folds). ``pairs.txt`` is parsed by :func:`keras_facemargin.data.lfw.load_lfw_pairs`.

CFP (Sengupta et al., WACV 2016, ``cfp-dataset``)::

    <root>/Protocol/Pair_list_F.txt       "k ../Data/Images/001/frontal/01.jpg" (k = 1..5000), path relative to Protocol/
    <root>/Protocol/Pair_list_P.txt       same for the profile images (k = 1..2000)
    <root>/Protocol/Split/FP/01..10/same.txt, diff.txt   "a,b": 1-based; a in the F list, b in the P list
    <root>/Protocol/Split/FF/01..10/same.txt, diff.txt   "a,b": both in the F list

Pairs are ordered fold 01..10, within a fold ``same.txt`` (350) then ``diff.txt`` (350);
fold ids follow the ``Split`` folders (the official 10 folds).

Images are loaded once per unique file, optionally cropped (a centre square of ``crop``
pixels or an ``(x0, y0, x1, y1)`` box; LFW defaults to ``data.lfw.LFW_CENTER_CROP_BOX``,
the ArcFace-like field of view of deep-funneled 250x250 faces) and resized to ``image_size``.
These are *not* 5-point aligned crops; use insightface's ``lfw.bin`` / ``cfp_fp.bin``
for numbers comparable with published results.

Example::

    ps = load_lfw_folder("../shared/data/lfw", image_size=(112, 112))
    ps.num_pairs, ps.images.shape   # 6000, (7701, 112, 112, 3)
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from keras_facemargin.utils.images import DEFAULT_MAX_IMAGE_PIXELS, read_image_file, resize_image
from keras_facemargin.data.lfw import LFW_CENTER_CROP_BOX, load_lfw_images, load_lfw_pairs
from keras_facemargin.errors import ImageFileError
from keras_facemargin.evaluation.pair_set import PairSet, _check_image_size
from keras_facemargin.evaluation.verification import embed_images, kfold_verification, pair_scores

__all__ = ["load_lfw_folder", "parse_cfp_protocol", "load_cfp_folder", "read_images"]


def read_images(paths, image_size=(112, 112), crop=None, num_threads=4):
    """Read RGB images, crop (if given), resize to ``image_size``.

    Args:
        paths: image files.
        image_size: ``(H, W)`` or int; ``None`` keeps the (cropped) size (all must agree).
        crop: side of the central square to keep, an ``(x0, y0, x1, y1)`` pixel box, or None.
        num_threads: decoding threads (OpenCV releases the GIL).

    Returns:
        uint8 ``(len(paths), H, W, 3)``.

    Raises:
        FileNotFoundError: a missing image. ImageFileError: an undecodable image, a format other
        than JPEG/PNG/BMP/WebP or more than ``DEFAULT_MAX_IMAGE_PIXELS`` pixels (refused on the
        header). ValueError: bad arguments, a crop outside an image, or differing sizes.
    """
    size = _check_image_size(image_size)
    box = None
    if isinstance(crop, (tuple, list)):
        box = tuple(int(v) for v in crop)
        if len(box) != 4 or box[0] < 0 or box[1] < 0 or box[2] <= box[0] or box[3] <= box[1]:
            raise ValueError(f"`crop` box must be (x0, y0, x1, y1) with x1 > x0 >= 0, y1 > y0 >= 0; got {crop!r}.")
    elif crop is not None and (isinstance(crop, bool) or int(crop) <= 0):
        raise ValueError(f"`crop` must be a positive number of pixels, a box or None, got {crop!r}.")

    def one(path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image not found: {path}")
        img, why = read_image_file(path, DEFAULT_MAX_IMAGE_PIXELS)  # header checked before decoding
        if img is None:
            raise ImageFileError(path, None, "bad_image", f"could not read image ({why})")
        if box is not None:
            h, w = img.shape[:2]
            if box[2] > w or box[3] > h:
                raise ValueError(f"{path}: crop box {box} exceeds the image size {w}x{h}.")
            img = img[box[1]:box[3], box[0]:box[2]]
        elif crop is not None:
            c = int(crop)
            h, w = img.shape[:2]
            if c > min(h, w):
                raise ValueError(f"{path}: crop {c} exceeds the image size {w}x{h}.")
            top, left = (h - c) // 2, (w - c) // 2
            img = img[top:top + c, left:left + c]
        return resize_image(img, size)

    paths = list(paths)
    if not paths:
        raise ValueError("no image paths given.")
    with ThreadPoolExecutor(max(1, int(num_threads))) as ex:
        imgs = list(ex.map(one, paths))
    shapes = {im.shape for im in imgs}
    if len(shapes) != 1:
        raise ValueError(f"images have different sizes {sorted(shapes)[:4]}; pass `image_size` or `crop`.")
    return np.stack(imgs)


# ---------------------------------------------------------------------- LFW
def load_lfw_folder(root, image_size=(112, 112), crop="default", num_threads=4, pairs_file="pairs.txt",
                    images_dir="images") -> PairSet:
    """LFW View-2 pairs from ``<root>/pairs.txt`` and ``<root>/images`` as a :class:`PairSet`.

    ``pairs.txt`` is parsed by :func:`keras_facemargin.data.lfw.load_lfw_pairs` (errors name the
    file and line; missing images are reported). Each referenced image is read once;
    ``index_a``/``index_b`` point into the unique images.

    Args:
        root: the LFW folder.
        image_size: output ``(H, W)``.
        crop: ``"default"`` = :data:`keras_facemargin.data.lfw.LFW_CENTER_CROP_BOX` (ArcFace-like
            geometry on deep-funneled 250x250 images), a centre-square side, a pixel box, or None.
        num_threads: decoding threads.
        pairs_file, images_dir: names inside ``root``.

    Returns:
        :class:`PairSet` with explicit fold ids (600 pairs per fold for the standard file).

    Example::

        ps = load_lfw_folder("../shared/data/lfw")
    """
    if isinstance(crop, str):
        if crop != "default":
            raise ValueError(f"`crop` must be 'default', a side, a box or None; got {crop!r}.")
        crop = LFW_CENTER_CROP_BOX
    pairs = load_lfw_pairs(root, pairs_file=pairs_file, images_dir=images_dir)
    paths, index_a, index_b = pairs.unique_paths()
    images = read_images(paths, image_size=image_size, crop=crop, num_threads=num_threads)
    return PairSet(name="lfw", images=images, index_a=np.asarray(index_a, np.int64),
                   index_b=np.asarray(index_b, np.int64), is_same=np.asarray(pairs.is_same, bool),
                   folds=np.asarray(pairs.fold, np.int64), source=str(root))


# ---------------------------------------------------------------------- CFP
def _read_cfp_list(path):
    out = []
    with open(path) as f:
        for lineno, ln in enumerate(f, 1):
            t = ln.split()
            if not t:
                continue
            if len(t) != 2:
                raise ValueError(f"{path}:{lineno}: expected 'index relative/path.jpg', got {ln.strip()!r}.")
            out.append(t[1])
    return out


def _read_cfp_split(path, n_a, n_b):
    rows = []
    with open(path) as f:
        for lineno, ln in enumerate(f, 1):
            if not ln.strip():
                continue
            try:
                a, b = (int(v) for v in ln.strip().split(","))
            except ValueError:
                raise ValueError(f"{path}:{lineno}: expected 'a,b' (1-based indices), got {ln.strip()!r}.") from None
            if not (1 <= a <= n_a and 1 <= b <= n_b):
                raise ValueError(f"{path}:{lineno}: index out of range ({a},{b}); lists hold {n_a} and {n_b}.")
            rows.append((a - 1, b - 1))
    return rows


def parse_cfp_protocol(root, protocol="FP"):
    """Parse the CFP protocol files.

    Args:
        root: the ``cfp-dataset`` folder (holding ``Protocol/``).
        protocol: ``"FP"`` (frontal-profile) or ``"FF"`` (frontal-frontal).

    Returns:
        ``(paths_a, paths_b, is_same, folds)``: absolute image paths per pair side, bool and
        int fold-id arrays, ordered fold by fold, same before diff.
    """
    protocol = str(protocol).upper()
    if protocol not in ("FP", "FF"):
        raise ValueError(f"`protocol` must be 'FP' or 'FF', got {protocol!r}.")
    proto = Path(root) / "Protocol"
    lf = proto / "Pair_list_F.txt"
    lp = proto / "Pair_list_P.txt"
    for p in (lf, lp) if protocol == "FP" else (lf,):
        if not p.is_file():
            raise FileNotFoundError(f"CFP list not found: {p}")
    list_a = [str((proto / r).resolve()) for r in _read_cfp_list(lf)]
    list_b = [str((proto / r).resolve()) for r in _read_cfp_list(lp)] if protocol == "FP" else list_a
    split = proto / "Split" / protocol
    fold_dirs = sorted((d for d in split.iterdir() if d.is_dir()), key=lambda d: int(d.name)) \
        if split.is_dir() else []
    if not fold_dirs:
        raise FileNotFoundError(f"CFP split folders not found under {split} (expected 01..10).")
    pa, pb, same, folds = [], [], [], []
    for k, d in enumerate(fold_dirs):
        for fname, label in (("same.txt", True), ("diff.txt", False)):
            f = d / fname
            if not f.is_file():
                raise FileNotFoundError(f"CFP split file not found: {f}")
            for a, b in _read_cfp_split(f, len(list_a), len(list_b)):
                pa.append(list_a[a])
                pb.append(list_b[b])
                same.append(label)
                folds.append(k)
    return pa, pb, np.array(same, bool), np.array(folds, np.int64)


def load_cfp_folder(root, protocol="FP", image_size=(112, 112), crop=None, num_threads=4) -> PairSet:
    """CFP-FP / CFP-FF pairs from the original ``cfp-dataset`` layout as a :class:`PairSet`.

    Args:
        root: the ``cfp-dataset`` folder.
        protocol: ``"FP"`` or ``"FF"``.
        image_size: output ``(H, W)``.
        crop: optional centre square (pixels) before resizing.
        num_threads: decoding threads.

    Example::

        ps = load_cfp_folder("cfp-dataset", "FP")   # 7000 pairs, 10 folds of 700
    """
    pa, pb, same, folds = parse_cfp_protocol(root, protocol)
    keys = {}
    for p in pa + pb:
        keys.setdefault(p, len(keys))
    missing = [p for p in keys if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} CFP images are missing (first: {missing[0]}).")
    images = read_images(list(keys), image_size=image_size, crop=crop, num_threads=num_threads)
    return PairSet(name=f"cfp_{protocol.lower()}", images=images,
                   index_a=np.array([keys[p] for p in pa], np.int64),
                   index_b=np.array([keys[p] for p in pb], np.int64),
                   is_same=same, folds=folds, source=str(root))


def lfw_verification(model, root, image_size: int = 112, align: str = "center", crop=LFW_CENTER_CROP_BOX,
                     flip: bool = True, batch_size: int = 64, cache_dir=None, cache="auto",
                     detector=None, progress: bool = True, **kfold_kwargs):
    """LFW 10-fold verification of ``model`` on the 6,000 ``pairs.txt`` pairs.

    Each distinct image (7,701) is loaded and embedded once; pair scores and the
    protocol are those of :func:`keras_facemargin.evaluation.evaluate_pairs` (identical
    result: embeddings are per-image, so embedding distinct images once and gathering
    gives the same scores as embedding both pair sides).

    Args:
        model: Keras model / ``FaceRecognizer`` / callable on float32 normalised batches
            (see :func:`keras_facemargin.evaluation.embed_images`).
        root: LFW folder (``pairs.txt``, ``images/``).
        image_size, align, crop, cache_dir, cache, detector, progress: see
            :func:`keras_facemargin.data.lfw.load_lfw_images`.
        flip, batch_size: see :func:`~keras_facemargin.evaluation.embed_images`.
        **kfold_kwargs: ``thresholds``, ``far_targets`` for
            :func:`~keras_facemargin.evaluation.kfold_verification` (folds come from pairs.txt).

    Returns:
        :class:`~keras_facemargin.evaluation.VerificationResult`.

    Example::

        r = lfw_verification(recognizer, "../shared/data/lfw", image_size=112)
        print(f"{100 * r.accuracy_mean:.2f} +- {100 * r.accuracy_std:.2f}")
    """
    if "folds" in kfold_kwargs:
        raise ValueError("`folds` is fixed by pairs.txt for LFW.")
    pairs = load_lfw_pairs(root)
    paths, ia, ib = pairs.unique_paths()
    images = load_lfw_images(paths, image_size=image_size, align=align, crop=crop, cache_dir=cache_dir,
                             cache=cache, detector=detector, progress=progress)
    emb = embed_images(model, images, batch_size=batch_size, flip=flip)
    return kfold_verification(pair_scores(emb[ia], emb[ib]), pairs.is_same, folds=pairs.fold, **kfold_kwargs)
