"""MegaFace Challenge 1 (FaceScrub probes vs 1M distractors): rank-k identification and TAR@FAR.

Inputs are features, not images (compute them with your model, e.g. by adapting
insightface ``recognition/_evaluation_/megaface/gen_megaface.py``):

* ``.npy``: a float ``(N, d)`` matrix whose rows follow an image list (loaded with
  ``allow_pickle=False``);
* MegaFace ``.bin`` feature files, one per image, as the devkit and insightface's
  ``gen_megaface.py`` / ``remove_noises.py`` write them (``write_bin``:
  ``struct.pack('4i', len(feature), 1, 4, 5)`` then ``len(feature)`` float32): a header of
  **four** little-endian int32 -- rows, cols, element size in bytes (4) and OpenCV type
  (5 = ``CV_32F``) -- followed by ``rows * cols`` float32 (:func:`read_feature_bin`).
  insightface names them ``<image file>_<algo>.bin``, under ``facescrub/<identity>/`` and
  ``megaface/<a1>/<a2>/``.

Noise lists (insightface ``remove_noises.py``; the lists ship with insightface):

* ``facescrub_noises.txt``: image file names (``#`` lines are comments). insightface replaces the
  feature of each noisy probe image by its identity's centre (sum of the clean features of the
  identity) plus U(-0.001, 0.001) jitter, L2-normalised. Here ``facescrub_mode="replace"``
  does the same **without** the jitter (deterministic), ``"remove"`` drops the images.
  An identity whose images are all noisy cannot be replaced: its images are removed and counted.
* ``megaface_noises.txt``: distractor paths ``<a1>/<a2>/<file>`` (if a line has tab-separated
  fields, the second one). insightface appends a 513th dimension (0 for clean, 100 for noisy
  features) which puts noisy distractors out of reach of every probe under the devkit's L2
  distance; here they are removed from the distractor set, which gives the same ranks.

Protocol (MegaFace devkit, Challenge 1, cosine similarity of unit-norm features):

* identification: for every identity and every ordered pair ``(p, g)`` of two distinct images of
  that identity, ``g`` is hidden among the distractors; rank = 1 + #{distractors ``d`` with
  ``s(p, d) >= s(p, g)``} (ties count against the probe). CMC(k) = fraction of pairs with rank <= k;
  "rank-1 identification" = CMC(1);
* verification: genuine pairs = unordered same-identity FaceScrub pairs, impostor pairs = every
  FaceScrub image x every distractor; TAR at FAR = 1e-6 with the package's floor convention
  (threshold = ``floor(FAR * #impostors)``-th largest impostor score, accept ``s > t``).

Both run in blocks of probes x distractors (``probe_chunk`` x ``distractor_chunk`` scores at a
time), keeping only the per-probe top-``K`` distractor scores and the global top impostor
scores, so 1M distractors need no more than the features plus one block in memory.

Example::

    fs = load_features("facescrub.npy"); md = load_features("megaface.npy")
    r = evaluate_megaface(fs, fs_identities, md)
    r.cmc[1], r.tar_at_far[1e-6]
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from keras_facemargin.errors import MegaFaceFileError
from keras_facemargin.evaluation._far import floor_far_rank, floor_threshold

__all__ = [
    "MegaFaceFileError",
    "read_feature_bin",
    "write_feature_bin",
    "load_feature_bins",
    "load_features",
    "read_noise_list",
    "apply_facescrub_noises",
    "apply_megaface_noises",
    "distractor_topk",
    "megaface_identification",
    "megaface_verification",
    "MegaFaceResult",
    "evaluate_megaface",
]

_CV_32F = 5


# ---------------------------------------------------------------- file I/O
def _check_finite(arr, path):
    step = 1 << 22
    flat = arr.reshape(-1)
    for s in range(0, flat.size, step):
        chunk = flat[s:s + step]
        if not np.isfinite(chunk).all():
            i = s + int(np.flatnonzero(~np.isfinite(chunk))[0])
            raise MegaFaceFileError(path, f"value {flat[i]!r} at element {i} is not finite", f"element {i}")
    return arr


def read_feature_bin(path) -> np.ndarray:
    """Read one MegaFace ``.bin`` feature (4 x int32 header rows, cols, 4, CV_32F=5; float32 data).

    The header is checked against the file size before the data is read.

    Returns:
        float32 ``(rows * cols,)``.

    Raises:
        OSError: missing / unreadable file. MegaFaceFileError: (a ValueError naming the file) a
        wrong header, a size that does not match it, or a value that is not finite.

    Example::

        f = read_feature_bin("feature_out/facescrub/Aaron_Eckhart/Aaron_Eckhart_1.png_insightface.bin")
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(16)
        if len(head) < 16:
            raise MegaFaceFileError(path, f"too short for a MegaFace feature header (16 bytes), got "
                                    f"{len(head)} bytes")
        rows, cols, elem, typ = struct.unpack("<4i", head)
        if rows <= 0 or cols <= 0 or elem != 4 or typ != _CV_32F:
            raise MegaFaceFileError(path, f"unexpected MegaFace header rows={rows} cols={cols} elem_size={elem} "
                                    f"type={typ} (expected positive sizes, 4 and {_CV_32F} = CV_32F)")
        need = 16 + 4 * rows * cols
        if size != need:
            raise MegaFaceFileError(path, f"{size} bytes, expected {need} for {rows}x{cols} float32")
        data = f.read(need - 16)
    if len(data) != need - 16:  # the file shrank while reading
        raise MegaFaceFileError(path, f"{16 + len(data)} bytes, expected {need} for {rows}x{cols} float32")
    return _check_finite(np.frombuffer(data, dtype="<f4").astype(np.float32), path)


