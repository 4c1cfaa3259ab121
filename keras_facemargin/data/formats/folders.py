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

:func:`list_identity_folder` is the package's one scanner of such trees (also used by
:mod:`keras_facemargin.data.identity_folders`), and :func:`merge_identity_roots` its one
rule for merging several roots by identity name.

The pipeline has the package-wide element contract and the shared chunk
decoder and bad-record handling of the file-backed pipelines (see
:func:`keras_facemargin.data.pipeline.build_decoded_pipeline`): files are read and decoded with
OpenCV in chunks inside ``tf.numpy_function``; empty files are rejected up
front and unreadable/undecodable images -- including images in formats other
than JPEG/PNG/BMP/WebP and images whose header declares more than
``max_image_pixels`` pixels, refused before decoding -- are skipped and counted
(``on_error="skip"``) or raise an :class:`~keras_facemargin.errors.ImageFileError`
(a ``BadRecordError``) naming the path.

Identity names are folder names exactly as the file system gives them (``os.scandir`` with a
``str`` path): a name that is not valid UTF-8 keeps its bytes as surrogate escapes (``b"caf\\xe9"``
-> ``"caf\\udce9"``, PEP 383), and names may hold tabs or newlines. Such names train like any other;
where a name is written to a text file or a message it goes through :func:`escape_identity_name`
(``\\`` -> ``\\\\``, tab -> ``\\t``, newline -> ``\\n``, carriage return -> ``\\r``, an undecodable
byte -> ``\\xNN``, another lone surrogate -> ``\\uNNNN``), which :func:`unescape_identity_name`
reverses exactly.

Example::

    paths, labels, names = scan_image_folder("casia_aligned")
    ds = make_folder_dataset("casia_aligned", batch_size=128, image_size=112)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_facemargin.data.errors import BadRecordReport, check_on_error
from keras_facemargin.utils.images import DEFAULT_MAX_IMAGE_PIXELS, check_max_pixels, decode_image, image_file_byte_cap
from keras_facemargin.data.pipeline import (
    _check_common,
    _check_pipeline_args,
    build_decoded_pipeline,
    decode_image_into,
    resolve_shard,
)
from keras_facemargin.errors import ImageFileError
from keras_facemargin.utils.folder_files import RefusedFile, classify_entry, read_regular_file

__all__ = ["IMAGE_EXTENSIONS", "list_identity_folder", "scan_image_folder", "IdentityMerge",
           "merge_identity_roots", "make_folder_dataset", "escape_identity_name", "unescape_identity_name"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_TO_ESCAPE = re.compile("[\\\\\t\n\r\ud800-\udfff]")
_UNESCAPE = re.compile(r"\\(?:x([0-9a-fA-F]{2})|u([0-9a-fA-F]{4})|(.)|$)", re.DOTALL)


def _escape_char(match):
    c = match.group()
    if c in _ESCAPES:
        return _ESCAPES[c]
    code = ord(c)
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def escape_identity_name(name):
    """`name` as one line of UTF-8 text without tabs: reversible by :func:`unescape_identity_name`.

    Backslash -> ``\\\\``, tab -> ``\\t``, newline -> ``\\n``, carriage return -> ``\\r``; an undecodable
    byte of a folder name (the surrogate escape ``U+DC80..U+DCFF`` of byte ``NN``) -> ``\\xNN``; any
    other lone surrogate -> ``\\uNNNN``. Every other character is kept, so ordinary names are unchanged.
    Used for ``identities.tsv``, ``duplicates.tsv`` and messages.

    Example::

        escape_identity_name("new\\nline")                 # 'new\\\\nline'
        escape_identity_name(os.fsdecode(b"caf\\xe9"))     # 'caf\\\\xe9'
    """
    return _TO_ESCAPE.sub(_escape_char, str(name))


def _unescape_match(match):
    byte, code, char = match.groups()
    if byte is not None:
        value = int(byte, 16)
        return chr(0xDC00 + value) if value >= 0x80 else chr(value)
    if code is not None:
        return chr(int(code, 16))
    if char is None:
        raise ValueError("a lone backslash at the end of an escaped identity name")
    inverse = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}
    if char not in inverse:
        raise ValueError(f"unknown escape \\{char} in an escaped identity name")
    return inverse[char]


def unescape_identity_name(text):
    """The identity name :func:`escape_identity_name` wrote as `text` (``ValueError`` on a bad escape).

    Example::

        unescape_identity_name("caf\\\\xe9") == os.fsdecode(b"caf\\xe9")   # True
    """
    return _UNESCAPE.sub(_unescape_match, str(text))


