"""insightface ``.bin`` pair-verification sets and a runner for all of them.

File layout (insightface ``recognition/arcface_*``, ``eval/verification.py`` /
``utils_callbacks.py``; written by its ``lfw2pack.py``-style scripts with
``pickle.dump((bins, issame_list), f, protocol=pickle.HIGHEST_PROTOCOL)``)::

    <name>.bin = pickle of (bins, issame_list)
        bins        : list of 2N encoded images (JPEG/PNG ``bytes``), pair i = (bins[2i], bins[2i+1])
        issame_list : N booleans (python list; mxnet-era files may hold a numpy bool array)

Known names: ``lfw``, ``cfp_fp``, ``cfp_ff``, ``agedb_30``, ``calfw``, ``cplfw``,
``vgg2_fp`` (:data:`KNOWN_BIN_SETS`). The images are 112x112 ArcFace-aligned crops.
Protocol: insightface's 10 contiguous folds in file order (LFW 600 pairs per fold,
CFP 700, AgeDB-30 600), accuracy with the threshold chosen on the other 9 folds,
see :mod:`keras_facemargin.evaluation.verification`.

Security: a pickle can execute arbitrary code when loaded. :func:`load_bin` first walks the
opcodes in pure Python (memo indices must be the next free or an already-set slot; no
persistent ids, extension codes, class instantiation, out-of-band buffers, dicts or sets),
then unpickles with the restricted unpickler of :mod:`keras_facemargin.utils.safe_pickle`
whose only globals are those of
:data:`BIN_PICKLE_ALLOWLIST` -- numpy's array reconstruction (``_reconstruct``,
``ndarray``, ``dtype``, ``_frombuffer``, ``scalar``) and ``_codecs.encode`` -- and each of
them resolves to a stand-in of this module, **not** to numpy or ``_codecs``: bool arrays are
built with ``np.frombuffer`` from a validated shape and byte string, no numpy state is set
from file data, and ``encode`` only does latin-1. Everything else (``os.system``,
``builtins.eval``, ...) raises :class:`UnsafeBinError` before anything is called. The result
is then validated (structure, types, lengths, no shared image objects), every image header
is checked (JPEG/PNG/BMP/WebP, ``max_image_pixels``) and the output size bounded before
anything is decoded. All failures are :class:`~keras_facemargin.errors.BinSetError`
(a ``ValueError``) naming the file.

Besides ``.bin`` files, :func:`find_verification_sets` recognises image-folder
sets (LFW ``pairs.txt`` + ``images/``, CFP ``Protocol/`` + ``Split/``), loaded by
:mod:`keras_facemargin.evaluation.pairs_sets`.

Example::

    images, issame = load_bin("faces_emore/lfw.bin")         # (12000,112,112,3), (6000,)
    results = evaluate_verification_sets(model, "faces_emore")  # {name: VerificationResult}
    print(format_table(results))
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from keras_facemargin.utils.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    check_image_bytes,
    check_max_pixels,
    decode_image,
)
from keras_facemargin.errors import BinSetError
from keras_facemargin.evaluation import pairs_sets
from keras_facemargin.evaluation.pair_set import PairSet, _check_image_size, _resize  # noqa: F401 (re-exported)
from keras_facemargin.evaluation.verification import (
    VerificationResult,
    embed_images,
    kfold_verification,
    pair_scores,
)
from keras_facemargin.errors import UnsafeBinError  # noqa: F401  (re-exported)
from keras_facemargin.utils.safe_pickle import PicklePolicy, RestrictedUnpickler, scan_pickle

__all__ = [
    "KNOWN_BIN_SETS",
    "BIN_PICKLE_ALLOWLIST",
    "BinSetError",
    "UnsafeBinError",
    "PairSet",
    "VerificationSource",
    "load_bin",
    "write_bin",
    "bin_to_pair_set",
    "find_verification_sets",
    "load_verification_set",
    "evaluate_pair_set",
    "evaluate_verification_sets",
]

#: insightface's standard ``.bin`` verification sets, in the order they are usually reported.
KNOWN_BIN_SETS = ("lfw", "cfp_fp", "cfp_ff", "agedb_30", "calfw", "cplfw", "vgg2_fp")


class _Refused(Exception):
    """Raised inside the unpickler by the stand-ins below; turned into a BinSetError naming the file."""


# ------------------------------------------------------------------ pickle allowlist
# Each admitted global resolves to a stand-in defined here, never to the real numpy / codecs
# object, so no state of a real numpy object is ever set from the file. Arrays are built by
# np.frombuffer from a validated shape, the one admitted dtype (bool) and a byte string whose
# length matches. Why each entry is needed:
#
# * ``numpy[._]core.multiarray._reconstruct`` + ``numpy.ndarray``: protocols 0-4 pickle a numpy
#   array (mxnet-era ``issame_list``) as ``_reconstruct(ndarray, (0,), b'b')`` followed by
#   ``BUILD (version, shape, dtype, is_fortran, raw bytes)`` -> :class:`_PendingArray`.
# * ``numpy.dtype``: the dtype inside that state, ``dtype('b1', False, True)`` followed by a
#   ``BUILD`` of its state tuple -> :class:`_Dtype` (only ``b1``; the state is ignored).
# * ``numpy[._]core.numeric._frombuffer``: protocol 5 pickles the same array as
#   ``_frombuffer(raw bytes, dtype, shape, order)`` -> :func:`_frombuffer`.
# * ``numpy[._]core.multiarray.scalar``: a list of ``numpy.bool_`` labels pickles each one as
#   ``scalar(dtype('b1'), b'\x01')`` -> :func:`_scalar` (a Python bool).
# * ``_codecs.encode``: Python 3 pickles ``bytes`` at protocols 0-2 as
#   ``_codecs.encode(str, 'latin1')`` -> :func:`_latin1_encode` (latin-1 only).
#
# Everything else, including ``builtins`` and every other numpy name, raises UnsafeBinError.

class _NdarrayMarker:
    __slots__ = ()

    def __reduce__(self):  # pragma: no cover - never pickled
        raise TypeError("not picklable")


_NDARRAY = _NdarrayMarker()
_BOOL_CODES = ("b1", "?", "|b1")
_MAX_NDIM = 8


def _text(v):
    return v.decode("latin-1") if isinstance(v, (bytes, bytearray)) else v


class _Dtype:
    """Stand-in for ``numpy.dtype(code, align, copy)``: only the bool dtype is admitted."""

    __slots__ = ("code",)

    def __init__(self, code=None, align=False, copy=True):
        code = _text(code)
        if not isinstance(code, str) or code not in _BOOL_CODES:
            raise _Refused(f"numpy dtype {code!r} is not admitted (`issame_list` must be a 1-D bool array, "
                           "dtype 'b1')")
        self.code = "b1"

    def __setstate__(self, state):  # the dtype's pickled state is checked for shape and ignored
        if not isinstance(state, tuple) or len(state) > 9:
            raise _Refused("malformed numpy dtype state")


def _bool_array(raw, shape, fortran=False):
    if not isinstance(shape, tuple) or len(shape) > _MAX_NDIM or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d for d in shape):
        raise _Refused(f"numpy array shape {shape!r} is not a tuple of at most {_MAX_NDIM} sizes >= 0")
    if not isinstance(raw, (bytes, bytearray)):
        raise _Refused(f"numpy array data is {type(raw).__name__}, expected bytes (object arrays are refused)")
    n = 0 if 0 in shape else 1
    if n and any(d > len(raw) for d in shape):
        n = -1
    else:
        for d in shape:
            n *= d
    if n != len(raw):
        raise _Refused(f"numpy bool array of shape {shape} needs {n} bytes of data, the pickle holds {len(raw)}")
    u8 = np.frombuffer(bytes(raw), np.uint8)
    if u8.size and u8.max() > 1:
        raise _Refused("numpy bool array holds bytes other than 0 and 1")
    return u8.astype(bool).reshape(shape, order="F" if fortran else "C")


class _PendingArray:
    """Stand-in for ``numpy.core.multiarray._reconstruct(...)``: the array is built at ``BUILD``."""

    __slots__ = ("array",)

    def __setstate__(self, state):
        if getattr(self, "array", None) is not None:
            raise _Refused("numpy array state set twice")
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Refused("malformed numpy array state (expected (version, shape, dtype, is_fortran, data))")
        if len(state) == 5:
            version, shape, dtype, fortran, raw = state
            if version != 1:
                raise _Refused(f"numpy array state version {version!r}, expected 1")
        else:
            shape, dtype, fortran, raw = state
        if not isinstance(dtype, _Dtype):
            raise _Refused("numpy array state without an admitted dtype")
        self.array = _bool_array(raw, shape, bool(fortran) if isinstance(fortran, (bool, int)) else False)


def _reconstruct(cls, shape=None, typecode=None):
    if cls is not _NDARRAY:
        raise _Refused("numpy _reconstruct of something other than numpy.ndarray")
    return _PendingArray()


def _frombuffer(buf, dtype, shape, order="C"):
    if not isinstance(dtype, _Dtype):
        raise _Refused("numpy _frombuffer without an admitted dtype")
    out = _PendingArray()
    out.array = _bool_array(buf, shape, _text(order) == "F")
    return out


def _scalar(dtype, data=None):
    if not isinstance(dtype, _Dtype) or not isinstance(data, (bytes, bytearray)) or len(data) != 1 \
            or data[0] > 1:
        raise _Refused("numpy scalar other than a bool of one byte 0 or 1")
    return bool(data[0])


def _latin1_encode(obj, encoding="utf-8", errors="strict"):
    if not isinstance(obj, str) or _text(encoding) not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode is admitted for latin-1 strings only (got encoding {encoding!r})")
    return obj.encode("latin-1")


def _allowed_globals():
    allowed = {("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): _Dtype,
               ("_codecs", "encode"): _latin1_encode}
    for mod in ("numpy.core", "numpy._core"):
        allowed[(mod + ".multiarray", "_reconstruct")] = _reconstruct
        allowed[(mod + ".multiarray", "scalar")] = _scalar
        allowed[(mod + ".numeric", "_frombuffer")] = _frombuffer
    return allowed


_ALLOWED_GLOBALS = _allowed_globals()
#: The pickle globals a ``.bin`` may name (each resolves to a validating stand-in, see above).
BIN_PICKLE_ALLOWLIST = tuple(sorted(f"{m}.{n}" for m, n in _ALLOWED_GLOBALS))

# Opcodes a (bins, issame_list) pickle never needs: persistent ids, the extension registry,
# class instantiation, out-of-band buffers, and dicts / sets (hash-colliding keys would make
# building them quadratic).
_REFUSED_OPCODES = frozenset(["PERSID", "BINPERSID", "EXT1", "EXT2", "EXT4", "INST", "OBJ", "NEWOBJ",
                              "NEWOBJ_EX", "NEXT_BUFFER", "READONLY_BUFFER", "EMPTY_DICT", "DICT",
                              "SETITEM", "SETITEMS", "EMPTY_SET", "ADDITEMS", "FROZENSET"])


def _pickle_error(source, refusal):
    """The `BinSetError` for a refusal of the restricted unpickler (`UnsafeBinError`: not admitted)."""
    where = None if refusal.pos is None else f"byte offset {refusal.pos}"
    if refusal.kind == "opcode":
        return UnsafeBinError(source, f"pickle opcode {refusal.value} is not admitted (a verification .bin "
                              "holds only image bytes and booleans)", where)
    if refusal.kind == "global":
        module, name = refusal.value
        return UnsafeBinError(
            source,
            f"refusing to load global '{module}.{name}' from the pickle; a verification .bin holds "
            "only image bytes and booleans (only numpy bool-array reconstruction is admitted). The "
            "file is not an insightface .bin or was tampered with.")
    if refusal.kind == "unreadable":
        return BinSetError(source, f"not a readable pickle ({type(refusal.value).__name__}: {refusal.value})")
    return (UnsafeBinError if refusal.unsafe else BinSetError)(source, refusal.detail, where)


# Memo indices must be the next free or an already-set slot; BUILD sets the state of the numpy
# stand-ins only; Python 2 strings stay bytes.
_BIN_PICKLE = PicklePolicy(admitted=_ALLOWED_GLOBALS, error=_pickle_error, refused_opcodes=_REFUSED_OPCODES,
                           check_memo=True, build_types=(_Dtype, _PendingArray), encoding="bytes")


@dataclass
class VerificationSource:
    """A verification set found on disk (see :func:`find_verification_sets`).

    Attributes:
        name: set name used in result tables / log keys.
        kind: ``"bin"``, ``"lfw_folder"`` or ``"cfp_folder"``.
        path: the ``.bin`` file or the dataset folder.
        options: extra loader options (``{"protocol": "FP"}`` for CFP folders).
    """

    name: str
    kind: str
    path: str
    options: dict = field(default_factory=dict)


# ----------------------------------------------------------------- .bin I/O
def _validate_bin(obj, source, max_images):
    """Check the unpickled structure (no image decoded yet); returns ``(bins, issame bool (N,))``."""
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise BinSetError(source, f"expected a pickled (bins, issame_list) pair, got {type(obj).__name__}"
                          + (f" of length {len(obj)}" if isinstance(obj, (tuple, list)) else ""), "top level")
    bins, issame = obj
    if not isinstance(bins, (list, tuple)):
        raise BinSetError(source, f"`bins` must be a list of encoded images, got {type(bins).__name__}", "bins")
    bad = [i for i, b in enumerate(bins) if not isinstance(b, (bytes, bytearray))]
    if bad:
        raise BinSetError(source, f"{len(bad)} entries of `bins` are not bytes (first at index {bad[0]}: "
                          f"{type(bins[bad[0]]).__name__})", f"bins[{bad[0]}]")
    if isinstance(issame, _PendingArray):
        same = getattr(issame, "array", None)
        if same is None:
            raise BinSetError(source, "`issame_list` is a numpy array without data", "issame_list")
        if same.ndim != 1:
            raise BinSetError(source, f"`issame_list` array must be 1-D bool, got bool {same.shape}", "issame_list")
    elif isinstance(issame, (list, tuple)):
        badl = [i for i, v in enumerate(issame) if not isinstance(v, bool)]
        if badl:
            raise BinSetError(source, f"`issame_list` must hold booleans; entry {badl[0]} is "
                              f"{type(issame[badl[0]]).__name__} ({len(badl)} non-boolean entries)",
                              f"issame_list[{badl[0]}]")
        same = np.array(issame, dtype=bool).reshape(-1)
    else:
        raise BinSetError(source, f"`issame_list` must be a list or a 1-D bool array, got "
                          f"{type(issame).__name__}", "issame_list")
    if len(bins) != 2 * same.size:
        raise BinSetError(source, f"{len(bins)} images for {same.size} pairs; expected 2 images per pair "
                          f"({2 * same.size})", "bins")
    if same.size == 0:
        raise BinSetError(source, "the set holds no pairs", "issame_list")
    if len(bins) > max_images:
        raise BinSetError(source, f"{len(bins):,} images exceed max_images={max_images:,}", "bins")
    seen = {}
    for i, b in enumerate(bins):  # a memo reference repeats an earlier image without storing it again
        j = seen.setdefault(id(b), i)
        if j != i:
            raise BinSetError(source, f"bins[{i}] is a pickle memo reference to bins[{j}]; every image must "
                              "be stored in the file (insightface's writers never share one)", f"bins[{i}]")
    return bins, same


def load_bin(path, image_size=(112, 112), max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS,
             max_images=200_000, max_output_bytes=4 << 30):
    """Load an insightface verification ``.bin`` safely.

    The pickle is first walked opcode by opcode (memo indices bounded, no dict / set / class
    instantiation opcodes), then unpickled with the globals of :data:`BIN_PICKLE_ALLOWLIST`
    only, each resolving to a validating stand-in (nothing of numpy's state-setting runs on file
    data). Every image header is read (format JPEG/PNG/BMP/WebP, pixel cap) before any decoding,
    and the output size is checked before it is allocated.

    Args:
        path: the ``.bin`` file.
        image_size: ``(height, width)`` (or an int) to resize every image to; ``None`` keeps
            the stored size (all images must then share it).
        max_image_pixels: largest ``height * width`` of one stored image.
        max_images: largest number of images (``2 * pairs``).
        max_output_bytes: largest size of the returned uint8 image array.

    Returns:
        ``(images, issame)``: uint8 RGB ``(2N, H, W, 3)`` (pair ``i`` = rows ``2i, 2i+1``) and
        bool ``(N,)``.

    Raises:
        OSError: the file is missing or unreadable.
        UnsafeBinError: the pickle names a non-admitted global or opcode (nothing is executed).
        BinSetError: anything else wrong with the bytes: not a pickle, wrong structure, memo
            references, an undecodable or over-cap image, inconsistent sizes, a limit exceeded.
            The message names the file and the field (``bins[7]``, ``issame_list``) or offset.

    Example::

        images, issame = load_bin("faces_emore/agedb_30.bin")
    """
    source = os.fspath(path)
    size = _check_image_size(image_size)
    max_image_pixels = check_max_pixels(max_image_pixels)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"verification .bin not found: {source}")
    with open(source, "rb") as f:
        data = f.read()
    scan_pickle(data, _BIN_PICKLE, source)
    try:
        obj = RestrictedUnpickler(data, _BIN_PICKLE, source).load()
    except BinSetError:
        raise
    except _Refused as exc:
        raise BinSetError(source, str(exc), "issame_list") from None
    except Exception as exc:  # noqa: BLE001 - truncated / not a pickle / a stand-in refused the data
        raise BinSetError(source, f"not a readable pickle ({type(exc).__name__}: {exc})") from None
    del data
    bins, same = _validate_bin(obj, source, int(max_images))
    shapes = []
    for i, b in enumerate(bins):
        hdr, why = check_image_bytes(b, max_image_pixels)
        if why is not None:
            raise BinSetError(source, f"image {i} could not be decoded ({why})", f"bins[{i}]")
        shapes.append((hdr.height, hdr.width))
    if size is None and len(set(shapes)) != 1:
        raise BinSetError(source, f"images have different sizes {sorted(set(shapes))[:4]}; pass `image_size`",
                          "bins")
    h, w = size or shapes[0]
    need = len(bins) * h * w * 3
    if need > max_output_bytes:
        raise BinSetError(source, f"{len(bins):,} images of {h}x{w} need {need:,} bytes, above "
                          f"max_output_bytes={max_output_bytes:,}", "bins")
    images = np.empty((len(bins), h, w, 3), np.uint8)
    for i, b in enumerate(bins):
        img, why = decode_image(b, max_image_pixels)
        if img is None:
            raise BinSetError(source, f"image {i} could not be decoded ({why})", f"bins[{i}]")
        img = _resize(img, size)
        if img.shape != images.shape[1:]:  # e.g. an EXIF rotation or a header that lied
            raise BinSetError(source, f"image decodes to {img.shape[1]}x{img.shape[0]}, expected {w}x{h}; "
                              "pass `image_size`", f"bins[{i}]")
        images[i] = img
    return images, same


def write_bin(path, images, issame, ext=".jpg", quality=95):
    """Write pairs as an insightface ``.bin`` (JPEG/PNG bytes + python bool list, highest protocol).

    Args:
        path: output file.
        images: uint8 RGB ``(2N, H, W, 3)``; pair ``i`` = rows ``2i, 2i+1``.
        issame: ``(N,)`` bool.
        ext: ``".jpg"`` or ``".png"``.
        quality: JPEG quality.

    Example::

        write_bin("mine.bin", np.stack([a0, b0, a1, b1]), [True, False])
    """
    imgs = np.asarray(images)
    same = [bool(v) for v in np.asarray(issame).reshape(-1)]
    if imgs.ndim != 4 or imgs.dtype != np.uint8 or imgs.shape[0] != 2 * len(same):
        raise ValueError(f"`images` must be uint8 (2N, H, W, 3) with N = len(issame) = {len(same)}, "
                         f"got {imgs.dtype} {imgs.shape}.")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if ext.lower() in (".jpg", ".jpeg") else []
    bins = []
    for i, im in enumerate(imgs):
        ok, buf = cv2.imencode(ext, cv2.cvtColor(im, cv2.COLOR_RGB2BGR), params)
        if not ok:
            raise ValueError(f"could not encode image {i} as {ext}.")
        bins.append(buf.tobytes())
    with open(path, "wb") as f:
        pickle.dump((bins, same), f, protocol=pickle.HIGHEST_PROTOCOL)


def bin_to_pair_set(path, image_size=(112, 112), name=None) -> PairSet:
    """:func:`load_bin` as a :class:`PairSet` (10 contiguous folds, insightface protocol)."""
    images, same = load_bin(path, image_size=image_size)
    n = same.size
    return PairSet(name=name or Path(path).stem, images=images, index_a=np.arange(0, 2 * n, 2),
                   index_b=np.arange(1, 2 * n, 2), is_same=same, folds=10 if n >= 10 else 2,
                   source=os.fspath(path))


# ---------------------------------------------------------------- discovery
def _folder_sets(folder: Path):
    """Image-folder sets directly in ``folder`` (LFW pairs.txt, CFP Protocol)."""
    found = []
    if (folder / "pairs.txt").is_file() and (folder / "images").is_dir():
        found.append(("lfw", "lfw_folder", {}))
    if (folder / "Protocol" / "Pair_list_F.txt").is_file():
        found.append(("cfp_fp", "cfp_folder", {"protocol": "FP"}))
        found.append(("cfp_ff", "cfp_folder", {"protocol": "FF"}))
    return found


def find_verification_sets(data_dir) -> dict:
    """Find every known verification set in a folder.

    Looks for ``<data_dir>/<name>.bin`` for each name in :data:`KNOWN_BIN_SETS`, and for
    image-folder sets in ``data_dir`` itself and its immediate sub-folders: LFW-style
    (``pairs.txt`` + ``images/<Name>/<Name>_NNNN.jpg``) and CFP-style (``Protocol/Pair_list_F.txt``,
    ``Protocol/Split/{FP,FF}/01..10``). A folder set takes the name ``lfw`` / ``cfp_fp`` /
    ``cfp_ff`` unless a ``.bin`` already has it, then ``<name>_folder``.

    Args:
        data_dir: folder to search.

    Returns:
        ``{name: VerificationSource}`` in :data:`KNOWN_BIN_SETS` order, folder sets last.

    Example::

        find_verification_sets("../shared/data")  # {'lfw': VerificationSource('lfw', 'lfw_folder', ...)}
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"verification data folder not found: {root}")
    found = {}
    for name in KNOWN_BIN_SETS:
        p = root / f"{name}.bin"
        if p.is_file():
            found[name] = VerificationSource(name, "bin", str(p))
    folders = [root] + sorted(p for p in root.iterdir() if p.is_dir())
    for folder in folders:
        for name, kind, opts in _folder_sets(folder):
            key = name if name not in found else f"{name}_folder"
            if key in found:  # several folders of the same kind: disambiguate by folder name
                key = f"{name}_{folder.name}"
            found[key] = VerificationSource(key, kind, str(folder), dict(opts))
    return found


