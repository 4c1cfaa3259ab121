"""`kfm evaluate verification|ijb|megaface`: benchmark a model (pair sets, IJB-B/C, MegaFace).

* ``verification``: 10-fold pair verification on every set of a folder (insightface ``.bin`` sets,
  LFW / CFP image folders) or one ``.bin``; prints accuracy mean +- std, mean threshold, AUC and
  TAR@FAR 1e-3 / 1e-2.
* ``ijb``: IJB-B / IJB-C 1:1 template verification (TAR@FAR 1e-6..1e-1) and 1:N identification
  (insightface's layout: ``meta/`` and ``loose_crop/``; see ``keras_facemargin.evaluation.ijb``).
* ``megaface``: MegaFace Challenge 1 from precomputed features: rank-k identification (CMC) and
  TAR@FAR=1e-6.

``--model`` is a zoo name or a ``.keras`` file. Images are normalised as the model expects:
``--normalize STD`` (``(x - 127.5) / STD``), else what the ``.keras`` file records (``kfm convert``
records arcface_torch's ``/ 127.5``) or the zoo entry's, else the package's ``(x - 127.5) / 128``.

Example::

    kfm evaluate verification --model runs/demo/model.keras --data faces_emore --sets lfw,cfp_fp
    kfm evaluate verification --model mbf_dlib_distill --data ../shared/data/lfw
    kfm evaluate ijb --model M.keras --data IJB_release/IJBC --target IJBC --result-dir out
    kfm evaluate megaface --facescrub-features fs.npy --facescrub-list facescrub_lst --megaface-features mf.npy
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from keras_facemargin.cli import _common

__all__ = ["register", "run_verification", "run_ijb", "run_megaface", "load_model"]


def register(sub) -> None:
    """Add ``evaluate verification|ijb|megaface`` to the ``kfm`` sub-parsers."""
    common = _common.common_options(json_file=True)
    p = _common.add_parser(sub, "evaluate", __doc__, [], help="benchmarks: pair sets, IJB-B/C, MegaFace")
    kinds = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)

    v = _common.add_parser(kinds, "verification", __doc__, [common], help="10-fold verification on pair sets")
    v.add_argument("--model", required=True, help="a zoo name or a .keras file (a FaceRecognizer uses its embedder)")
    v.add_argument("--data", required=True, help="folder with <set>.bin files and/or LFW/CFP folders, or one .bin")
    v.add_argument("--sets", default=None, help="comma-separated subset, e.g. lfw,cfp_fp,agedb_30")
    v.add_argument("--no-flip", action="store_true", help="disable the flip test")
    v.add_argument("--batch-size", type=int, default=64)
    v.add_argument("--image-size", type=int, default=None, help="default: the model's input size")
    v.add_argument("--lfw-crop", type=int, default=None,
                   help="centre-square crop (px) for LFW image folders; default: data.lfw.LFW_CENTER_CROP_BOX")
    v.add_argument("--roc", default=None, help="write the ROC curves of all sets to this PNG")
    _model_options(v)
    v.set_defaults(func=run_verification)

    j = _common.add_parser(kinds, "ijb", __doc__, [common], help="IJB-B / IJB-C 1:1 and 1:N")
    j.add_argument("--model", default=None, help="a zoo name or a .keras file; not needed with --features")
    j.add_argument("--data", required=True, help="IJB folder holding meta/ and loose_crop/")
    j.add_argument("--target", default="IJBC", choices=["IJBC", "IJBB"])
    j.add_argument("--batch-size", type=int, default=128)
    j.add_argument("--image-size", type=int, default=112)
    j.add_argument("--no-flip", action="store_true")
    j.add_argument("--no-detector-score", action="store_true")
    j.add_argument("--normalize-images", action="store_true", help="L2-normalise image features before pooling")
    j.add_argument("--far-convention", default="floor", choices=["floor", "nearest"])
    j.add_argument("--features", default=None, help="precomputed (N, d) image features .npy in meta order")
    j.add_argument("--save-features", default=None, help="save the image features (.npy) for re-scoring")
    j.add_argument("--no-1n", action="store_true", help="skip 1:N identification")
    j.add_argument("--result-dir", default=None, help="writes <target>_scores.npy, <target>_roc.png, <target>.json")
    _model_options(j)
    j.set_defaults(func=run_ijb)

    m = _common.add_parser(kinds, "megaface", __doc__, [common], help="MegaFace Challenge 1 from features")
    m.add_argument("--facescrub-features", required=True,
                   help="a .npy (N, d) in list order, or a folder of per-image MegaFace .bin files")
    m.add_argument("--facescrub-list", required=True, help="one <identity>/<file> path per line")
    m.add_argument("--megaface-features", required=True)
    m.add_argument("--megaface-list", default=None, help="needed with --megaface-noises or .bin folders")
    m.add_argument("--facescrub-noises", default=None)
    m.add_argument("--megaface-noises", default=None)
    m.add_argument("--facescrub-mode", default="replace", choices=["replace", "remove"])
    m.add_argument("--num-distractors", type=int, default=None)
    m.add_argument("--suffix", default="_insightface.bin", help="per-image .bin suffix in feature folders")
    m.add_argument("--fars", default="1e-6", help="comma-separated FARs (default 1e-6)")
    m.set_defaults(func=run_megaface)


def _model_options(parser) -> None:
    parser.add_argument("--weights", default=None, help="local weights file for a zoo --model")
    parser.add_argument("--normalize", default=None, metavar="127.5|128",
                        help="input std the model expects, (x - 127.5) / STD (default: recorded in the file or "
                             "the zoo entry, else 128)")


def load_model(model, normalize=None, weights=None):
    """A zoo name or ``.keras`` path as a Keras model taking the package's ``(x - 127.5) / 128`` inputs.

    The model's own normalisation (``--normalize``, else what the file records or the registry
    says, else the package's) is converted exactly by one ``input_normalization`` layer; the line
    ``input normalisation: (x - M) / S (how)`` is printed on stderr.
    """
    import keras_facemargin as kfm
    from keras_facemargin.pretrained.loader import (PACKAGE_NORMALIZATION, parse_normalization, read_normalization,
                                                    with_package_normalization)
    from keras_facemargin.utils.model_files import load_keras_model

    if _common.is_exported_model(model):
        raise ValueError(f"--model {model}: models exported to TFLite, ONNX or SavedModel are not supported here; "
                         "pass a zoo name (kfm models) or a .keras file.")
    _common.register_keras_classes()
    override = parse_normalization(normalize)
    if isinstance(model, str) and model.lower() in kfm.list_models():
        loaded = kfm.load(model, weights=weights)
        recorded, source = loaded.normalization, f"the {model.lower()} registry entry / weights"
    else:
        if not Path(model).is_file():
            raise FileNotFoundError(f"--model {model}: not a zoo name (kfm models) nor an existing .keras file.")
        loaded = load_keras_model(model)  # the safe loader: checked before anything is built
        recorded, source = read_normalization(model), "recorded in the model file"
    norm = override or recorded or dict(PACKAGE_NORMALIZATION)
    how = "--normalize" if override else (source if recorded else "package default")
    print(f"input normalisation: (x - {norm['mean']:g}) / {norm['std']:g} ({how})", file=sys.stderr)
    return with_package_normalization(loaded, norm)


def _write_json(args, obj) -> None:
    """``--json``: print ``obj``; ``--json FILE``: write it there."""
    if args.json == "-":
        _common.emit(obj)
    elif args.json:
        from keras_facemargin.utils.atomic import atomic_write_json

        atomic_write_json(args.json, obj, default=float)


def run_verification(args) -> int:
    """Evaluate every pair set found; print the table."""
    from keras_facemargin import evaluation
    from keras_facemargin.evaluation.bin_sets import _resolve_sources

    _resolve_sources(args.data, args.sets)  # "nothing found" errors before loading the model
    opts = {}
    if os.path.isdir(args.data) and args.lfw_crop is not None:
        opts = {n: {"crop": args.lfw_crop} for n, s in evaluation.find_verification_sets(args.data).items()
                if s.kind == "lfw_folder"}
    model = load_model(args.model, args.normalize, args.weights)
    results = evaluation.evaluate_verification_sets(model, args.data, names=args.sets, flip=not args.no_flip,
                                                    batch_size=args.batch_size, image_size=args.image_size,
                                                    loader_options=opts,
                                                    **({"progress": False} if args.no_progress else {}))
    if args.json != "-":
        print(evaluation.format_table(results))
    if args.roc:
        backend = evaluation.plot_roc({n: (r.roc_fpr, r.roc_tpr) for n, r in results.items()}, args.roc,
                                      title="ROC", xlim=(1e-4, 1.0))
        print(f"ROC written to {args.roc} ({backend})", file=sys.stderr)
    _write_json(args, {n: r.to_dict() for n, r in results.items()})
    return _common.EXIT_OK


def run_ijb(args) -> int:
    """IJB-B/C: extract (or read) the features, score, print the tables."""
    import numpy as np

    from keras_facemargin.evaluation import ijb, plot_roc
    from keras_facemargin.utils.atomic import atomic_write_json, atomic_writer

    model = features = None
    if args.features:
        features = np.load(args.features, allow_pickle=False)
    elif not args.model:
        raise ValueError("--model is required unless --features is given.")
    else:
        model = load_model(args.model, args.normalize, args.weights)
    res = ijb.evaluate_ijb(model, args.data, args.target, flip=not args.no_flip,
                           detector_score=not args.no_detector_score, normalize_images=args.normalize_images,
                           batch_size=args.batch_size, image_size=args.image_size, features=features,
                           far_convention=args.far_convention, with_1n=not args.no_1n,
                           progress=not args.no_progress)
    if args.save_features and features is None:
        np.save(args.save_features, res["features"])
    ver = res["verification"]
    out = sys.stderr if args.json == "-" else sys.stdout
    print(f"{args.target} 1:1 verification: {ver['num_genuine']:,} genuine / {ver['num_impostor']:,} impostor "
          f"template pairs (TAR % at FAR; far convention: {args.far_convention})", file=out)
    print(ijb.format_tar_far_table({args.target: ver}), file=out)
    summary = {"verification": {"tar": ver["tar"], "threshold": ver["threshold"], "auc": ver["auc"]}}
    ident = res["identification"]
    if ident:
        print(f"\n{args.target} 1:N open-set identification (mixed probes; % )", file=out)
        print(f"{'gallery':<8} {'mated':>6} {'non-mat':>7} {'rank-1':>7} {'rank-5':>7} {'rank-10':>7} "
              f"{'TPIR@FPIR=0.01':>15} {'TPIR@FPIR=0.1':>14}", file=out)
        for g, r in ident.items():
            print(f"{g:<8} {r.get('num_mated', '')!s:>6} {r.get('num_nonmated', '')!s:>7} "
                  f"{100 * r['rank'][1]:>7.2f} {100 * r['rank'][5]:>7.2f} {100 * r['rank'][10]:>7.2f} "
                  f"{100 * r['tpir'][0.01]:>15.2f} {100 * r['tpir'][0.1]:>14.2f}", file=out)
            if r.get("missing_probe") or r.get("missing_gallery"):
                print(f"  ({r['missing_probe']} probe / {r['missing_gallery']} gallery templates had no images "
                      "and were excluded)", file=out)
        summary["identification"] = {g: {"rank": r["rank"], "tpir": r["tpir"]} for g, r in ident.items()}
    if args.result_dir:
        os.makedirs(args.result_dir, exist_ok=True)
        low = args.target.lower()
        with atomic_writer(os.path.join(args.result_dir, f"{low}_scores.npy")) as f:
            np.save(f, res["scores"])
        plot_roc({args.target: (ver["fpr"], ver["tpr"])}, os.path.join(args.result_dir, f"{low}_roc.png"),
                 title=f"ROC on {args.target}", xlim=(1e-6, 0.1), ylim=(0.3, 1.0))
        atomic_write_json(os.path.join(args.result_dir, f"{low}.json"), summary, indent=1, default=float)
        print(f"results written to {args.result_dir}", file=out)
    _write_json(args, json.loads(json.dumps(summary, default=float)))
    return _common.EXIT_OK


def _read_list(path):
    with open(path) as f:
        return [ln.strip().split("\t")[-1] for ln in f if ln.strip() and not ln.startswith("#")]


def run_megaface(args) -> int:
    """MegaFace Challenge 1 from features; print the result."""
    import numpy as np

    from keras_facemargin.evaluation.megaface import evaluate_megaface, load_features

    fs_names = _read_list(args.facescrub_list)
    fs_ids = np.array([os.path.basename(os.path.dirname(n)) for n in fs_names])
    if any(not i for i in fs_ids):
        raise ValueError(f"{args.facescrub_list}: entries must be '<identity>/<file>' paths.")
    mf_names = _read_list(args.megaface_list) if args.megaface_list else None
    fs = load_features(args.facescrub_features, fs_names, args.suffix)
    mf = load_features(args.megaface_features, mf_names, args.suffix)
    if fs.shape[0] != len(fs_names):
        raise ValueError(f"{fs.shape[0]} FaceScrub features for {len(fs_names)} list entries.")
    if mf_names is not None and mf.shape[0] != len(mf_names):
        raise ValueError(f"{mf.shape[0]} MegaFace features for {len(mf_names)} list entries.")
    res = evaluate_megaface(fs, fs_ids, mf, fs_names, mf_names, args.facescrub_noises, args.megaface_noises,
                            facescrub_mode=args.facescrub_mode, num_distractors=args.num_distractors,
                            fars=tuple(float(v) for v in args.fars.split(",")), progress=not args.no_progress)
    if args.json != "-":
        print(res.format())
    if args.json:
        import dataclasses

        _write_json(args, json.loads(json.dumps(dataclasses.asdict(res), default=float)))
    return _common.EXIT_OK
