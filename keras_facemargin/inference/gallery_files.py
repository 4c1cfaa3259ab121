"""Validation of gallery files read from outside: the file kind, bounded JSON, the arrays, legacy ``.npz``.

Every check raises :class:`~keras_facemargin.errors.GalleryError` naming the file, with ``reason``:

* ``"not_a_file"``: the path is a directory, a FIFO or a device (refused before any read, so a FIFO
  cannot block);
* ``"gallery_format"``: not a gallery (neither SQLite nor ``.npz``), a damaged one, or one whose
  contents are inconsistent: configuration missing or not a JSON object, JSON nested deeper than
  :data:`MAX_JSON_DEPTH` or longer than :data:`MAX_JSON_BYTES`, counts or dimensions that do not
  agree, templates that are not finite or not unit norm (:data:`UNIT_NORM_TOLERANCE`), a probe
  (model fingerprint) that is not finite;
* ``"gallery_limit"``: a legacy ``.npz`` member above :data:`MAX_MEMBER_BYTES` or inflating more than
  :data:`MAX_DEFLATE_RATIO` times (a zip bomb is refused from the zip directory, before decompression).

Example::

    kind = gallery_kind("people.db")                 # "sqlite" or "npz"
    arrays, meta = read_legacy_npz("people.npz")     # bounded, no pickle
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import zipfile
import zlib

import numpy as np

from keras_facemargin.errors import GalleryError
from keras_facemargin.utils.untrusted import plain_text, short_repr

__all__ = ["gallery_kind", "check_regular_file", "loads_bounded", "check_config", "check_templates",
           "check_probe", "check_identity_name", "read_legacy_npz", "MAX_JSON_DEPTH", "MAX_JSON_BYTES",
           "MAX_MEMBER_BYTES", "MAX_DEFLATE_RATIO", "UNIT_NORM_TOLERANCE", "MAX_EMBEDDING_DIM", "MAX_NAME_CHARS"]

SQLITE_MAGIC = b"SQLite format 3\x00"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
#: JSON (configuration, metadata) nesting and size limits.
MAX_JSON_DEPTH = 32
MAX_JSON_BYTES = 1 << 20
#: Legacy ``.npz``: largest member (declared uncompressed size) and largest deflate ratio.
MAX_MEMBER_BYTES = 1 << 31
MAX_DEFLATE_RATIO = 200
_RATIO_FREE_BYTES = 1 << 20  # members below this size are not ratio-checked
#: A template's norm must be within this of 1.
UNIT_NORM_TOLERANCE = 1e-3
MAX_EMBEDDING_DIM = 65536
MAX_NAME_CHARS = 1024
_LEGACY_MEMBERS = {"embeddings": ("f", 2), "counts": ("iu", 1), "identities": ("U", 1), "probe": ("f", 1),
                   "metadata": ("U", 0)}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)


def check_regular_file(path) -> os.stat_result:
    """``os.stat`` of ``path`` if it is a regular file (following links).

    Raises:
        FileNotFoundError: no such path.
        GalleryError: ``not_a_file`` (a directory, FIFO, socket or device).
    """
    st = os.stat(path)  # FileNotFoundError for a missing path
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (FIFO, socket or device)"
        raise GalleryError("not_a_file", f"the gallery path is {kind}; expected a gallery file (SQLite, or a legacy "
                           ".npz)", path)
    return st


def gallery_kind(path) -> str:
    """``"sqlite"`` or ``"npz"``, from the file's first bytes (never from its name).

    Raises:
        FileNotFoundError: no such path. GalleryError: ``not_a_file``, or ``gallery_format`` (neither).
    """
    check_regular_file(path)
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head == SQLITE_MAGIC:
        return "sqlite"
    if head[:4] in ZIP_MAGICS:
        return "npz"
    raise GalleryError("gallery_format", "not a readable gallery: neither a SQLite gallery nor a legacy .npz "
                       f"(first bytes {short_repr(head[:8])})", path)


def loads_bounded(text, what, path):
    """``json.loads(text)`` with :data:`MAX_JSON_BYTES` and :data:`MAX_JSON_DEPTH` enforced first.

    Raises:
        GalleryError: ``gallery_format`` naming ``what``: too long, too deep, or not JSON.
    """
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise GalleryError("gallery_format", f"{what} is not UTF-8 text", path) from None
    if not isinstance(text, str):
        raise GalleryError("gallery_format", f"{what} is not text ({type(text).__name__})", path)
    if len(text) > MAX_JSON_BYTES:
        raise GalleryError("gallery_format", f"{what} holds {len(text):,} characters, more than {MAX_JSON_BYTES:,}",
                           path)
    depth = deepest = 0
    for ch in re.findall(r"[\[\]{}]", _STRING.sub('""', text)):
        depth += 1 if ch in "[{" else -1
        deepest = max(deepest, depth)
    if deepest > MAX_JSON_DEPTH:
        raise GalleryError("gallery_format", f"{what} is JSON nested {deepest} deep, more than {MAX_JSON_DEPTH}", path)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:
        raise GalleryError("gallery_format", f"{what} is not valid JSON ({plain_text(str(err))})", path) from None


def check_config(config, path) -> dict:
    """The verifier configuration of a gallery: a JSON object with ``model`` and ``embedding_dim``.

    Raises:
        GalleryError: ``gallery_format``.
    """
    if not isinstance(config, dict):
        raise GalleryError("gallery_format", "the gallery's model configuration is missing or not a JSON object "
                           f"(got {type(config).__name__})", path)
    dim = config.get("embedding_dim")
    if isinstance(dim, bool) or not isinstance(dim, int) or not 0 < dim <= MAX_EMBEDDING_DIM:
        raise GalleryError("gallery_format", "the configuration's embedding_dim must be an integer in "
                           f"[1, {MAX_EMBEDDING_DIM}], got {short_repr(dim)}", path)
    if not isinstance(config.get("model"), str):
        raise GalleryError("gallery_format", f"the configuration's model must be a name, got "
                           f"{short_repr(config.get('model'))}", path)
    return config


def check_identity_name(name, path=None) -> str:
    """An identity name: a non-empty string of at most :data:`MAX_NAME_CHARS`, without NUL.

    Raises:
        GalleryError: ``gallery_format`` (read from a file) / ValueError (``path`` None: a caller's argument).
    """
    problem = None
    if not isinstance(name, str):
        problem = f"an identity name must be a string, got {type(name).__name__}"
    elif not name.strip():
        problem = "an identity name must not be empty"
    elif len(name) > MAX_NAME_CHARS:
        problem = f"identity name of {len(name):,} characters, more than {MAX_NAME_CHARS}"
    elif "\x00" in name:
        problem = f"identity name {plain_text(name)!r} holds a NUL character"
    if problem is None:
        return name
    if path is None:
        raise ValueError(problem)
    raise GalleryError("gallery_format", problem, path)


def check_templates(names, embeddings, counts, dim, path):
    """Names unique, ``embeddings`` ``(n, dim)`` finite and unit norm, ``counts`` ``(n,)`` positive.

    Raises:
        GalleryError: ``gallery_format``, saying which row and what was expected.
    """
    n = len(names)
    if embeddings.ndim != 2 or embeddings.shape != (n, dim):
        raise GalleryError("gallery_format", f"templates of shape {embeddings.shape}, expected ({n}, {dim}) for {n} "
                           f"identities of embedding_dim {dim}", path)
    if counts.shape != (n,):
        raise GalleryError("gallery_format", f"{counts.shape[0] if counts.ndim == 1 else counts.shape} image counts "
                           f"for {n} identities", path)
    for name in names:
        check_identity_name(name, path)
    if len(set(names)) != n:
        raise GalleryError("gallery_format", "an identity name appears twice", path)
    if n and np.any(counts < 1):
        raise GalleryError("gallery_format", f"identity {plain_text(names[int(np.argmin(counts))])!r} has image "
                           f"count {int(counts.min())}, expected >= 1", path)
    if n:
        finite = np.isfinite(embeddings).all(axis=1)
        if not finite.all():
            bad = int(np.argmin(finite))
            raise GalleryError("gallery_format", f"the template of {plain_text(names[bad])!r} is not finite", path)
        norms = np.linalg.norm(embeddings.astype(np.float64), axis=1)
        off = np.abs(norms - 1.0)
        if off.max() > UNIT_NORM_TOLERANCE:
            bad = int(np.argmax(off))
            raise GalleryError("gallery_format", f"the template of {plain_text(names[bad])!r} has norm "
                               f"{norms[bad]:.6g}; templates must be unit norm (within {UNIT_NORM_TOLERANCE})", path)


def check_probe(probe, dim, path) -> np.ndarray:
    """The model fingerprint (the embedding of a fixed image): ``(dim,)``, finite, non-zero.

    Raises:
        GalleryError: ``gallery_format``.
    """
    probe = np.asarray(probe)
    if probe.shape != (dim,):
        raise GalleryError("gallery_format", f"model fingerprint (probe) of shape {probe.shape}, expected ({dim},)",
                           path)
    if probe.dtype.kind != "f" or not np.all(np.isfinite(probe)) or not np.linalg.norm(probe) > 0:
        raise GalleryError("gallery_format", "the model fingerprint (probe) is not a finite, non-zero embedding",
                           path)
    return probe.astype(np.float32)


def _member_bytes(zf, info, path) -> bytes:
    if info.flag_bits & 0x1:
        raise GalleryError("gallery_format", f"member {plain_text(info.filename)} is encrypted", path)
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise GalleryError("gallery_format", f"member {plain_text(info.filename)} uses compression method "
                           f"{info.compress_type}; only stored and deflate members are read", path)
    if info.file_size > MAX_MEMBER_BYTES:
        raise GalleryError("gallery_limit", f"member {plain_text(info.filename)} declares {info.file_size:,} bytes, "
                           f"more than {MAX_MEMBER_BYTES:,}", path)
    if info.compress_type == zipfile.ZIP_DEFLATED and info.file_size > _RATIO_FREE_BYTES \
            and info.file_size > MAX_DEFLATE_RATIO * max(info.compress_size, 1):
        raise GalleryError("gallery_limit", f"member {plain_text(info.filename)} inflates {info.compress_size:,} bytes "
                           f"to {info.file_size:,}, a ratio above {MAX_DEFLATE_RATIO} (a zip bomb?)", path)
    buf, got = bytearray(info.file_size), 0
    try:
        with zf.open(info) as fh:
            while got < info.file_size:
                chunk = fh.read(min(1 << 24, info.file_size - got))
                if not chunk:
                    break
                buf[got:got + len(chunk)] = chunk
                got += len(chunk)
            if got == info.file_size and fh.read(1):
                raise GalleryError("gallery_format", f"member {plain_text(info.filename)} holds more than its "
                                   "declared size", path)
    except GalleryError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error, RuntimeError, NotImplementedError, ValueError,
            OverflowError) as err:
        raise GalleryError("gallery_format", f"member {plain_text(info.filename)} cannot be read "
                           f"({type(err).__name__}: {plain_text(str(err))})", path) from None
    if got != info.file_size:
        raise GalleryError("gallery_format", f"member {plain_text(info.filename)} is truncated", path)
    return bytes(buf)


def _npy_array(data, name, kinds, ndim, path) -> np.ndarray:
    fh = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"npy version {version}")
    except (ValueError, SyntaxError, TypeError, OverflowError, EOFError) as err:
        raise GalleryError("gallery_format", f"{name} is not a valid .npy array ({plain_text(str(err))}; "
                           "allow_pickle is never used)", path) from None
    if dtype.hasobject or dtype.kind not in kinds or len(shape) != ndim or fortran:
        raise GalleryError("gallery_format", f"{name} has dtype {dtype} and shape {shape}, expected a {ndim}-d array "
                           f"of kind {kinds!r} (Object arrays cannot be loaded: allow_pickle is never used)", path)
    expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if expected != len(data) - fh.tell():
        raise GalleryError("gallery_format", f"{name} declares shape {shape} ({expected:,} bytes) but holds "
                           f"{len(data) - fh.tell():,} bytes", path)
    return np.frombuffer(data, dtype=dtype, offset=fh.tell()).reshape(shape).copy()


def read_legacy_npz(path):
    """The arrays and JSON metadata of a legacy ``.npz`` gallery, bounded and without pickle.

    Every member's declared size and deflate ratio is checked from the zip directory before any
    decompression; each ``.npy`` header's shape and dtype are checked against the member's size.

    Returns:
        ``(arrays, metadata)``: ``embeddings``, ``counts``, ``identities``, ``probe`` and the metadata dict.

    Raises:
        FileNotFoundError: no such file. GalleryError: ``not_a_file``, ``gallery_format``, ``gallery_limit``.

    Example::

        arrays, meta = read_legacy_npz("people.npz")
    """
    check_regular_file(path)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = {}
            for info in zf.infolist()[:1000]:
                infos.setdefault(info.filename, info)
            missing = [k for k in _LEGACY_MEMBERS if f"{k}.npy" not in infos]
            if missing:
                raise GalleryError("gallery_format", f"not a keras_facemargin gallery (missing {missing})", path)
            total = sum(infos[f"{k}.npy"].file_size for k in _LEGACY_MEMBERS)
            if total > MAX_MEMBER_BYTES:
                raise GalleryError("gallery_limit", f"members declare {total:,} bytes in all, more than "
                                   f"{MAX_MEMBER_BYTES:,}", path)
            for k in _LEGACY_MEMBERS:  # every directory entry checked before any member is inflated
                info = infos[f"{k}.npy"]
                if info.file_size > MAX_MEMBER_BYTES or (
                        info.compress_type == zipfile.ZIP_DEFLATED and info.file_size > _RATIO_FREE_BYTES
                        and info.file_size > MAX_DEFLATE_RATIO * max(info.compress_size, 1)):
                    _member_bytes(zf, info, path)  # raises the limit error
            arrays = {k: _npy_array(_member_bytes(zf, infos[f"{k}.npy"], path), f"member {k}.npy", kinds, nd, path)
                      for k, (kinds, nd) in _LEGACY_MEMBERS.items()}
    except GalleryError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, OverflowError,
            NotImplementedError, UnicodeDecodeError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise GalleryError("gallery_format", f"not a readable gallery .npz ({type(err).__name__}: "
                           f"{plain_text(str(err))})", path) from None
    meta = loads_bounded(str(arrays.pop("metadata")), "the metadata", path)
    if not isinstance(meta, dict):
        raise GalleryError("gallery_format", "the metadata is not a JSON object", path)
    return arrays, meta