def load_verification_set(source, image_size=(112, 112), **options) -> PairSet:
    """Load a :class:`VerificationSource` (or a ``.bin`` path) as a :class:`PairSet`.

    Args:
        source: :class:`VerificationSource` or path to a ``.bin``.
        image_size: output ``(height, width)``.
        **options: passed to the folder loader (e.g. ``crop=None`` for uncropped LFW images).
    """
    if not isinstance(source, VerificationSource):
        p = Path(source)
        if p.is_dir():
            sets = _folder_sets(p)
            if not sets:
                raise ValueError(f"{p}: no pairs.txt + images/ (LFW) or Protocol/ (CFP) layout found.")
            name, kind, opts = sets[0]
            source = VerificationSource(name, kind, str(p), opts)
        else:
            source = VerificationSource(p.stem, "bin", str(p))
    if source.kind == "bin":
        return bin_to_pair_set(source.path, image_size=image_size, name=source.name)
    if source.kind == "lfw_folder":
        ps = pairs_sets.load_lfw_folder(source.path, image_size=image_size, **options)
    elif source.kind == "cfp_folder":
        ps = pairs_sets.load_cfp_folder(source.path, protocol=source.options.get("protocol", "FP"),
                                        image_size=image_size, **options)
    else:
        raise ValueError(f"unknown verification source kind {source.kind!r} for {source.path}.")
    ps.name = source.name
    return ps


