"""Train-step overhead of the margin heads against a plain Dense + softmax head.

For each number of classes (1k, 10k, 85k by default) it times `fit` steps of
the same backbone with: a plain `Dense(C)` softmax head (the baseline),
`ArcMarginDense`, `KappaMarginDense` with the memory buffer and with the
momentum encoder. It prints each step time as a ratio to the baseline measured
in the same run. For the momentum encoder it also prints the ratio with the
encoder's own forward pass subtracted (timed separately), which is what the
KappaFace paper's "negligible overhead" claim covers. It also times the
memory-buffer head's per-step state update alone (gather, EMA and scatter of
the batch's buffer rows, class sums), the only per-step work it adds to
ArcFace: a robust figure where the whole-step ratios are noisy.

Targets (paper): ArcFace <= 1.05x, KappaFace memory buffer <= 1.10x.

    python benchmarks/margin_overhead.py            # 1k, 10k, 85k classes
    python benchmarks/margin_overhead.py --quick    # 1k, 10k; fewer steps
    TF_CPU_ALLOCATOR_USE_BFC=true python benchmarks/margin_overhead.py --classes 85742

TensorFlow's default CPU allocator maps every large temporary (a C x d gradient is 175 MB at
85,742 classes) fresh from the OS and page-faults it in at each step; with
`TF_CPU_ALLOCATOR_USE_BFC=true` it reuses a pool as it does on GPUs. The header says which ran.
`--autodiff-cosine` times the cosine heads with the autodiff gradient of
`(x @ W) * rsqrt(sum(W^2))` instead of `layers.normalized_matmul`'s (the ablation of that change).
"""

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_facemargin as kfm  # noqa: E402