def list_identity_folder(root, extensions=IMAGE_EXTENSIONS, refused: list | None = None, follow_links: bool = False):
    """List ``<root>/<identity>/<image>``: the package's one identity-folder scanner.

    Identities are the non-hidden sub-folders of ``root``, sorted by name (string order: ``"10"``
    precedes ``"2"``); images are the files directly inside them whose lower-cased name ends
    with one of ``extensions``, sorted by name. Identity folders without images are kept (with
    an empty list). Everything else -- top-level files, other files, nested or hidden folders
    -- is returned in ``ignored``. Only two levels are listed (nothing is walked recursively)
    and the error messages name ``root`` only, whatever the tree holds.

    Nothing is opened. An entry that would be an identity or an image but is not a regular file
    (folder) inside ``root`` -- a FIFO, socket or device, a dangling or looping symbolic link, a
    link whose target lies outside ``root`` -- is left out and, with ``refused`` (a list), appended
    there as a :class:`keras_facemargin.utils.folder_files.RefusedFile` (path relative to ``root``;
    a refused identity folder ends with ``/``; reason ``not_a_file`` / ``outside_root`` /
    ``unreadable``). Symbolic links inside ``root`` are followed as before; links out of ``root``
    only with ``follow_links=True``.

    Args:
        root: folder holding one sub-folder per identity.
        extensions: accepted file suffixes (with the dot; compared in lower case).
        refused: optional list receiving the refused entries.
        follow_links: also follow symbolic links (identity folders, images) whose target lies
            outside ``root`` (default: refused, ``outside_root``).

    Returns:
        ``(identities, ignored)``: ``{identity: [paths relative to root]}`` (``"identity/file"``)
        in sorted order, and the sorted relative paths of the ignored entries (folders with a
        trailing ``/``).

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: ``root`` holds no identity sub-folder, or no image in any of them.
        OSError: a folder that cannot be listed.

    Example::

        ids, ignored = list_identity_folder("faces")   # {"alice": ["alice/001.jpg", ...], ...}, ["notes.txt"]
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"Image folder {str(root)!r} does not exist or is not a folder; expected "
            "root/<identity>/<image>.jpg|png."
        )
    exts = tuple(e.lower() for e in extensions)
    root_real = os.path.realpath(root)
    refused = [] if refused is None else refused
    ids, ignored = {}, []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        kind, info = _entry_kind(entry, root_real, follow_links=follow_links)
        if kind == "dir" and not entry.name.startswith("."):
            files = []
            for sub in sorted(os.scandir(entry.path), key=lambda e: e.name):
                rel = f"{entry.name}/{sub.name}"
                sub_kind, sub_info = _entry_kind(sub, root_real, follow_links=follow_links)
                if not sub.name.lower().endswith(exts) or sub_kind == "dir":
                    ignored.append(rel + ("/" if sub_kind == "dir" or sub.is_dir() else ""))
                elif sub_kind == "file":
                    files.append(rel)
                else:
                    refused.append(RefusedFile(rel, sub_kind, sub_info))
            ids[entry.name] = files
        elif kind not in ("dir", "file") and not entry.name.startswith(".") and entry.is_dir():
            refused.append(RefusedFile(entry.name + "/", kind, info))  # a link to a folder out of root
        else:  # top-level files (FIFOs, dangling links, ...: never an identity, never opened), hidden entries
            ignored.append(entry.name + ("/" if entry.is_dir() else ""))
    if not ids:
        raise ValueError(f"No identity sub-folders in {str(root)!r}; expected root/<identity>/<image>.jpg.")
    if not any(ids.values()):
        raise ValueError(f"No images with extensions {exts} under {str(root)!r}.")
    return ids, sorted(ignored)


def _entry_kind(entry, root_real, follow_dirs=True, follow_links=False):
    """:func:`~keras_facemargin.utils.folder_files.classify_entry` with ``os.scandir``'s cached type
    for the common case (a plain folder or regular file: no extra system call)."""
    if not entry.is_symlink():
        if entry.is_dir(follow_symlinks=False):
            return "dir", None
        if entry.is_file(follow_symlinks=False):
            return "file", None
    return classify_entry(entry.path, root_real, follow_dirs=follow_dirs, follow_links=follow_links)


def scan_image_folder(root, extensions=IMAGE_EXTENSIONS, ignored: list | None = None, refused: list | None = None,
                      follow_links: bool = False):
    """List the images of an identity-per-folder tree as paths and labels.

    The classes, order and file selection of :func:`list_identity_folder`.

    Args:
        root: folder holding one sub-folder per identity.
        extensions: accepted file extensions (lower case, with dot).
        ignored: optional list; the entries that are not images of an identity folder
            (top-level files, other files, nested or hidden folders; paths relative to
            ``root``, folders with a trailing ``/``) are appended to it, sorted.
        refused: optional list receiving :func:`list_identity_folder`'s refused entries (never opened).
        follow_links: as in :func:`list_identity_folder`.

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
    ids, skipped = list_identity_folder(root, extensions, refused=refused, follow_links=follow_links)
    if ignored is not None:
        ignored.extend(skipped)
    class_names = list(ids)
    paths, labels = [], []
    for c, name in enumerate(class_names):
        paths.extend(str(root / rel) for rel in ids[name])
        labels.extend([c] * len(ids[name]))
    return paths, np.asarray(labels, np.int64), class_names