# --------------------------------------------------------------- evaluation
def _model_image_size(model):
    target = getattr(model, "embedder", None) or model
    shape = getattr(target, "input_shape", None)
    if isinstance(shape, (tuple, list)) and len(shape) == 4 and shape[1] and shape[2]:
        return int(shape[1]), int(shape[2])
    return 112, 112


def evaluate_pair_set(model, pair_set: PairSet, flip: bool = True, batch_size: int = 64,
                      progress=None, **kfold_kwargs) -> VerificationResult:
    """Embed each unique image once, score the pairs, run the k-fold protocol.

    Args:
        model: Keras model / ``FaceRecognizer`` / callable (see ``embed_images``).
        pair_set: a :class:`PairSet`.
        flip: add horizontally-flipped embeddings (insightface flip test).
        batch_size: images per forward pass.
        progress: a ``tqdm`` bar to advance by the number of images embedded, or None.
        **kfold_kwargs: ``thresholds`` / ``far_targets`` for ``kfold_verification``.

    Example::

        r = evaluate_pair_set(model, bin_to_pair_set("lfw.bin"))
    """
    step = max(int(batch_size) * 8, 1)
    embs = []
    for start in range(0, len(pair_set.images), step):
        chunk = pair_set.images[start:start + step]
        embs.append(embed_images(model, chunk, batch_size=batch_size, flip=flip))
        if progress is not None:
            progress.update(len(chunk))
    emb = np.concatenate(embs, 0)
    scores = pair_scores(emb[pair_set.index_a], emb[pair_set.index_b])
    return kfold_verification(scores, pair_set.is_same, folds=pair_set.folds, **kfold_kwargs)


