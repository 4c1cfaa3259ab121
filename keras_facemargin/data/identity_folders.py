"""Training sets stored as one folder per identity (e.g. CelebA aligned 10k).

Layout::

    root/<identity>/<image>.jpg      # e.g. celeba_align_10k/images/2880/000001.jpg (89x109)

Folders are listed by :func:`keras_facemargin.data.formats.folders.list_identity_folder`, the
scanner behind :func:`~keras_facemargin.data.formats.folders.scan_image_folder` too: identity
folders sorted by name (string order: CelebA identity ``"10"`` precedes ``"2"``), files sorted
by name within each; label ``c`` is the ``c``-th kept identity. Several roots are merged by
:func:`~keras_facemargin.data.formats.folders.merge_identity_roots` (by identity name).

Crop policies (``crop=``), all followed by a resize to ``image_size``:

* ``"auto"`` (default): ``"celeba_arcface"`` for images with CelebA's aligned aspect
  (W/H = 89/109, e.g. 89x109 or 178x218), the whole image for square images (e.g.
  output of ``kfm align``), else ``"center_square"``.
* ``"celeba_arcface"``: :data:`CELEBA_ARCFACE_CROP_BOX` ``(13, 26, 75, 88)`` in 89x109
  coordinates (scaled to the actual size): the mean, over 320 random images, of the
  region that MTCNN 5-point alignment maps onto the 112x112 ArcFace crop (per-coordinate
  std ~2 px). It gives the same face geometry as ArcFace-aligned crops and as the LFW
  default :data:`~keras_facemargin.data.lfw.LFW_CENTER_CROP_BOX`, so models trained on
  CelebA see LFW faces at the same scale and position. (The 62 px box is upsampled to 112.)
* ``"center_square"``: the central ``min(H, W)`` square (89x89 for CelebA: a looser
  crop with hair; eye distance ~0.22 of the width vs 0.31 for ArcFace crops).
* ``"none"``: the whole image (aspect ratio not preserved).
* ``(x0, y0, x1, y1)``: an explicit pixel box.

Example::

    data = load_identity_folder("../shared/data/celeba_align_10k/images", image_size=64, min_images=3)
    x, y, names, counts = data
    ds = make_training_dataset(x, y, batch_size=64)
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from keras_facemargin.data.formats.folders import (IMAGE_EXTENSIONS, escape_identity_name, list_identity_folder,
                                                   merge_identity_roots)
from keras_facemargin.errors import ImageFileError
from keras_facemargin.utils.images import DEFAULT_MAX_IMAGE_PIXELS, check_max_pixels, read_image_file, resize_image

__all__ = ["CELEBA_ARCFACE_CROP_BOX", "IdentityFolderData", "CombinedIdentityData", "load_identity_folder",
           "load_identity_folders", "list_identity_folder"]

logger = logging.getLogger(__name__)

#: (x0, y0, x1, y1) in CelebA aligned 89x109 images; ArcFace-like geometry on average.
CELEBA_ARCFACE_CROP_BOX = (13, 26, 75, 88)
_CELEBA_SIZE = (89, 109)  # (W, H)


@dataclass
class IdentityFolderData:
    """Result of :func:`load_identity_folder`; unpacks as ``images, labels, class_names, class_counts``.

    Attributes:
        images: uint8 ``(N, H, W, 3)`` RGB.
        labels: int32 ``(N,)`` in ``0..C-1``.
        class_names: ``C`` identity folder names, label order.
        class_counts: int64 ``(C,)`` images per class.
        paths: ``N`` paths relative to ``root`` (``identity/file``), row order.
        unreadable: ``[(relative path, error)]`` files that could not be decoded (skipped
            with ``on_error="skip"``), and entries never opened: FIFOs, sockets, devices, dangling or
            looping links and links out of ``root`` (``"not_a_file: ..."`` / ``"outside_root: ..."``),
            files over the byte cap (``"too_large: ..."``).
        dropped_identities: ``{name: readable images}`` removed by ``min_images``.
        ignored: relative paths of files without an image extension or outside identity folders.
        excluded: ``{name: image files}`` identities removed by ``exclude`` (never decoded).
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list
    class_counts: np.ndarray
    paths: list = field(default_factory=list)
    unreadable: list = field(default_factory=list)
    dropped_identities: dict = field(default_factory=dict)
    ignored: list = field(default_factory=list)
    excluded: dict = field(default_factory=dict)

    def __iter__(self):
        return iter((self.images, self.labels, self.class_names, self.class_counts))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _resolve_box(crop, w, h):
    if isinstance(crop, str):
        if crop == "auto":
            if abs(w / h - _CELEBA_SIZE[0] / _CELEBA_SIZE[1]) < 0.01:
                crop = "celeba_arcface"
            elif w == h:
                crop = "none"
            else:
                crop = "center_square"
        if crop == "celeba_arcface":
            sx, sy = w / _CELEBA_SIZE[0], h / _CELEBA_SIZE[1]
            x0, y0, x1, y1 = CELEBA_ARCFACE_CROP_BOX
            return (int(round(x0 * sx)), int(round(y0 * sy)), int(round(x1 * sx)), int(round(y1 * sy)))
        if crop == "center_square":
            s = min(w, h)
            x0, y0 = (w - s) // 2, (h - s) // 2
            return (x0, y0, x0 + s, y0 + s)
        if crop == "none":
            return (0, 0, w, h)
        raise ValueError(f"Unknown `crop` policy {crop!r}; use 'auto', 'celeba_arcface', "
                         "'center_square', 'none' or (x0, y0, x1, y1).")
    return crop


