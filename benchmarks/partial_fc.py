"""Partial FC against the full classifier: head step time and peak memory against the number of classes.

For C = 100k, 1M, 2M classes (d = 512, batch 128, an `ArcMarginDense` head) it times the head alone,
embeddings in, loss and gradients (class centres and embeddings) out, for the full FC and for
`PartialFC` at sample rates 0.1 and 0.01, in two phases: forward + backward, then a whole training
step with Keras SGD (momentum 0.9, weight decay 5e-4). Each (C, rate) runs in a fresh process so
its peak memory is its own: on a GPU the allocator's peak (`tf.config.experimental.get_memory_info`),
on the CPU the peak resident set over the process's TensorFlow baseline (VmHWM, reset between
phases). Before a phase starts its memory is estimated from the shapes; a phase whose estimate
exceeds `--memory-budget-gb` is not run and its line says what it would have asked for. An
allocation failure (`ResourceExhaustedError`) is caught and reported with TensorFlow's message.

It prints a Markdown table with each time and memory as a ratio to the full FC of the same C in the
same run, then how each column grows with C (the log-log slope between consecutive C).

    python benchmarks/partial_fc.py                                   # 100k, 1M, 2M; 2 timed steps
    python benchmarks/partial_fc.py --classes 100000 1000000 --steps 3 --memory-budget-gb 8

`--sampling-only` times the choice of the sampled classes alone (`class_sampling.sample_classes`,
a batch of `--batch` random labels, in one `tf.function`), in this process: the default candidate
sampler (O(K log K)), the exact O(C) radix-select sampler (`draws=0`, the fallback and the path for
K > ~0.4 C) and the previous sampler (`top_k` over C float keys, kept here as a reference), with each
time's ratio to the previous sampler and the log-log slope against C:

    python benchmarks/partial_fc.py --sampling-only --classes 100000 500000 1000000 2000000
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

GB = 1e9


def estimate_bytes(num_classes, rate, dim=512, batch=128, optimizer=False, row_sparse=False):
    """Peak bytes of one head step, from the shapes (float32; calibrated on CPU runs at C = 100k,
    an upper bound at 1M and 2M, where Partial FC measured ~0.7x of it).

    Full FC: kernel, its normalised copy, their two gradients (4 C*d) and about six B*C logit-sized
    temporaries. Partial FC: the kernel plus ~0.6 C*d of allocator slack measured on the CPU, four
    K*d tensors (gather, normalised rows, their gradients), six B*K and the sampling keys (~5 C).
    The SGD phase adds the momentum slot and the update's temporaries, about 8 C*d measured for
    both (with momentum Keras densifies the sparse gradient; momentum and weight decay each build
    C*d terms).
    """
    p = num_classes * dim * 4
    if rate >= 1:
        step = 4 * p + 6 * batch * num_classes * 4
    else:
        k = math.ceil(rate * num_classes)
        step = 1.6 * p + 4 * k * dim * 4 + 6 * batch * k * 4 + 5 * num_classes * 4
    if not optimizer:
        return step
    if row_sparse and rate < 1:  # momentum slot + gathered / scattered K-row temporaries
        return step + p + 6 * math.ceil(rate * num_classes) * dim * 4
    return max(step, 7 * p) + p


# -- child: one (C, rate) in a fresh process ---------------------------------------------------------
def _rss(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (Linux >= 4.0)
        return True
    except OSError:
        return False


def child(args):
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_facemargin.layers import ArcMarginDense, PartialFC, PartialFCLoss

    gpu = bool(tf.config.list_physical_devices("GPU"))
    tf.constant(1.0) + 1.0  # initialise the runtime before the baseline
    baseline = _rss("VmRSS")
    C, rate, d, B = args.child_classes, args.child_rate, args.dim, args.batch
    out = {"classes": C, "rate": rate, "device": "GPU" if gpu else "CPU", "phases": {}}

    def peak_start():
        if gpu:
            tf.config.experimental.reset_memory_stats("GPU:0")
        else:
            _reset_peak()

    def peak_bytes():
        if gpu:
            return tf.config.experimental.get_memory_info("GPU:0")["peak"]
        return _rss("VmHWM") - baseline

    keras.utils.set_random_seed(0)
    arc = ArcMarginDense(C, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01))
    head = PartialFC(arc, sample_rate=rate) if rate < 1 else arc
    loss_fn = PartialFCLoss(head) if rate < 1 else keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rng = np.random.default_rng(0)
    xs = [tf.constant(rng.standard_normal((B, d)).astype("float32")) for _ in range(args.steps + 1)]
    ys = [tf.constant(rng.integers(0, C, B).astype("int32")) for _ in range(args.steps + 1)]
    head(xs[0])  # build
    out["build_peak_gb"] = peak_bytes() / GB

    def grads_of(x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = loss_fn(y, head([x, y], training=True))
        return loss, tape.gradient(loss, [x] + head.trainable_variables)

    @tf.function(jit_compile=False)
    def fwd_bwd(x, y):
        loss, grads = grads_of(x, y)
        g = grads[1]
        g = g.values if isinstance(g, tf.IndexedSlices) else g
        return loss + tf.reduce_sum(grads[0]) * 0.0 + tf.reduce_sum(g[:1]) * 0.0

    if args.optimizer == "row_sparse":
        from keras_facemargin.training.sparse_sgd import RowSparseSGD

        optimizer = RowSparseSGD(0.1, momentum=0.9, weight_decay=5e-4)
    else:
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=5e-4)

    @tf.function(jit_compile=False)
    def train_step(x, y):
        loss, grads = grads_of(x, y)
        optimizer.apply_gradients(zip(grads[1:], head.trainable_variables))
        return loss + tf.reduce_sum(grads[0]) * 0.0

    for phase, fn, with_opt in (("fwd_bwd", fwd_bwd, False), ("sgd_step", train_step, True)):
        need = estimate_bytes(C, rate, d, B, optimizer=with_opt, row_sparse=args.optimizer == "row_sparse")
        record = {"estimate_gb": need / GB}
        out["phases"][phase] = record
        if need > args.memory_budget_gb * GB:
            record["skipped"] = (f"estimated {need / GB:.1f} GB > budget {args.memory_budget_gb:g} GB "
                                 "(estimated from shapes, not tried)")
            continue
        try:
            peak_start()
            if with_opt:
                optimizer.build(head.trainable_variables)
            float(fn(xs[0], ys[0]))  # trace + warm-up
            times = []
            for x, y in zip(xs[1:], ys[1:]):
                start = time.perf_counter()
                float(fn(x, y))
                times.append(time.perf_counter() - start)
            record["ms"] = 1000 * float(np.median(times))
            record["peak_gb"] = peak_bytes() / GB
        except tf.errors.ResourceExhaustedError as e:
            record["oom"] = str(e).strip().splitlines()[0][:300]
    print("RESULT " + json.dumps(out), flush=True)


# -- sampling only ------------------------------------------------------------------------------------
def _topk_sampler(labels, step, num_classes, num_sample, seed=0):
    """The previous sampler (before issue #24): a 24-bit hash key per class, positives set above
    every key, `top_k` over the C keys, sorted."""
    from keras import ops

    from keras_facemargin.layers.class_sampling import _fmix32, _fmix32_int, _i32, _lsr

    step = ops.cast(step, "int32")
    h1 = _fmix32(ops.bitwise_xor(ops.multiply(step, _i32(0x9E3779B1)), _i32(_fmix32_int(seed))))
    h2 = _fmix32(ops.bitwise_xor(h1, _i32(0x5BD1E995)))
    keys = _fmix32(ops.bitwise_xor(_fmix32(ops.arange(num_classes, dtype="int32") + h1), h2))
    keys = ops.cast(_lsr(keys, 8), "float32")
    labels = ops.cast(ops.reshape(labels, (-1, 1)), "int32")
    keys = ops.scatter_update(keys, labels, ops.full((ops.shape(labels)[0],), float(2**24), "float32"))
    _, top = ops.top_k(keys, num_sample, sorted=False)
    return ops.sort(ops.cast(top, "int32")), ops.sum(ops.cast(keys >= 2**24, "int32"))


def sampling_only(args):
    import numpy as np
    import tensorflow as tf

    from keras_facemargin.layers.class_sampling import num_draws, sample_classes

    methods = {
        "default": lambda y, t, c, k: sample_classes(y, t, c, k, seed=1),
        "exact O(C)": lambda y, t, c, k: sample_classes(y, t, c, k, seed=1, draws=0),
        "previous top_k": lambda y, t, c, k: _topk_sampler(y, t, c, k, seed=1),
    }
    rng = np.random.default_rng(0)
    rates = [r for r in args.rates if r < 1]
    times, t0 = {}, time.time()
    print(f"load average {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f} {os.getloadavg()[2]:.1f} on "
          f"{os.cpu_count()} CPUs; TensorFlow {tf.__version__}, "
          f"{'GPU' if tf.config.list_physical_devices('GPU') else 'CPU'}", flush=True)
    for c in args.classes:
        for rate in rates:
            k = math.ceil(rate * c)
            y = tf.constant(rng.integers(0, c, args.batch).astype("int32"))
            fns = {name: tf.function(lambda y, t, fn=fn, c=c, k=k: fn(y, t, c, k)) for name, fn in methods.items()}
            for name, fn in fns.items():
                fn(y, tf.constant(0))[0].numpy()  # trace + warm-up
            samples = {name: [] for name in fns}
            for step in range(1, args.steps + 1):  # round-robin: a drift of the shared machine hits all alike
                for name, fn in fns.items():
                    start = time.perf_counter()
                    fn(y, tf.constant(step))[0].numpy()
                    samples[name].append(time.perf_counter() - start)
            for name in fns:
                times[(name, rate, c)] = 1000 * float(np.median(samples[name]))
            print(f"# C={c:,} rate={rate:g} K={k:,} draws={num_draws(c, k):,}: "
                  + ", ".join(f"{n} {times[(n, rate, c)]:.2f} ms" for n in fns), flush=True)
    print(f"\nsampling only, batch {args.batch} labels, median of {args.steps} steps after a warm-up "
          f"(round-robin), {time.time() - t0:.0f} s in all; ratios to the previous sampler in the same run.\n")
    names = list(methods)
    print("| C | rate | K | " + " | ".join(names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    for c in args.classes:
        for rate in rates:
            ref = times[("previous top_k", rate, c)]
            cells = [f"{times[(n, rate, c)]:.2f} ms" + (f" ({times[(n, rate, c)] / ref:.2f}x)" if n != names[-1] else "")
                     for n in names]
            print(f"| {c:,} | {rate:g} | {math.ceil(rate * c):,} | " + " | ".join(cells) + " |")
    print("\nGrowth with C (log-log slope between consecutive C, and over the whole range):")
    for rate in rates:
        for name in names:
            pts = [(c, times[(name, rate, c)]) for c in sorted(args.classes)]
            parts = [f"{c0 // 1000:,}k->{c1 // 1000:,}k C^{math.log(v1 / v0) / math.log(c1 / c0):.2f}"
                     for (c0, v0), (c1, v1) in zip(pts, pts[1:])]
            if len(pts) > 1:
                (c0, v0), (c1, v1) = pts[0], pts[-1]
                parts.append(f"overall C^{math.log(v1 / v0) / math.log(c1 / c0):.2f}")
            print(f"- rate {rate:g}, {name}: " + "; ".join(parts))
    return times


# -- parent: run the grid, print the table -----------------------------------------------------------
def run_child(args, classes, rate):
    cmd = [sys.executable, os.path.abspath(__file__), "--child-classes", str(classes), "--child-rate", str(rate),
           "--steps", str(args.steps), "--dim", str(args.dim), "--batch", str(args.batch),
           "--memory-budget-gb", str(args.memory_budget_gb), "--optimizer", args.optimizer]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                      os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or "").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return {"classes": classes, "rate": rate, "error": tail[0][:300], "phases": {}}
    return json.loads(lines[-1][7:])


def _fmt(value, ratio=None, unit=""):
    if value is None:
        return "-"
    text = f"{value:,.0f}{unit}" if unit == " ms" else f"{value:.2f}{unit}"
    return text + (f" ({ratio:.2f}x)" if ratio is not None else "")


def table(results, rates):
    rows = ["| C | head | K | fwd+bwd | peak fwd+bwd | SGD step | peak SGD step |", "|---|---|---|---|---|---|---|"]
    by = {(r["classes"], r["rate"]): r for r in results}
    for c in sorted({r["classes"] for r in results}):
        full = by.get((c, 1.0), {}).get("phases", {})
        for rate in rates:
            r = by.get((c, rate))
            if r is None:
                continue
            name = "full FC" if rate >= 1 else f"PFC {rate:g}"
            k = c if rate >= 1 else math.ceil(rate * c)
            cells = []
            for phase in ("fwd_bwd", "sgd_step"):
                p = r.get("phases", {}).get(phase, {})
                ref = full.get(phase, {})
                if "ms" in p:
                    tr = p["ms"] / ref["ms"] if rate < 1 and "ms" in ref else None
                    mr = p["peak_gb"] / ref["peak_gb"] if rate < 1 and ref.get("peak_gb") else None
                    cells += [_fmt(p["ms"], tr, " ms"), _fmt(p["peak_gb"], mr, " GB")]
                elif "oom" in p:
                    cells += ["OOM", f"asked: {p['oom']}"]
                elif "skipped" in p:
                    cells += ["not run", f"needs ~{p['estimate_gb']:.1f} GB (est.)"]
                else:
                    cells += [r.get("error", "-"), "-"]
            rows.append(f"| {c:,} | {name} | {k:,} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def growth(results, rates):
    lines = []
    for rate in rates:
        pts = sorted((r["classes"], r["phases"]) for r in results if r["rate"] == rate)
        for phase, key, label in (("fwd_bwd", "ms", "fwd+bwd time"), ("fwd_bwd", "peak_gb", "fwd+bwd memory"),
                                  ("sgd_step", "ms", "SGD step time"), ("sgd_step", "peak_gb", "SGD step memory")):
            have = [(c, p[phase][key]) for c, p in pts if key in p.get(phase, {}) and p[phase][key] > 0]
            if len(have) < 2:
                continue
            slopes = [f"{c0 // 1000:,}k->{c1 // 1000:,}k: x{v1 / v0:.1f} (C^{math.log(v1 / v0) / math.log(c1 / c0):.2f})"
                      for (c0, v0), (c1, v1) in zip(have, have[1:])]
            name = "full FC" if rate >= 1 else f"PFC {rate:g}"
            lines.append(f"- {name}, {label}: " + "; ".join(slopes))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, nargs="+", default=[100_000, 1_000_000, 2_000_000])
    p.add_argument("--rates", type=float, nargs="+", default=[1.0, 0.1, 0.01])
    p.add_argument("--steps", type=int, default=2,
                   help="timed steps per phase (after one warm-up step); 15 with --sampling-only unless given")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--memory-budget-gb", type=float, default=24.0,
                   help="phases estimated above this are not run (default 24, the issue's GPU)")
    p.add_argument("--optimizer", choices=["sgd", "row_sparse"], default="sgd",
                   help="sgd: Keras SGD (dense momentum); row_sparse: training.sparse_sgd.RowSparseSGD")
    p.add_argument("--sampling-only", action="store_true",
                   help="time only the choice of the sampled classes (three samplers), in this process")
    p.add_argument("--child-classes", type=int, help=argparse.SUPPRESS)
    p.add_argument("--child-rate", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_classes is not None:
        return child(args)
    if args.sampling_only:
        if args.steps == 2:
            args.steps = 15
        return sampling_only(args)
    results, t0 = [], time.time()
    for c in args.classes:
        for rate in args.rates:
            r = run_child(args, c, rate)
            results.append(r)
            print(f"# C={c:,} rate={rate:g}: " + json.dumps(r.get("phases") or r.get("error")), flush=True)
    device = next((r.get("device") for r in results if r.get("device")), "?")
    print(f"\nd={args.dim}, batch {args.batch}, ArcFace head, {device}, median of {args.steps} steps after a "
          f"warm-up, {args.optimizer} optimizer, memory budget {args.memory_budget_gb:g} GB; ratios to the full FC of the same C; "
          f"{time.time() - t0:.0f} s in all.\n")
    print(table(results, args.rates))
    print("\nGrowth with C:\n" + growth(results, args.rates))
    return results


if __name__ == "__main__":
    main()
