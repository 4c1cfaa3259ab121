#!/usr/bin/env python
"""Inference speed of one package backbone through each export format: Keras, SavedModel, TFLite (each quantisation), ONNX.

(`benchmarks/inference_latency.py` compares runtimes, PyTorch included, on a converted insightface IResNet-50.)

Same model, same inputs (SyntheticFaces, normalised); images/s and ms/image at the given batch
size, printed with the ratio of throughput to Keras (``predict_on_batch``).

Usage::

    python benchmarks/export_latency.py                    # MobileFaceNet 112x112
    python benchmarks/export_latency.py --backbone iresnet50 --batch 8 --quick
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _time(fn, x, repeats):
    fn(x)
    fn(x)
    t = time.perf_counter()
    for _ in range(repeats):
        fn(x)
    return (time.perf_counter() - t) / (repeats * len(x))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="mobilefacenet", help="a BACKBONE_PRESETS name (default mobilefacenet)")
    parser.add_argument("--batch", type=int, default=1, help="images per call (default 1: latency)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args(argv)
    repeats = 5 if args.quick else args.repeats

    import numpy as np

    import keras_facemargin as kfm
    from keras_facemargin import export

    backbone = kfm.backbones.get_backbone(args.backbone)
    embedder = export.as_embedder(backbone)
    size = backbone.input_shape[1]
    x = kfm.data.normalize_images(export.parity_images(size, args.batch, data_dir="/nonexistent")[0])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(("keras", _time(lambda b: embedder.predict_on_batch(b), x, repeats), 1.0))
        saved = export.export_savedmodel(embedder, os.path.join(tmp, "sm"))
        runners = [("savedmodel", export.SavedModelEmbedder(saved))]
        for q in export.QUANTIZATIONS:
            path = export.export_tflite(saved, os.path.join(tmp, f"{q}.tflite"), quantize=q)
            runners.append((f"tflite-{q}", export.TFLiteEmbedder(path)))
        runners.append(("onnxruntime", export.ONNXEmbedder(export.export_onnx(embedder, os.path.join(tmp, "m.onnx")))))
        ref = np.asarray(embedder.predict_on_batch(x))
        for name, run in runners:
            out = np.asarray(run(x))
            cos = float(((out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)).min())
            rows.append((name, _time(run, x, repeats), cos))
    keras_s = rows[0][1]
    print(f"{args.backbone} {size}x{size}, batch {args.batch}, {repeats} timed calls, {os.cpu_count()} CPUs")
    print(f"{'runtime':<16}{'images/s':>10}{'ms/image':>10}{'x Keras':>9}{'min cos':>10}")
    for name, sec, cos in rows:
        print(f"{name:<16}{1 / sec:>10.1f}{1000 * sec:>10.2f}{keras_s / sec:>9.2f}{cos:>10.5f}")


if __name__ == "__main__":
    main()
