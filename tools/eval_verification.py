"""Evaluate a model on every pair-verification set in a folder (insightface .bin, LFW/CFP folders).

Usage::

    python tools/eval_verification.py --model model.keras --data faces_emore [--sets lfw,cfp_fp]
        [--no-flip] [--batch-size 64] [--image-size 112] [--lfw-crop PX] [--roc roc.png] [--json out.json]
        [--normalize 127.5|128]

Images are normalised as the model expects: ``--normalize STD`` (``(x - 127.5) / STD``), else what the
``.keras`` file records (``tools/convert_insightface.py`` records arcface_torch's ``/ 127.5``), else
the package's ``(x - 127.5) / 128``.

Prints ``format_table`` (accuracy mean +- std over 10 folds, mean threshold, AUC, TAR@FAR 1e-3 and 1e-2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main(argv=None):
    ap = argparse.ArgumentParser(description="10-fold verification on standard pair sets.")
    ap.add_argument("--model", required=True, help="a saved Keras model (.keras); FaceRecognizer uses its embedder")
    ap.add_argument("--data", required=True, help="folder with <set>.bin files and/or LFW/CFP folders, or one .bin")
    ap.add_argument("--sets", default=None, help="comma-separated subset, e.g. lfw,cfp_fp,agedb_30")
    ap.add_argument("--no-flip", action="store_true", help="disable the flip test")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=None, help="default: the model's input size")
    ap.add_argument("--lfw-crop", type=int, default=None,
                    help="centre-square crop (px) for LFW image folders; default: data.lfw.LFW_CENTER_CROP_BOX")
    ap.add_argument("--normalize", default=None, metavar="127.5|128",
                    help="input std the model expects, (x - 127.5) / STD (default: recorded in the file, else 128)")
    ap.add_argument("--roc", default=None, help="write the ROC curves of all sets to this PNG")
    ap.add_argument("--json", default=None, help="write all results to this JSON file")
    args = ap.parse_args(argv)

    import keras

    import keras_facemargin  # noqa: F401  (registers the custom layers/models)
    from keras_facemargin.evaluation import evaluate_verification_sets, find_verification_sets, format_table
    from keras_facemargin.evaluation.bin_sets import _resolve_sources
    from keras_facemargin.evaluation.plots import plot_roc
    from keras_facemargin.pretrained.loader import (PACKAGE_NORMALIZATION, parse_normalization, read_normalization,
                                                    with_package_normalization)

    try:
        override = parse_normalization(args.normalize)
        _resolve_sources(args.data, args.sets)  # "nothing found" errors before loading the model
        if os.path.isdir(args.data):
            found = find_verification_sets(args.data)
            opts = {n: {"crop": args.lfw_crop} for n, s in found.items()
                    if s.kind == "lfw_folder" and args.lfw_crop is not None}
        else:
            opts = {}
        model = keras.saving.load_model(args.model, compile=False)
        recorded = read_normalization(args.model)
        norm = override or recorded or dict(PACKAGE_NORMALIZATION)
        how = "--normalize" if override else ("recorded in the model file" if recorded else "package default")
        print(f"input normalisation: (x - {norm['mean']:g}) / {norm['std']:g} ({how})", file=sys.stderr)
        model = with_package_normalization(model, norm)
        results = evaluate_verification_sets(model, args.data, names=args.sets, flip=not args.no_flip,
                                             batch_size=args.batch_size, image_size=args.image_size,
                                             loader_options=opts)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(results))
    if args.roc:
        backend = plot_roc({n: (r.roc_fpr, r.roc_tpr) for n, r in results.items()}, args.roc, title="ROC",
                           xlim=(1e-4, 1.0))
        print(f"ROC written to {args.roc} ({backend})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({n: r.to_dict() for n, r in results.items()}, f, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
