"""`kfm convert CHECKPOINT --output F`: an insightface IResNet / MobileFaceNet checkpoint to Keras, checking parity.

CHECKPOINT is an ``.onnx``, a ``.pth`` or a training checkpoint (``checkpoint_gpu_0.pt``). The
embeddings of the Keras model are compared with onnxruntime on the same images (LFW centre crops
when present under ``$KFM_DATA_DIR``, else SyntheticFaces), fed NCHW to ONNX and NHWC to Keras,
normalised as the model expects: arcface_torch's ``(x - 127.5) / 127.5`` unless the graph scales its
input itself or ``--normalize`` says otherwise. A ``.pth`` has an ONNX reference only with
``--reference-onnx``. The output is a backbone ``.weights.h5`` (for ``kfm verify --model NAME
--weights F`` / ``keras_facemargin.load(name, weights=F)``) or a ``.keras`` file; the normalisation
is recorded in it (read by ``load()``, ``kfm evaluate`` and ``kfm export``) and its sha256 is printed
for the registry.

Example::

    kfm convert w600k_r50.onnx --output w600k_r50.weights.h5
    kfm convert ms1mv3_arcface_r50_fp16/backbone.pth --output arcface_r50_ms1mv3.weights.h5 \\
        --reference-onnx ms1mv3_arcface_r50.onnx
    kfm convert r50_dynamo.onnx --allow-external-data --output r50.keras

Exit status: 0 converted, 1 parity (minimum cosine) below 0.9999, 2 the file does not convert.
"""

from __future__ import annotations

import sys

from keras_facemargin.cli import _common

__all__ = ["register", "run_convert", "describe"]


def register(sub) -> None:
    """Add ``convert`` to the ``kfm`` sub-parsers."""
    p = _common.add_parser(sub, "convert", __doc__, [_common.common_options()])
    p.add_argument("checkpoint", help="insightface IResNet / MobileFaceNet .onnx, .pth or checkpoint_gpu_*.pt")
    p.add_argument("--output", required=True, help="output .weights.h5 or .keras")
    p.add_argument("--reference-onnx", default=None, help="ONNX model to compare with (default: the .onnx input)")
    p.add_argument("--image-size", type=int, default=None, help="input side (default: inferred)")
    p.add_argument("--normalize", default=None, metavar="127.5|128",
                   help="input std the model expects, (x - 127.5) / STD (default: what the graph does, "
                        "else arcface_torch's 127.5)")
    p.add_argument("--allow-external-data", action="store_true",
                   help="read ONNX weights stored in external files (model.onnx.data), from the model's folder")
    p.add_argument("--num-images", type=int, default=32, help="images in the parity check")
    p.add_argument("--data-dir", default=None, help="folder holding lfw/ (default $KFM_DATA_DIR)")
    p.set_defaults(func=run_convert)


def describe(backbone, info):
    """One line naming the converted architecture, e.g. ``IResNet-50`` / ``MobileFaceNet blocks=...``."""
    shape = f"input {backbone.input_shape[1:]}, {backbone.output_shape[-1]}-d"
    if info["arch"] == "mobilefacenet":
        return f"MobileFaceNet blocks={backbone.blocks}, scale={backbone.scale}, {shape}"
    arch = (f"IResNet-{backbone.depth}" if backbone.stage_blocks is None
            else f"IResNet (custom) stage_blocks={backbone.stage_blocks}")
    return f"{arch}, filters={backbone.stage_filters}, {shape}"


def _reference_embeddings(reference, x):
    """onnxruntime's embeddings of ``x`` (NHWC, fed NCHW) (a static batch, as dynamo exports have, is honoured)."""
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(reference, providers=["CPUExecutionProvider"])
    name, batch = sess.get_inputs()[0].name, sess.get_inputs()[0].shape[0]
    batch = batch if isinstance(batch, int) and batch > 0 else 8
    chunks = []
    for i in range(0, len(x), batch):
        part = x[i:i + batch]
        padded = np.concatenate([part, np.repeat(part[-1:], batch - len(part), 0)])
        chunks.append(sess.run(None, {name: np.ascontiguousarray(padded.transpose(0, 3, 1, 2))})[0][:len(part)])
    return np.concatenate(chunks)


def run_convert(args) -> int:
    """Convert, check parity against onnxruntime, write the output."""
    import numpy as np

    from keras_facemargin.convert.insightface import convert_insightface
    from keras_facemargin.convert.insightface_onnx import onnx_to_state_dict
    from keras_facemargin.export.parity import parity_images
    from keras_facemargin.pretrained.loader import parse_normalization, sha256_of, write_normalization

    if not (args.output.endswith(".keras") or args.output.endswith(".weights.h5")):
        raise ValueError("--output must end with .weights.h5 or .keras")
    size = (args.image_size, args.image_size) if args.image_size else None
    override = parse_normalization(args.normalize)
    backbone, info = convert_insightface(args.checkpoint, image_size=size,
                                         allow_external_data=args.allow_external_data, return_info=True)
    reference = args.reference_onnx or (args.checkpoint if args.checkpoint.lower().endswith(".onnx") else None)
    ref_norm = None
    if reference and reference != args.checkpoint:
        ref_norm = onnx_to_state_dict(reference, allow_external_data=args.allow_external_data)[1]["normalization"]
    elif reference and info["normalization_source"] == "graph":
        ref_norm = info["normalization"]
    norm = override or info["normalization"]
    how = "--normalize" if override else info["normalization_source"]
    print(f"converted {args.checkpoint}: {describe(backbone, info)}")
    print(f"input normalisation: (x - {norm['mean']:g}) / {norm['std']:g} ({how})")
    for note in info.get("notes", []):
        print(f"note: {note}")
    status = _common.EXIT_OK
    if reference:
        images, source = parity_images(backbone.input_shape[1:3], args.num_images, args.data_dir)
        pixels = images.astype(np.float32)
        x = ((pixels - norm["mean"]) / norm["std"]).astype(np.float32)
        # a graph that scales its input itself takes the pixels; otherwise the same normalised images
        expected = _reference_embeddings(reference, pixels if ref_norm is not None else x)
        got = np.asarray(backbone.predict(x, batch_size=16, verbose=0))
        cos = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
        print(f"parity vs onnxruntime ({reference}) on {source}: min cosine {cos.min():.6f}, "
              f"mean {cos.mean():.6f}, max |diff| {np.abs(got - expected).max():.3g}")
        if not cos.min() >= 0.9999:
            print(f"kfm convert: conversion parity below 0.9999 (min cosine {cos.min():.6f}).", file=sys.stderr)
            status = _common.EXIT_CHECK_FAILED
    else:
        print("no ONNX reference given (--reference-onnx): parity not checked")
    if status == _common.EXIT_OK:
        if args.output.endswith(".keras"):
            backbone.save(args.output)
        else:
            backbone.save_weights(args.output)
        write_normalization(args.output, norm)
        print(f"wrote {args.output} (normalization recorded)\nsha256 {sha256_of(args.output)}")
    return status
