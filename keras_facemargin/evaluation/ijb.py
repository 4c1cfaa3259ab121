"""IJB-B / IJB-C template-based 1:1 verification and 1:N identification.

Layout (insightface's preprocessed IJB release, as read by insightface
``recognition/arcface_torch/eval_ijbc.py`` and ``recognition/_evaluation_/ijb/ijb_1n.py``;
``<t>`` = ``ijbc`` or ``ijbb``)::

    <root>/loose_crop/<image>.jpg               loosely cropped faces (227,630 for IJB-C)
    <root>/meta/<t>_name_5pts_score.txt         "<image> x1 y1 ... x5 y5 <detector score>"
    <root>/meta/<t>_face_tid_mid.txt            "<image> <template id> <media id>"
    <root>/meta/<t>_template_pair_label.txt     "<template 1> <template 2> <label 1|0>" (15,658,489 for IJB-C)
    <root>/meta/<t>_1N_probe_mixed.csv          TEMPLATE_ID,SUBJECT_ID,FILENAME,...   (header row; one row per image)
    <root>/meta/ijbc_1N_gallery_G1.csv, ijbc_1N_gallery_G2.csv   (IJB-B: ijbb_1N_gallery_S1.csv / _S2.csv)

Pipeline (insightface "F2 N1 D1" mode, each step optional):

1. align every image to 112x112 with its 5 landmarks (:func:`keras_facemargin.data.align.align_face`,
   the ArcFace template);
2. image feature ``f(x) + f(flip(x))`` (``flip``), *not* normalised (``normalize_images=False``
   keeps the feature norm as a quality weight -- pass a backbone without L2 normalisation to
   use it; ``FaceRecognizer.embedder`` output is unit-norm), times the detector score (``detector_score``);
3. template feature (:func:`image_to_template_features`, insightface ``image2template_feature``):
   mean over the images of each media (video frames share a media id), *sum* over the
   template's medias, L2-normalise;
4. 1:1 score = cosine of the two template features (:func:`verify_templates`: BLAS GEMM
   similarity blocks when pairs are dense, as in IJB-B/C -- 15.7M IJB-C pairs in ~6 s on 2 loaded
   cores -- else chunked gathers; exact and memory-bounded); TAR at FAR = 1e-6 .. 1e-1
   (:func:`tar_far_table`).

TAR@FAR convention: ``far_convention="floor"`` (default, the package convention of
:func:`~keras_facemargin.evaluation.verification.tar_at_far`: operating point with the largest
FAR not exceeding the target) or ``"nearest"`` (insightface's table: the ROC point whose FPR
is nearest the target, largest TPR among ties; insightface uses sklearn's thinned ROC, which
gives the same value except for collinear tie runs).

1:N (NIST IJB-C open-set protocol; :func:`identification`): each gallery (G1, G2; IJB-B S1, S2)
is searched separately with all mixed probe templates. A probe is *mated* when its subject is
enrolled in that gallery (exactly one gallery template per subject in IJB), else *non-mated*.

* rank-k (CMC) over mated probes: rank = 1 + #{gallery templates of other subjects with score
  >= the mate's score} (ties count against the probe);
* FPIR(t) = fraction of non-mated probes whose best gallery score is ``> t``; TPIR(t) = fraction
  of mated probes whose mate is rank 1 **and** scores ``> t``; ``t`` = the largest-FPIR threshold
  with FPIR <= target (same floor convention), reported at FPIR 1e-2 and 1e-1.

This differs from insightface's ``ijb_1n.py``, which searches G1 and G2 *together* (a closed
set; every probe mated) and derives its "FAR" from all non-mate similarities; pass
``galleries="joint"`` to :func:`evaluate_ijb_1n` for that closed-set variant of rank-k.

Example::

    meta = load_ijb_meta("IJB_release/IJBC", "IJBC")
    feats, scores = extract_ijb_features(model, "IJB_release/IJBC", meta)
    tf, tids = image_to_template_features(feats, meta.templates, meta.medias, scores)
    s = verify_templates(tf, tids, meta.pair_t1, meta.pair_t2)
    print(format_tar_far_table({"model": tar_far_table(s, meta.pair_labels)}))
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keras_facemargin.data.align import align_face
from keras_facemargin.utils.images import DEFAULT_MAX_IMAGE_PIXELS, read_image_file
from keras_facemargin.errors import IJBFileError, ImageFileError
from keras_facemargin.evaluation._far import floor_threshold
from keras_facemargin.evaluation.verification import _embed_fn, _roc, _to_numpy, tar_at_far

__all__ = [
    "IJB_FARS",
    "IJBFileError",
    "IJBMeta",
    "read_template_media",
    "read_template_pairs",
    "read_landmarks_scores",
    "read_1n_csv",
    "load_ijb_meta",
    "align_ijb_images",
    "extract_ijb_features",
    "image_to_template_features",
    "verify_templates",
    "verify_cost",
    "tar_far_table",
    "format_tar_far_table",
    "identification",
    "evaluate_ijb_1n",
    "evaluate_ijb",
]

IJB_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


# ----------------------------------------------------------------- meta I/O
_INT64 = (-(2**63), 2**63 - 1)
_INT_BYTES = np.zeros(256, bool)
_INT_BYTES[list(b"0123456789+- \t\r\n")] = True


def _need(path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IJB meta file not found: {path}")
    return path


def _read_text(path):
    """Strict UTF-8 text of a meta file (IJBFileError naming the line of a bad byte or a NUL)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise IJBFileError(path, f"not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})",
                           line=raw.count(b"\n", 0, e.start) + 1) from None
    nul = text.find("\0")
    if nul >= 0:
        raise IJBFileError(path, "NUL byte in a text file", line=text.count("\n", 0, nul) + 1)
    return text


