#!/usr/bin/env python
"""Throughput of the RecordIO input pipeline vs a plain tf.data image-folder baseline,
next to the training-step rate of IResNet-50 and MobileFaceNet on this machine.

Generates ``--images`` 112x112 synthetic faces (:class:`SyntheticFaces`), JPEG
q=95, into a temp dir as both an image folder and a ``train.rec`` set, then
measures images/s over full epochs (best of ``--epochs``, after a warm-up):

* RecordIO: :func:`keras_facemargin.data.make_dataset` (shuffle + header-scan
  validation + OpenCV decode + random flip + normalise + batch, drop_remainder);
* baseline: ``list_files -> read_file -> decode_jpeg -> batch`` (no flip, no
  normalisation, no error handling), parallel map, prefetch.

Then it trains ``FaceRecognizer(backbone, ArcMarginDense)`` for a few steps
(batch ``--train-batch``) to show whether the pipeline keeps up.

Example::

    python benchmarks/pipeline_throughput.py --quick
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

try:
    import keras_facemargin  # noqa: F401
except ImportError:  # running from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def make_data(root, n_images, seed=0):
    from keras_facemargin.data import SyntheticFaces, write_recordio

    n_ids = 10
    while True:
        faces = SyntheticFaces(n_ids, image_size=112, min_images=2, max_images=60, seed=seed)
        if faces.num_images >= n_images:
            break
        n_ids *= 2
    labels, samples = faces.labels[:n_images], faces.sample_ids[:n_images]
    items = []
    for start in range(0, n_images, 256):
        imgs = faces.render_batch(labels[start:start + 256], samples[start:start + 256])
        for lab, img in zip(labels[start:start + 256], imgs):
            ok, buf = cv2.imencode(".jpg", img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
            items.append((int(lab), buf.tobytes()))
    folder = Path(root) / "folder"
    for k, (lab, data) in enumerate(items):
        d = folder / f"{lab:05d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{k:06d}.jpg").write_bytes(data)
    write_recordio(Path(root) / "rec", items, image_size=(112, 112))
    return folder, Path(root) / "rec", int(labels.max()) + 1


def baseline_dataset(folder, batch_size, seed=0, flip_normalise=False):
    files = tf.data.Dataset.list_files(str(folder / "*" / "*.jpg"), shuffle=True, seed=seed)

    def load(path):
        img = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        img.set_shape([112, 112, 3])
        return img

    ds = files.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size, drop_remainder=True)
    if flip_normalise:  # the same per-batch work the RecordIO pipeline does after decoding
        def post(x):
            flip = tf.random.uniform([tf.shape(x)[0]]) < 0.5
            x = tf.where(flip[:, None, None, None], tf.reverse(x, axis=[2]), x)
            return (tf.cast(x, tf.float32) - 127.5) / 128.0

        ds = ds.map(post, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def images_per_second(ds, epochs):
    for i, _ in enumerate(ds):  # warm-up epoch (graph tracing, page cache, autotune)
        pass
    best = 0.0
    for _ in range(epochs):
        n, t = 0, time.perf_counter()
        for batch in ds:
            x = batch[0]["images"] if isinstance(batch, tuple) else batch
            n += int(x.shape[0])
        best = max(best, n / (time.perf_counter() - t))
    return best


def train_rate(name, backbone, num_classes, batch, steps):
    import keras

    from keras_facemargin import FaceRecognizer
    from keras_facemargin.layers import ArcMarginDense

    model = FaceRecognizer(backbone, ArcMarginDense(num_classes))
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = {"images": rng.uniform(-1, 1, (batch, 112, 112, 3)).astype("float32"),
         "labels": rng.integers(0, num_classes, batch).astype("int32"),
         "index": np.arange(batch, dtype="int32")}
    y = x["labels"]
    t = time.perf_counter()
    model.train_on_batch(x, y)  # trace/compile + warm-up
    print(f"train step  {name:<14s} first step (tracing) {time.perf_counter() - t:.1f}s", flush=True)
    t = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    rate = steps * batch / (time.perf_counter() - t)
    print(f"train step  {name:<14s} {rate:8.1f} images/s  (batch {batch}, {steps} steps)", flush=True)
    return rate


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=3000, help="synthetic images (default 3000)")
    ap.add_argument("--batch-size", type=int, default=128, help="pipeline batch size (default 128)")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per pipeline, best kept")
    ap.add_argument("--train-batch", type=int, default=32, help="train-step batch (default 32)")
    ap.add_argument("--train-steps", type=int, default=3, help="timed train steps (default 3)")
    ap.add_argument("--quick", action="store_true",
                    help="600 images, 2 epochs, 1 train step (smoke run)")
    ap.add_argument("--skip-train", action="store_true", help="only the input pipelines")
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.epochs, args.train_steps = min(args.images, 600), 2, 1
    from keras_facemargin.backbones import IResNet, MobileFaceNet
    from keras_facemargin.data import make_dataset

    print(f"TensorFlow {tf.__version__}, OpenCV {cv2.__version__}, {os.cpu_count()} CPU cores, "
          f"GPUs: {len(tf.config.list_physical_devices('GPU'))}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        folder, rec, num_classes = make_data(tmp, args.images)
        print(f"generated {args.images} 112x112 JPEGs ({num_classes} identities) in "
              f"{time.perf_counter() - t:.1f}s", flush=True)
        t = time.perf_counter()
        ds = make_dataset(rec, args.batch_size, seed=0, shard=None)
        print(f"RecordIO open + header scan + pipeline build: {time.perf_counter() - t:.2f}s")
        r_rec = images_per_second(ds, args.epochs)
        r_base = images_per_second(baseline_dataset(folder, args.batch_size), args.epochs)
        r_base2 = images_per_second(baseline_dataset(folder, args.batch_size, flip_normalise=True),
                                    args.epochs)
        print(f"pipeline    RecordIO (decode+flip+normalise, batch {args.batch_size}) "
              f"{r_rec:8.0f} images/s")
        print(f"pipeline    folder baseline (list_files->read_file->decode_jpeg->batch) "
              f"{r_base:8.0f} images/s")
        print(f"pipeline    folder baseline + flip + normalise                        "
              f"{r_base2:8.0f} images/s")
        print(f"ratio RecordIO / baseline: {r_rec / r_base:.2f}   "
              f"(vs baseline + flip + normalise: {r_rec / r_base2:.2f})", flush=True)
    if not args.skip_train:
        r50 = train_rate("IResNet-50", IResNet(depth=50), num_classes, args.train_batch,
                         args.train_steps)
        mfn = train_rate("MobileFaceNet", MobileFaceNet(), num_classes, args.train_batch,
                         args.train_steps)
        for name, rate in (("IResNet-50", r50), ("MobileFaceNet", mfn)):
            print(f"{name}: pipeline supplies {r_rec / rate:.1f}x what training consumes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
