"""Image-folder training sets: ``root/<identity>/<image>.jpg|png``.

Layout::

    root/
      alice/   001.jpg 002.jpg ...
      bob/     a.png ...

Classes are the sub-folders sorted by name (class id = position); images are
the files with an image extension (case-insensitive ``.jpg .jpeg .png .bmp
.webp``) inside each class folder, sorted by name. Training sample ``index``
``i`` is position ``i`` of the ``paths`` returned by :func:`scan_image_folder`
(class-major order). Empty class folders keep their class id.

The pipeline has the package-wide element contract and the RecordIO
pipeline's decoding and bad-record handling (see
:mod:`keras_facemargin.data.recordio`): files are read and decoded with
OpenCV in chunks inside ``tf.numpy_function``; empty files are rejected up
front and unreadable/undecodable images -- including images in formats other
than JPEG/PNG/BMP/WebP and images whose header declares more than
``max_image_pixels`` pixels, refused before decoding -- are skipped and counted
(``on_error="skip"``) or raise an :class:`~keras_facemargin.errors.ImageFileError`
(a ``BadRecordError``) naming the path.

Example::

    paths, labels, names = scan_image_folder("casia_aligned")
    ds = make_folder_dataset("casia_aligned", batch_size=128, image_size=112)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_facemargin.data.errors import BadRecordReport, check_on_error
from keras_facemargin.utils.images import DEFAULT_MAX_IMAGE_PIXELS, check_max_pixels, decode_image
from keras_facemargin.data.pipeline import _check_common
from keras_facemargin.data.recordio import (
    _check_pipeline_args,
    build_decoded_pipeline,
    decode_image_into,
    resolve_shard,
)
from keras_facemargin.errors import ImageFileError

__all__ = ["IMAGE_EXTENSIONS", "scan_image_folder", "make_folder_dataset"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def scan_image_folder(root, extensions=IMAGE_EXTENSIONS, ignored: list | None = None):
    """List the images of an identity-per-folder tree.

    Args:
        root: folder holding one sub-folder per identity.
        extensions: accepted file extensions (lower case, with dot).
        ignored: optional list; the entries that are not images of an identity folder
            (top-level files, other files, nested or hidden folders; paths relative to
            ``root``, folders with a trailing ``/``) are appended to it.

    Returns:
        ``(paths, labels, class_names)``: list of image paths (str, class-major,
        sorted), int64 labels, sorted class folder names.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: no class folders or no images.

    Example::

        paths, labels, names = scan_image_folder("faces")   # names[labels[i]] owns paths[i]
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"Image folder {str(root)!r} does not exist or is not a folder; expected "
            "root/<identity>/<image>.jpg|png."
        )
    exts = tuple(e.lower() for e in extensions)
    skipped = [] if ignored is None else ignored
    class_names = []
    for e in sorted(os.scandir(root), key=lambda e: e.name):
        if e.is_dir() and not e.name.startswith("."):
            class_names.append(e.name)
        else:
            skipped.append(e.name + ("/" if e.is_dir() else ""))
    if not class_names:
        raise ValueError(f"No identity sub-folders in {str(root)!r}; expected root/<identity>/<image>.jpg.")
    paths, labels = [], []
    for c, name in enumerate(class_names):
        files = []
        for e in sorted(os.scandir(root / name), key=lambda e: e.name):
            if e.is_file() and e.name.lower().endswith(exts):
                files.append(e.name)
            else:
                skipped.append(f"{name}/{e.name}" + ("/" if e.is_dir() else ""))
        paths.extend(str(root / name / f) for f in files)
        labels.extend([c] * len(files))
    if not paths:
        raise ValueError(f"No images with extensions {exts} under {str(root)!r}.")
    return paths, np.asarray(labels, np.int64), class_names


