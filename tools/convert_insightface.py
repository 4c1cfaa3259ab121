#!/usr/bin/env python
"""Convert an insightface IResNet checkpoint (.onnx or .pth) to Keras weights, checking parity.

Usage::

    python tools/convert_insightface.py w600k_r50.onnx --output w600k_r50.weights.h5
    python tools/convert_insightface.py ms1mv3_arcface_r50_fp16/backbone.pth \
        --output arcface_r50_ms1mv3.weights.h5 --reference-onnx ms1mv3_arcface_r50.onnx

The embeddings of the Keras model are compared with onnxruntime on the same images (LFW centre
crops when present under $KFM_DATA_DIR, else SyntheticFaces), fed NCHW to ONNX and NHWC to Keras,
normalised with (x - 127.5) / 127.5 like arcface_torch. The exit status is 1 when the minimum
cosine is below 0.9999. A `.pth` has an ONNX reference only with --reference-onnx. The output
is a backbone `.weights.h5` (for keras_facemargin.load(name, weights=...)) or a `.keras` file; its
sha256 is printed for the registry.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="insightface IResNet .onnx or .pth")
    parser.add_argument("--output", required=True, help="output .weights.h5 or .keras")
    parser.add_argument("--reference-onnx", default=None, help="ONNX model to compare with (default: the .onnx input)")
    parser.add_argument("--image-size", type=int, default=None, help="input side (default: inferred)")
    parser.add_argument("--num-images", type=int, default=32)
    parser.add_argument("--data-dir", default=None, help="folder holding lfw/ (default $KFM_DATA_DIR)")
    args = parser.parse_args(argv)

    import numpy as np

    from keras_facemargin.export.parity import parity_images
    from keras_facemargin.pretrained.convert import convert_insightface
    from keras_facemargin.pretrained.loader import sha256_of

    size = (args.image_size, args.image_size) if args.image_size else None
    try:
        backbone = convert_insightface(args.checkpoint, image_size=size)
    except (FileNotFoundError, ValueError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    print(f"converted {args.checkpoint}: IResNet stage_blocks={backbone.stage_blocks or backbone.depth}, "
          f"filters={backbone.stage_filters}, input {backbone.input_shape[1:]}, {backbone.output_shape[-1]}-d")
    reference = args.reference_onnx or (args.checkpoint if args.checkpoint.lower().endswith(".onnx") else None)
    status = 0
    if reference:
        import onnxruntime as ort

        images, source = parity_images(backbone.input_shape[1:3], args.num_images, args.data_dir)
        x = ((images.astype(np.float32) - 127.5) / 127.5).astype(np.float32)
        sess = ort.InferenceSession(reference, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        expected = np.concatenate([sess.run(None, {name: x[i:i + 1].transpose(0, 3, 1, 2)})[0]
                                   for i in range(len(x))])
        got = np.asarray(backbone.predict(x, batch_size=16, verbose=0))
        cos = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
        print(f"parity vs onnxruntime ({reference}) on {source}: min cosine {cos.min():.6f}, "
              f"mean {cos.mean():.6f}, max |diff| {np.abs(got - expected).max():.3g}")
        if not cos.min() >= 0.9999:
            print(f"ERROR: conversion parity below 0.9999 (min cosine {cos.min():.6f}).", file=sys.stderr)
            status = 1
    else:
        print("no ONNX reference given (--reference-onnx): parity not checked")
    if status == 0:
        if args.output.endswith(".keras"):
            backbone.save(args.output)
        elif args.output.endswith(".weights.h5"):
            backbone.save_weights(args.output)
        else:
            print("ERROR: --output must end with .weights.h5 or .keras", file=sys.stderr)
            return 2
        print(f"wrote {args.output}\nsha256 {sha256_of(args.output)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