def _crop_resize(img, box, size_hw):
    x0, y0, x1, y1 = box
    h, w = img.shape[:2]
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise ValueError(f"crop box {box} does not fit in a {w}x{h} image")
    crop = img[y0:y1, x0:x1]
    if crop.shape[:2] == tuple(size_hw):
        return np.ascontiguousarray(crop)
    return resize_image(crop, size_hw)


def load_identity_folder(root, image_size=112, crop="auto", min_images: int = 1, on_error: str = "raise",
                         max_identities: int | None = None, extensions=IMAGE_EXTENSIONS,
                         num_threads: int = 2, progress: bool = False,
                         max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS, exclude=(),
                         follow_links: bool = False) -> IdentityFolderData:
    """Load an identity-folder training set into memory as uint8 face crops.

    Args:
        root: folder of ``<identity>/`` sub-folders (for CelebA 10k: ``celeba_align_10k/images``).
        image_size: output side (int) or ``(H, W)``.
        crop: crop policy or pixel box (see module docstring); default ``"auto"``.
        min_images: keep identities with at least this many *readable* images.
        on_error: ``"raise"`` on the first undecodable file, or ``"skip"`` it (counted in
            ``unreadable`` and logged).
        max_identities: keep only the first ``max_identities`` identities (after ``min_images``);
            reading stops once they are found (``unreadable``/``dropped_identities`` then cover
            only the identities read).
        extensions: image suffixes; other files are listed in ``ignored`` (and logged).
        num_threads: decoding threads.
        progress: tqdm progress bar.
        max_image_pixels: largest ``height * width`` decoded; the header is read first, so a
            larger image (or a format other than JPEG/PNG/BMP/WebP) is an undecodable file.
        exclude: identity folder names to leave out; their files are not read (``excluded``
            counts them).
        follow_links: also follow symbolic links whose target lies outside ``root`` (default: such
            links, FIFOs, sockets and devices are never opened: ``unreadable`` lists them, or
            ``on_error="raise"`` raises an :class:`~keras_facemargin.errors.ImageFileError`).

    Returns:
        :class:`IdentityFolderData` (``images, labels, class_names, class_counts = data``).

    Raises:
        FileNotFoundError: ``root`` missing. ValueError: bad arguments or no identity left.
        ImageFileError: (a ValueError naming the file) an unreadable, undecodable or over-cap
        file with ``on_error="raise"``, or a crop box outside an image.

    Example::

        x, y, names, counts = load_identity_folder(celeba / "images", image_size=64, min_images=3)
    """
    from tqdm.auto import tqdm

    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        size_hw = (int(image_size), int(image_size))
    else:
        try:
            size_hw = tuple(int(v) for v in image_size)
        except (TypeError, ValueError):
            size_hw = ()
        if len(size_hw) != 2:
            raise ValueError(f"`image_size` must be an int or (H, W), got {image_size!r}.")
    if min(size_hw) <= 0:
        raise ValueError(f"`image_size` must be positive, got {image_size!r}.")
    cap = check_max_pixels(max_image_pixels)
    if on_error not in ("raise", "skip"):
        raise ValueError(f"`on_error` must be 'raise' or 'skip', got {on_error!r}.")
    if isinstance(min_images, bool) or not isinstance(min_images, (int, np.integer)) or min_images < 1:
        raise ValueError(f"`min_images` must be a positive integer, got {min_images!r}.")
    if not isinstance(crop, str):
        try:
            crop = tuple(int(v) for v in crop)
        except (TypeError, ValueError):
            crop = ()
        if len(crop) != 4 or crop[2] <= crop[0] or crop[3] <= crop[1]:
            raise ValueError("`crop` must be a policy name or (x0, y0, x1, y1) with x1 > x0, y1 > y0.")
    else:
        _resolve_box(crop, 89, 109)  # validates the name
    root = Path(root)
    refused = []
    ids, ignored = list_identity_folder(root, extensions, refused=refused, follow_links=follow_links)
    for r in refused:  # never opened: FIFOs, sockets, devices, links out of root, ...
        if on_error == "raise":
            raise ImageFileError(root / r.path.rstrip("/"), None, r.reason, r.detail)
    exclude = set(map(str, exclude))
    excluded = {name: len(fs) for name, fs in ids.items() if name in exclude}
    ids = {name: fs for name, fs in ids.items() if name not in exclude}
    if ignored:
        logger.warning("%d file(s) under %s are not images in identity folders and were ignored (first: %s).",
                       len(ignored), root, ignored[0])
    files = [f for fs in ids.values() for f in fs]

    def _load(rel):
        try:
            img, why = read_image_file(root / rel, cap)
        except OSError as e:
            return None, f"{type(e).__name__}: {e}"
        if img is None:
            return None, why
        h, w = img.shape[:2]
        try:
            return _crop_resize(img, _resolve_box(crop, w, h), size_hw), None
        except ValueError as e:
            raise ImageFileError(root / rel, None, "bad_crop", str(e)) from None

    names, counts, dropped, rows, labels = [], [], {}, [], []
    unreadable = [(r.path, f"{r.reason}: {r.detail}") for r in refused]
    out = {}
    order = list(ids.items())
    limit = None if max_identities is None else int(max_identities)
    chunk_files = 512
    with ThreadPoolExecutor(max(1, int(num_threads))) as pool, \
            tqdm(total=len(files), desc="identity folder", unit="img", disable=not progress) as bar:
        i = 0
        # identities are loaded in chunks so that `max_identities` stops reading early
        while i < len(order) and (limit is None or len(names) < limit):
            j, n = i, 0
            while j < len(order) and (n == 0 or n + len(order[j][1]) <= chunk_files):
                n += len(order[j][1])
                j += 1
            chunk = [f for _, fs in order[i:j] for f in fs]
            for rel, (img, err) in zip(chunk, pool.map(_load, chunk)):
                bar.update(1)
                if img is None:
                    if on_error == "raise":
                        raise ImageFileError(root / rel, None, "bad_image",
                                             f"cannot read image: {err} (use on_error='skip' to skip and "
                                             "list unreadable files)")
                    unreadable.append((rel, err))
                else:
                    out[rel] = img
            for name, fs in order[i:j]:
                if limit is not None and len(names) >= limit:
                    break
                ok = [f for f in fs if f in out]
                if len(ok) < min_images:
                    dropped[name] = len(ok)
                    continue
                labels.extend([len(names)] * len(ok))
                rows.extend(ok)
                names.append(name)
                counts.append(len(ok))
            i = j
    if unreadable:
        logger.warning("Skipped %d unreadable image(s) under %s (first: %s).", len(unreadable), root,
                       unreadable[0][0])
    if not names:
        raise ValueError(f"No identity under {root} has >= {min_images} readable image(s).")
    images = np.stack([out[r] for r in rows])
    return IdentityFolderData(images=images, labels=np.asarray(labels, np.int32), class_names=names,
                              class_counts=np.asarray(counts, np.int64), paths=rows, unreadable=unreadable,
                              dropped_identities=dropped, ignored=ignored, excluded=excluded)