def write_feature_bin(path, feature) -> None:
    """Write a vector in the MegaFace ``.bin`` feature format (``rows = len, cols = 1``)."""
    v = np.asarray(feature, dtype="<f4").reshape(-1)
    with open(path, "wb") as f:
        f.write(struct.pack("<4i", v.size, 1, 4, _CV_32F))
        f.write(v.tobytes())


def load_feature_bins(paths) -> np.ndarray:
    """Stack many ``.bin`` features into float32 ``(N, d)`` (all must share ``d``).

    Raises:
        OSError / MegaFaceFileError: as :func:`read_feature_bin`; MegaFaceFileError for a length
        that differs from the first file's.
    """
    paths = list(paths)
    if not paths:
        raise ValueError("no feature files given.")
    first = read_feature_bin(paths[0])
    out = np.empty((len(paths), first.size), np.float32)
    out[0] = first
    for i, p in enumerate(paths[1:], 1):
        v = read_feature_bin(p)
        if v.size != first.size:
            raise MegaFaceFileError(p, f"feature length {v.size} differs from {paths[0]} ({first.size})", "header")
        out[i] = v
    return out


def _read_npy_matrix(path):
    """A float ``(N, d)`` ``.npy`` read without pickle: header parsed and checked against the file size."""
    from numpy.lib import format as npy_format

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        try:
            version = npy_format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(f, max_header_size=10000)
            elif version == (2, 0):
                shape, fortran, dtype = npy_format.read_array_header_2_0(f, max_header_size=10000)
            else:  # 3.0 only differs for non-latin-1 field names, which a float matrix has none of
                raise ValueError(f".npy format version {version} (expected 1.0 or 2.0)")
        except Exception as e:  # noqa: BLE001 - NumPy's header parser raises ValueError, SyntaxError, ...
            raise MegaFaceFileError(path, f"not a readable .npy header ({type(e).__name__}: {e})", "header") from None
        start = f.tell()
        if not isinstance(dtype, np.dtype) or dtype.kind != "f" or dtype.fields is not None or dtype.subdtype \
                or dtype.itemsize not in (2, 4, 8):
            raise MegaFaceFileError(path, f"expected a float16/32/64 matrix, got dtype {dtype}", "header")
        if not (isinstance(shape, tuple) and len(shape) == 2 and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise MegaFaceFileError(path, f"expected a float (N, d) matrix, got shape {shape!r}", "header")
        if any(d > size for d in shape) and 0 not in shape:
            need = None
        else:
            need = shape[0] * shape[1] * dtype.itemsize
        if need != size - start:
            raise MegaFaceFileError(path, f"{size - start} data bytes after the header, expected "
                                    f"{need if need is not None else 'more than the file'} for {dtype} {shape}",
                                    "data")
        arr = np.fromfile(f, dtype=dtype, count=shape[0] * shape[1])
    if arr.size != shape[0] * shape[1]:  # the file shrank while reading
        raise MegaFaceFileError(path, f"short read: {arr.size} of {shape[0] * shape[1]} values", "data")
    arr = arr.reshape(shape, order="F" if fortran else "C")
    return _check_finite(arr, path)


def load_features(source, names=None, suffix="_insightface.bin") -> np.ndarray:
    """Features from a ``.npy`` matrix, or from per-image ``.bin`` files under a folder.

    The ``.npy`` header is parsed without pickle and checked against the file size before the
    data is read; every value must be finite.

    Args:
        source: ``.npy`` file (``(N, d)``), or a folder holding ``<name><suffix>`` for each name.
        names: image paths relative to ``source`` (required for folders; e.g. ``Aaron_Eckhart/x.png``).
        suffix: appended to each name for ``.bin`` files (insightface: ``_<algo>.bin``).

    Returns:
        float32 ``(N, d)``.

    Raises:
        OSError: a missing / unreadable file. MegaFaceFileError: (a ValueError naming the file) a
        malformed ``.npy`` / ``.bin`` (see :func:`read_feature_bin`), a non-float or non-2-D
        matrix, a row count that differs from ``names``, or a non-finite value.
    """
    p = Path(source)
    if p.is_file() and p.suffix == ".npy":
        arr = _read_npy_matrix(p)
        if names is not None and len(names) != arr.shape[0]:
            raise MegaFaceFileError(p, f"{arr.shape[0]} rows for {len(names)} names", "shape")
        return arr.astype(np.float32, copy=False)
    if p.is_dir():
        if names is None:
            raise ValueError(f"{p}: a feature folder needs the list of image names.")
        return load_feature_bins([p / f"{n}{suffix}" for n in names])
    raise FileNotFoundError(f"features not found: {p} (expected a .npy file or a folder of .bin files).")


def read_noise_list(path, kind="facescrub") -> set:
    """Read ``facescrub_noises.txt`` (file names) or ``megaface_noises.txt`` (``a1/a2/file``).

    ``#`` lines and blank lines are ignored; for tab-separated megaface lines the second field is used.

    Raises:
        OSError: missing / unreadable file. MegaFaceFileError: (a ValueError naming file and line)
        not UTF-8 text, or a NUL byte.
    """
    if kind not in ("facescrub", "megaface"):
        raise ValueError(f"`kind` must be 'facescrub' or 'megaface', got {kind!r}.")
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MegaFaceFileError(path, f"not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})",
                                line=raw.count(b"\n", 0, e.start) + 1) from None
    if "\0" in text:
        raise MegaFaceFileError(path, "NUL byte in a text file", line=text.count("\n", 0, text.index("\0")) + 1)
    out = set()
    for ln in text.splitlines():
        ln = ln.strip()
        if not ln or ln.startswith("#"):
            continue
        if kind == "megaface":
            parts = ln.split("\t")
            ln = parts[1].strip() if len(parts) > 1 else ln
        out.add(ln)
    return out


def _unit(x):
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def apply_facescrub_noises(features, identities, names, noisy, mode="replace"):
    """Clean the probe set as insightface ``remove_noises.py`` (see module docstring).

    Args:
        features: ``(N, d)`` probe features.
        identities: ``(N,)`` identity labels.
        names: ``(N,)`` image names or paths; matched to the list by file name (basename).
        noisy: set of noisy file names (:func:`read_noise_list`).
        mode: ``"replace"`` (identity centre of clean features, normalised) or ``"remove"``.

    Returns:
        ``(features, identities, names, report)``; ``report`` counts ``noisy``, ``replaced``,
        ``removed`` and ``unmatched_noise_entries`` (list entries matching no image).
    """
    if mode not in ("replace", "remove"):
        raise ValueError(f"`mode` must be 'replace' or 'remove', got {mode!r}.")
    f = np.array(features, np.float32)
    ids = np.asarray(identities)
    base = np.array([os.path.basename(str(n)) for n in names])
    if not (f.shape[0] == ids.size == base.size):
        raise ValueError(f"features {f.shape}, identities {ids.shape}, names {base.shape} disagree.")
    is_noisy = np.isin(base, np.array(sorted(noisy), dtype=base.dtype if base.size else str))
    report = {"noisy": int(is_noisy.sum()), "replaced": 0, "removed": 0,
              "unmatched_noise_entries": int(len(set(noisy) - set(base.tolist())))}
    keep = ~is_noisy
    if mode == "replace":
        keep = np.ones(f.shape[0], bool)
        for ident in np.unique(ids[is_noisy]):
            members = ids == ident
            clean = members & ~is_noisy
            if not clean.any():
                keep[members] = False
                continue
            centre = f[clean].sum(axis=0, keepdims=True)
            f[members & is_noisy] = _unit(centre)
            report["replaced"] += int((members & is_noisy).sum())
    report["removed"] = int((~keep).sum())
    return f[keep], ids[keep], np.asarray(names)[keep], report


def apply_megaface_noises(features, names, noisy):
    """Remove noisy distractors (names matched on their last three path components ``a1/a2/file``).

    Returns:
        ``(features, names, report)`` with ``report = {"removed", "unmatched_noise_entries"}``.
    """
    keys = np.array(["/".join(Path(str(n)).parts[-3:]) for n in names])
    bad = np.isin(keys, np.array(sorted(noisy), dtype=keys.dtype if keys.size else str))
    report = {"removed": int(bad.sum()), "unmatched_noise_entries": int(len(set(noisy) - set(keys.tolist())))}
    return np.asarray(features)[~bad], np.asarray(names)[~bad], report


# ----------------------------------------------------------------- scoring
def _merge_top(current, block, k):
    both = np.concatenate([current, block], axis=-1)
    if both.shape[-1] <= k:
        return both
    return np.partition(both, both.shape[-1] - k, axis=-1)[..., -k:]


def distractor_topk(probe_feats, distractor_feats, k=10, global_k=0, probe_chunk=2048,
                    distractor_chunk=16384, progress=False):
    """Per-probe top-``k`` distractor scores and the global top-``global_k`` probe x distractor scores.

    Args:
        probe_feats: ``(P, d)`` unit-norm.
        distractor_feats: ``(D, d)`` unit-norm.
        k: scores kept per probe (sorted descending in the result).
        global_k: scores kept over all ``P * D`` pairs (for TAR@FAR), 0 to skip.
        probe_chunk, distractor_chunk: block shape (memory ``4 * probe_chunk * distractor_chunk`` bytes).
        progress: tqdm bar over distractor blocks.

    Returns:
        ``(topk (P, min(k, D)) float32 descending, global_top (min(global_k, P*D),) descending)``.
    """
    P = np.ascontiguousarray(probe_feats, np.float32)
    D = np.ascontiguousarray(distractor_feats, np.float32)
    if P.ndim != 2 or D.ndim != 2 or P.shape[1] != D.shape[1]:
        raise ValueError(f"probe {P.shape} and distractor {D.shape} features must be (n, d) with equal d.")
    kk = min(int(k), D.shape[0])
    top = np.full((P.shape[0], 0), -np.inf, np.float32)
    gtop = np.empty(0, np.float32)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=D.shape[0], desc="distractors", unit="img")
    for ds in range(0, D.shape[0], int(distractor_chunk)):
        Dc = D[ds:ds + int(distractor_chunk)]
        parts = []
        for ps in range(0, P.shape[0], int(probe_chunk)):
            S = P[ps:ps + int(probe_chunk)] @ Dc.T
            blk = S if S.shape[1] <= kk else np.partition(S, S.shape[1] - kk, axis=1)[:, -kk:]
            parts.append(blk)
            if global_k:
                flat = S.reshape(-1)
                g = flat if flat.size <= global_k else np.partition(flat, flat.size - global_k)[-global_k:]
                gtop = _merge_top(gtop, g, int(global_k))
        top = _merge_top(top, np.concatenate(parts, 0), kk)
        if bar is not None:
            bar.update(Dc.shape[0])
    if bar is not None:
        bar.close()
    return -np.sort(-top, axis=1), -np.sort(-gtop)