def _resolve_sources(data_dir_or_paths, names):
    if isinstance(data_dir_or_paths, (str, os.PathLike)) and Path(data_dir_or_paths).is_dir():
        sources = find_verification_sets(data_dir_or_paths)
        where = os.fspath(data_dir_or_paths)
    else:
        items = data_dir_or_paths
        if isinstance(items, (str, os.PathLike)):
            items = [items]
        if isinstance(items, dict):
            items = list(items.values())
        sources = {}
        for it in items:
            if isinstance(it, VerificationSource):
                sources[it.name] = it
                continue
            p = Path(it)
            if p.is_dir():
                for key, src in find_verification_sets(p).items():
                    sources.setdefault(key, src)
            elif p.is_file():
                sources[p.stem] = VerificationSource(p.stem, "bin", str(p))
            else:
                raise FileNotFoundError(f"verification set not found: {p}")
        where = ", ".join(os.fspath(i.path if isinstance(i, VerificationSource) else i) for i in items)
    if names is not None:
        names = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
        missing = [n for n in names if n not in sources]
        if missing:
            raise ValueError(f"verification sets {missing} not found in {where}; found {sorted(sources)}.")
        sources = {n: sources[n] for n in names}
    if not sources:
        raise ValueError(
            f"no verification set found in {where}: looked for "
            + ", ".join(f"{n}.bin" for n in KNOWN_BIN_SETS)
            + ", LFW folders (pairs.txt + images/) and CFP folders (Protocol/Pair_list_F.txt).")
    return sources