@dataclass
class IdentityMerge:
    """Result of :func:`merge_identity_roots`.

    Attributes:
        names: identities with at least one kept image, sorted by name (the label order).
        members: ``{identity: [(root, row), ...]}``: its kept images, root by root, in row order.
        kept: per root, a bool list: ``False`` for a row dropped as a duplicate.
        duplicates: ``[(identity, file name, (kept root, kept row), (dropped root, dropped row))]``
            in root and row order.
    """

    names: list
    members: dict
    kept: list
    duplicates: list


def merge_identity_roots(roots) -> IdentityMerge:
    """Merge identity-folder roots into one label space by identity name: the package's one rule.

    Used by :func:`~keras_facemargin.data.identity_folders.load_identity_folders` and by
    :class:`~keras_facemargin.data.training_set.TrainingSet` (``merge_identities="by_name"``):

    * an identity is its folder name: the same name in several roots is one person (CelebA
      folders are CelebA identity numbers in every set);
    * an image is ``(identity, file name)``: met again in a later root it is a duplicate, and
      the first copy (earliest root, earliest row) is kept;
    * labels follow the sorted names (string order), so they do not depend on the order of the
      roots; only which copy of a duplicate is kept does.

    Rows the caller leaves out (excluded identities, unreadable or bad files) are not passed
    in: they neither count nor shadow a later copy. What to do with identities that keep too
    few images (``min_images``) and how to order the rows is the caller's.

    Args:
        roots: per root, a sequence of ``(identity, file name)`` rows in that root's order.

    Returns:
        :class:`IdentityMerge`.

    Example::

        m = merge_identity_roots([[("7", "1.png"), ("7", "2.png")], [("7", "2.png"), ("8", "3.png")]])
        m.names, m.duplicates   # ['7', '8'], [('7', '2.png', (0, 1), (1, 0))]
    """
    seen, members, kept, duplicates = {}, {}, [], []
    for k, rows in enumerate(roots):
        keep = []
        for row, (ident, fname) in enumerate(rows):
            key = (ident, fname)
            if key in seen:
                duplicates.append((ident, fname, seen[key], (k, row)))
                keep.append(False)
                continue
            seen[key] = (k, row)
            members.setdefault(ident, []).append((k, row))
            keep.append(True)
        kept.append(keep)
    return IdentityMerge(sorted(members), members, kept, duplicates)


def make_folder_dataset(root, batch_size: int, image_size=None, shuffle: bool = True, seed: int = 0,
                        augment_flip: bool = True, drop_remainder: bool = True, repeat: bool = False,
                        num_parallel_calls=tf.data.AUTOTUNE, on_error: str = "skip", shard="auto",
                        report: BadRecordReport | None = None,
                        chunk_size: int = 32, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS,
                        follow_links: bool = False) -> tf.data.Dataset:
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
            :func:`keras_facemargin.data.formats.recordio.make_dataset`.
        max_image_pixels: largest ``height * width`` decoded (read from the header first); files over
            :func:`~keras_facemargin.utils.images.image_file_byte_cap` bytes are bad records, never read.
        follow_links: as in :func:`list_identity_folder` (entries refused there are bad records
            with reason ``not_a_file`` / ``outside_root``, never opened).

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
    refused = []
    paths, labels, class_names = scan_image_folder(root, refused=refused, follow_links=follow_links)
    byte_cap = image_file_byte_cap(cap)
    for r in refused:  # never opened: FIFOs, sockets, devices, links out of root, ...
        err = ImageFileError(os.path.join(str(root), r.path.rstrip("/")), None, r.reason, r.detail)
        if on_error == "raise":
            raise err
        report.add_error(err, log=False)
    valid = np.ones(len(paths), bool)
    for i, p in enumerate(paths):
        try:
            size = os.stat(p).st_size
            why = "empty file" if size == 0 else None
            reason = "bad_image"
            if size > byte_cap:
                why, reason = f"file of {size:,} bytes exceeds the cap of {byte_cap:,} bytes (not read)", "too_large"
        except OSError as e:
            why, reason = f"unreadable file ({e})", "bad_image"
        if why is not None:
            valid[i] = False
            err = ImageFileError(p, None, reason, why)
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
            data, problem = read_regular_file(paths[i], byte_cap)
            reason, why = ("bad_image", None) if problem is None else problem
            if problem is None:
                why = decode_image_into(data, out[k], resize, cap)
            if why is not None:
                err = ImageFileError(paths[i], None, "bad_image" if reason == "unreadable" else reason, why)
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
    data, problem = read_regular_file(path, image_file_byte_cap(max_pixels))
    return None if problem is not None else decode_image(data, max_pixels)[0]
