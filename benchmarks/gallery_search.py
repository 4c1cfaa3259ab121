"""Gallery search: latency and peak memory of exact chunked search vs NumPy brute force, same run.

For each gallery size (random unit float32 templates), times one query and a batch of queries with
:func:`keras_facemargin.inference.gallery_search.top_k_search` (chunked matmul + argpartition, bounded
score memory) and with plain NumPy brute force (``probes @ templates.T`` + ``argpartition``), checks
that both return the same top-k, and measures the peak memory each allocates beyond the templates
(``tracemalloc``; NumPy reports its buffers to it). FAISS (``IndexFlatIP``) is added only if importable.

Example::

    python benchmarks/gallery_search.py --sizes 10000 100000 1000000 --dim 128 --batch 256
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from keras_facemargin.inference.gallery_search import top_k_search


def brute_force(templates, probes, k):
    scores = probes @ templates.T
    idx = np.argpartition(scores, scores.shape[1] - k, axis=1)[:, -k:]
    order = np.argsort(-np.take_along_axis(scores, idx, axis=1), axis=1)
    return np.take_along_axis(idx, order, axis=1)


def measure(fn, repeats):
    fn()  # warm-up
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), peak, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    try:
        import faiss  # noqa: F401
    except ImportError:
        faiss = None
    rng = np.random.default_rng(0)
    print(f"dim {args.dim}, top-k {args.top_k}, batch {args.batch}; FAISS: {'yes' if faiss else 'not installed'}")
    print("| templates | query | exact chunked ms | NumPy brute ms | brute/exact time | exact peak MB | "
          "brute peak MB | brute/exact memory | same top-k |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        t = rng.standard_normal((n, args.dim), dtype=np.float32)
        t /= np.linalg.norm(t, axis=1, keepdims=True)
        for label, m in (("1", 1), (str(args.batch), args.batch)):
            q = rng.standard_normal((m, args.dim)).astype(np.float32)
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            te, pe, (ie, _) = measure(lambda: top_k_search(t, q, args.top_k), args.repeats)
            tb, pb, ib = measure(lambda: brute_force(t, q, args.top_k), args.repeats)
            same = float(np.mean([set(a) == set(b) for a, b in zip(ie, ib)]))
            print(f"| {n:,} | {label} | {te * 1e3:.2f} | {tb * 1e3:.2f} | {tb / te:.2f} | {pe / 2**20:.1f} | "
                  f"{pb / 2**20:.1f} | {pb / max(pe, 1):.2f} | {same:.3f} |", flush=True)
        del t
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
