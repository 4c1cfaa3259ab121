"""Deployment: SavedModel / TFLite / ONNX export of the embedding model, with parity reports.

Input contracts of the exported models:

* SavedModel ``serving_default``: uint8 ``(batch, H, W, 3)`` RGB, normalised inside;
  ``serving_float``: float32 already normalised with ``(x - 127.5) / 128``.
* TFLite (every quantisation) and ONNX: float32 normalised ``(batch, H, W, 3)``.

All return L2-normalised float32 embeddings (``{"embeddings": ...}`` for SavedModel).

Example::

    from keras_facemargin.export import export_model
    path, report = export_model(model, "onnx", "r50.onnx")   # raises ParityError below threshold
    print(report)
"""

from __future__ import annotations

from pathlib import Path

from keras_facemargin.export.onnx import ONNXEmbedder, export_onnx
from keras_facemargin.export.parity import (THRESHOLDS, ParityError, ParityReport, lfw_pair_subset,
                                            parity_images, parity_report)
from keras_facemargin.export.savedmodel import (SavedModelEmbedder, as_embedder, export_savedmodel,
                                                load_embedder)
from keras_facemargin.export.tflite import QUANTIZATIONS, TFLiteEmbedder, export_tflite

FORMATS = ("savedmodel", "tflite", "onnx")

__all__ = ["FORMATS", "QUANTIZATIONS", "THRESHOLDS", "ParityError", "ParityReport", "ONNXEmbedder",
           "SavedModelEmbedder", "TFLiteEmbedder", "as_embedder", "export_model", "export_onnx",
           "export_savedmodel", "export_tflite", "lfw_pair_subset", "load_embedder", "parity_images",
           "parity_report"]


def export_model(model, format, output, quantize="float32", representative=None, check=True,
                 data_dir=None, num_images=64, verify_pairs_per_fold=None, latency_repeats=20):
    """Export the embedding model and check parity with Keras.

    Args:
        model: a `FaceRecognizer`, embedder, backbone, or a path to a `.keras` file.
        format: `"savedmodel"`, `"tflite"` or `"onnx"`.
        output: output directory (SavedModel) or file (`.tflite`, `.onnx`).
        quantize: TFLite only: `"float32"`, `"float16"`, `"dynamic"` or `"int8"`.
        representative: TFLite int8 calibration images: uint8 array, folder, or `None`
            (LFW images when present under `data_dir`, else `SyntheticFaces`).
        check: run the parity report and raise `ParityError` below `THRESHOLDS`.
        data_dir: folder holding `lfw/` (default `$KFM_DATA_DIR` or `../shared/data`).
        num_images: images in the parity check.
        verify_pairs_per_fold: LFW pairs per fold for the verification-accuracy change (default:
            60 for quantised TFLite when LFW is present, otherwise none; 0 disables).
        latency_repeats: timed batch-1 runs per runtime.

    Returns:
        `(path, report)`; `report` is a `ParityReport` or `None` when `check=False`.

    Example::

        path, report = export_model("model.keras", "tflite", "model_int8.tflite", quantize="int8")
    """
    if isinstance(model, (str, Path)):
        embedder = load_embedder(model)
    else:
        embedder = as_embedder(model)
    fmt = str(format).lower()
    if fmt not in FORMATS:
        raise ValueError(f"`format` must be one of {FORMATS}, got {format!r}.")
    if fmt != "tflite" and quantize not in (None, "float32"):
        raise ValueError(f"`quantize={quantize!r}` applies to TFLite only (format={fmt!r}).")
    h, w = embedder.input_shape[1:3]
    if fmt == "savedmodel":
        path, route = export_savedmodel(embedder, output), "savedmodel"
        runner = SavedModelEmbedder if check else None
    elif fmt == "onnx":
        path, route = export_onnx(embedder, output), "onnx"
        runner = ONNXEmbedder if check else None
    else:
        if quantize == "int8" and representative is None:
            images, source = parity_images((h, w), 200, data_dir, seed=1)
            if source.startswith("LFW"):
                representative = images
        path, route = export_tflite(embedder, output, quantize, representative), quantize
        runner = TFLiteEmbedder if check else None
    if not check:
        return path, None
    images, source = parity_images((h, w), num_images, data_dir)
    pairs = None
    if verify_pairs_per_fold is None:
        verify_pairs_per_fold = 60 if route in ("dynamic", "int8") else 0
    if verify_pairs_per_fold and h == w:
        pairs = lfw_pair_subset(data_dir, verify_pairs_per_fold, h)
    report = parity_report(embedder, runner(path), route, path, images, source, pairs=pairs,
                           latency_repeats=latency_repeats)
    report.raise_if_failed()
    return path, report
