"""IJB meta files: strict readers and :func:`load_ijb_meta`.

Every reader checks what it parses before it sizes anything: UTF-8 text without NUL bytes,
the expected number of fields, ids that are int64 integers, finite float32 coordinates and
image names that stay inside ``loose_crop/``; an :class:`IJBFileError` (a ``ValueError``)
names the file and the line.

Example::

    meta = load_ijb_meta("IJB_release/IJBC", "IJBC")
    meta.names.size, meta.pair_t1.size   # 469375, 15658489
"""

from __future__ import annotations

import csv
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keras_facemargin.errors import IJBFileError

__all__ = ["IJBFileError", "IJBMeta", "read_template_media", "read_template_pairs", "read_landmarks_scores",
           "read_1n_csv", "load_ijb_meta"]

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
