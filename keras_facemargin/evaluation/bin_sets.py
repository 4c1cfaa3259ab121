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

Security: a pickle can execute arbitrary code when loaded. :func:`load_bin` uses a
restricted unpickler that resolves **no** global except numpy's array
reconstruction (``numpy[._]core.multiarray._reconstruct``,
``numpy[._]core.numeric._frombuffer`` (protocol 5), ``numpy.ndarray``,
``numpy.dtype``, ``numpy[._]core.multiarray.scalar``) and ``_codecs.encode``
(how Python 3 pickles ``bytes`` at protocols 0-2); everything else (``os.system``,
``builtins.eval``, ...) raises :class:`UnsafeBinError` before anything is called.
The result is then validated (structure, types, lengths; no object arrays).

Besides ``.bin`` files, :func:`find_verification_sets` recognises image-folder
sets (LFW ``pairs.txt`` + ``images/``, CFP ``Protocol/`` + ``Split/``), loaded by
:mod:`keras_facemargin.evaluation.pairs_sets`.

Example::

    images, issame = load_bin("faces_emore/lfw.bin")         # (12000,112,112,3), (6000,)
    results = evaluate_verification_sets(model, "faces_emore")  # {name: VerificationResult}
    print(format_table(results))
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from keras_facemargin.evaluation.verification import (
    VerificationResult,
    embed_images,
    kfold_verification,
    pair_scores,
)

__all__ = [
    "KNOWN_BIN_SETS",
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


class UnsafeBinError(pickle.UnpicklingError):
    """A ``.bin`` pickle references a global the restricted unpickler does not admit."""


def _numpy_globals():
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    try:
        from numpy._core import multiarray as _ma, numeric as _nu  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray as _ma, numeric as _nu
    for mod in ("numpy.core", "numpy._core"):
        allowed[(mod + ".multiarray", "_reconstruct")] = _ma._reconstruct
        allowed[(mod + ".multiarray", "scalar")] = _ma.scalar
        if hasattr(_nu, "_frombuffer"):
            allowed[(mod + ".numeric", "_frombuffer")] = _nu._frombuffer
    import _codecs

    allowed[("_codecs", "encode")] = _codecs.encode
    return allowed


_ALLOWED_GLOBALS = _numpy_globals()


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source):
        super().__init__(file, encoding="bytes")
        self._source = source

    def find_class(self, module, name):  # noqa: D401 - pickle API
        obj = _ALLOWED_GLOBALS.get((module, name))
        if obj is None:
            raise UnsafeBinError(
                f"{self._source}: refusing to load global '{module}.{name}' from the pickle; a "
                "verification .bin holds only image bytes and booleans (only numpy array "
                "reconstruction is admitted). The file is not an insightface .bin or was tampered with."
            )
        return obj


@dataclass
class PairSet:
    """A verification set: unique images and the pairs that reference them.

    Attributes:
        name: set name (e.g. ``"lfw"``).
        images: uint8 ``(M, H, W, 3)`` RGB.
        index_a, index_b: int64 ``(N,)`` rows of ``images`` forming pair ``i``.
        is_same: bool ``(N,)``.
        folds: number of contiguous folds (int) or an int ``(N,)`` fold id per pair.
        source: where it was loaded from (for messages).
    """

    name: str
    images: np.ndarray
    index_a: np.ndarray
    index_b: np.ndarray
    is_same: np.ndarray
    folds: object = 10
    source: str = ""

    def __post_init__(self):
        n = len(self.is_same)
        if not (len(self.index_a) == len(self.index_b) == n):
            raise ValueError(f"PairSet '{self.name}': index_a, index_b and is_same lengths differ.")
        m = len(self.images)
        for side in (self.index_a, self.index_b):
            if n and (np.min(side) < 0 or np.max(side) >= m):
                raise ValueError(f"PairSet '{self.name}': pair indices out of range [0, {m}).")

    @property
    def num_pairs(self) -> int:
        return int(len(self.is_same))

    def pair_arrays(self):
        """``(images_a, images_b, is_same)`` as materialised arrays (e.g. for ``evaluate_pairs``)."""
        return self.images[self.index_a], self.images[self.index_b], self.is_same


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
def _check_image_size(image_size):
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        image_size = (int(image_size), int(image_size))
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"`image_size` must be None, an int or (height, width), got {image_size!r}.") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"`image_size` must be positive, got {image_size!r}.")
    return h, w


