#!/usr/bin/env python
"""Convert an insightface IResNet / MobileFaceNet checkpoint (.onnx, .pth or a training checkpoint)
to Keras weights, checking parity.

Usage::

    python tools/convert_insightface.py w600k_r50.onnx --output w600k_r50.weights.h5
    python tools/convert_insightface.py w600k_mbf.onnx --output w600k_mbf.keras
    python tools/convert_insightface.py ms1mv3_arcface_r50_fp16/backbone.pth \\
        --output arcface_r50_ms1mv3.weights.h5 --reference-onnx ms1mv3_arcface_r50.onnx
    python tools/convert_insightface.py work_dirs/ms1mv3_r50/checkpoint_gpu_0.pt --output r50.weights.h5
    python tools/convert_insightface.py r50_dynamo.onnx --allow-external-data --output r50.keras

The embeddings of the Keras model are compared with onnxruntime on the same images (LFW centre
crops when present under $KFM_DATA_DIR, else SyntheticFaces), fed NCHW to ONNX and NHWC to Keras,
normalised as the model expects: arcface_torch's (x - 127.5) / 127.5 unless the graph scales its
input itself or --normalize says otherwise. The exit status is 1 when the minimum cosine is below
0.9999, 2 when the file does not convert. A `.pth` has an ONNX reference only with
--reference-onnx. The output is a backbone `.weights.h5` (for keras_facemargin.load(name,
weights=...)) or a `.keras` file; the normalisation is recorded in it (read by load() and the
evaluation/export tools) and its sha256 is printed for the registry.
"""

import argparse
import os
import pickle
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def describe(backbone, info):
    """One line naming the converted architecture, e.g. ``IResNet-50`` / ``MobileFaceNet blocks=...``."""
    shape = f"input {backbone.input_shape[1:]}, {backbone.output_shape[-1]}-d"
    if info["arch"] == "mobilefacenet":
        return f"MobileFaceNet blocks={backbone.blocks}, scale={backbone.scale}, {shape}"
    arch = (f"IResNet-{backbone.depth}" if backbone.stage_blocks is None
            else f"IResNet (custom) stage_blocks={backbone.stage_blocks}")
    return f"{arch}, filters={backbone.stage_filters}, {shape}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="insightface IResNet / MobileFaceNet .onnx, .pth or checkpoint_gpu_*.pt")
    parser.add_argument("--output", required=True, help="output .weights.h5 or .keras")
    parser.add_argument("--reference-onnx", default=None, help="ONNX model to compare with (default: the .onnx input)")
    parser.add_argument("--image-size", type=int, default=None, help="input side (default: inferred)")
    parser.add_argument("--normalize", default=None, metavar="127.5|128",
                        help="input std the model expects, (x - 127.5) / STD (default: what the graph does, "
                             "else arcface_torch's 127.5)")
    parser.add_argument("--allow-external-data", action="store_true",
                        help="read ONNX weights stored in external files (model.onnx.data), from the model's folder")
    parser.add_argument("--num-images", type=int, default=32)
    parser.add_argument("--data-dir", default=None, help="folder holding lfw/ (default $KFM_DATA_DIR)")
    args = parser.parse_args(argv)
    if not (args.output.endswith(".keras") or args.output.endswith(".weights.h5")):
        print("ERROR: --output must end with .weights.h5 or .keras", file=sys.stderr)
        return 2

    import numpy as np

    from keras_facemargin.export.parity import parity_images
    from keras_facemargin.pretrained.convert import convert_insightface, onnx_to_state_dict
    from keras_facemargin.pretrained.loader import parse_normalization, sha256_of, write_normalization

    size = (args.image_size, args.image_size) if args.image_size else None
    try:
        override = parse_normalization(args.normalize)
        backbone, info = convert_insightface(args.checkpoint, image_size=size,
                                             allow_external_data=args.allow_external_data, return_info=True)
        reference = args.reference_onnx or (args.checkpoint if args.checkpoint.lower().endswith(".onnx") else None)
        ref_norm = None
        if reference and reference != args.checkpoint:
            ref_norm = onnx_to_state_dict(reference, allow_external_data=args.allow_external_data)[1]["normalization"]
        elif reference and info["normalization_source"] == "graph":
            ref_norm = info["normalization"]
    except (FileNotFoundError, ValueError, pickle.UnpicklingError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    norm = override or info["normalization"]
    how = "--normalize" if override else info["normalization_source"]
    print(f"converted {args.checkpoint}: {describe(backbone, info)}")
    print(f"input normalisation: (x - {norm['mean']:g}) / {norm['std']:g} ({how})")
    for note in info.get("notes", []):
        print(f"note: {note}")
    status = 0
    if reference:
        import onnxruntime as ort

        images, source = parity_images(backbone.input_shape[1:3], args.num_images, args.data_dir)
        pixels = images.astype(np.float32)
        x = ((pixels - norm["mean"]) / norm["std"]).astype(np.float32)
        # a graph that scales its input itself takes the pixels; otherwise the same normalised images
        x_ref = pixels if ref_norm is not None else x
        sess = ort.InferenceSession(reference, providers=["CPUExecutionProvider"])
        name, batch = sess.get_inputs()[0].name, sess.get_inputs()[0].shape[0]
        batch = batch if isinstance(batch, int) and batch > 0 else 8  # a static batch (dynamo) is honoured
        chunks = []
        for i in range(0, len(x), batch):
            part = x_ref[i:i + batch]
            padded = np.concatenate([part, np.repeat(part[-1:], batch - len(part), 0)])
            chunks.append(sess.run(None, {name: np.ascontiguousarray(padded.transpose(0, 3, 1, 2))})[0][:len(part)])
        expected = np.concatenate(chunks)
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
        else:
            backbone.save_weights(args.output)
        write_normalization(args.output, norm)
        print(f"wrote {args.output} (normalization recorded)\nsha256 {sha256_of(args.output)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