def _genuine(P, ids):
    """Same-identity score matrices per identity: list of (rows, S)."""
    out = []
    for ident in np.unique(ids):
        rows = np.flatnonzero(ids == ident)
        if rows.size >= 2:
            out.append((rows, P[rows] @ P[rows].T))
    return out


def megaface_identification(probe_feats, probe_ids, distractor_feats, ranks=tuple(range(1, 11)),
                            topk=None, **kwargs) -> dict:
    """CMC of the MegaFace Challenge 1 identification protocol (module docstring).

    Args:
        probe_feats: ``(P, d)`` FaceScrub features (normalised here).
        probe_ids: ``(P,)`` identity labels.
        distractor_feats: ``(D, d)`` distractor features (normalised here).
        ranks: ranks to report (max rank <= 1 + number of distractors kept, i.e. ``max(ranks) - 1`` top scores).
        topk: precomputed ``distractor_topk(...)[0]`` to reuse.
        **kwargs: :func:`distractor_topk` block options.

    Returns:
        ``{rank: rate}`` over all ordered same-identity (probe, gallery) pairs, plus key
        ``"num_pairs"``.

    Example::

        megaface_identification(fs, fs_ids, md)[1]   # rank-1 identification rate
    """
    P = _unit(probe_feats)
    ids = np.asarray(probe_ids).reshape(-1)
    if ids.size != P.shape[0]:
        raise ValueError(f"`probe_ids` has {ids.size} entries for {P.shape[0]} probe features.")
    ranks = sorted(int(r) for r in ranks)
    if ranks[0] < 1:
        raise ValueError("ranks must be >= 1.")
    if topk is None:
        topk, _ = distractor_topk(P, _unit(distractor_feats), k=max(ranks), **kwargs)
    if topk.shape[1] < min(max(ranks) - 1, np.asarray(distractor_feats).shape[0]):
        raise ValueError(f"`topk` keeps {topk.shape[1]} scores per probe; rank {max(ranks)} needs {max(ranks) - 1}.")
    counts = np.zeros(len(ranks), np.int64)
    total = 0
    for rows, S in _genuine(P, ids):
        off = ~np.eye(rows.size, dtype=bool)
        g = S[off].reshape(rows.size, rows.size - 1)  # g[i, :] = s(p_i, other images)
        # number of kept distractors scoring >= genuine (topk sorted descending)
        above = (topk[rows][:, None, :] >= g[:, :, None]).sum(axis=2)
        # rank <= r  <=>  fewer than r distractors score >= genuine; exact because the kept
        # top-k (k >= max(ranks) or all distractors) holds every distractor that could matter.
        for j, r in enumerate(ranks):
            counts[j] += int(np.sum(above <= r - 1))
        total += g.size
    if total == 0:
        raise ValueError("no identity has two or more probe images.")
    out = {r: counts[j] / total for j, r in enumerate(ranks)}
    out["num_pairs"] = total
    return out


