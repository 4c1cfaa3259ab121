"""`kfm export NAME_OR_PATH --format savedmodel|tflite|onnx`: deploy a face model's embedder, checking parity.

NAME_OR_PATH is a zoo name (loaded with ``keras_facemargin.load``) or a ``.keras`` file (a
FaceRecognizer, whose ``.embedder`` is exported, an embedder or a backbone). The parity report
(minimum cosine to Keras, max |diff|, size, latency; the LFW verification change for quantised
TFLite) is printed; the exit status is 1 when a threshold is missed (float32 / float16 /
SavedModel / ONNX: cosine >= 0.9999; dynamic / int8: >= 0.99).

Exported models take the package's ``(x - 127.5) / 128`` inputs. A model trained with another
normalisation (``--normalize STD``, what the ``.keras`` file records, or the zoo entry's, e.g.
arcface_torch's ``/ 127.5``) is exported with an ``input_normalization`` layer in front that
converts exactly.

Every export writes its metadata beside it (``OUT.json``, ``OUT_DIR/keras_facemargin.json`` for
SavedModel): input size and normalisation, crop geometry, embedding size, source model, the zoo
model's calibrated thresholds, version, quantisation and sha256. Keep it with the model:
``kfm verify --model OUT A B`` reads it. Full int8 is calibrated on CelebA training identities
(``celeba_identities/`` under --data-dir) unless --representative is given; never on LFW.

Example::

    kfm export mbf_dlib_distill --format tflite --output mbf.tflite
    kfm verify --model mbf.tflite a.jpg b.jpg
    kfm export runs/demo/model.keras --format tflite --quantize int8 --representative lfw/images
"""

from __future__ import annotations

import json
import os
import sys

from keras_facemargin.cli import _common

__all__ = ["register", "run_export"]

_SUFFIX = {"savedmodel": "_savedmodel", "onnx": ".onnx"}


def register(sub) -> None:
    """Add ``export`` to the ``kfm`` sub-parsers."""
    p = _common.add_parser(sub, "export", __doc__, [_common.common_options(json_file=True)])
    p.add_argument("model_arg", nargs="?", default=None, metavar="NAME_OR_PATH",
                   help="a zoo name (kfm models) or a .keras file (FaceRecognizer, embedder or backbone)")
    p.add_argument("--model", default=None, help="the same as NAME_OR_PATH")
    p.add_argument("--weights", default=None, help="local weights file for a zoo NAME")
    p.add_argument("--format", required=True, choices=["savedmodel", "tflite", "onnx"])
    p.add_argument("--quantize", default="float32", choices=["float32", "float16", "dynamic", "int8"],
                   help="TFLite only (default float32)")
    p.add_argument("--representative", default=None,
                   help="folder of face images to calibrate int8 (default: CelebA training identities under "
                        "--data-dir if present, else synthetic)")
    p.add_argument("--output", default=None, help="output path (default: next to the .keras file, or NAME.<format>)")
    p.add_argument("--data-dir", default=None, help="folder holding lfw/ (parity report) and celeba_identities/ "
                   "(int8 calibration) (default $KFM_DATA_DIR or ../shared/data)")
    p.add_argument("--num-images", type=int, default=64, help="images in the parity check")
    p.add_argument("--no-check", action="store_true", help="skip the parity report")
    p.add_argument("--normalize", default=None, metavar="127.5|128",
                   help="input std the model expects, (x - 127.5) / STD (default: recorded in the file or the "
                        "zoo entry, else 128)")
    p.set_defaults(func=run_export)


