#!/usr/bin/env python
"""Export a face model's embedder to SavedModel / TFLite / ONNX and check parity with Keras.

Usage::

    python tools/export.py --model runs/demo/model.keras --format tflite --quantize int8 \
        --representative ../shared/data/lfw/images --output exported/model_int8.tflite

`--model` takes a `.keras` FaceRecognizer (its `.embedder` is exported), embedder or backbone.
The parity report (minimum cosine, max |diff|, size, latency; LFW verification change for
quantised TFLite) is printed; the exit status is 1 when a threshold is missed
(float32/float16/SavedModel/ONNX: cosine >= 0.9999; dynamic/int8: >= 0.99).

Exported models take the package's ``(x - 127.5) / 128`` inputs. A model trained with another
normalisation (``--normalize STD``, or what the ``.keras`` file records, e.g. arcface_torch's
``/ 127.5`` for a converted insightface model) is exported with an ``input_normalization`` layer
in front that converts exactly.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a .keras file (FaceRecognizer, embedder or backbone)")
    parser.add_argument("--format", required=True, choices=["savedmodel", "tflite", "onnx"])
    parser.add_argument("--quantize", default="float32", choices=["float32", "float16", "dynamic", "int8"],
                        help="TFLite only (default float32)")
    parser.add_argument("--representative", default=None,
                        help="folder of face images to calibrate int8 (default: LFW if present, else synthetic)")
    parser.add_argument("--output", default=None, help="output path (default next to --model)")
    parser.add_argument("--data-dir", default=None, help="folder holding lfw/ (default $KFM_DATA_DIR or ../shared/data)")
    parser.add_argument("--num-images", type=int, default=64, help="images in the parity check")
    parser.add_argument("--no-check", action="store_true", help="skip the parity report")
    parser.add_argument("--json", default=None, help="also write the parity report to this JSON file")
    parser.add_argument("--normalize", default=None, metavar="127.5|128",
                        help="input std the model expects, (x - 127.5) / STD (default: recorded in the file, else 128)")
    args = parser.parse_args(argv)

    from keras_facemargin.export import ParityError, export_model

    if args.format != "tflite" and args.quantize != "float32":
        parser.error(f"--quantize {args.quantize} applies to --format tflite only")
    if args.output is None:
        stem = os.path.splitext(args.model)[0]
        suffix = {"savedmodel": "_savedmodel", "onnx": ".onnx", "tflite": f"_{args.quantize}.tflite"}
        args.output = stem + suffix[args.format]
    try:
        from keras_facemargin.pretrained.loader import (PACKAGE_NORMALIZATION, parse_normalization,
                                                        read_normalization, with_package_normalization)

        norm = parse_normalization(args.normalize) or read_normalization(args.model)
        model = args.model
        if norm is not None and norm != PACKAGE_NORMALIZATION:
            from keras_facemargin.export.savedmodel import load_embedder

            model = with_package_normalization(load_embedder(args.model), norm)
            print(f"model expects (x - {norm['mean']:g}) / {norm['std']:g}: exported with an input_normalization "
                  "layer, taking (x - 127.5) / 128", file=sys.stderr)
        path, report = export_model(model, args.format, args.output, quantize=args.quantize,
                                    representative=args.representative, check=not args.no_check,
                                    data_dir=args.data_dir, num_images=args.num_images)
    except ParityError as err:
        print(err.report)
        print(f"ERROR: {err}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    if report is not None:
        print(report)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report.to_dict(), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