def megaface_verification(probe_feats, probe_ids, distractor_feats, fars=(1e-6,), global_top=None,
                          **kwargs) -> dict:
    """TAR at FAR: genuine = same-identity FaceScrub pairs, impostors = FaceScrub x distractors.

    Args:
        probe_feats, probe_ids, distractor_feats: as :func:`megaface_identification`.
        fars: FAR targets (floor convention, ``score > threshold``).
        global_top: precomputed ``distractor_topk(...)[1]`` holding at least
            ``floor(max(fars) * P * D) + 1`` scores.
        **kwargs: :func:`distractor_topk` block options.

    Returns:
        ``{"tar": {far: tar}, "threshold": {far: t}, "num_genuine", "num_impostor"}``.
    """
    P = _unit(probe_feats)
    ids = np.asarray(probe_ids).reshape(-1)
    Dn = np.asarray(distractor_feats).shape[0]
    n_imp = P.shape[0] * Dn
    ks = {float(f): floor_far_rank(f, n_imp) for f in fars}
    need = max(ks.values()) + 1
    if global_top is None:
        _, global_top = distractor_topk(P, _unit(distractor_feats), k=1, global_k=need, **kwargs)
    if global_top.size < min(need, n_imp):
        raise ValueError(f"`global_top` holds {global_top.size} scores; {min(need, n_imp)} needed.")
    gen = np.concatenate([S[np.triu_indices(rows.size, 1)] for rows, S in _genuine(P, ids)]) \
        if ids.size else np.empty(0)
    if gen.size == 0:
        raise ValueError("no identity has two or more probe images.")
    tars, thrs = {}, {}
    for f in ks:
        t = float(floor_threshold(global_top, f, n=n_imp))  # global_top holds the top k + 1
        thrs[f], tars[f] = t, float(np.mean(gen > t))
    return {"tar": tars, "threshold": thrs, "num_genuine": int(gen.size), "num_impostor": int(n_imp)}