def _resize(img, size):
    if size is None or img.shape[:2] == tuple(size):
        return img
    h, w = size
    interp = cv2.INTER_AREA if (h < img.shape[0] and w < img.shape[1]) else cv2.INTER_LINEAR
    return cv2.resize(img, (w, h), interpolation=interp)


def _decode(buf, source, index, size):
    arr = np.frombuffer(buf, dtype=np.uint8)
    img = cv2.imdecode(arr, cv2.IMREAD_COLOR) if arr.size else None
    if img is None:
        raise ValueError(f"{source}: image {index} could not be decoded (not a JPEG/PNG byte string).")
    return _resize(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), size)


def _validate_bin(obj, source):
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise ValueError(f"{source}: expected a pickled (bins, issame_list) pair, got {type(obj).__name__}"
                         + (f" of length {len(obj)}" if isinstance(obj, (tuple, list)) else "") + ".")
    bins, issame = obj
    if not isinstance(bins, (list, tuple)):
        raise ValueError(f"{source}: `bins` must be a list of encoded images, got {type(bins).__name__}.")
    bad = [i for i, b in enumerate(bins) if not isinstance(b, (bytes, bytearray))]
    if bad:
        raise ValueError(f"{source}: {len(bad)} entries of `bins` are not bytes (first at index {bad[0]}: "
                         f"{type(bins[bad[0]]).__name__}).")
    if isinstance(issame, np.ndarray):
        if issame.dtype != np.bool_ or issame.ndim != 1:
            raise ValueError(f"{source}: `issame_list` array must be 1-D bool, got {issame.dtype} {issame.shape}.")
        same = issame.copy()
    elif isinstance(issame, (list, tuple)):
        badl = [i for i, v in enumerate(issame) if not isinstance(v, (bool, np.bool_))]
        if badl:
            raise ValueError(f"{source}: `issame_list` must hold booleans; entry {badl[0]} is "
                             f"{type(issame[badl[0]]).__name__} ({len(badl)} non-boolean entries).")
        same = np.array(issame, dtype=bool).reshape(-1)
    else:
        raise ValueError(f"{source}: `issame_list` must be a list or bool array, got {type(issame).__name__}.")
    if len(bins) != 2 * same.size:
        raise ValueError(f"{source}: {len(bins)} images for {same.size} pairs; expected 2 images per pair "
                         f"({2 * same.size}).")
    if same.size == 0:
        raise ValueError(f"{source}: the set holds no pairs.")
    return bins, same


def load_bin(path, image_size=(112, 112)):
    """Load an insightface verification ``.bin`` safely.

    Args:
        path: the ``.bin`` file.
        image_size: ``(height, width)`` (or an int) to resize every image to; ``None`` keeps
            the stored size (all images must then share it).

    Returns:
        ``(images, issame)``: uint8 RGB ``(2N, H, W, 3)`` (pair ``i`` = rows ``2i, 2i+1``) and
        bool ``(N,)``.

    Raises:
        UnsafeBinError: the pickle references a non-admitted global (nothing is executed).
        ValueError: wrong structure, undecodable image or inconsistent sizes (message names the file).

    Example::

        images, issame = load_bin("faces_emore/agedb_30.bin")
    """
    source = os.fspath(path)
    size = _check_image_size(image_size)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"verification .bin not found: {source}")
    with open(source, "rb") as f:
        data = f.read()
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), source).load()
    except UnsafeBinError:
        raise
    except Exception as exc:  # truncated / not a pickle
        raise ValueError(f"{source}: not a readable pickle ({type(exc).__name__}: {exc}).") from exc
    bins, same = _validate_bin(obj, source)
    images = [_decode(bytes(b), source, i, size) for i, b in enumerate(bins)]
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise ValueError(f"{source}: images have different sizes {sorted(shapes)[:4]}; pass `image_size`.")
    return np.stack(images), same


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
    from keras_facemargin.evaluation import pairs_sets  # lazy: optional data.lfw dependency

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
