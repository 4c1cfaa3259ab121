"""Pairs scored per second for IJB-scale 1:1 template verification.

Random float32 template features (``--templates`` x ``--dim``, unit norm) and random template
pairs (``--pairs``). Compares :func:`keras_facemargin.evaluation.ijb.verify_templates`
(chunked gather + einsum, threads) with the plain loop-free NumPy baseline
``np.sum(F[p1] * F[p2], axis=1)`` on all pairs at once. The baseline materialises
``3 * pairs * dim * 4`` bytes (two gathered sides and their product); when that exceeds
``--baseline-max-gb`` it runs on the first ``pairs`` that fit and its rate is reported for that
subset (the per-pair rate of the baseline does not improve with size). Scores are checked
equal on the common pairs.

Usage::

    python benchmarks/eval_speed.py            # IJB-C scale: 15,658,489 pairs, 227,630 templates, d=512
    python benchmarks/eval_speed.py --quick    # 1M pairs
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from keras_facemargin.evaluation.ijb import verify_templates  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=15_658_489)
    ap.add_argument("--templates", type=int, default=227_630)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--quick", action="store_true", help="1,000,000 pairs")
    ap.add_argument("--chunk", type=int, default=None, help="pairs per chunk (default: 32 MiB per side)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--baseline-max-gb", type=float, default=8.0)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args(argv)
    n = 1_000_000 if args.quick else args.pairs
    rng = np.random.default_rng(0)
    F = rng.standard_normal((args.templates, args.dim), dtype=np.float32)
    F /= np.linalg.norm(F, axis=1, keepdims=True)
    ids = rng.permutation(np.arange(10 * args.templates, dtype=np.int64))[: args.templates]
    p1 = ids[rng.integers(0, args.templates, n)]
    p2 = ids[rng.integers(0, args.templates, n)]
    print(f"pairs {n:,}  templates {args.templates:,}  dim {args.dim}  features "
          f"{F.nbytes / 2**20:.0f} MiB  cpu_count {os.cpu_count()}")

    best = np.inf
    for _ in range(max(1, args.repeats)):
        t = time.perf_counter()
        s = verify_templates(F, ids, p1, p2, chunk=args.chunk, num_threads=args.threads)
        best = min(best, time.perf_counter() - t)
    chunk = args.chunk or (32 << 20) // (args.dim * 4)
    print(f"chunked verify_templates : {best:8.2f} s  {n / best / 1e6:8.2f} M pairs/s  "
          f"(chunk {chunk:,} pairs, working memory ~{2 * chunk * args.dim * 4 / 2**20:.0f} MiB per thread, "
          "includes id -> row mapping)")

    # Baseline: rows already known (no id mapping), everything at once.
    order = np.argsort(ids)
    r1 = order[np.searchsorted(ids[order], p1)]
    r2 = order[np.searchsorted(ids[order], p2)]
    fit = int(args.baseline_max_gb * 2**30 // (3 * args.dim * 4))
    m = min(n, fit)
    t = time.perf_counter()
    base = np.sum(F[r1[:m]] * F[r2[:m]], axis=1)
    tb = time.perf_counter() - t
    note = "all pairs" if m == n else (f"first {m:,} pairs only: all {n:,} would need "
                                       f"{3 * n * args.dim * 4 / 2**30:.1f} GiB")
    print(f"numpy baseline           : {tb:8.2f} s  {m / tb / 1e6:8.2f} M pairs/s  "
          f"(peak extra memory {3 * m * args.dim * 4 / 2**30:.1f} GiB; {note})")
    print(f"speed-up (pairs/s ratio) : {(n / best) / (m / tb):8.2f} x")
    err = float(np.max(np.abs(base - s[:m])))
    print(f"max |chunked - baseline| on common pairs: {err:.2e}")
    if err > 1e-4:
        raise SystemExit("chunked scores disagree with the baseline")


if __name__ == "__main__":
    main()