@dataclass
class MegaFaceResult:
    """Result of :func:`evaluate_megaface`.

    Attributes:
        cmc: ``{rank: identification rate}`` (rank 1 = "rank-1 identification").
        tar_at_far: ``{far: tar}``; far_thresholds: ``{far: threshold}``.
        num_probes, num_distractors, num_identification_pairs, num_genuine, num_impostor: sizes used.
        noise_report: counts from the noise handling.
    """

    cmc: dict
    tar_at_far: dict
    far_thresholds: dict
    num_probes: int
    num_distractors: int
    num_identification_pairs: int
    num_genuine: int
    num_impostor: int
    noise_report: dict = field(default_factory=dict)

    def format(self) -> str:
        lines = [f"MegaFace Challenge 1: {self.num_probes} probes, {self.num_distractors:,} distractors"]
        lines += [f"  rank-{r:<2d} identification: {100 * v:6.2f} %" for r, v in sorted(self.cmc.items())]
        lines += [f"  TAR @ FAR={f:g}: {100 * v:6.2f} %  (threshold {self.far_thresholds[f]:.4f})"
                  for f, v in sorted(self.tar_at_far.items())]
        if self.noise_report:
            lines.append(f"  noise handling: {self.noise_report}")
        return "\n".join(lines)


def evaluate_megaface(probe_feats, probe_ids, distractor_feats, probe_names=None, distractor_names=None,
                      facescrub_noises=None, megaface_noises=None, facescrub_mode="replace",
                      num_distractors=None, ranks=tuple(range(1, 11)), fars=(1e-6,), progress=False,
                      probe_chunk=2048, distractor_chunk=16384) -> MegaFaceResult:
    """MegaFace Challenge 1 identification (CMC) and verification (TAR@FAR) in one distractor pass.

    Args:
        probe_feats, probe_ids: FaceScrub features and identity labels.
        distractor_feats: MegaFace distractor features.
        probe_names, distractor_names: needed with the noise lists.
        facescrub_noises, megaface_noises: sets (:func:`read_noise_list`) or paths, or None.
        facescrub_mode: ``"replace"`` or ``"remove"`` (module docstring).
        num_distractors: use only the first N distractors (after noise removal), e.g. 10 .. 10**6.
        ranks, fars: what to report.
        progress: tqdm bar.
        probe_chunk, distractor_chunk: block shape.

    Example::

        r = evaluate_megaface(fs, ids, md, fs_names, md_names, "facescrub_noises.txt", "megaface_noises.txt")
        print(r.format())
    """
    report = {}
    P, ids = np.asarray(probe_feats, np.float32), np.asarray(probe_ids)
    D = np.asarray(distractor_feats, np.float32)
    if facescrub_noises is not None:
        if probe_names is None:
            raise ValueError("`probe_names` are needed to apply the FaceScrub noise list.")
        noisy = facescrub_noises if isinstance(facescrub_noises, set) else read_noise_list(facescrub_noises)
        P, ids, probe_names, rep = apply_facescrub_noises(P, ids, probe_names, noisy, facescrub_mode)
        report["facescrub"] = rep
    if megaface_noises is not None:
        if distractor_names is None:
            raise ValueError("`distractor_names` are needed to apply the MegaFace noise list.")
        noisy = megaface_noises if isinstance(megaface_noises, set) else read_noise_list(megaface_noises, "megaface")
        D, distractor_names, rep = apply_megaface_noises(D, distractor_names, noisy)
        report["megaface"] = rep
    if num_distractors is not None:
        if int(num_distractors) > D.shape[0]:
            raise ValueError(f"`num_distractors`={num_distractors} exceeds the {D.shape[0]} available.")
        D = D[: int(num_distractors)]
    Pn, Dn = _unit(P), _unit(D)
    n_imp = Pn.shape[0] * Dn.shape[0]
    need = int(np.floor(max(fars) * n_imp * (1 + 1e-12))) + 1 if fars else 0
    topk, gtop = distractor_topk(Pn, Dn, k=max(ranks), global_k=need, probe_chunk=probe_chunk,
                                 distractor_chunk=distractor_chunk, progress=progress)
    ident = megaface_identification(Pn, ids, Dn, ranks=ranks, topk=topk)
    ver = megaface_verification(Pn, ids, Dn, fars=fars, global_top=gtop) if fars else \
        {"tar": {}, "threshold": {}, "num_genuine": 0, "num_impostor": n_imp}
    return MegaFaceResult(cmc={r: float(ident[r]) for r in ranks}, tar_at_far=ver["tar"],
                          far_thresholds=ver["threshold"], num_probes=int(Pn.shape[0]),
                          num_distractors=int(Dn.shape[0]), num_identification_pairs=int(ident["num_pairs"]),
                          num_genuine=ver["num_genuine"], num_impostor=ver["num_impostor"], noise_report=report)
