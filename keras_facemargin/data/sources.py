"""Training-data roots: kind detection and one scanned source per format.

Kinds (:func:`detect_data_kind`), tried in this order:

* ``"recordio"``: an insightface RecordIO folder (``train.rec`` + ``train.idx`` [+ ``property``]),
  or a ``.rec`` / ``.idx`` path;
* ``"tfrecord"``: TFRecord files of the :mod:`keras_facemargin.data.formats.tfrecord` schema (as
  written by ``kfm data rec2tfrecord``): a ``.tfrecord`` file, a glob (``"out/train-*.tfrecord"``)
  or a folder holding ``*.tfrecord`` files;
* ``"image_folder"``: a tree ``root/<identity>/<image>.jpg|png|...`` (same classes, order and
  file selection as :func:`keras_facemargin.data.formats.folders.scan_image_folder`).

Anything else raises :class:`DataSourceError` (a ``ValueError``) naming the path and the
three layouts expected; a missing path raises ``FileNotFoundError``.

:func:`open_source` scans one root (no image is decoded except one probe for the size):
its rows, local labels and identity names, the bad records found up front and the
entries ignored. :mod:`keras_facemargin.data.training_set` combines several sources into
one label space and one pipeline.

Example::

    detect_data_kind("faces_emore")                  # -> "recordio"
    src = open_source("celeba_identities/color_arcface112")
    print(src.summary())
"""

from __future__ import annotations

import glob as _glob
import mmap
import os
from pathlib import Path

import numpy as np

from keras_facemargin.data.errors import BadRecordError
from keras_facemargin.data.formats.folders import IMAGE_EXTENSIONS, scan_image_folder
from keras_facemargin.data.formats.recordio.reader import DEFAULT_MIN_MAX_CLASSES, RecordIOReader
from keras_facemargin.data.formats.recordio.records import _has_image_signature
from keras_facemargin.data.formats.tfrecord import decode_example, index_tfrecord_file
from keras_facemargin.errors import ImageFileError, TFRecordError, TFRecordRecordError, UntrustedFileError
from keras_facemargin.errors import DataSourceError  # noqa: F401  (re-exported)
from keras_facemargin.utils.folder_files import read_regular_file
from keras_facemargin.utils.images import DEFAULT_MAX_IMAGE_PIXELS, check_max_pixels, decode_image, image_file_byte_cap

__all__ = ["DATA_KINDS", "DataSourceError", "detect_data_kind", "open_source"]

#: Kind name -> what the log calls it.
DATA_KINDS = {"recordio": "insightface RecordIO", "tfrecord": "TFRecord", "image_folder": "image-folder tree"}
TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords")
_EXPECTED = ("an insightface RecordIO folder (train.rec + train.idx [+ property]) or .rec file, "
             "TFRecord files (a .tfrecord file, a glob such as 'out/train-*.tfrecord', or a folder "
             "of *.tfrecord files), or an image-folder tree root/<identity>/<image>.jpg")


def _is_glob(path):
    return any(c in str(path) for c in "*?[")