def _int64(tok, path, lineno, what, line):
    if not _is_int64(tok):
        raise IJBFileError(path, f"{what} must be int64 integers, got {line.strip()[:120]!r}", line=lineno)
    return int(tok)


def _float(tok, path, lineno, what, line):
    try:
        v = float(tok)
    except ValueError:
        v = None
    if v is None or not abs(v) <= 3.4e38:  # NaN fails the comparison
        raise IJBFileError(path, f"{what} must be finite numbers (float32), got {line.strip()[:120]!r}",
                           line=lineno)
    return v


def _image_name(name, path, lineno):
    """An image name must stay inside ``loose_crop/``: relative, no ``..`` part, no backslash."""
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or ":" in name or any(p in ("", ".", "..") for p in parts) \
            or not name.isprintable() or len(name) > 1024:
        raise IJBFileError(path, f"image name {name[:80]!r} must be a relative path inside loose_crop/ "
                           "(no '..', absolute paths or backslashes)", line=lineno)
    return name


def read_template_media(path):
    """``<image> <template id> <media id>`` lines -> ``(names, templates, medias)``.

    Raises:
        OSError: missing / unreadable file. IJBFileError: (a ValueError naming file and line) not
        UTF-8, a line without exactly three fields, ids that are not int64, or an image name
        outside ``loose_crop/``.
    """
    path = _need(path)
    names, tids, mids = [], [], []
    for lineno, ln in enumerate(_read_text(path).split("\n"), 1):
        t = ln.split()
        if not t:
            continue
        if len(t) != 3:
            raise IJBFileError(path, f"expected '<image> <template> <media>', got {ln.strip()[:120]!r}",
                               line=lineno)
        names.append(_image_name(t[0], path, lineno))
        tids.append(_int64(t[1], path, lineno, "template and media ids", ln))
        mids.append(_int64(t[2], path, lineno, "template and media ids", ln))
    return np.array(names), np.array(tids, np.int64), np.array(mids, np.int64)


def _is_int64(tok):
    if not (tok.isascii() and tok.lstrip("+-").isdigit() and len(tok) - len(tok.lstrip("+-")) <= 1):
        return False
    return _INT64[0] <= int(tok) <= _INT64[1]


