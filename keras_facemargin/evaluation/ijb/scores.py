"""IJB 1:1: cosine scores of template pairs (exact, memory-bounded) and the TAR@FAR table.

Example::

    s = verify_templates(tf, tids, meta.pair_t1, meta.pair_t2)
    print(format_tar_far_table({"model": tar_far_table(s, meta.pair_labels)}))
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from keras_facemargin.evaluation.verification import _roc, tar_at_far

__all__ = ["IJB_FARS", "verify_cost", "verify_templates", "tar_far_table", "format_tar_far_table"]

IJB_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


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
