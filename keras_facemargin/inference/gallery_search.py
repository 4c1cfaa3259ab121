"""Exact top-k cosine search over unit-norm gallery templates, in bounded memory.

The scores of a block of probes against a chunk of templates are one float32 matmul; each chunk's
``top_k`` are kept with ``argpartition`` and merged with the running best, so that the memory used
besides the templates is ``probe_block x chunk_rows`` scores, whatever the gallery's size. The
``top_k`` found are then re-scored in float64 (exact cosines of the unit vectors) and sorted by
descending score, ties by template index. Which candidates make the top-k is decided by the float32
scores: two templates within float32 rounding (about 1e-7) of each other at the k-th place may swap.

Example::

    idx, scores = top_k_search(templates, probes, top_k=5)   # (m, 5) int64, (m, 5) float64
"""

from __future__ import annotations

import numpy as np

__all__ = ["top_k_search", "DEFAULT_SCORE_BUDGET"]

#: Scores held at once (probe block x template chunk): 2**24 float32 = 64 MiB.
DEFAULT_SCORE_BUDGET = 1 << 24
_PROBE_BLOCK = 1024


def top_k_search(templates, probes, top_k: int = 5, score_budget: int = DEFAULT_SCORE_BUDGET):
    """The ``top_k`` templates of highest cosine for each probe (exact search, chunked).

    Args:
        templates: ``(n, d)`` unit-norm templates (float32 is used as is, without a copy).
        probes: ``(m, d)`` or ``(d,)`` embeddings; normalised here (a zero or non-finite probe is refused).
        top_k: candidates per probe (at most ``n`` are returned).
        score_budget: most scores held at once; sets the chunk of templates scored per matmul.

    Returns:
        ``(indices, scores)``: int64 and float64 ``(m, min(top_k, n))``, best first (``(1, k)`` for a
        ``(d,)`` probe).

    Raises:
        ValueError: bad ``top_k`` or ``score_budget``, mismatched dimensions, a zero or non-finite probe.

    Example::

        idx, scores = top_k_search(np.eye(3, dtype="float32"), [0.0, 1.0, 0.1], top_k=2)   # idx [[1, 2]]
    """
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k <= 0:
        raise ValueError(f"`top_k` must be a positive integer, got {top_k!r}.")
    if isinstance(score_budget, bool) or not isinstance(score_budget, (int, np.integer)) or score_budget <= 0:
        raise ValueError(f"`score_budget` must be a positive integer, got {score_budget!r}.")
    t = templates if isinstance(templates, np.ndarray) and templates.dtype == np.float32 else \
        np.asarray(templates, np.float32)
    if t.ndim != 2:
        raise ValueError(f"`templates` must be (n, d), got shape {t.shape}.")
    n, d = t.shape
    p = np.asarray(probes, np.float64)
    p = p.reshape(1, -1) if p.ndim == 1 else p
    if p.ndim != 2 or p.shape[1] != d:
        raise ValueError(f"probes of shape {np.shape(probes)} do not match templates of dimension {d}.")
    norms = np.linalg.norm(p, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise ValueError("every probe must be a finite, non-zero embedding.")
    p = p / norms
    k = min(int(top_k), n)
    m = p.shape[0]
    if k == 0 or m == 0:
        return np.zeros((m, 0), np.int64), np.zeros((m, 0), np.float64)
    idx_out, score_out = np.empty((m, k), np.int64), np.empty((m, k), np.float64)
    for ps in range(0, m, _PROBE_BLOCK):
        block = p[ps:ps + _PROBE_BLOCK].astype(np.float32)
        rows = max(k, int(score_budget) // block.shape[0])
        best_i = np.zeros((block.shape[0], 0), np.int64)
        best_s = np.zeros((block.shape[0], 0), np.float32)
        for start in range(0, n, rows):
            s = block @ t[start:start + rows].T  # (b, c) float32
            if s.shape[1] > k:
                part = np.argpartition(s, s.shape[1] - k, axis=1)[:, -k:]
                s = np.take_along_axis(s, part, axis=1)
            else:
                part = np.broadcast_to(np.arange(s.shape[1]), s.shape)
            cand_i = np.concatenate([best_i, part + start], axis=1)
            cand_s = np.concatenate([best_s, s], axis=1)
            if cand_s.shape[1] > k:
                keep = np.argpartition(cand_s, cand_s.shape[1] - k, axis=1)[:, -k:]
                cand_i = np.take_along_axis(cand_i, keep, axis=1)
                cand_s = np.take_along_axis(cand_s, keep, axis=1)
            best_i, best_s = cand_i, cand_s
        exact = np.clip(np.einsum("bkd,bd->bk", t[best_i].astype(np.float64), p[ps:ps + _PROBE_BLOCK]), -1.0, 1.0)
        order = np.lexsort((best_i, -exact), axis=1)
        idx_out[ps:ps + block.shape[0]] = np.take_along_axis(best_i, order, axis=1)
        score_out[ps:ps + block.shape[0]] = np.take_along_axis(exact, order, axis=1)
    return idx_out, score_out