class PlainSoftmaxHead(keras.layers.Layer):
    """Baseline: `Dense(C)` on the embedding, labels ignored."""

    def __init__(self, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(num_classes, name="logits")

    def call(self, inputs, training=None):
        embeddings = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
        return self.dense(embeddings)


def make_backbone(args):
    return kfm.backbones.IResNet(
        depth=18,
        image_size=args.image_size,
        embedding_dim=args.embedding_dim,
        stage_blocks=(1, 1, 1, 1),
        stage_filters=(32, 64, 128, 256),
    )


def make_head(kind, num_classes, num_samples):
    counts = np.full(num_classes, max(1, num_samples // num_classes))
    if kind == "softmax":
        return PlainSoftmaxHead(num_classes)
    if kind == "arcface":
        return kfm.layers.ArcMarginDense(num_classes)
    if kind == "kappa_buffer":
        return kfm.layers.KappaMarginDense(num_classes, class_counts=counts, num_samples=num_samples)
    if kind == "kappa_encoder":
        return kfm.layers.KappaMarginDense(num_classes, class_counts=counts, estimator="momentum_encoder")
    raise ValueError(kind)


class _StepClock(keras.callbacks.Callback):
    """Wall time from the start of the first train batch to the end of the last one."""

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.end = time.perf_counter()


def time_steps(model, dataset, steps):
    """Seconds per step over one `fit` of `steps` steps, timed inside `fit`.

    `fit`'s own setup and teardown are left out: on this machine tearing down `fit`'s
    dataset iterator sometimes took 10 s, which earlier versions of this benchmark counted as
    step time (the source of most of their run-to-run noise).
    """
    clock = _StepClock()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False, callbacks=[clock])
    return (clock.end - clock.start) / steps


def time_encoder_forward(model, images, steps, repeats):
    encoder = model.momentum_encoder
    fwd = tf.function(lambda x: encoder(x, training=False))
    fwd(images)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            fwd(images).numpy()
        best = min(best, (time.perf_counter() - start) / steps)
    return best


def time_state_update(model, images, labels, index, steps, repeats):
    """Seconds of the memory-buffer head's per-step state update alone (`observe_batch`: gather the
    batch's buffer rows, EMA, scatter them back, add the features to the class sums), in a
    `tf.function` as in the train step."""
    head = model.head
    embeddings = tf.constant(model.backbone.predict(images, verbose=0))
    labels, index = tf.constant(labels), tf.constant(index)
    update = tf.function(lambda: head.observe_batch(embeddings, labels, index) or tf.constant(0))
    update()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            update().numpy()
        best = min(best, (time.perf_counter() - start) / steps)
    return best


def use_autodiff_cosine():
    """Replace the cosine heads' hand-written gradient by autodiff of the same function."""
    from keras import ops

    from keras_facemargin.layers.cosine_dense import CosineDense

    def cosine(self, embeddings):
        x = ops.normalize(ops.cast(embeddings, self.compute_dtype), axis=-1, epsilon=1e-12)
        w = ops.cast(self.kernel, self.compute_dtype)
        inverse = ops.minimum(ops.rsqrt(ops.sum(ops.square(w), axis=0)), 1e12)
        return ops.clip(ops.matmul(x, w) * inverse, -1.0, 1.0)

    CosineDense.cosine = cosine


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, nargs="+", default=[1000, 10000, 85742])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=56)
    p.add_argument("--embedding-dim", type=int, default=512)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="1k and 10k classes, 8 steps, 3 repeats")
    p.add_argument("--autodiff-cosine", action="store_true",
                   help="cosine heads use the autodiff gradient (before layers.normalized_matmul)")
    args = p.parse_args()
    if args.autodiff_cosine:
        use_autodiff_cosine()
    if args.quick:
        args.classes, args.steps, args.repeats = [1000, 10000], 8, 3

    rng = np.random.default_rng(0)
    b = args.batch_size
    images = rng.standard_normal((b, args.image_size, args.image_size, 3)).astype("float32")
    load = os.getloadavg()
    print(
        f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}  "
        f"device: CPU x{os.cpu_count()}  backbone: IResNet (1 block/stage, widths 32-256) "
        f"{args.image_size}x{args.image_size}, d={args.embedding_dim}, batch {b}, "
        f"best of {args.repeats} round-robin x {args.steps} steps; TF CPU allocator: "
        f"{'BFC pool' if os.environ.get('TF_CPU_ALLOCATOR_USE_BFC', '').lower() in ('1', 'true') else 'default'}; "
        f"cosine gradient: {'autodiff' if args.autodiff_cosine else 'normalized_matmul'}"
    )
    header = f"{'classes':>8}  {'head':<14} {'ms/step':>9}  {'ratio':>6}  {'ratio w/o encoder fwd':>22}"
    print(header)
    print("-" * len(header))
    for num_classes in args.classes:
        num_samples = max(4 * num_classes, 100_000)
        labels = rng.integers(0, num_classes, b).astype("int32")
        index = rng.choice(num_samples, b, replace=False).astype("int32")
        inputs = {"images": images, "labels": labels, "index": index}
        dataset = tf.data.Dataset.from_tensors((inputs, labels)).repeat()
        kinds = ("softmax", "arcface", "kappa_buffer", "kappa_encoder")
        models = {}
        for kind in kinds:
            keras.utils.set_random_seed(0)
            model = kfm.FaceRecognizer(make_backbone(args), make_head(kind, num_classes, num_samples))
            model.compile(
                optimizer=keras.optimizers.SGD(0.01, momentum=0.9, weight_decay=5e-4),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
            model.fit(dataset, steps_per_epoch=3, epochs=1, verbose=0, shuffle=False)  # trace + warm up
            models[kind] = model
        # Round-robin repeats, best of each: slow drifts of a shared machine hit every head alike.
        runs = {kind: [] for kind in kinds}
        for _ in range(args.repeats):
            for kind in kinds:
                runs[kind].append(time_steps(models[kind], dataset, args.steps))
        best = {kind: min(times) for kind, times in runs.items()}
        fwd = time_encoder_forward(models["kappa_encoder"], images, args.steps, args.repeats)
        state = time_state_update(models["kappa_buffer"], images, labels, index, args.steps, args.repeats)
        baseline = best["softmax"]
        for kind in kinds:
            extra = f"{(best[kind] - fwd) / baseline:>22.3f}" if kind == "kappa_encoder" else ""
            print(f"{num_classes:>8}  {kind:<14} {1000 * best[kind]:>9.1f}  {best[kind] / baseline:>6.3f}  {extra}"
                  f"   runs (ms): {' '.join(f'{1000 * t:.0f}' for t in runs[kind])}", flush=True)
        print(f"{num_classes:>8}  memory-buffer state update alone: {1000 * state:.2f} ms/step "
              f"({state / baseline:.3f} of the softmax step; memory buffer {num_samples:,} x {args.embedding_dim})",
              flush=True)
        del models
        keras.backend.clear_session()
    load = os.getloadavg()
    print(f"load average at the end {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


if __name__ == "__main__":
    main()