def evaluate_verification_sets(model, data_dir_or_paths, names=None, flip: bool = True,
                               batch_size: int = 64, image_size=None, progress: bool = True,
                               loader_options=None) -> dict:
    """Run the 10-fold verification protocol on every set found.

    Args:
        model: Keras model / ``FaceRecognizer`` (its ``embedder``) / callable.
        data_dir_or_paths: a folder (searched with :func:`find_verification_sets`), a
            ``.bin`` path, a dataset folder, or a list of those / of :class:`VerificationSource`.
        names: optional subset of set names (list or comma-separated string); unknown names raise.
        flip: flip test.
        batch_size: images per forward pass.
        image_size: ``(H, W)`` to load images at; default: the model's input size (else 112x112).
        progress: show a ``tqdm`` bar (images embedded per set).
        loader_options: ``{name: {option: value}}`` for folder loaders (e.g. ``{"lfw": {"crop": 128}}``).

    Returns:
        ``{name: VerificationResult}`` (accuracy mean/std, best threshold, TAR@FAR 1e-3/1e-2, ROC).

    Example::

        results = evaluate_verification_sets(model, "faces_emore", names="lfw,cfp_fp")
        print(format_table(results))
    """
    sources = _resolve_sources(data_dir_or_paths, names)
    size = _check_image_size(image_size) or _model_image_size(model)
    loader_options = loader_options or {}
    results = {}
    for name, src in sources.items():
        ps = load_verification_set(src, image_size=size, **loader_options.get(name, {}))
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(ps.images), desc=f"{name} ({ps.num_pairs} pairs)", unit="img", leave=False)
        try:
            results[name] = evaluate_pair_set(model, ps, flip=flip, batch_size=batch_size, progress=bar)
        finally:
            if bar is not None:
                bar.close()
    return results
