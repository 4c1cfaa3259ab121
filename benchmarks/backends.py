"""Train-step time of one model on the TensorFlow, JAX and PyTorch backends.

A small IResNet with the ArcFace head and with the KappaFace head (memory
buffer), trained with `fit` on in-memory NumPy batches. Each backend runs in
its own subprocess (`KERAS_BACKEND` is fixed per process); the first epoch
(compilation, warm-up) is not timed, the second is. Times are printed as
ms/step and as ratios to TensorFlow measured in the same run.

    python benchmarks/backends.py                    # all installed backends
    python benchmarks/backends.py --steps 20 --batch-size 64 --classes 10000

On PyTorch 2.13.0 (CPU) oneDNN is disabled in the worker: its backward of a
1x1 stride-2 convolution on channels-last input corrupts the heap (see
tests/backend_worker.py), so the PyTorch numbers use the non-oneDNN kernels
(much slower convolutions); `KFM_TORCH_ONEDNN=1` keeps oneDNN, at that risk.
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

BACKENDS = ("tensorflow", "jax", "torch")
HEADS = ("arcface", "kappaface")


def worker(args):
    backend = os.environ["KERAS_BACKEND"]
    if backend == "torch" and not os.environ.get("KFM_TORCH_ONEDNN"):
        import torch

        torch.backends.mkldnn.enabled = False
    import keras
    import numpy as np

    import keras_facemargin as kfm

    rng = np.random.default_rng(0)
    n = args.steps * args.batch_size
    size = args.image_size
    images = rng.uniform(-1, 1, size=(n, size, size, 3)).astype("float32")
    labels = rng.integers(0, args.classes, n).astype("int32")
    counts = np.maximum(np.bincount(labels, minlength=args.classes), 1)
    x = {"images": images, "labels": labels, "index": np.arange(n, dtype="int32")}
    results = {}
    for name in HEADS:
        keras.utils.set_random_seed(0)
        backbone = kfm.backbones.IResNet(
            stage_blocks=(2, 2, 2, 2),
            stage_filters=(16, 32, 64, 128),
            image_size=size,
            embedding_dim=args.embedding_dim,
        )
        head = kfm.layers.build_head(name, args.classes, class_counts=counts, num_samples=n)
        model = kfm.FaceRecognizer(backbone, head)
        model.compile(
            optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        times = []

        class Timer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                times.append(time.perf_counter() - self.start)

        callbacks = [Timer()] + kfm.callbacks.head_callbacks(model)
        model.fit(x, labels, batch_size=args.batch_size, epochs=2, shuffle=False, verbose=0, callbacks=callbacks)
        results[name] = 1000.0 * times[-1] / args.steps
    print("RESULT " + json.dumps(results), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps (one epoch)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--embedding-dim", type=int, default=128)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    forwarded = [a for a in sys.argv[1:] if a != "--backends" and a not in BACKENDS]
    results = {}
    for backend in args.backends:
        if importlib.util.find_spec(backend) is None:
            print(f"{backend}: not installed, skipped", flush=True)
            continue
        env = dict(os.environ, KERAS_BACKEND=backend, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--worker", *forwarded],
            capture_output=True,
            text=True,
            env=env,
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{backend}: failed\n{proc.stderr[-2000:]}")
            continue
        results[backend] = json.loads(lines[-1][len("RESULT "):])
        print(f"{backend}: " + ", ".join(f"{h} {t:.1f} ms/step" for h, t in results[backend].items()), flush=True)
    print(
        f"\nIResNet (2,2,2,2)x(16,32,64,128), {args.image_size}x{args.image_size}, batch {args.batch_size}, "
        f"{args.classes} classes, d={args.embedding_dim}; ms/step over {args.steps} steps (ratio to TensorFlow)"
    )
    print(f"{'backend':<12}" + "".join(f"{h:>24}" for h in HEADS))
    base = results.get("tensorflow")
    for backend, times in results.items():
        cells = []
        for h in HEADS:
            ratio = f" ({times[h] / base[h]:.2f}x)" if base else ""
            cells.append(f"{times[h]:.1f}{ratio}")
        print(f"{backend:<12}" + "".join(f"{c:>24}" for c in cells))


if __name__ == "__main__":
    main()
