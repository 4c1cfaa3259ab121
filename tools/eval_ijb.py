"""IJB-B / IJB-C 1:1 template verification (TAR@FAR 1e-6..1e-1) and 1:N identification.

Usage::

    python tools/eval_ijb.py --model model.keras --data IJB_release/IJBC --target IJBC
        [--batch-size 128] [--no-flip] [--no-detector-score] [--normalize-images]
        [--far-convention floor|nearest] [--save-features feats.npy | --features feats.npy]
        [--result-dir out]   # writes <target>_scores.npy, <target>_roc.png, <target>.json
        [--normalize 127.5|128]  # input std the model expects (default: recorded in the file, else 128)

See keras_facemargin/evaluation/ijb.py for the layout and the protocol conventions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main(argv=None):
    ap = argparse.ArgumentParser(description="IJB-B/C evaluation (insightface layout).")
    ap.add_argument("--model", default=None, help="saved Keras model (.keras); not needed with --features")
    ap.add_argument("--data", required=True, help="IJB folder holding meta/ and loose_crop/")
    ap.add_argument("--target", default="IJBC", choices=["IJBC", "IJBB"])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--no-flip", action="store_true")
    ap.add_argument("--no-detector-score", action="store_true")
    ap.add_argument("--normalize-images", action="store_true", help="L2-normalise image features before pooling")
    ap.add_argument("--far-convention", default="floor", choices=["floor", "nearest"])
    ap.add_argument("--features", default=None, help="precomputed (N, d) image features .npy in meta order")
    ap.add_argument("--save-features", default=None, help="save the image features (.npy) for re-scoring")
    ap.add_argument("--no-1n", action="store_true", help="skip 1:N identification")
    ap.add_argument("--normalize", default=None, metavar="127.5|128",
                    help="input std the model expects, (x - 127.5) / STD (default: recorded in the file, else 128)")
    ap.add_argument("--result-dir", default=None)
    args = ap.parse_args(argv)

    import numpy as np

    from keras_facemargin.evaluation.ijb import evaluate_ijb, format_tar_far_table
    from keras_facemargin.evaluation.plots import plot_roc

    model = None
    features = None
    try:
        if args.features:
            features = np.load(args.features, allow_pickle=False)
        else:
            if not args.model:
                raise ValueError("--model is required unless --features is given.")
            import keras

            import keras_facemargin  # noqa: F401
            from keras_facemargin.pretrained.loader import (PACKAGE_NORMALIZATION, parse_normalization,
                                                            read_normalization, with_package_normalization)

            override = parse_normalization(args.normalize)
            model = keras.saving.load_model(args.model, compile=False)
            recorded = read_normalization(args.model)
            norm = override or recorded or dict(PACKAGE_NORMALIZATION)
            how = "--normalize" if override else ("recorded in the model file" if recorded else "package default")
            print(f"input normalisation: (x - {norm['mean']:g}) / {norm['std']:g} ({how})", file=sys.stderr)
            model = with_package_normalization(model, norm)
        res = evaluate_ijb(model, args.data, args.target, flip=not args.no_flip,
                           detector_score=not args.no_detector_score, normalize_images=args.normalize_images,
                           batch_size=args.batch_size, image_size=args.image_size, features=features,
                           far_convention=args.far_convention, with_1n=not args.no_1n)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.save_features and features is None:
        np.save(args.save_features, res["features"])
    ver = res["verification"]
    print(f"{args.target} 1:1 verification: {ver['num_genuine']:,} genuine / {ver['num_impostor']:,} impostor "
          f"template pairs (TAR % at FAR; far convention: {args.far_convention})")
    print(format_tar_far_table({args.target: ver}))
    summary = {"verification": {"tar": ver["tar"], "threshold": ver["threshold"], "auc": ver["auc"]}}
    ident = res["identification"]
    if ident:
        print(f"\n{args.target} 1:N open-set identification (mixed probes; % )")
        print(f"{'gallery':<8} {'mated':>6} {'non-mat':>7} {'rank-1':>7} {'rank-5':>7} {'rank-10':>7} "
              f"{'TPIR@FPIR=0.01':>15} {'TPIR@FPIR=0.1':>14}")
        for g, r in ident.items():
            mated = r.get("num_mated", "")
            nonm = r.get("num_nonmated", "")
            print(f"{g:<8} {mated!s:>6} {nonm!s:>7} {100 * r['rank'][1]:>7.2f} {100 * r['rank'][5]:>7.2f} "
                  f"{100 * r['rank'][10]:>7.2f} {100 * r['tpir'][0.01]:>15.2f} {100 * r['tpir'][0.1]:>14.2f}")
            if r.get("missing_probe") or r.get("missing_gallery"):
                print(f"  ({r['missing_probe']} probe / {r['missing_gallery']} gallery templates had no images "
                      "and were excluded)")
        summary["identification"] = {g: {"rank": r["rank"], "tpir": r["tpir"]} for g, r in ident.items()}
    if args.result_dir:
        os.makedirs(args.result_dir, exist_ok=True)
        low = args.target.lower()
        np.save(os.path.join(args.result_dir, f"{low}_scores.npy"), res["scores"])
        plot_roc({args.target: (ver["fpr"], ver["tpr"])}, os.path.join(args.result_dir, f"{low}_roc.png"),
                 title=f"ROC on {args.target}", xlim=(1e-6, 0.1), ylim=(0.3, 1.0))
        with open(os.path.join(args.result_dir, f"{low}.json"), "w") as f:
            json.dump(summary, f, indent=1, default=float)
        print(f"results written to {args.result_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