def _model_to_export(spec, normalize, weights):
    """A path (exported as it is) or a Keras model taking the package's normalisation."""
    import keras_facemargin as kfm
    from keras_facemargin.pretrained.loader import (PACKAGE_NORMALIZATION, parse_normalization, read_normalization,
                                                    with_package_normalization)

    if _common.is_exported_model(spec):
        raise ValueError(f"{spec} is already an exported model; export takes a zoo name or a .keras file.")
    _common.register_keras_classes()
    override = parse_normalization(normalize)
    if spec.lower() in kfm.list_models() and not os.path.exists(spec):
        model = kfm.load(spec, weights=weights)
        norm = override or model.normalization
    else:
        norm = override or read_normalization(spec)
        if norm is None or norm == PACKAGE_NORMALIZATION:
            return spec
        from keras_facemargin.export import load_embedder

        model = load_embedder(spec)
    if norm != PACKAGE_NORMALIZATION:
        print(f"model expects (x - {norm['mean']:g}) / {norm['std']:g}: exported with an input_normalization "
              "layer, taking (x - 127.5) / 128", file=sys.stderr)
    return with_package_normalization(model, norm)


def _export(spec, args, export):
    """Export a zoo name (``inference.zoo_export``: its crop and thresholds recorded) or a .keras file."""
    import keras_facemargin as kfm

    if (spec.lower() in kfm.list_models() and not os.path.exists(spec) and args.normalize is None):
        from keras_facemargin.inference.zoo_export import export_pretrained

        return export_pretrained(spec, args.format, args.output, quantize=args.quantize, weights=args.weights,
                                 representative=args.representative, data_dir=args.data_dir,
                                 check=not args.no_check, num_images=args.num_images)
    model = _model_to_export(spec, args.normalize, args.weights)
    representative, extra = args.representative, {}
    if args.quantize == "int8" and representative is None:
        from keras_facemargin.export.metadata import default_crop
        from keras_facemargin.export.parity import default_data_dir
        from keras_facemargin.inference.zoo_export import calibration_images

        root = args.data_dir or default_data_dir()
        if os.path.isdir(os.path.join(root, "celeba_identities", "color_arcface112")):
            embedder = export.load_embedder(model) if isinstance(model, str) else export.as_embedder(model)
            representative = calibration_images(root, default_crop(), embedder.input_shape[1:3])
            extra["calibration_images"] = f"{len(representative)} crops of CelebA training identities"
    metadata = {"source_model": os.path.basename(spec), "extra": extra}
    return export.export_model(model, args.format, args.output, quantize=args.quantize, representative=representative,
                               check=not args.no_check, data_dir=args.data_dir, num_images=args.num_images,
                               metadata=metadata)


def run_export(args) -> int:
    """Export, print the parity report; 1 when parity fails."""
    from keras_facemargin import export

    spec = args.model or args.model_arg
    if spec is None or (args.model and args.model_arg):
        raise ValueError("give the model once: kfm export NAME_OR_PATH --format ... (or --model NAME_OR_PATH)")
    if args.format != "tflite" and args.quantize != "float32":
        print(f"kfm export: error: --quantize {args.quantize} applies to --format tflite only", file=sys.stderr)
        return _common.EXIT_USAGE
    if args.output is None:
        stem = os.path.splitext(spec)[0] if spec.endswith(".keras") else spec
        args.output = stem + _SUFFIX.get(args.format, f"_{args.quantize}.tflite")
    try:
        path, report = _export(spec, args, export)
    except export.ParityError as err:
        print(err.report)
        print(f"kfm export: parity check failed: {err}", file=sys.stderr)
        return _common.EXIT_CHECK_FAILED
    result = {"status": "ok", "output": str(path), "metadata": str(export.sidecar_path(path)),
              "format": args.format, "quantize": args.quantize,
              "parity": None if report is None else report.to_dict()}
    if args.json == "-":
        _common.emit(result)
    else:
        print(f"wrote {path} and its metadata {export.sidecar_path(path)} (keep them together)")
        if report is not None:
            print(report)
    if args.json and args.json != "-" and report is not None:
        with open(args.json, "w") as f:
            json.dump(report.to_dict(), f, indent=2)
    return _common.EXIT_OK