def _image_folder_evidence(root, max_dirs=64):
    """``(is_tree, hint)``: whether some identity sub-folder of ``root`` holds an image file."""
    subdirs = sorted((e for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")),
                     key=lambda e: e.name)
    nested = None
    for d in subdirs[:max_dirs]:
        for f in os.scandir(d.path):
            if f.is_file() and f.name.lower().endswith(IMAGE_EXTENSIONS):
                return True, None
            if nested is None and f.is_dir() and any(
                    g.is_file() and g.name.lower().endswith(IMAGE_EXTENSIONS) for g in os.scandir(f.path)):
                nested = d.path
    if nested is not None:
        return False, f"its sub-folder {nested!r} looks like an image-folder tree; pass that path"
    if subdirs:
        return False, f"its {len(subdirs)} sub-folder(s) hold no {'/'.join(IMAGE_EXTENSIONS)} files"
    return False, "it holds no train.rec, no *.tfrecord files and no identity sub-folders"


def detect_data_kind(path) -> str:
    """The kind of training data at ``path``: ``"recordio"``, ``"tfrecord"`` or ``"image_folder"``.

    Args:
        path: a folder, a file or a glob pattern (see the module docstring for the rules).

    Raises:
        FileNotFoundError: ``path`` does not exist (or the glob matches nothing).
        DataSourceError: ``path`` exists but is none of the three kinds.

    Example::

        detect_data_kind("faces_emore")                  # -> "recordio"
        detect_data_kind("out/train-*.tfrecord")         # -> "tfrecord"
        detect_data_kind("celeba_identities/color_arcface112")  # -> "image_folder"
    """
    p = Path(path)
    if not p.exists():
        if _is_glob(path):
            matches = sorted(_glob.glob(str(path)))
            if not matches:
                raise FileNotFoundError(f"Training data glob {str(path)!r} matches no file; expected {_EXPECTED}.")
            not_files = [m for m in matches if not os.path.isfile(m)]
            if not_files:
                raise DataSourceError(f"Training data glob {str(path)!r} matches {not_files[0]!r}, which is not "
                                      "a file; a glob must match TFRecord files only.")
            return "tfrecord"
        raise FileNotFoundError(f"Training data path {str(path)!r} does not exist; expected {_EXPECTED}.")
    if p.is_file():
        if p.suffix in (".rec", ".idx"):
            return "recordio"
        if p.suffix.lower() in TFRECORD_SUFFIXES:
            return "tfrecord"
        raise DataSourceError(f"Training data file {str(path)!r} is neither a .rec nor a .tfrecord file; "
                              f"expected {_EXPECTED}.")
    if not p.is_dir():
        raise DataSourceError(f"Training data path {str(path)!r} is not a file or folder; expected {_EXPECTED}.")
    if (p / "train.rec").is_file():
        return "recordio"
    if any(e.is_file() and e.name.lower().endswith(TFRECORD_SUFFIXES) for e in os.scandir(p)):
        return "tfrecord"
    is_tree, hint = _image_folder_evidence(p)
    if is_tree:
        return "image_folder"
    raise DataSourceError(f"Training data folder {str(path)!r} is not a known layout ({hint}); expected {_EXPECTED}.")


# ----------------------------------------------------------------------------------- sources
class _Source:
    """One scanned root. Subclasses set ``class_names``, ``labels`` (per row, local), ``file_names``
    (per row, or None), ``bad`` (BadRecordErrors found up front), ``ignored`` and ``image_hw``."""

    kind = None

    def __init__(self, path, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS):
        self.path = str(path)
        self.max_image_pixels = max_image_pixels
        self.file_names = None
        self.bad = []
        self.ignored = []
        self.duplicates = []

    @property
    def num_images(self):
        return int(self.labels.size)

    def summary(self):
        n_id = len(set(self.labels.tolist())) if self.labels.size else 0
        line = f"{DATA_KINDS[self.kind]} {self.path}: {n_id:,} identities, {self.num_images:,} images"
        if self.image_hw is not None:
            line += f" of {self.image_hw[0]}x{self.image_hw[1]} px"
        extra = []
        if self.bad:
            extra.append(f"{len(self.bad):,} bad record(s) left out")
        if self.duplicates:
            extra.append(f"{len(self.duplicates):,} repeated record(s) kept once")
        if self.ignored:
            extra.append(f"{len(self.ignored):,} non-image entr{'y' if len(self.ignored) == 1 else 'ies'} ignored "
                         f"(e.g. {self.ignored[0]})")
        return line + (f" ({'; '.join(extra)})" if extra else "")

    def read(self, row):
        """Encoded bytes of ``row``; raises BadRecordError / OSError."""
        raise NotImplementedError

    def where(self, row):
        """``(file, offset)`` of ``row`` for reports (offset None for whole files)."""
        raise NotImplementedError

    def close(self):
        pass


class _FolderSource(_Source):
    kind = "image_folder"

    def __init__(self, path, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS, follow_links=False):
        super().__init__(path, max_image_pixels)
        refused = []
        paths, labels, names = scan_image_folder(path, ignored=self.ignored, refused=refused, follow_links=follow_links)
        for r in refused:  # never opened: FIFOs, sockets, devices, links out of the root, ...
            self.bad.append(ImageFileError(os.path.join(self.path, r.path.rstrip("/")), None, r.reason, r.detail))
        self.byte_cap = image_file_byte_cap(max_image_pixels)
        keep = np.ones(len(paths), bool)
        for i, p in enumerate(paths):
            head, problem = read_regular_file(p, self.byte_cap, head=4)
            if problem is not None:
                reason, detail = problem
                self.bad.append(ImageFileError(p, None, "bad_image" if reason == "unreadable" else reason, detail))
                keep[i] = False
            elif not head:
                self.bad.append(ImageFileError(p, None, "bad_image", "empty file"))
                keep[i] = False
            elif not _has_image_signature(head):
                self.bad.append(ImageFileError(p, None, "bad_image",
                                               f"no JPEG/PNG/BMP/WebP signature (first bytes {head.hex()})"))
                keep[i] = False
        self.paths = [p for p, k in zip(paths, keep) if k]
        self.labels = labels[keep]
        self.class_names = list(names)
        self.file_names = [os.path.basename(p) for p in self.paths]
        self.image_hw = None
        for p in self.paths[:16]:
            data, problem = read_regular_file(p, self.byte_cap)
            img = None if problem is not None else decode_image(data, max_image_pixels)[0]
            if img is not None:
                self.image_hw = tuple(img.shape[:2])
                break

    def read(self, row):
        data, problem = read_regular_file(self.paths[row], self.byte_cap)
        if problem is not None:  # replaced since the scan (a FIFO, a huge file): refused, never read
            reason, detail = problem
            raise ImageFileError(self.paths[row], None, "bad_image" if reason == "unreadable" else reason, detail)
        return data

    def where(self, row):
        return self.paths[row], None


class _RecordIOSource(_Source):
    kind = "recordio"

    def __init__(self, path, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS):
        super().__init__(path, max_image_pixels)
        self.reader = RecordIOReader(path, max_image_pixels=max_image_pixels)
        sc = self.reader.scan()
        self.bad = list(sc["bad"])
        self.positions = np.flatnonzero(sc["valid"]).astype(np.int64)
        self.labels = sc["labels"][self.positions].astype(np.int64)
        self.class_names = [str(c) for c in range(max(self.reader.num_classes, int(self.labels.max(initial=-1)) + 1))]
        self.image_hw = self.reader.image_size
        if self.image_hw is None and self.positions.size:
            img, _ = decode_image(self.reader._image_view(int(self.positions[0])), max_image_pixels)
            self.image_hw = None if img is None else tuple(img.shape[:2])

    def read(self, row):
        return self.reader._image_view(int(self.positions[row]))

    def where(self, row):
        return str(self.reader.rec_path), int(self.reader._image_offsets[self.positions[row]])

    def close(self):
        self.reader.close()


class _TFRecordSource(_Source):
    kind = "tfrecord"

    def __init__(self, path, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS, max_classes=None):
        super().__init__(path, max_image_pixels)
        p = Path(path)
        if p.is_dir():
            files = sorted(str(e.path) for e in os.scandir(p)
                           if e.is_file() and e.name.lower().endswith(TFRECORD_SUFFIXES))
        elif p.is_file():
            files = [str(p)]
        else:
            files = sorted(_glob.glob(str(path)))
        self.files = files
        self._maps = [None] * len(files)
        file_id, offsets, lengths, index, labels = [], [], [], [], []
        for k, f in enumerate(files):
            off, ln, err = index_tfrecord_file(f)
            if err is not None:
                self.bad.append(err)
            if not off.size:
                continue
            mm = self._map(k)
            for o, n in zip(off.tolist(), ln.tolist()):
                try:
                    i, lab, data = decode_example(mm[o:o + n])
                    if not _has_image_signature(data[:4]):
                        raise TFRecordError(f, f"image/encoded has no JPEG/PNG/BMP/WebP signature "
                                            f"(first bytes {data[:4].hex()})", "image/encoded")
                except UntrustedFileError as e:
                    self.bad.append(TFRecordRecordError(f, o - 12, "bad_example", e.detail))
                    continue
                file_id.append(k)
                offsets.append(o)
                lengths.append(n)
                index.append(i)
                labels.append(lab)
        stored = np.asarray(index, np.int64)
        order = np.argsort(stored, kind="stable")
        first = np.ones(order.size, bool)
        first[1:] = stored[order][1:] != stored[order][:-1]
        kept = None
        for j, is_first in zip(order.tolist(), first.tolist()):
            here = f"{files[file_id[j]]} @ {offsets[j] - 12}"
            if is_first:
                kept = here
            else:
                self.duplicates.append({"identity": str(labels[j]), "file": f"image/index {stored[j]}",
                                        "kept": kept, "dropped": here,
                                        "reason": "repeated image/index in one TFRecord root"})
        order = order[first]
        self.file_id = np.asarray(file_id, np.int32)[order]
        self.offsets = np.asarray(offsets, np.int64)[order]
        self.lengths = np.asarray(lengths, np.int64)[order]
        self.stored_index = stored[order]
        self.labels = np.asarray(labels, np.int64)[order]
        limit = max(DEFAULT_MIN_MAX_CLASSES, self.labels.size) if max_classes is None else int(max_classes)
        top = int(self.labels.max(initial=-1))
        if top >= limit:
            j = int(np.argmax(self.labels))
            raise TFRecordError(self.files[int(self.file_id[j])], f"image/label {top} needs {top + 1:,} classes, "
                                f"above max_classes={limit:,} (default: the larger of {DEFAULT_MIN_MAX_CLASSES:,} "
                                "and the number of records)", f"byte offset {int(self.offsets[j]) - 12}")
        self.class_names = [str(c) for c in range(top + 1)]
        self.image_hw = None
        if self.labels.size:
            try:
                img, _ = decode_image(np.frombuffer(self.read(0), np.uint8), max_image_pixels)
            except BadRecordError:
                img = None
            self.image_hw = None if img is None else tuple(img.shape[:2])

    def _map(self, k):
        if self._maps[k] is None:
            with open(self.files[k], "rb") as f:
                self._maps[k] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._maps[k]

    def read(self, row):
        o, n = int(self.offsets[row]), int(self.lengths[row])
        try:
            return decode_example(self._map(int(self.file_id[row]))[o:o + n])[2]
        except TFRecordError as e:
            f, off = self.where(row)
            raise TFRecordRecordError(f, off, "bad_example", e.detail) from None

    def where(self, row):
        return self.files[int(self.file_id[row])], int(self.offsets[row]) - 12

    def close(self):
        for m in self._maps:
            if m is not None:
                m.close()
        self._maps = [None] * len(self.files)


_SOURCES = {"recordio": _RecordIOSource, "tfrecord": _TFRecordSource, "image_folder": _FolderSource}


def open_source(path, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS, follow_links: bool = False):
    """Detect the kind of ``path`` and scan it (no image is decoded except one to find the size).

    Args:
        path: a data root (see :func:`detect_data_kind`).
        max_image_pixels: largest ``height * width`` decoded (read from each image header first).
        follow_links: image-folder trees: also follow symbolic links out of the root (default: they
            are bad records with reason ``outside_root``, never opened; see
            :func:`keras_facemargin.data.formats.folders.list_identity_folder`).

    Returns:
        A source with ``kind``, ``path``, ``class_names``, ``labels`` (per row), ``bad``
        (``BadRecordError`` s found up front), ``ignored`` and ``image_hw``; see :func:`load_training_set`.

    Example::

        src = open_source("faces_emore"); print(src.summary())
    """
    kind = detect_data_kind(path)
    extra = {"follow_links": True} if follow_links and kind == "image_folder" else {}
    src = _SOURCES[kind](path, check_max_pixels(max_image_pixels), **extra)
    if src.num_images == 0:
        raise DataSourceError(f"Training data {str(path)!r} ({DATA_KINDS[kind]}) holds no usable image "
                              f"({len(src.bad)} bad record(s){': ' + str(src.bad[0]) if src.bad else ''}).")
    return src