@dataclass
class CombinedIdentityData(IdentityFolderData):
    """Result of :func:`load_identity_folders`: :class:`IdentityFolderData` plus provenance.

    Attributes:
        roots: the roots, in the order given.
        root_of_row: int ``(N,)`` index into ``roots`` of each image.
        duplicates: ``[(identity, file name, kept root, dropped root)]`` images found in more
            than one root (the first root's copy is kept).
        excluded: identity names removed by ``exclude`` (with their image files, over all roots;
            never decoded).
    """

    roots: list = field(default_factory=list)
    root_of_row: np.ndarray = None
    duplicates: list = field(default_factory=list)

    def summary(self) -> str:
        """One human-readable paragraph: sizes, duplicates, exclusions, unreadable files (names escaped by
        :func:`~keras_facemargin.data.formats.folders.escape_identity_name`, so it prints whatever they hold)."""
        c = self.class_counts
        lines = [f"{len(self.labels)} images, {len(c)} identities from {len(self.roots)} root(s) "
                 f"(images per identity: min {c.min()}, median {int(np.median(c))}, max {c.max()}; "
                 f"{int((c == 1).sum())} with a single image)"]
        for i, r in enumerate(self.roots):
            lines.append(f"  {r}: {int((self.root_of_row == i).sum())} images kept")
        if self.duplicates:
            ex = ", ".join(escape_identity_name(f"{d[0]}/{d[1]}") for d in self.duplicates[:3])
            lines.append(f"  {len(self.duplicates)} duplicate image(s) across roots kept once (e.g. {ex})")
        if self.excluded:
            lines.append(f"  {len(self.excluded)} identities excluded ({sum(self.excluded.values())} images)")
        if self.unreadable:
            lines.append(f"  {len(self.unreadable)} unreadable image(s) skipped "
                         f"(first: {escape_identity_name(self.unreadable[0][0])})")
        if self.dropped_identities:
            lines.append(f"  {len(self.dropped_identities)} identities below min_images dropped")
        return "\n".join(lines)


