"""Pairs scored per second for IJB-scale 1:1 template verification.

Random float32 template features (``--templates`` x ``--dim``, unit norm) and random template
pairs (``--pairs``). Times :func:`keras_facemargin.evaluation.ijb.verify_templates` with
``method="gemm"`` (similarity blocks by BLAS GEMM, each pair picked from its block) and
``method="gather"`` (chunked gather + einsum, threads), reports which one ``method="auto"``
picks (:func:`~keras_facemargin.evaluation.ijb.verify_cost`), and compares both with the plain
loop-free NumPy baseline ``np.sum(F[p1] * F[p2], axis=1)`` on all pairs at once. The baseline
materialises ``3 * pairs * dim * 4`` bytes (two gathered sides and their product); when that
exceeds ``--baseline-max-gb`` it runs on the first pairs that fit and its rate is reported for
that subset (the per-pair rate of the baseline does not improve with size). Scores are checked
equal (1e-5) across methods and against the baseline on the common pairs.

Default shape = IJB-C 1:1: 15,658,489 pairs over 23,124 templates (2.9% of all template pairs;
IJB-B: 8,010,270 over 12,115). ``--templates 227630`` spreads the same pairs over one template
per IJB-C image (0.03%, the sparse case where gather wins).

Usage::

    python benchmarks/eval_speed.py                      # IJB-C 1:1 shape, d=512
    python benchmarks/eval_speed.py --templates 227630   # sparse shape
    python benchmarks/eval_speed.py --quick              # 1M pairs
    python benchmarks/eval_speed.py --methods gemm       # skip the slow gather run
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from keras_facemargin.evaluation.ijb import verify_cost, verify_templates  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=15_658_489)
    ap.add_argument("--templates", type=int, default=23_124)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--quick", action="store_true", help="1,000,000 pairs")
    ap.add_argument("--methods", default="gemm,gather", help="comma list of gemm, gather")
    ap.add_argument("--chunk", type=int, default=None, help="gather: pairs per chunk (default: 32 MiB per side)")
    ap.add_argument("--threads", type=int, default=None, help="gather: worker threads")
    ap.add_argument("--max-block-mb", type=float, default=256, help="gemm: similarity block bound")
    ap.add_argument("--baseline-max-gb", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args(argv)
    n = 1_000_000 if args.quick else args.pairs
    T, d = args.templates, args.dim
    rng = np.random.default_rng(0)
    F = rng.standard_normal((T, d), dtype=np.float32)
    F /= np.linalg.norm(F, axis=1, keepdims=True)
    ids = rng.permutation(np.arange(10 * T, dtype=np.int64))[:T]
    p1 = ids[rng.integers(0, T, n)]
    p2 = ids[rng.integers(0, T, n)]
    print(f"pairs {n:,}  templates {T:,}  dim {d}  density {n / T**2:.3%}  features "
          f"{F.nbytes / 2**20:.0f} MiB  cpu_count {os.cpu_count()}")
    cost = verify_cost(n, d, T * (T + 1) // 2)
    auto = "gemm" if cost["gemm"] <= cost["gather"] else "gather"
    print(f"cost model: gemm ~{cost['gemm']:.1f} s, gather ~{cost['gather']:.1f} s -> method='auto' picks {auto}")

    times, scores = {}, {}
    for m in [s.strip() for s in args.methods.split(",") if s.strip()]:
        best = np.inf
        for _ in range(max(1, args.repeats)):
            t = time.perf_counter()
            s = verify_templates(F, ids, p1, p2, chunk=args.chunk, num_threads=args.threads, method=m,
                                 max_block_bytes=int(args.max_block_mb * 2**20))
            best = min(best, time.perf_counter() - t)
        times[m], scores[m] = best, s
        extra = (f"similarity blocks <= {args.max_block_mb:.0f} MiB + ~25 B/pair" if m == "gemm" else
                 f"chunk {(args.chunk or (32 << 20) // (d * 4)):,} pairs per side per thread")
        print(f"verify_templates {m:6s} : {best:8.2f} s  {n / best / 1e6:8.2f} M pairs/s  ({extra}; "
              "includes id -> row mapping)")

    # Baseline: rows already known (no id mapping), everything at once.
    order = np.argsort(ids)
    r1 = order[np.searchsorted(ids[order], p1)]
    r2 = order[np.searchsorted(ids[order], p2)]
    fit = int(args.baseline_max_gb * 2**30 // (3 * d * 4))
    k = min(n, fit)
    t = time.perf_counter()
    base = np.sum(F[r1[:k]] * F[r2[:k]], axis=1)
    tb = time.perf_counter() - t
    note = "all pairs" if k == n else (f"first {k:,} pairs only: all {n:,} would need "
                                       f"{3 * n * d * 4 / 2**30:.1f} GiB")
    print(f"numpy baseline          : {tb:8.2f} s  {k / tb / 1e6:8.2f} M pairs/s  "
          f"(peak extra memory {3 * k * d * 4 / 2**30:.1f} GiB; {note})")
    base_rate = k / tb
    for m, tm in times.items():
        print(f"speed-up {m:6s} vs baseline (pairs/s): {(n / tm) / base_rate:8.2f} x")
    if "gemm" in times and "gather" in times:
        print(f"speed-up gemm vs gather             : {times['gather'] / times['gemm']:8.2f} x")
    worst = 0.0
    for m, s in scores.items():
        err = float(np.max(np.abs(base - s[:k])))
        worst = max(worst, err)
        print(f"max |{m} - baseline| on common pairs: {err:.2e}")
    if "gemm" in scores and "gather" in scores:
        err = float(np.max(np.abs(scores["gemm"] - scores["gather"])))
        worst = max(worst, err)
        print(f"max |gemm - gather| on all pairs: {err:.2e}")
    if worst > 1e-5:
        raise SystemExit("scores disagree (> 1e-5)")


if __name__ == "__main__":
    main()
