"""`kfm package MODEL --name NAME`: package a trained run as a zoo model (weights, sha256, LFW, thresholds, TFLite).

For maintainers shipping a model; for the ``model.keras`` of an ``examples/celeba_lfw.py`` (or
trainer) run it:

1. saves the backbone's weights as ``<--weights-dir>/<name>.weights.h5`` (default: the package's
   ``pretrained/weights/``, what ``keras_facemargin.load(name)`` reads) and prints its sha256;
2. measures LFW View 2 (6,000 pairs, 10 folds, flip-sum) with the centre crop and with MTCNN
   5-point alignment;
3. calibrates the `FaceVerifier` thresholds (FAR 1e-2, 1e-3, 1e-4 and the balanced-accuracy point)
   on the held-out CelebA identities (:mod:`keras_facemargin.inference.calibrate`; never LFW);
4. exports TFLite float16 and int8 (int8 calibrated on 200 CelebA training images, never LFW) and
   measures the same LFW protocol through each interpreter, with the minimum cosine to Keras;
5. writes everything to ``<--output>/<name>.json`` (the numbers the registry entry records).

Example::

    kfm package runs/real_faces/<run>/model.keras --name arcface_celeba_mbf --output pretrained
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from keras_facemargin.cli import _common

__all__ = ["register", "run_package"]


def register(sub) -> None:
    """Add ``package`` to the ``kfm`` sub-parsers."""
    p = _common.add_parser(sub, "package", __doc__, [_common.common_options()])
    p.add_argument("model", help="a FaceRecognizer .keras file, or a backbone .keras file")
    p.add_argument("--name", required=True, help="registry name of the shipped model")
    p.add_argument("--data-dir", default=None, help="folder holding lfw/ and celeba_identities/ ($KFM_DATA_DIR)")
    p.add_argument("--weights-dir", default=None, help="default: the package's pretrained/weights/")
    p.add_argument("--output", default="pretrained", help="folder of <name>.json (default ./pretrained)")
    p.add_argument("--skip-tflite", action="store_true")
    p.set_defaults(func=run_package)


def lfw_images(lfw, size, align):
    """The 7,701 distinct LFW pair images (MTCNN crops aligned at 112, as FaceVerifier, then resized)."""
    import cv2
    import numpy as np

    from keras_facemargin.data import load_lfw_images, load_lfw_pairs

    pairs = load_lfw_pairs(lfw)
    paths, ia, ib = pairs.unique_paths()
    if align == "center":
        return pairs, ia, ib, load_lfw_images(paths, image_size=size, align="center", progress=False)
    images = load_lfw_images(paths, image_size=112, align="mtcnn", progress=False)
    if size != 112:
        images = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images])
    return pairs, ia, ib, images


def _lfw(fn, data):
    from keras_facemargin.evaluation import embed_images, kfold_verification, pair_scores

    pairs, ia, ib, images = data
    emb = embed_images(fn, images)
    r = kfold_verification(pair_scores(emb[ia], emb[ib]), pairs.is_same, folds=pairs.fold)
    return {"accuracy_mean": round(100 * r.accuracy_mean, 2), "accuracy_std": round(100 * r.accuracy_std, 2),
            "tar_at_far_1e-3": round(100 * r.tar_at_far.get(1e-3, float("nan")), 2)}


def _tflite_reports(args, embedder, data, name):
    """Export float16 / int8, measure them on LFW (the files are measured, not kept)."""
    import numpy as np

    from keras_facemargin.evaluation import embed_images
    from keras_facemargin.export import TFLiteEmbedder, export_tflite
    from keras_facemargin.inference.calibrate import training_sample

    images = data["center"][3]
    ref = embed_images(embedder, images, flip=False)
    calib = training_sample(args.data_dir, int(images.shape[1]))
    out = {}
    for quant in ("float16", "int8"):
        path = Path(args.output) / f"{name}_{quant}.tflite"
        export_tflite(embedder, path, quant, calib if quant == "int8" else None)
        runner = TFLiteEmbedder(path)
        emb = embed_images(runner, images, flip=False)
        cos = np.sum(ref * emb, axis=1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(emb, axis=1), 1e-12)
        out[quant] = {"bytes": path.stat().st_size, "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
                      "lfw_center": _lfw(runner, data["center"]), "lfw_mtcnn": _lfw(runner, data["mtcnn"])}
        path.unlink()  # measured, not shipped: `kfm export` makes it again
        print(f"TFLite {quant}:", json.dumps(out[quant]), flush=True)
    return out


def run_package(args) -> int:
    """Package the model; write ``<output>/<name>.json``."""
    from keras_facemargin.export.parity import default_data_dir
    from keras_facemargin.export import as_embedder
    from keras_facemargin.inference.calibrate import calibrate_verifier
    from keras_facemargin.inference.verifier import FaceVerifier
    from keras_facemargin.pretrained.loader import PACKAGED_WEIGHTS_DIR
    from keras_facemargin.utils.atomic import atomic_path, atomic_write_json
    from keras_facemargin.utils.model_files import load_keras_model

    _common.register_keras_classes()
    args.data_dir = args.data_dir or str(default_data_dir())
    lfw = Path(args.data_dir) / "lfw"
    if not (lfw / "pairs.txt").is_file():
        raise FileNotFoundError(f"LFW not found: {lfw}/pairs.txt (set --data-dir or KFM_DATA_DIR).")
    model = load_keras_model(args.model)  # the safe loader: checked before anything is built
    backbone = getattr(model, "backbone", model)
    embedder = as_embedder(model)
    size = int(backbone.input_shape[1])
    wdir = Path(args.weights_dir) if args.weights_dir else PACKAGED_WEIGHTS_DIR
    wdir.mkdir(parents=True, exist_ok=True)
    wfile = wdir / f"{args.name}.weights.h5"
    with atomic_path(wfile, suffix=".weights.h5") as tmp:
        backbone.save_weights(tmp)
    sha = hashlib.sha256(wfile.read_bytes()).hexdigest()
    report = {"name": args.name, "source_model": str(args.model), "weights_file": wfile.name, "sha256": sha,
              "bytes": wfile.stat().st_size, "backbone_config": backbone.get_config(), "input_size": size,
              "parameters": int(backbone.count_params())}
    print(f"{wfile}: {report['bytes']} bytes, sha256 {sha}", flush=True)
    data = {align: lfw_images(lfw, size, align) for align in ("center", "mtcnn")}
    report["lfw"] = {align: _lfw(embedder, data[align]) for align in ("center", "mtcnn")}
    print("LFW:", json.dumps(report["lfw"]), flush=True)
    cal = calibrate_verifier(FaceVerifier(embedder, threshold=0.5), args.data_dir)
    report["thresholds"] = cal["thresholds"]
    report["calibration"] = {k: cal[k] for k in ("tar", "far", "num_genuine", "num_impostor", "set")}
    print("thresholds:", json.dumps(cal["thresholds"]), flush=True)
    Path(args.output).mkdir(parents=True, exist_ok=True)
    if not args.skip_tflite:
        report["tflite"] = _tflite_reports(args, embedder, data, args.name)
    out = Path(args.output) / f"{args.name}.json"
    atomic_write_json(out, report, indent=2, default=str)
    print(f"wrote {out}")
    return _common.EXIT_OK