def load_identity_folders(roots, image_size=112, crop="auto", exclude=(), min_images: int = 1,
                          on_error: str = "raise", num_threads: int = 2,
                          progress: bool = False, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS,
                          follow_links: bool = False) -> CombinedIdentityData:
    """Load several identity-folder roots into one label space.

    Identities are merged **by folder name** across roots (CelebA folders are CelebA identity
    numbers, the same person in every set). An image whose file name occurs under the same
    identity in an earlier root is a duplicate: it is kept once (the first root's copy) and listed
    in ``duplicates``. Labels follow the sorted union of identity names (string order), so the
    result does not depend on the order of ``roots`` except for which copy of a duplicate is kept
    (the rule of :func:`~keras_facemargin.data.formats.folders.merge_identity_roots`, shared with
    :func:`~keras_facemargin.data.training_set.load_training_set`). Rows are identity-major (all
    images of label 0 from every root, then label 1, ...), and ``min_images`` applies after merging.

    Args:
        roots: one root or a sequence of roots (each a folder of ``<identity>/`` sub-folders).
        image_size, crop, on_error, num_threads, progress, max_image_pixels, follow_links: as in
            :func:`load_identity_folder`
            (``crop="auto"`` is resolved per image, so 89x109 CelebA and 112x112 ArcFace crops mix).
        exclude: identity names to drop from every root (e.g.
            :func:`keras_facemargin.data.training_set.read_identity_list` of LFW-overlap candidates); names
            not present are ignored.
        min_images: keep identities with at least this many images after merging.

    Returns:
        :class:`CombinedIdentityData`.

    Example::

        d = load_identity_folders([ids / "color_arcface112", ids / "gray_arcface112",
                                   celeba / "images"], image_size=64,
                                  exclude=read_identity_list(ids / "lfw_overlap_candidates.tsv"))
        print(d.summary())
    """
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    roots = [Path(r) for r in roots]
    if not roots:
        raise ValueError("`roots` must name at least one identity folder.")
    if len(set(map(str, roots))) != len(roots):
        raise ValueError(f"`roots` lists the same folder twice: {[str(r) for r in roots]}.")
    if isinstance(min_images, bool) or not isinstance(min_images, (int, np.integer)) or min_images < 1:
        raise ValueError(f"`min_images` must be a positive integer, got {min_images!r}.")
    exclude = set(map(str, exclude))
    parts = [load_identity_folder(r, image_size=image_size, crop=crop, on_error=on_error,
                                  num_threads=num_threads, progress=progress,
                                  max_image_pixels=max_image_pixels, exclude=exclude,
                                  follow_links=follow_links) for r in roots]
    excluded = {}
    for part in parts:
        for ident, n in part.excluded.items():
            excluded[ident] = excluded.get(ident, 0) + n
    merged = merge_identity_roots([[tuple(rel.split("/", 1)) for rel in part.paths] for part in parts])
    per_id = merged.members  # identity -> [(root index, row in that part)]
    duplicates = [(ident, fname, str(roots[first[0]]), str(roots[again[0]]))
                  for ident, fname, first, again in merged.duplicates]
    names, dropped = [], {}
    for ident in merged.names:
        if len(per_id[ident]) < min_images:
            dropped[ident] = len(per_id[ident])
        else:
            names.append(ident)
    if not names:
        raise ValueError(f"No identity with >= {min_images} image(s) left in {[str(r) for r in roots]}.")
    images, labels, paths, root_of_row, counts = [], [], [], [], []
    for c, ident in enumerate(names):
        rows = per_id[ident]
        counts.append(len(rows))
        for k, row in rows:
            images.append(parts[k].images[row])
            labels.append(c)
            paths.append(f"{roots[k]}/{parts[k].paths[row]}")
            root_of_row.append(k)
    unreadable = [(f"{roots[k]}/{rel}", err) for k, p in enumerate(parts) for rel, err in p.unreadable]
    return CombinedIdentityData(
        images=np.stack(images), labels=np.asarray(labels, np.int32), class_names=names,
        class_counts=np.asarray(counts, np.int64), paths=paths, unreadable=unreadable,
        dropped_identities=dropped, ignored=[f"{roots[k]}/{i}" for k, p in enumerate(parts) for i in p.ignored],
        roots=[str(r) for r in roots], root_of_row=np.asarray(root_of_row, np.int32),
        duplicates=duplicates, excluded=excluded)
