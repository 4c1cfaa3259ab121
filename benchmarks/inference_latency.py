#!/usr/bin/env python
"""Inference speed of one converted insightface IResNet, side by side in every runtime (issue 11).

One insightface IResNet (default IResNet-50, 112x112) is built in PyTorch from the independent
definition in ``tests/test_insightface_parity.py``, with random weights and randomised BatchNorm
statistics and PReLU slopes. Its state dict is saved as a ``.pth`` and converted with the package's
own converter (``keras_facemargin.convert.insightface.convert_insightface``, the route of
``tools/convert_insightface.py``), so the same weights run everywhere:

* ``keras-eager``: ``embedder(x, training=False)`` op by op;
* ``tf.function``: the same call in a ``tf.function`` (the baseline of the ratios);
* ``tf.function-xla``: ``tf.function(jit_compile=True)``;
* ``tflite``: float32 TFLite from the package's export route (``export_tflite``: SavedModel, then
  ``TFLiteConverter.from_saved_model``), run by ``ai_edge_litert`` (XNNPACK), one interpreter per
  batch size so that no call resizes the tensors;
* ``onnxruntime``: ONNX from ``export_onnx`` (tf2onnx, opset 17), ``CPUExecutionProvider``;
* ``torch-channels_last``: the original PyTorch module, ``eval()`` + ``torch.inference_mode()``,
  module and input in ``torch.channels_last`` (the input is the NHWC array itself, permuted);
* ``torch-contiguous``: the same with the default NCHW-contiguous layout.

Every runtime computes the package's deployed embedder (backbone + L2 normalisation; PyTorch adds
``F.normalize``) and returns a NumPy array. Before anything is timed, the converted Keras backbone is
checked against PyTorch (raw embeddings, 4 images), then every runtime at every batch size against
PyTorch's normalised embeddings; with any max |diff| over ``--tol`` no timings are reported (exit 1).

Every runtime gets the same threads (``--threads``: ``tf.config.threading`` intra- and inter-op,
TFLite ``num_threads``, ONNX Runtime ``intra_op_num_threads``, ``torch.set_num_threads`` /
``set_num_interop_threads``), the same batch sizes and the same inputs (112x112x3 float32, NHWC;
NCHW for PyTorch). After ``--warmup`` untimed calls per runtime and batch size (tf.function tracing
and XLA compilation happen there), ``--rounds`` rounds each run every (runtime, batch) pair in a new
random order, one untimed call then ``--iters`` timed ones, so that drifting load from other work on
the machine spreads over all runtimes instead of biasing whichever runs last. The table gives the
median time per call over all rounds, images/s, the interquartile range in % of the median (a large
one means a loaded machine: rerun on idle cores) and the ratio of images/s to ``tf.function`` at
the same batch size, all measured in the one run.

PyTorch 2.13.0's oneDNN corrupts the heap in the *backward* of a channels-last 1x1 stride-2 conv
(see ``benchmarks/backends.py``); inference forward is not affected in our runs. If it ever crashes,
``--torch-no-onednn`` sets ``torch.backends.mkldnn.enabled = False`` (stated in the output; much
slower convolutions).

Run it on otherwise idle cores: the machine may be loaded (the header prints the load average
before the run and warns when it is high), and oversubscribed cores hurt the runtimes unequally.
PyTorch's OpenMP threads spin-wait at every barrier: with ``--threads 2`` on 2 busy cores we saw
IResNet-18 batch 1 take ~1 s instead of ~80 ms (1 thread, or ``OMP_WAIT_POLICY=PASSIVE``). On a
loaded machine ``--omp-passive`` sets ``OMP_WAIT_POLICY=PASSIVE`` (named in the output); the
default keeps PyTorch's own behaviour.

Cost (IResNet-50, 2 busy cores): conversion ~7 s, TFLite export ~1 min, ONNX export ~1.3 min; peak
memory ~11.5 GB, almost all of it tf2onnx's (handed back to the OS before the timing starts).

Usage::

    python benchmarks/inference_latency.py                              # IResNet-50, batch 1 and 8, 2 threads
    python benchmarks/inference_latency.py --threads 4 --batch 1 8 32 --iters 20 --json r50_latency.json
    python benchmarks/inference_latency.py --depth 18 --iters 3 --batch 1   # quick check
    python benchmarks/inference_latency.py --runtimes tf.function,tflite,onnxruntime,torch-channels_last
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

RUNTIMES = ("keras-eager", "tf.function", "tf.function-xla", "tflite", "onnxruntime",
            "torch-channels_last", "torch-contiguous")
BASELINE = "tf.function"
STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}
PARITY_IMAGES = 4


def log(msg):
    print(f"{msg}  [RSS {_rss_gb():.1f} GB]", file=sys.stderr, flush=True)


def _rss_gb():
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 2 ** 20
    except (OSError, StopIteration):  # pragma: no cover - not Linux
        return float("nan")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=50, choices=sorted(STAGE_BLOCKS),
                   help="insightface IResNet depth (default 50; 18 for quick checks)")
    p.add_argument("--size", type=int, default=112, help="input side, a multiple of 16 (default 112)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes (default 1 8)")
    p.add_argument("--threads", type=int, default=2, help="threads for every runtime (default 2)")
    p.add_argument("--iters", type=int, default=10, help="timed calls per (runtime, batch) per round")
    p.add_argument("--rounds", type=int, default=3, help="rounds, each in a new random order (default 3)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per (runtime, batch) first")
    p.add_argument("--runtimes", default=",".join(RUNTIMES),
                   help=f"comma-separated subset of {','.join(RUNTIMES)} (default all)")
    p.add_argument("--tol", type=float, default=1e-3, help="max |diff| against PyTorch (default 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="weights, inputs and order seed")
    p.add_argument("--torch-no-onednn", action="store_true",
                   help="torch.backends.mkldnn.enabled = False (if oneDNN crashes)")
    p.add_argument("--omp-passive", action="store_true",
                   help="OMP_WAIT_POLICY=PASSIVE for PyTorch's OpenMP threads (see the docstring)")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    args.runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    unknown = sorted(set(args.runtimes) - set(RUNTIMES))
    if unknown or not args.runtimes:
        p.error(f"--runtimes: unknown {unknown}; choose from {', '.join(RUNTIMES)}")
    if args.size % 16 or args.size < 16:
        p.error("--size must be a positive multiple of 16")
    if min(args.batch) < 1 or args.threads < 1 or args.iters < 1 or args.rounds < 1 or args.warmup < 0:
        p.error("--batch, --threads, --iters and --rounds must be >= 1, --warmup >= 0")
    args.batch = sorted(set(args.batch))
    return args


def build_torch_model(depth, size, seed):
    """The insightface IResNet of tests/test_insightface_parity.py with randomised BN and PReLU."""
    import torch

    import test_insightface_parity as ref

    torch.manual_seed(seed)
    model = ref.IResNet(STAGE_BLOCKS[depth], map_side=size // 16)
    return ref.randomise(model, size, seed=seed + 1)


def _release_memory():
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


def make_runners(names, embedder, torch_model, inputs, tmp, threads):
    """{name: {batch: zero-argument callable returning float32 (batch, d) embeddings}}."""
    import numpy as np
    import tensorflow as tf

    from keras_facemargin import export

    runners, notes, traced = {}, {}, {}
    tf_inputs = {b: tf.constant(x) for b, x in inputs.items()}
    if "keras-eager" in names:
        runners["keras-eager"] = {b: (lambda x=x: embedder(x, training=False).numpy()) for b, x in tf_inputs.items()}
    if "tf.function" in names:
        fn = traced["tf.function"] = tf.function(lambda x: embedder(x, training=False))
        runners["tf.function"] = {b: (lambda x=x: fn(x).numpy()) for b, x in tf_inputs.items()}
    if "tf.function-xla" in names:
        xla = traced["tf.function-xla"] = tf.function(lambda x: embedder(x, training=False), jit_compile=True)
        runners["tf.function-xla"] = {b: (lambda x=x: xla(x).numpy()) for b, x in tf_inputs.items()}
    if "tflite" in names:
        t = time.perf_counter()
        path = export.export_tflite(embedder, os.path.join(tmp, "model.tflite"))
        notes["tflite_export_s"] = round(time.perf_counter() - t, 1)
        log(f"  TFLite export (SavedModel -> TFLiteConverter): {notes['tflite_export_s']} s")
        runners["tflite"] = {}
        for b, x in inputs.items():  # one interpreter per batch size: no resize between calls
            run = export.TFLiteEmbedder(path, num_threads=threads)
            runners["tflite"][b] = lambda run=run, x=x: run(x)
    if "onnxruntime" in names:
        t = time.perf_counter()
        path = export.export_onnx(embedder, os.path.join(tmp, "model.onnx"))
        notes["onnx_export_s"] = round(time.perf_counter() - t, 1)
        _release_memory()  # tf2onnx leaves gigabytes of freed heap behind (IResNet-50: ~9 GB)
        log(f"  ONNX export (tf2onnx): {notes['onnx_export_s']} s")
        run = export.ONNXEmbedder(path, num_threads=threads)
        runners["onnxruntime"] = {b: (lambda x=x: run(x)) for b, x in inputs.items()}
    if any(n.startswith("torch") for n in names):
        import copy

        import torch
        import torch.nn.functional as F

        class Embedder(torch.nn.Module):
            def __init__(self, backbone):
                super().__init__()
                self.backbone = backbone

            def forward(self, x):
                return F.normalize(self.backbone(x), dim=1)

        def torch_runner(module, x):
            def run():
                with torch.inference_mode():
                    return module(x).numpy()
            return run

        if "torch-channels_last" in names:
            cl = Embedder(copy.deepcopy(torch_model)).eval().to(memory_format=torch.channels_last)
            runners["torch-channels_last"] = {}
            for b, x in inputs.items():
                xt = torch.from_numpy(x).permute(0, 3, 1, 2)  # the NHWC buffer, seen as NCHW
                assert xt.is_contiguous(memory_format=torch.channels_last)
                runners["torch-channels_last"][b] = torch_runner(cl, xt)
        if "torch-contiguous" in names:
            plain = Embedder(torch_model).eval()
            runners["torch-contiguous"] = {
                b: torch_runner(plain, torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
                for b, x in inputs.items()}
    return {n: runners[n] for n in names}, notes, traced


def stats(times, batch):
    import numpy as np

    t = np.asarray(times)
    med = float(np.median(t))
    q1, q3 = np.percentile(t, [25, 75])
    return {"median_ms": 1000 * med, "images_per_s": batch / med, "iqr_pct": 100 * float(q3 - q1) / med,
            "min_ms": 1000 * float(t.min()), "n": int(t.size)}


def main(argv=None):
    args = parse_args(argv)
    t_start = time.perf_counter()
    load_before = [round(v, 2) for v in os.getloadavg()]
    if args.omp_passive:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # read when libgomp loads, with torch

    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.threads)
    if args.torch_no_onednn:
        torch.backends.mkldnn.enabled = False

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    import keras
    import numpy as np
    import onnxruntime
    import torch.nn.functional as F

    from keras_facemargin import export
    from keras_facemargin.convert.insightface import convert_insightface

    log(f"IResNet-{args.depth} {args.size}x{args.size}: PyTorch model with random weights ...")
    torch_model = build_torch_model(args.depth, args.size, args.seed)
    rng = np.random.default_rng(args.seed)

    def images(n):
        return rng.uniform(-1, 1, (n, args.size, args.size, 3)).astype("float32")

    notes = {}
    with tempfile.TemporaryDirectory(prefix="kfm_latency_") as tmp:
        pth = os.path.join(tmp, "backbone.pth")
        torch.save(torch_model.state_dict(), pth)
        t = time.perf_counter()
        backbone, info = convert_insightface(pth, return_info=True)
        notes["convert_s"] = round(time.perf_counter() - t, 1)
        log(f"  converted with convert_insightface ({info['arch']}, depth {backbone.depth}): {notes['convert_s']} s")
        embedder = export.as_embedder(backbone)

        # 1. the conversion itself: raw embeddings of the Keras backbone against PyTorch
        x = images(PARITY_IMAGES)
        with torch.inference_mode():
            want = torch_model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
        got = np.asarray(backbone(x, training=False))
        parity = {"converted backbone (raw)": float(np.abs(got - want).max())}
        scale = float(np.abs(want).max())

        # 2. every runtime at every batch size against PyTorch's normalised embeddings
        inputs = {b: images(b) for b in args.batch}
        with torch.inference_mode():
            ref = {b: F.normalize(torch_model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))),
                                  dim=1).numpy() for b, x in inputs.items()}
        runners, export_notes, traced = make_runners(args.runtimes, embedder, torch_model, inputs, tmp, args.threads)
        notes.update(export_notes)
        log("  parity and warm-up (tf.function tracing, XLA compilation) ...")
        first_call = {}
        for name, per_batch in runners.items():
            worst = 0.0
            for b, run in per_batch.items():
                t = time.perf_counter()
                out = np.asarray(run(), np.float32)
                first_call[f"{name}@{b}"] = round(time.perf_counter() - t, 2)
                if out.shape != ref[b].shape:
                    raise SystemExit(f"{name} batch {b}: output shape {out.shape}, expected {ref[b].shape}")
                worst = max(worst, float(np.abs(out - ref[b]).max()))
                for _ in range(args.warmup):
                    run()
            parity[name] = worst
            calls = ", ".join(f"{first_call[name + '@' + str(b)]} s" for b in per_batch)
            log(f"    {name}: first call {calls}, max |diff| {worst:.3g}")
        notes["first_call_s"] = first_call

        print(f"Parity against PyTorch (max |diff|; raw embeddings up to {scale:.3g}, "
              f"{PARITY_IMAGES} images; runtimes L2-normalised, batches {args.batch}; tolerance {args.tol:g}):")
        failed = [k for k, v in parity.items() if not v < args.tol]
        for k, v in parity.items():
            print(f"  {k:<26}{v:.3g}{'   FAILED' if k in failed else ''}")
        if failed:
            print(f"Parity failed for {', '.join(failed)}: no timings reported.")
            return 1

        # 3. timing: rounds of (runtime, batch) pairs in a new random order each round
        pairs = [(n, b) for n in runners for b in args.batch]
        times = {p: [] for p in pairs}
        order_rng = random.Random(args.seed)
        for r in range(args.rounds):
            order_rng.shuffle(pairs)
            t_round = time.perf_counter()
            for name, b in pairs:
                run = runners[name][b]
                run()  # untimed: caches after switching runtimes
                for _ in range(args.iters):
                    t = time.perf_counter()
                    run()
                    times[(name, b)].append(time.perf_counter() - t)
            log(f"  round {r + 1}/{args.rounds}: {time.perf_counter() - t_round:.1f} s")
        # one trace (and XLA compilation) per batch size, all before the timed calls
        notes["tf_traces"] = {n: int(f.experimental_get_tracing_count()) for n, f in traced.items()}

    rows = []
    for name in runners:
        for b in args.batch:
            rows.append({"runtime": name, "batch": b, **stats(times[(name, b)], b)})
    base = {r["batch"]: r["images_per_s"] for r in rows if r["runtime"] == BASELINE}
    for r in rows:
        r["ratio"] = r["images_per_s"] / base[r["batch"]] if r["batch"] in base else None

    env = {"cpus": os.cpu_count(), "load_avg_before": load_before,
           "load_avg_after": [round(v, 2) for v in os.getloadavg()],
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "torch_onednn": bool(torch.backends.mkldnn.enabled),
           "python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
           "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}
    try:
        from importlib.metadata import version

        env["ai_edge_litert"] = version("ai-edge-litert")
        env["tf2onnx"] = version("tf2onnx")
    except Exception:  # pragma: no cover - metadata missing
        pass
    params = int(sum(np.prod(w.shape) for w in backbone.weights))
    print()
    print(f"IResNet-{args.depth} {args.size}x{args.size} (insightface layout, random weights converted by "
          f"convert_insightface, {params / 1e6:.1f} M parameters incl. BN statistics), float32, "
          f"{args.threads} threads, {args.rounds} rounds x {args.iters} timed calls in random order, "
          f"{env['cpus']} CPUs, load average (1/5/15 min) {' '.join(map(str, load_before))} before the run; "
          f"ratio = images/s / {BASELINE} images/s at the same batch"
          + ("; PyTorch with oneDNN disabled" if args.torch_no_onednn else "")
          + ("; OMP_WAIT_POLICY=" + env["omp_wait_policy"] if env["omp_wait_policy"] else ""))
    for n, count in notes.get("tf_traces", {}).items():
        if count != len(args.batch):
            print(f"Warning: {n} was traced {count} times for {len(args.batch)} batch sizes (retracing).")
    if load_before[0] > 0.5 * (env["cpus"] or 1):
        print(f"Warning: the machine was busy before the run (load {load_before[0]} on {env['cpus']} CPUs); "
              "these numbers are rough, multi-threaded PyTorch (OpenMP) most of all.")
    print()
    print("| runtime | batch | median ms/batch | images/s | IQR % | x tf.function |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
        print(f"| {r['runtime']} | {r['batch']} | {r['median_ms']:.1f} | {r['images_per_s']:.1f} | "
              f"{r['iqr_pct']:.0f} | {ratio} |")
    print()
    print("Versions: " + ", ".join(f"{k} {v}" for k, v in env.items()
                                   if k in ("python", "tensorflow", "keras", "torch", "onnxruntime",
                                                         "ai_edge_litert", "tf2onnx")))
    total = time.perf_counter() - t_start
    print(f"Total {total:.0f} s (conversion {notes['convert_s']} s"
          + "".join(f", {k[:-2].replace('_', ' ')} {notes[k]} s" for k in ("tflite_export_s", "onnx_export_s")
                    if k in notes) + ")")
    if args.json:
        out = {"config": {k: v for k, v in vars(args).items() if k != "json"}, "env": env, "parity": parity,
               "parity_raw_scale": scale, "notes": notes, "params": params, "rows": rows,
               "times_s": {f"{n}@{b}": v for (n, b), v in times.items()}, "total_s": round(total, 1)}
        Path(args.json).write_text(json.dumps(out, indent=1))
        print(f"Wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