def make_folder_dataset(root, batch_size: int, image_size=None, shuffle: bool = True, seed: int = 0,
                        augment_flip: bool = True, drop_remainder: bool = True, repeat: bool = False,
                        num_parallel_calls=tf.data.AUTOTUNE, on_error: str = "skip", shard="auto",
                        report: BadRecordReport | None = None,
                        chunk_size: int = 32, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS) -> tf.data.Dataset:
    """Training ``tf.data`` pipeline over an image folder tree.

    Yields ``({"images", "labels", "index"}, labels)``; ``index`` is the position
    in :func:`scan_image_folder`'s ``paths``.

    Args:
        root: folder of identity sub-folders.
        batch_size: images per batch (per worker when sharded).
        image_size: int or ``(height, width)`` to resize every image to; default:
            the first image's size (other sizes are bad records).
        shuffle, seed, augment_flip, drop_remainder, repeat, num_parallel_calls,
            on_error, shard, report, chunk_size: as in
            :func:`keras_facemargin.data.recordio.make_dataset`.
        max_image_pixels: largest ``height * width`` decoded (read from the header first).

    Returns:
        ``tf.data.Dataset`` (with ``.bad_records``, ``.class_names`` attributes).

    Raises:
        OSError: ``root`` missing. ValueError: no images / bad arguments, or no decodable
        probe image to infer the size. ImageFileError: with ``on_error="raise"``, an empty,
        unreadable, undecodable or over-cap image (while iterating: wrapped in a ``tf.errors``
        exception carrying its message).

    Example::

        ds = make_folder_dataset("faces", 64, image_size=112, on_error="skip")
    """
    check_on_error(on_error)
    hw = _check_pipeline_args(chunk_size, num_parallel_calls, image_size)
    resize = hw is not None
    cap = check_max_pixels(max_image_pixels)
    report = BadRecordReport() if report is None else report
    paths, labels, class_names = scan_image_folder(root)
    sizes = np.array([os.path.getsize(p) for p in paths])
    valid = sizes > 0
    for i in np.flatnonzero(~valid):
        err = ImageFileError(paths[i], None, "bad_image", "empty file")
        if on_error == "raise":
            raise err
        report.add_error(err, log=False)
    report.log_summary()
    positions = np.flatnonzero(valid).astype(np.int64)
    if positions.size == 0:
        raise ValueError(f"All images under {str(root)!r} are empty files.")
    if hw is None:
        probe = None
        for i in positions[:16]:
            probe = _decode_file(paths[i], cap)
            if probe is not None:
                break
        if probe is None:
            raise ValueError(f"Cannot infer `image_size`: the first images under {str(root)!r} "
                             "do not decode; pass image_size=.")
        hw = probe.shape[:2]
    shard_spec = resolve_shard(shard)
    if shard_spec:
        positions = positions[shard_spec[1]::shard_spec[0]]
    _check_common(positions.size, batch_size, drop_remainder, seed)

    def load_chunk(idx):
        out = np.empty((idx.size, hw[0], hw[1], 3), np.uint8)
        ok = np.ones(idx.size, bool)
        for k, i in enumerate(idx):
            try:
                with open(paths[i], "rb") as f:
                    data = f.read()
                why = decode_image_into(data, out[k], resize, cap)
            except OSError as e:
                why = f"unreadable file ({e})"
            if why is not None:
                err = ImageFileError(paths[i], None, "bad_image", why)
                if on_error == "raise":
                    raise err
                report.add_error(err)
                ok[k] = False
        return out, ok

    source = tf.data.Dataset.from_tensor_slices((positions, labels[positions].astype(np.int32)))
    ds = build_decoded_pipeline(source, load_chunk, hw, batch_size, shuffle, seed, augment_flip,
                                drop_remainder, repeat, num_parallel_calls, chunk_size, shard_spec)
    ds.bad_records = report
    ds.class_names = class_names
    return ds


def _decode_file(path, max_pixels=DEFAULT_MAX_IMAGE_PIXELS):
    try:
        return decode_image(np.fromfile(path, np.uint8), max_pixels)[0]
    except OSError:
        return None
