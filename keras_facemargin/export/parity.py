"""Parity reports: an exported model against the Keras model on the same face images.

A report gives the minimum and mean cosine similarity of the embeddings, the maximum absolute
difference, the file size, and the batch-1 latency per image on this CPU of both runtimes; for
quantised models optionally the change of LFW verification accuracy on a subset of
``pairs.txt``. Images are LFW centre crops when ``lfw/`` is present under the data directory,
else `SyntheticFaces`.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from keras_facemargin.errors import ParityError  # noqa: F401  (re-exported)

__all__ = ["THRESHOLDS", "ParityError", "ParityReport", "parity_images", "lfw_pair_subset",
           "measure_latency", "parity_report", "default_data_dir"]

#: Minimum cosine similarity to Keras, by route.
THRESHOLDS = {"savedmodel": 0.9999, "onnx": 0.9999, "float32": 0.9999, "float16": 0.9999,
              "dynamic": 0.99, "int8": 0.99}


def default_data_dir():
    """`$KFM_DATA_DIR`, else `shared/data` beside this checkout, else `../shared/data` from the cwd."""
    if os.environ.get("KFM_DATA_DIR"):
        return Path(os.environ["KFM_DATA_DIR"])
    beside_checkout = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return beside_checkout if beside_checkout.is_dir() else Path("..") / "shared" / "data"


def parity_images(image_size, num_images=64, data_dir=None, seed=0):
    """uint8 face images for parity checks, and where they came from.

    Args:
        image_size: `(H, W)` (or an int for square images).
        num_images: how many images.
        data_dir: folder holding `lfw/images` (default `default_data_dir()`); LFW centre crops
            (`keras_facemargin.data.lfw.load_lfw_images`) are used when present.
        seed: subset / generator seed.

    Returns:
        `(images, source)`: uint8 `(n, H, W, 3)` and a description such as
        `"LFW centre crops (64 images)"`.

    Example::

        images, source = parity_images((112, 112), 64)
    """
    from keras_facemargin.utils.images import resize_image

    h, w = (image_size, image_size) if np.isscalar(image_size) else (int(image_size[0]), int(image_size[1]))
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    lfw = root / "lfw" / "images"
    if lfw.is_dir():
        from keras_facemargin.data.lfw import load_lfw_images

        files = sorted(str(p) for p in lfw.glob("*/*.jpg"))
        if files:
            rng = np.random.default_rng(seed)
            pick = sorted(rng.choice(len(files), size=min(num_images, len(files)), replace=False))
            images = load_lfw_images([files[i] for i in pick], image_size=max(h, w), progress=False)
            if h != w:
                images = np.stack([resize_image(im, (h, w)) for im in images])
            return images, f"LFW centre crops ({len(images)} images from {lfw})"
    from keras_facemargin.export.tflite import representative_images

    images = representative_images((h, w), None, num_images, seed=seed + 1)
    return images, f"SyntheticFaces ({len(images)} generated images; no LFW under {root})"


def lfw_pair_subset(data_dir=None, pairs_per_fold=60, image_size=112):
    """A fold-balanced subset of LFW `pairs.txt`: `(images_a, images_b, is_same, folds)` or `None`.

    Takes the first `pairs_per_fold / 2` matched and mismatched pairs of each of the 10 folds
    (parsed with `keras_facemargin.data.lfw.load_lfw_pairs`), as uint8 centre crops.

    Args:
        data_dir: folder holding `lfw/` (default `default_data_dir()`); `None` is returned
            when `lfw/pairs.txt` is absent.
        pairs_per_fold: pairs per fold (even).
        image_size: crop side.

    Example::

        a, b, same, folds = lfw_pair_subset(pairs_per_fold=60)   # 600 pairs
    """
    root = (Path(data_dir) if data_dir is not None else default_data_dir()) / "lfw"
    if not (root / "pairs.txt").is_file():
        return None
    from keras_facemargin.data.lfw import load_lfw_images, load_lfw_pairs

    pairs = load_lfw_pairs(root)
    half = pairs.pairs_per_fold
    take = []
    for k in range(pairs.num_folds):
        start = 2 * half * k
        take += list(range(start, start + min(half, pairs_per_fold // 2)))
        take += list(range(start + half, start + half + min(half, pairs_per_fold // 2)))
    take = np.asarray(take)
    paths, ia, ib = pairs.unique_paths()
    need = np.unique(np.concatenate([ia[take], ib[take]]))
    images = load_lfw_images(paths[need], image_size=image_size, progress=False)
    lookup = {j: i for i, j in enumerate(need.tolist())}
    a = images[[lookup[j] for j in ia[take].tolist()]]
    b = images[[lookup[j] for j in ib[take].tolist()]]
    return a, b, pairs.is_same[take], pairs.fold[take]


def measure_latency(fn, image, repeats=20, warmup=3):
    """Median batch-1 latency of `fn(image[None])` in milliseconds.

    Example::

        ms = measure_latency(run, normalize_images(images[:1])[0])
    """
    x = np.asarray(image)[None]
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return 1000.0 * float(np.median(times))


@dataclass
class ParityReport:
    """Parity of an exported model with Keras. `str(report)` is a readable summary.

    Attributes:
        route: `"savedmodel"`, `"onnx"`, or the TFLite quantisation (`"float32"`, ...).
        path: exported file or directory.
        images_source: where the images came from; `num_images` how many.
        min_cosine, mean_cosine, max_abs_diff: embedding agreement with Keras.
        threshold: minimum cosine required; `passed`: `min_cosine >= threshold`.
        file_size_bytes: size of the exported file (directory: sum of its files).
        latency_ms, keras_latency_ms: batch-1 median latency per image.
        verification: optional `{"pairs", "keras_accuracy", "exported_accuracy", "change"}`.
    """

    route: str
    path: str
    images_source: str
    num_images: int
    min_cosine: float
    mean_cosine: float
    max_abs_diff: float
    threshold: float
    passed: bool
    file_size_bytes: int
    latency_ms: float
    keras_latency_ms: float
    verification: dict = field(default_factory=dict)

    def to_dict(self):
        return asdict(self)

    def __str__(self):
        lines = [
            f"parity [{self.route}] {self.path}",
            f"  images:          {self.images_source}",
            f"  min cosine:      {self.min_cosine:.6f} (mean {self.mean_cosine:.6f}; "
            f"threshold {self.threshold}) -> {'PASS' if self.passed else 'FAIL'}",
            f"  max |diff|:      {self.max_abs_diff:.3g}",
            f"  file size:       {self.file_size_bytes / 2**20:.2f} MiB",
            f"  latency / image: {self.latency_ms:.2f} ms (Keras {self.keras_latency_ms:.2f} ms, batch 1)",
        ]
        if self.verification:
            v = self.verification
            lines.append(f"  LFW {v['pairs']} pairs:   accuracy {v['exported_accuracy']:.4f} vs Keras "
                         f"{v['keras_accuracy']:.4f} (change {v['change']:+.4f})")
        return "\n".join(lines)

    def raise_if_failed(self):
        """Raise `ParityError` naming the route, file and numbers when the threshold is missed."""
        if not self.passed:
            err = ParityError(
                f"Export parity FAILED for {self.route} ({self.path}): minimum cosine to Keras "
                f"{self.min_cosine:.6f} < required {self.threshold} on {self.images_source}.")
            err.report = self
            raise err


def _size(path):
    p = Path(path)
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size if p.exists() else 0


def parity_report(keras_model, candidate, route, path, images, images_source="", threshold=None,
                  pairs=None, latency_repeats=20):
    """Compare `candidate` with the Keras embedder on `images`.

    Args:
        keras_model: the Keras embedder (normalised float -> unit-norm embeddings).
        candidate: callable, normalised float32 batch -> embeddings (e.g. `TFLiteEmbedder`).
        route: key of `THRESHOLDS` (or any name when `threshold` is given).
        path: the exported file/directory (for the size and the messages).
        images: uint8 `(n, H, W, 3)`.
        images_source: description of the images.
        threshold: minimum cosine (default `THRESHOLDS[route]`).
        pairs: optional `(images_a, images_b, is_same, folds)` (see `lfw_pair_subset`) to
            report the verification-accuracy change (no flip, 10-fold protocol).
        latency_repeats: timed batch-1 runs per runtime (0 skips timing).

    Returns:
        A `ParityReport` (call `raise_if_failed()` to enforce the threshold).

    Example::

        report = parity_report(embedder, TFLiteEmbedder(p), "int8", p, images)
        print(report); report.raise_if_failed()
    """
    from keras_facemargin.utils.images import normalize_images

    threshold = THRESHOLDS[route] if threshold is None else float(threshold)
    x = normalize_images(np.asarray(images))

    def keras_fn(batch):
        return np.asarray(keras_model.predict_on_batch(batch))

    ref = np.concatenate([keras_fn(x[i:i + 32]) for i in range(0, len(x), 32)]).astype(np.float64)
    got = np.concatenate([np.asarray(candidate(x[i:i + 32])) for i in range(0, len(x), 32)]).astype(np.float64)
    if got.shape != ref.shape:
        raise ParityError(f"{route} ({path}) returned embeddings of shape {got.shape}, Keras {ref.shape}.")
    cos = (ref * got).sum(1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1), 1e-12)
    cos = np.where(np.isfinite(cos), cos, -1.0)
    verification = {}
    if pairs is not None:
        from keras_facemargin.evaluation.verification import evaluate_pairs

        a, b, same, folds = pairs
        k = evaluate_pairs(keras_fn, a, b, same, flip=False, folds=folds)
        e = evaluate_pairs(candidate, a, b, same, flip=False, folds=folds)
        verification = {"pairs": int(len(same)), "keras_accuracy": float(k.accuracy_mean),
                        "exported_accuracy": float(e.accuracy_mean),
                        "change": float(e.accuracy_mean - k.accuracy_mean)}
    lat = measure_latency(candidate, x[0], latency_repeats) if latency_repeats else float("nan")
    klat = measure_latency(keras_fn, x[0], latency_repeats) if latency_repeats else float("nan")
    return ParityReport(
        route=route, path=str(path), images_source=images_source or f"{len(x)} images",
        num_images=int(len(x)), min_cosine=float(cos.min()), mean_cosine=float(cos.mean()),
        max_abs_diff=float(np.nanmax(np.abs(got - ref))) if np.isfinite(got).all() else float("inf"),
        threshold=threshold, passed=bool(cos.min() >= threshold), file_size_bytes=_size(path),
        latency_ms=lat, keras_latency_ms=klat, verification=verification)