def _first_bad_int_line(path, what, fields):
    """The IJBFileError for the first line that is not ``fields`` int64 integers (error path only)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            ln = raw.decode("latin-1")
            toks = ln.split()
            if not toks:
                continue
            ok = len(toks) == fields and all(_is_int64(tok) for tok in toks)
            if not ok:
                return IJBFileError(path, f"expected {what}, got {ln.strip()[:120]!r}", line=lineno)
    return IJBFileError(path, f"expected {what} separated by whitespace")


def read_template_pairs(path):
    """``<t1> <t2> <label>`` lines -> ``(t1, t2, labels)`` (int64, int64, bool); fast for 15.6M lines.

    Every non-blank line must hold exactly three int64 integers, the label 0 or 1.

    Raises:
        OSError: missing / unreadable file. IJBFileError: (a ValueError naming file and line) any
        other line, an id beyond int64, a label other than 0/1, or no pairs.
    """
    path = _need(path)
    what = "'<t1> <t2> <label>' integers"
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 24)
            if not block:
                break
            if not _INT_BYTES[np.frombuffer(block, np.uint8)].all():
                raise _first_bad_int_line(path, what, 3)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "input contained no data"
            arr = np.loadtxt(path, dtype=np.int64, ndmin=2, comments=None, encoding="latin-1")
    except (ValueError, OverflowError):  # NumPy names neither the file nor the line: find the line
        raise _first_bad_int_line(path, what, 3) from None
    if arr.size == 0:
        raise IJBFileError(path, "no pairs")
    if arr.shape[1] != 3:
        raise _first_bad_int_line(path, what, 3)
    lab = arr[:, 2]
    bad = np.flatnonzero((lab != 0) & (lab != 1))
    if bad.size:
        raise IJBFileError(path, f"labels must be 0 or 1, got {int(lab[bad[0]])} in data row {int(bad[0]) + 1}")
    return arr[:, 0].copy(), arr[:, 1].copy(), lab.astype(bool)


def read_landmarks_scores(path):
    """``<image> x1 y1 ... x5 y5 <score>`` -> ``(names, landmarks (N,5,2) float32, scores (N,) float32)``.

    Raises:
        OSError: missing / unreadable file. IJBFileError: (a ValueError naming file and line) not
        UTF-8, a line without 12 fields, a coordinate or score that is not a finite number, or an
        image name outside ``loose_crop/``.
    """
    path = _need(path)
    names, lms, scores = [], [], []
    for lineno, ln in enumerate(_read_text(path).split("\n"), 1):
        t = ln.split()
        if not t:
            continue
        if len(t) != 12:
            raise IJBFileError(path, f"expected '<image> 10 landmark coordinates <score>', got {len(t)} fields",
                               line=lineno)
        names.append(_image_name(t[0], path, lineno))
        lms.append([_float(v, path, lineno, "landmark coordinates and score", ln) for v in t[1:11]])
        scores.append(_float(t[11], path, lineno, "landmark coordinates and score", ln))
    return (np.array(names), np.array(lms, np.float32).reshape(-1, 5, 2), np.array(scores, np.float32))


def read_1n_csv(path):
    """1:N csv (header; ``TEMPLATE_ID,SUBJECT_ID,...`` per image) -> unique ``(template_ids, subject_ids)``.

    Raises:
        OSError: missing / unreadable file. IJBFileError: (a ValueError naming file and line) not
        UTF-8 / not parseable as csv, a header without TEMPLATE_ID and SUBJECT_ID, ids that are not
        int64, or a template listed with two subjects.
    """
    path = _need(path)
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    try:
        head_row = next(reader, None)
        if not head_row:
            raise IJBFileError(path, "empty file")
        head = [h.strip().upper() for h in head_row]
        if "TEMPLATE_ID" not in head or "SUBJECT_ID" not in head:
            raise IJBFileError(path, f"header must contain TEMPLATE_ID and SUBJECT_ID, got {head_row[:4]}", line=1)
        it, is_ = head.index("TEMPLATE_ID"), head.index("SUBJECT_ID")
        t, s = [], []
        for r in reader:
            if not r:
                continue
            if max(it, is_) >= len(r):
                raise IJBFileError(path, f"TEMPLATE_ID and SUBJECT_ID must be integers, got "
                                   f"{','.join(r)[:120]!r}", line=reader.line_num)
            line = ",".join(r)
            t.append(_int64(r[it].strip(), path, reader.line_num, "TEMPLATE_ID and SUBJECT_ID", line))
            s.append(_int64(r[is_].strip(), path, reader.line_num, "TEMPLATE_ID and SUBJECT_ID", line))
    except csv.Error as e:
        raise IJBFileError(path, f"not a readable csv file ({e})", line=reader.line_num) from None
    t, s = np.array(t, np.int64), np.array(s, np.int64)
    ut, first = np.unique(t, return_index=True)
    subj = s[first]
    if np.any(subj[np.searchsorted(ut, t)] != s):
        raise IJBFileError(path, "a template is listed with more than one SUBJECT_ID")
    return ut, subj


@dataclass
class IJBMeta:
    """Parsed IJB meta files (image order = ``<t>_name_5pts_score.txt``).

    Attributes:
        target: ``"IJBC"`` or ``"IJBB"``.
        names, landmarks, det_scores: per image (``(N,)``, ``(N,5,2)``, ``(N,)``).
        templates, medias: per image template / media id (aligned with ``names``).
        pair_t1, pair_t2, pair_labels: 1:1 protocol.
        probe: ``(template_ids, subject_ids)`` of the mixed probes, or None.
        galleries: ``{"G1": (template_ids, subject_ids), "G2": ...}`` (IJB-B: S1/S2), may be empty.
    """

    target: str
    names: np.ndarray
    landmarks: np.ndarray
    det_scores: np.ndarray
    templates: np.ndarray
    medias: np.ndarray
    pair_t1: np.ndarray
    pair_t2: np.ndarray
    pair_labels: np.ndarray
    probe: tuple = None
    galleries: dict = None


def _target(target):
    t = str(target).upper().replace("-", "")
    if t not in ("IJBC", "IJBB"):
        raise ValueError(f"`target` must be 'IJBC' or 'IJBB', got {target!r}.")
    return t


def load_ijb_meta(root, target="IJBC", with_1n=True) -> IJBMeta:
    """Read every meta file of an IJB folder; align the tid/mid list to the landmark list by name.

    Args:
        root: folder holding ``meta/`` and ``loose_crop/``.
        target: ``"IJBC"`` or ``"IJBB"``.
        with_1n: also read the 1:N csv files when present.

    Raises:
        OSError: a missing / unreadable meta file. IJBFileError: (a ValueError naming the file and
        line) a malformed meta file -- see :func:`read_landmarks_scores`, :func:`read_template_media`,
        :func:`read_template_pairs`, :func:`read_1n_csv` -- or image lists that do not match.

    Example::

        meta = load_ijb_meta("IJB_release/IJBC", "IJBC")
        meta.pair_t1.size  # 15658489
    """
    t = _target(target)
    low = t.lower()
    meta = Path(root) / "meta"
    names, lms, det = read_landmarks_scores(meta / f"{low}_name_5pts_score.txt")
    if names.size == 0:
        raise IJBFileError(meta / f"{low}_name_5pts_score.txt", "no image lines")
    n2, tids, mids = read_template_media(meta / f"{low}_face_tid_mid.txt")
    if n2.shape != names.shape or not np.array_equal(n2, names):
        pos = {n: i for i, n in enumerate(n2)}
        missing = [n for n in names if n not in pos]
        if missing or len(pos) != len(n2):
            raise IJBFileError(meta / f"{low}_face_tid_mid.txt", f"{len(missing)} images of "
                               f"{low}_name_5pts_score.txt are not in this file (or names repeat); first: "
                               f"{missing[:3]}")
        idx = np.array([pos[n] for n in names], np.int64)
        tids, mids = tids[idx], mids[idx]
    p1, p2, lab = read_template_pairs(meta / f"{low}_template_pair_label.txt")
    probe, galleries = None, {}
    if with_1n:
        gnames = ("G1", "G2") if t == "IJBC" else ("S1", "S2")
        probe_path = meta / f"{low}_1N_probe_mixed.csv"
        if probe_path.is_file():
            probe = read_1n_csv(probe_path)
            for g in gnames:
                gp = meta / f"{low}_1N_gallery_{g}.csv"
                if gp.is_file():
                    galleries[g] = read_1n_csv(gp)
    return IJBMeta(t, names, lms, det, tids, mids, p1, p2, lab, probe, galleries)


# ------------------------------------------------------------- features
def _align(image, landmarks, image_size):
    return align_face(image, landmarks, image_size=image_size)


def align_ijb_images(root, names, landmarks, image_size=112, num_threads=4,
                     max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS):
    """Read ``<root>/loose_crop/<name>`` and align each with its 5 landmarks -> uint8 RGB ``(n, S, S, 3)``.

    Raises:
        FileNotFoundError: a missing image. ImageFileError: an undecodable or over-cap image
        (``max_image_pixels``, checked on the header before decoding).
    """
    crop = Path(root) / "loose_crop"

    def one(i):
        p = crop / str(names[i])
        if not p.is_file():
            raise FileNotFoundError(f"IJB image not found: {p}")
        img, why = read_image_file(p, max_image_pixels)
        if img is None:
            raise ImageFileError(p, None, "bad_image", f"IJB image cannot be decoded: {why}")
        return _align(img, landmarks[i], int(image_size))

    with ThreadPoolExecutor(max(1, int(num_threads))) as ex:
        return np.stack(list(ex.map(one, range(len(names)))))


def extract_ijb_features(model, root, meta: IJBMeta, image_size=112, batch_size=128, flip=True,
                         progress=True, num_threads=4):
    """Aligned-image features for every image of ``meta`` (insightface ``get_image_feature``).

    Args:
        model: Keras model / ``FaceRecognizer`` (``embedder``) / callable on normalised float32 batches.
        root: the IJB folder (``loose_crop/``).
        meta: :class:`IJBMeta`.
        image_size: aligned crop side.
        batch_size: images per forward pass.
        flip: return ``f(x) + f(flip(x))``.
        progress: tqdm bar.
        num_threads: image decoding / alignment threads.

    Returns:
        ``(features float32 (N, d) un-normalised, det_scores float32 (N,))``.
    """
    from keras_facemargin.data.pipeline import normalize_images

    fn = _embed_fn(model)
    n = len(meta.names)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=f"{meta.target} features", unit="img")
    out = None
    step = int(batch_size)
    for s in range(0, n, step):
        e = min(n, s + step)
        imgs = align_ijb_images(root, meta.names[s:e], meta.landmarks[s:e], image_size, num_threads)
        x = normalize_images(imgs)
        f = _to_numpy(fn(x))
        if flip:
            f = f + _to_numpy(fn(np.ascontiguousarray(x[:, :, ::-1])))
        if out is None:
            out = np.empty((n, f.shape[1]), np.float32)
        out[s:e] = f
        if bar is not None:
            bar.update(e - s)
    if bar is not None:
        bar.close()
    return out, meta.det_scores.astype(np.float32)


def image_to_template_features(features, templates, medias, det_scores=None, normalize_images=False):
    """Template features: media mean, template sum, L2 norm (insightface ``image2template_feature``).

    Args:
        features: ``(N, d)`` image features.
        templates, medias: ``(N,)`` int ids per image.
        det_scores: optional ``(N,)`` weights multiplied into each image feature (detector score, "D1").
        normalize_images: L2-normalise image features first ("N0"; insightface's default N1 keeps norms).

    Returns:
        ``(template_feats float32 (T, d) unit-norm, unique_templates int64 (T,) ascending)``.

    Example::

        tf, tids = image_to_template_features(feats, meta.templates, meta.medias, meta.det_scores)
    """
    f = np.asarray(features, np.float64)
    t = np.asarray(templates).astype(np.int64).reshape(-1)
    m = np.asarray(medias).astype(np.int64).reshape(-1)
    if f.ndim != 2 or f.shape[0] != t.size or t.size != m.size:
        raise ValueError(f"`features` (N, d), `templates` (N,), `medias` (N,) must agree; got {f.shape}, "
                         f"{t.shape}, {m.shape}.")
    if normalize_images:
        f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    if det_scores is not None:
        w = np.asarray(det_scores, np.float64).reshape(-1)
        if w.size != t.size:
            raise ValueError(f"`det_scores` must have {t.size} entries, got {w.size}.")
        f = f * w[:, None]
    order = np.lexsort((m, t))
    ts, ms, fs = t[order], m[order], f[order]
    # media groups (template, media) -> mean
    new_media = np.ones(ts.size, bool)
    new_media[1:] = (ts[1:] != ts[:-1]) | (ms[1:] != ms[:-1])
    starts = np.flatnonzero(new_media)
    counts = np.diff(np.append(starts, ts.size))
    media_feats = np.add.reduceat(fs, starts, axis=0) / counts[:, None]
    media_t = ts[starts]
    # template groups -> sum of media means
    new_t = np.ones(media_t.size, bool)
    new_t[1:] = media_t[1:] != media_t[:-1]
    tstarts = np.flatnonzero(new_t)
    tf = np.add.reduceat(media_feats, tstarts, axis=0)
    tf /= np.maximum(np.linalg.norm(tf, axis=1, keepdims=True), 1e-12)
    return tf.astype(np.float32), media_t[tstarts]


def _rows(sorted_ids, order, ids, what):
    pos = np.searchsorted(sorted_ids, ids)
    pos = np.minimum(pos, sorted_ids.size - 1)
    bad = sorted_ids[pos] != ids
    if np.any(bad):
        _missing(ids[bad], what)
    return order[pos]


def _missing(bad_ids, what):
    miss = np.unique(bad_ids)
    raise ValueError(f"{miss.size} template ids in `{what}` have no template feature (first: {miss[:5].tolist()}).")


def _row_mapper(ids):
    """``ids (T,) unique`` -> ``f(p, what) -> int32 rows`` (lookup table when ids are compact, else searchsorted)."""
    T = ids.size
    if T == 0:
        def none(p, what):
            if p.size:
                _missing(p, what)
            return np.empty(0, np.int32)
        return none
    lo, hi = int(ids.min()), int(ids.max())
    span = hi - lo + 1
    if span <= max(1 << 22, 8 * T):  # compact ids (IJB: < 200k): O(1) lookup, <= 32 B per template
        lut = np.full(span, -1, np.int32)
        lut[ids - lo] = np.arange(T, dtype=np.int32)

        def via_lut(p, what):
            q = p - lo
            ok = (q >= 0) & (q < span)
            r = lut[np.where(ok, q, 0)]
            bad = ~ok | (r < 0)
            if np.any(bad):
                _missing(p[bad], what)
            return r
        return via_lut
    order = np.argsort(ids, kind="stable")
    sids = ids[order]

    def via_search(p, what):
        return _rows(sids, order, p, what).astype(np.int32)
    return via_search


# ``method="auto"`` cost model (seconds): the GEMM path costs its multiply-adds at _GEMM_FLOPS
# plus _PICK_SECONDS per pair (grouping + one random read of the block); the gather path moves
# ``2 * d * itemsize`` bytes per pair at _GATHER_BYTES. Conservative CPU figures (measured on a
# loaded 2-core Xeon: ~37 GFLOP/s float32 GEMM, ~1.2 GB/s effective random-row gather).
_GEMM_FLOPS = 50e9
_GATHER_BYTES = 5e9
_PICK_SECONDS = 30e-9
_PICK_CHUNK = 1 << 21  # pairs picked at once from a similarity block (~40 MB of temporaries)


def _gemm_plan(a, b, T, itemsize, max_block_bytes):
    """Row groups for the GEMM path. ``a <= b`` are oriented pair rows.

    Rows that occur as ``a`` are split, ascending, into groups whose block ``rows x cols`` fits in
    ``max_block_bytes`` with ``cols`` bounded by the number of used templates at or after the
    group's first row (each pair's ``b >= a``). Returns ``(bounds, group_of_row, rank, flops/2d)``.
    """
    used_a = np.zeros(T, bool)
    used_a[a] = True
    used = used_a.copy()
    used[b] = True
    suffix = np.cumsum(used[::-1])[::-1]  # used templates with row >= r
    rows_a = np.flatnonzero(used_a)
    bounds, macs, i = [0], 0, 0
    while i < rows_a.size:
        cbound = int(suffix[rows_a[i]])
        R = max(1, min(rows_a.size - i, int(max_block_bytes) // max(1, cbound * itemsize)))
        macs += R * cbound
        i += R
        bounds.append(i)
    G = len(bounds) - 1
    gdt = np.uint16 if G < (1 << 16) else np.int32  # uint16 -> O(n) radix argsort
    group_of_row = np.zeros(T, gdt)
    group_of_row[rows_a] = np.repeat(np.arange(G, dtype=gdt), np.diff(bounds))
    rank = np.zeros(T, np.int64)
    rank[rows_a] = np.arange(rows_a.size)
    return rows_a, bounds, group_of_row, rank, macs


def _scores_gemm(F, a, b, plan, out, bar):
    rows_a, bounds, group_of_row, rank, _ = plan
    G = len(bounds) - 1
    T = F.shape[0]
    gid = group_of_row[a]
    perm = np.argsort(gid, kind="stable")
    offs = np.concatenate([[0], np.cumsum(np.bincount(gid, minlength=G))])
    del gid
    mask = np.zeros(T, bool)
    colmap = np.zeros(T, np.int64)
    buf = np.empty(0, F.dtype)
    for g in range(G):
        sel = perm[offs[g]:offs[g + 1]]
        r = rows_a[bounds[g]:bounds[g + 1]]
        if sel.size == 0:
            continue
        # rows: a contiguous run is a view, else a gather of R rows
        Fr = F[r[0]:r[-1] + 1] if r[-1] - r[0] + 1 == r.size else F[r]
        for s in range(0, sel.size, _PICK_CHUNK):
            mask[b[sel[s:s + _PICK_CHUNK]]] = True
        cols = np.flatnonzero(mask)
        mask[cols] = False
        c0, span = int(cols[0]), int(cols[-1]) - int(cols[0]) + 1
        contiguous = cols.size >= 0.9 * span  # near-contiguous columns: use a view of F
        if contiguous:
            Fc, C = F[c0:c0 + span], span
        else:
            Fc, C = F[cols], cols.size
            colmap[cols] = np.arange(C)
        R = r.size
        if buf.size < R * C:
            buf = np.empty(R * C, F.dtype)
        S = buf[:R * C].reshape(R, C)
        np.matmul(Fr, Fc.T, out=S)
        flat_s = buf[:R * C]
        base = bounds[g]
        for s in range(0, sel.size, _PICK_CHUNK):
            idx = sel[s:s + _PICK_CHUNK]
            bi = b[idx]
            flat = (rank[a[idx]] - base) * C
            flat += (bi - c0) if contiguous else colmap[bi]
            out[idx] = flat_s.take(flat)
        if bar is not None:
            bar.update(1)


def _scores_gather(F, n, rows_of, chunk, threads, out, bar):
    d = F.shape[1]
    starts = list(range(0, n, chunk))
    threads = max(1, min(int(threads), len(starts) or 1))

    def work(worker):
        x = np.empty((chunk, d), F.dtype)
        y = np.empty((chunk, d), F.dtype)
        for s in starts[worker::threads]:
            e = min(n, s + chunk)
            k = e - s
            r1, r2 = rows_of(s, e)
            np.take(F, r1, axis=0, out=x[:k])
            np.take(F, r2, axis=0, out=y[:k])
            np.einsum("ij,ij->i", x[:k], y[:k], out=out[s:e])
            if bar is not None:
                bar.update(1)

    if threads == 1:
        work(0)
    else:
        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(work, range(threads)))


def verify_cost(num_pairs, dim, gemm_macs, itemsize=4):
    """Estimated seconds of both :func:`verify_templates` methods (the ``method="auto"`` model).

    Args:
        num_pairs: pairs to score.
        dim: feature dimension.
        gemm_macs: ``rows x cols`` entries the GEMM path computes (about ``T_used**2 / 2`` for
            pairs spread over ``T_used`` templates: each pair is oriented so ``row <= col``).
        itemsize: feature bytes per value.

    Returns:
        ``{"gemm": seconds, "gather": seconds}``. With the default rates GEMM wins when the pair
        density ``num_pairs / T_used**2`` exceeds about ``_GATHER_BYTES / (2 * itemsize * _GEMM_FLOPS)``
        (~1.3% for float32: IJB-C 2.9% and IJB-B 5.5% -> GEMM; 15.6M pairs over 227k templates,
        0.03% -> gather).
    """
    gemm = 2.0 * dim * gemm_macs / _GEMM_FLOPS + num_pairs * _PICK_SECONDS
    gather = num_pairs * 2.0 * dim * itemsize / _GATHER_BYTES
    return {"gemm": gemm, "gather": gather}


def verify_templates(template_feats, template_ids, p1, p2, chunk=None, max_chunk_bytes=32 << 20,
                     num_threads=None, progress=False, method="auto", max_block_bytes=256 << 20):
    """Cosine scores of template pairs: exact, vectorised, memory-bounded.

    Two exact methods (same scores up to float rounding, ~1e-7 for unit-norm float32):

    * ``"gemm"``: template-by-template similarity blocks by BLAS matrix products, each pair's
      score read from its block. Pairs are oriented ``row(p1) <= row(p2)`` (the similarity matrix
      is symmetric), grouped by the block of their first row (one O(n) radix argsort), and only the
      rows / columns that occur in a block's pairs are multiplied (a column set spanning >= 90% of
      its range is used as a view, else gathered). Cost ~ ``T_used**2 * d`` multiply-adds
      (upper triangle) plus a few tens of ns per pair; memory: one block of at most about
      ``max_block_bytes`` plus ~25 bytes per pair (oriented rows, grouping permutation) and
      ~60 MB of per-step temporaries (IJB-C shape: ~0.8 GB peak besides the output).
    * ``"gather"``: chunks of pairs gather both feature rows into preallocated buffers and reduce
      with ``einsum`` (``2 * d * itemsize`` bytes of memory traffic per pair; memory
      ``~ 2 * threads * max_chunk_bytes``).
    * ``"auto"`` (default) picks the cheaper by :func:`verify_cost` (GEMM at ~50 GFLOP/s vs
      gathers at ~5 GB/s): GEMM when pairs are dense relative to the templates they use
      (``num_pairs / T_used**2`` above ~1.3% for float32; IJB-C 1:1: 15.7M pairs / 23,124
      templates = 2.9%, IJB-B: 8.0M / 12,115 = 5.5%), gather when sparse.

    Template ids are mapped to rows with a lookup table (compact ids) or ``np.searchsorted``; every
    id is checked before any scoring. Features are used as given (pass unit-norm features, e.g.
    from :func:`image_to_template_features`, for cosine similarity). float32 and float64 features
    are used in their own dtype (no upcast); other dtypes are converted to float32.

    Args:
        template_feats: ``(T, d)`` features (float32 recommended).
        template_ids: ``(T,)`` unique ids, any order.
        p1, p2: ``(n,)`` template ids of each pair (any order, repeats allowed).
        chunk: gather path: pairs per chunk (default: ``max_chunk_bytes / (d * itemsize)``).
        max_chunk_bytes: gather path: size of one gathered side of a chunk when ``chunk`` is None.
        num_threads: gather path: worker threads (default ``min(4, cpu_count)``); NumPy releases
            the GIL. The GEMM path uses the BLAS library's threads.
        progress: tqdm bar over chunks (gather) or blocks (GEMM).
        method: ``"auto"``, ``"gemm"`` or ``"gather"``.
        max_block_bytes: GEMM path: similarity block size bound (rows per block adapt to it).

    Returns:
        ``(n,)`` scores in the computation dtype (float32 for float32 features).

    Example::

        scores = verify_templates(tf, tids, meta.pair_t1, meta.pair_t2)  # IJB-C: GEMM path
    """
    if method not in ("auto", "gemm", "gather"):
        raise ValueError(f"`method` must be 'auto', 'gemm' or 'gather', got {method!r}.")
    F = np.asarray(template_feats)
    if F.ndim != 2:
        raise ValueError(f"`template_feats` must be (T, d), got {F.shape}.")
    if F.dtype not in (np.float32, np.float64):
        F = F.astype(np.float32)
    F = np.ascontiguousarray(F)
    ids = np.asarray(template_ids).astype(np.int64).reshape(-1)
    if ids.size != F.shape[0]:
        raise ValueError(f"`template_ids` has {ids.size} entries for {F.shape[0]} features.")
    sids = np.sort(ids)
    if sids.size > 1 and np.any(sids[1:] == sids[:-1]):
        raise ValueError("`template_ids` must be unique.")
    p1 = np.asarray(p1).astype(np.int64, copy=False).reshape(-1)
    p2 = np.asarray(p2).astype(np.int64, copy=False).reshape(-1)
    if p1.size != p2.size:
        raise ValueError(f"`p1` and `p2` lengths differ ({p1.size} vs {p2.size}).")
    n, d = p1.size, F.shape[1]
    T = F.shape[0]
    if chunk is None:
        chunk = max(1, int(max_chunk_bytes) // max(1, d * F.itemsize))
    chunk = int(chunk)
    if chunk <= 0:
        raise ValueError(f"`chunk` must be positive, got {chunk}.")
    threads = num_threads or min(4, os.cpu_count() or 1)
    rows = _row_mapper(ids)
    out = np.empty(n, F.dtype)
    step = 1 << 22
    if method == "gather":
        # validate all ids up front (clear error before any work), then map per chunk
        for name, p in (("p1", p1), ("p2", p2)):
            for s in range(0, n, step):
                rows(p[s:s + step], name)
        a = b = None
    else:
        # oriented rows a <= b (int32, 8 bytes per pair), validated as they are mapped
        a = np.empty(n, np.int32)
        b = np.empty(n, np.int32)
        for s in range(0, n, step):
            r1, r2 = rows(p1[s:s + step], "p1"), rows(p2[s:s + step], "p2")
            np.minimum(r1, r2, out=a[s:s + step])
            np.maximum(r1, r2, out=b[s:s + step])
        if n == 0:
            return out
        plan = _gemm_plan(a, b, T, F.itemsize, max_block_bytes)
        if method == "auto":
            cost = verify_cost(n, d, plan[4], F.itemsize)
            method = "gemm" if cost["gemm"] <= cost["gather"] else "gather"
    if n == 0:
        return out
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = len(plan[1]) - 1 if method == "gemm" else -(-n // chunk)
        bar = tqdm(total=total, desc=f"template pairs ({method})", unit="block" if method == "gemm" else "chunk")
    if method == "gemm":
        _scores_gemm(F, a, b, plan, out, bar)
    elif a is not None:  # auto chose gather: reuse the mapped rows
        _scores_gather(F, n, lambda s, e: (a[s:e], b[s:e]), chunk, threads, out, bar)
    else:
        _scores_gather(F, n, lambda s, e: (rows(p1[s:e], "p1"), rows(p2[s:e], "p2")), chunk, threads, out, bar)
    if bar is not None:
        bar.close()
    return out


# --------------------------------------------------------------- metrics
def tar_far_table(scores, labels, fars=IJB_FARS, far_convention="floor"):
    """TAR at each FAR of a 1:1 score list, plus the ROC.

    Args:
        scores: ``(n,)`` similarities.
        labels: ``(n,)`` bool / 0-1 (genuine).
        fars: FAR targets.
        far_convention: ``"floor"`` (largest FAR <= target; see module docstring) or ``"nearest"``
            (insightface's ROC point nearest the target).

    Returns:
        dict with ``tar`` ({far: tar}), ``threshold`` ({far: t}), ``fpr``, ``tpr``, ``auc``,
        ``num_genuine``, ``num_impostor``.
    """
    s = np.asarray(scores, np.float64).reshape(-1)
    y = np.asarray(labels).astype(bool).reshape(-1)
    if s.size != y.size:
        raise ValueError(f"`scores` ({s.size}) and `labels` ({y.size}) lengths differ.")
    fpr, tpr, thr, auc = _roc(s, y)
    if far_convention == "floor":
        tars, thrs = tar_at_far(s, y, fars)
    elif far_convention == "nearest":
        tars, thrs = {}, {}
        for far in fars:
            dist = np.abs(fpr - float(far))
            best = np.flatnonzero(dist == dist.min())
            j = best[np.argmax(tpr[best])]
            tars[float(far)], thrs[float(far)] = float(tpr[j]), float(thr[j])
    else:
        raise ValueError(f"`far_convention` must be 'floor' or 'nearest', got {far_convention!r}.")
    return {"tar": tars, "threshold": thrs, "fpr": fpr, "tpr": tpr, "auc": auc,
            "num_genuine": int(y.sum()), "num_impostor": int((~y).sum())}


def format_tar_far_table(tables: dict) -> str:
    """Text table ``name | TAR@FAR=1e-06 ... | AUC`` (percent) of several :func:`tar_far_table` results."""
    fars = sorted({f for t in tables.values() for f in t["tar"]})
    w = max(6, *(len(str(k)) for k in tables))
    head = f"{'method':<{w}}" + "".join(f"  {format(f, 'g'):>8}" for f in fars) + f"  {'AUC':>7}"
    lines = [head, "-" * len(head)]
    for name, t in tables.items():
        lines.append(f"{str(name):<{w}}" + "".join(f"  {100 * t['tar'][f]:>8.2f}" for f in fars)
                     + f"  {100 * t['auc']:>7.3f}")
    return "\n".join(lines)


def _floor_threshold(neg_scores, target):
    return floor_threshold(np.sort(np.asarray(neg_scores, np.float64))[::-1], target)


def identification(probe_feats, probe_subjects, gallery_feats, gallery_subjects, ranks=(1, 5, 10),
                   fpirs=(1e-2, 1e-1), chunk=4096):
    """Open-set 1:N search of probe templates in one gallery (see module docstring for conventions).

    Args:
        probe_feats: ``(P, d)`` unit-norm probe template features.
        probe_subjects: ``(P,)`` subject ids.
        gallery_feats: ``(G, d)`` unit-norm gallery template features.
        gallery_subjects: ``(G,)`` subject ids.
        ranks: CMC ranks to report (over mated probes).
        fpirs: FPIR targets for TPIR (needs non-mated probes; NaN otherwise).
        chunk: probes per similarity block (memory ``chunk * G`` floats).

    Returns:
        dict: ``rank`` ({k: rate}), ``tpir`` ({fpir: rate}), ``threshold`` ({fpir: t}),
        ``num_mated``, ``num_nonmated``, ``mated_rank`` (``(num_mated,)``), ``nonmated_top1``.

    Example::

        r = identification(pf, ps, gf, gs)
        r["rank"][1], r["tpir"][0.01]
    """
    P = np.asarray(probe_feats, np.float32)
    G = np.asarray(gallery_feats, np.float32)
    ps = np.asarray(probe_subjects).reshape(-1)
    gs = np.asarray(gallery_subjects).reshape(-1)
    if P.ndim != 2 or G.ndim != 2 or P.shape[1] != G.shape[1] or P.shape[0] != ps.size or G.shape[0] != gs.size:
        raise ValueError(f"probe {P.shape}/{ps.shape} and gallery {G.shape}/{gs.shape} features/subjects disagree.")
    mated = np.isin(ps, gs)
    mate_score = np.full(ps.size, -np.inf)
    rank = np.zeros(ps.size, np.int64)
    top1 = np.empty(ps.size)
    for s in range(0, ps.size, int(chunk)):
        e = min(ps.size, s + int(chunk))
        S = (P[s:e] @ G.T).astype(np.float64)
        same = ps[s:e, None] == gs[None, :]
        top1[s:e] = S.max(axis=1)
        ms = np.where(same, S, -np.inf).max(axis=1)
        mate_score[s:e] = ms
        rank[s:e] = 1 + np.sum(np.where(same, -np.inf, S) >= ms[:, None], axis=1)
    mr = rank[mated]
    res = {"rank": {int(k): float(np.mean(mr <= k)) if mr.size else float("nan") for k in ranks},
           "tpir": {}, "threshold": {}, "num_mated": int(mated.sum()), "num_nonmated": int((~mated).sum()),
           "mated_rank": mr, "nonmated_top1": top1[~mated]}
    for f in fpirs:
        if (~mated).sum() == 0 or mated.sum() == 0:
            res["tpir"][float(f)], res["threshold"][float(f)] = float("nan"), float("nan")
            continue
        t = _floor_threshold(top1[~mated], f)
        res["threshold"][float(f)] = float(t)
        res["tpir"][float(f)] = float(np.mean((mr == 1) & (mate_score[mated] > t)))
    return res


def _select(template_feats, template_ids, wanted, what):
    ids = np.asarray(template_ids).astype(np.int64)
    order = np.argsort(ids)
    sids = ids[order]
    pos = np.minimum(np.searchsorted(sids, wanted), sids.size - 1)
    ok = sids[pos] == wanted
    return template_feats[order[pos[ok]]], ok


def evaluate_ijb_1n(template_feats, template_ids, meta: IJBMeta, galleries="separate", **kwargs):
    """1:N on the mixed probes against each gallery of ``meta`` (or the joint G1+G2 closed set).

    Probe / gallery templates missing from ``template_ids`` are excluded and counted in
    ``missing_probe`` / ``missing_gallery`` (nothing is dropped silently).

    Args:
        template_feats, template_ids: from :func:`image_to_template_features`.
        meta: :class:`IJBMeta` with ``probe`` and ``galleries``.
        galleries: ``"separate"`` (NIST protocol, one result per gallery plus their mean) or
            ``"joint"`` (insightface ``ijb_1n.py``: G1 and G2 concatenated).
        **kwargs: :func:`identification` options.

    Returns:
        ``{gallery name: identification dict}`` (plus ``"mean"`` for separate galleries).
    """
    if meta.probe is None or not meta.galleries:
        raise ValueError("meta has no 1:N files (<t>_1N_probe_mixed.csv and gallery csvs).")
    pt, psub = meta.probe
    pf, pok = _select(template_feats, template_ids, pt, "probe")
    if galleries == "joint":
        gal = {"+".join(meta.galleries): tuple(np.concatenate(v) for v in zip(*meta.galleries.values()))}
    elif galleries == "separate":
        gal = dict(meta.galleries)
    else:
        raise ValueError(f"`galleries` must be 'separate' or 'joint', got {galleries!r}.")
    out = {}
    for name, (gt, gsub) in gal.items():
        gf, gok = _select(template_feats, template_ids, gt, name)
        r = identification(pf, psub[pok], gf, gsub[gok], **kwargs)
        r["missing_probe"], r["missing_gallery"] = int((~pok).sum()), int((~gok).sum())
        out[name] = r
    if galleries == "separate" and len(out) > 1:
        vals = list(out.values())
        out["mean"] = {"rank": {k: float(np.mean([v["rank"][k] for v in vals])) for k in vals[0]["rank"]},
                       "tpir": {k: float(np.mean([v["tpir"][k] for v in vals])) for k in vals[0]["tpir"]}}
    return out


def evaluate_ijb(model, root, target="IJBC", flip=True, detector_score=True, normalize_images=False,
                 batch_size=128, image_size=112, features=None, progress=True, far_convention="floor",
                 with_1n=True):
    """Full IJB evaluation: features -> templates -> 1:1 TAR@FAR table (+ 1:N when the csvs exist).

    Args:
        model: embedding model (ignored when ``features`` is given).
        root: IJB folder; target: ``"IJBC"`` / ``"IJBB"``.
        flip, detector_score, normalize_images: pipeline switches (module docstring).
        batch_size, image_size: feature extraction.
        features: precomputed ``(N, d)`` image features in meta order (skips the model).
        progress: tqdm bars.
        far_convention: see :func:`tar_far_table`.
        with_1n: run 1:N when the files exist.

    Returns:
        dict: ``verification`` (:func:`tar_far_table`), ``scores``, ``identification``
        (:func:`evaluate_ijb_1n` or None), ``features``, ``meta``.
    """
    meta = load_ijb_meta(root, target, with_1n=with_1n)
    if features is None:
        features, _ = extract_ijb_features(model, root, meta, image_size=image_size, batch_size=batch_size,
                                           flip=flip, progress=progress)
    elif len(features) != len(meta.names):
        raise ValueError(f"`features` has {len(features)} rows for {len(meta.names)} images in the meta files.")
    tf, tids = image_to_template_features(features, meta.templates, meta.medias,
                                          meta.det_scores if detector_score else None, normalize_images)
    scores = verify_templates(tf, tids, meta.pair_t1, meta.pair_t2, progress=progress)
    ver = tar_far_table(scores, meta.pair_labels, far_convention=far_convention)
    ident = evaluate_ijb_1n(tf, tids, meta) if (with_1n and meta.probe is not None and meta.galleries) else None
    return {"verification": ver, "scores": scores, "identification": ident, "features": features, "meta": meta}
