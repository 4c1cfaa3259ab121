"""Deployment: SavedModel / TFLite / ONNX export of the embedding model, with parity reports.

Input contracts of the exported models:

* SavedModel ``serving_default``: uint8 ``(batch, H, W, 3)`` RGB, normalised inside;
  ``serving_float``: float32 already normalised with ``(x - 127.5) / 128``.
* TFLite (every quantisation) and ONNX: float32 normalised ``(batch, H, W, 3)``.

All return L2-normalised float32 embeddings (``{"embeddings": ...}`` for SavedModel).

Every export records what running it needs (input size and normalisation, crop geometry, embedding
size, flip-sum, source model and thresholds, version, quantisation, sha256) in a JSON file beside
it (:mod:`keras_facemargin.export.metadata`); ``FaceVerifier(model="m.tflite")`` reads it
(:func:`keras_facemargin.export.runtime.open_exported`).

Example::

    from keras_facemargin.export import export_model
    path, report = export_model(model, "onnx", "r50.onnx")   # raises ParityError below threshold
    print(report)
"""

from __future__ import annotations

import os
from pathlib import Path

from keras_facemargin.export.onnx import ONNXEmbedder, export_onnx
from keras_facemargin.export.parity import (THRESHOLDS, ParityError, ParityReport, lfw_pair_subset,
                                            parity_images, parity_report)
from keras_facemargin.export.savedmodel import (SavedModelEmbedder, as_embedder, export_savedmodel,
                                                load_embedder)
from keras_facemargin.export.tflite import QUANTIZATIONS, TFLiteEmbedder, export_tflite
from keras_facemargin.export.metadata import ExportMetadataError, read_metadata, sidecar_path
from keras_facemargin.export.runtime import open_exported

FORMATS = ("savedmodel", "tflite", "onnx")

__all__ = ["FORMATS", "QUANTIZATIONS", "THRESHOLDS", "ExportMetadataError", "ParityError", "ParityReport",
           "ONNXEmbedder", "open_exported", "read_metadata", "sidecar_path",
           "SavedModelEmbedder", "TFLiteEmbedder", "as_embedder", "export_model", "export_onnx",
           "export_savedmodel", "export_tflite", "lfw_pair_subset", "load_embedder", "parity_images",
           "parity_report"]


def export_model(model, format, output, quantize="float32", representative=None, check=True,
                 data_dir=None, num_images=64, verify_pairs_per_fold=None, latency_repeats=20, metadata=None):
    """Export the embedding model, check parity with Keras, and record its metadata beside it.

    The metadata (`keras_facemargin.export.metadata`: input size and normalisation, crop geometry,
    embedding size, flip-sum, source model, thresholds, package version, quantisation, sha256) is
    written to ``OUTPUT.json`` (``OUTPUT/keras_facemargin.json`` for a SavedModel; for ONNX also
    inside the file) once the parity check has passed, so that ``FaceVerifier(model=OUTPUT)`` runs it.

    Args:
        model: a `FaceRecognizer`, embedder, backbone, or a path to a `.keras` file.
        format: `"savedmodel"`, `"tflite"` or `"onnx"`.
        output: output directory (SavedModel) or file (`.tflite`, `.onnx`).
        quantize: TFLite only: `"float32"`, `"float16"`, `"dynamic"` or `"int8"`.
        representative: TFLite int8 calibration images: uint8 array, folder, or `None`
            (`SyntheticFaces`; pass real face crops of *training* identities for a better int8
            model, e.g. `keras_facemargin.inference.zoo_export.calibration_images`; never test images).
        check: run the parity report and raise `ParityError` below `THRESHOLDS`.
        data_dir: folder holding `lfw/` (default `$KFM_DATA_DIR` or `../shared/data`), used for
            the parity report only.
        num_images: images in the parity check.
        verify_pairs_per_fold: LFW pairs per fold for the verification-accuracy change (default:
            60 for quantised TFLite when LFW is present, otherwise none; 0 disables).
        latency_repeats: timed batch-1 runs per runtime.
        metadata: fields of the record (`build_metadata` arguments: ``source_model``,
            ``normalization`` the exported input expects (default the package's
            ``(x - 127.5) / 128``), ``crop`` (default the ArcFace 112 template), ``thresholds``,
            ``thresholds_source``, ``flip``, ``extra``).

    Returns:
        `(path, report)`; `report` is a `ParityReport` or `None` when `check=False`.

    Example::

        path, report = export_model("model.keras", "tflite", "model_int8.tflite", quantize="int8",
                                    representative=calib_uint8)
    """
    from keras_facemargin.export.metadata import SAVEDMODEL_SIDECAR, build_metadata, write_metadata

    source = None
    if isinstance(model, (str, Path)):
        source = Path(model).name
        embedder = load_embedder(model)
    else:
        embedder = as_embedder(model)
    fmt = str(format).lower()
    if fmt not in FORMATS:
        raise ValueError(f"`format` must be one of {FORMATS}, got {format!r}.")
    if fmt != "tflite" and quantize not in (None, "float32"):
        raise ValueError(f"`quantize={quantize!r}` applies to TFLite only (format={fmt!r}).")
    fields = dict(metadata or {})
    unknown = set(fields) - {"source_model", "normalization", "crop", "thresholds", "thresholds_source", "flip",
                             "extra"}
    if unknown:
        raise ValueError(f"`metadata` takes source_model, normalization, crop, thresholds, thresholds_source, flip "
                         f"and extra; got {sorted(unknown)}.")
    fields.setdefault("source_model", source or getattr(embedder, "name", None))
    extra = dict(fields.pop("extra", None) or {})
    h, w = embedder.input_shape[1:3]
    stale = Path(output) / SAVEDMODEL_SIDECAR if fmt == "savedmodel" else Path(str(output) + ".json")
    if stale.is_file():  # a previous export's record must not describe this one
        stale.unlink()
    if fmt == "savedmodel":
        path, route = export_savedmodel(embedder, output), "savedmodel"
        runner = SavedModelEmbedder if check else None
    elif fmt == "onnx":
        path, route = export_onnx(embedder, output), "onnx"
        runner = ONNXEmbedder if check else None
    else:
        if quantize == "int8":
            extra.setdefault("calibration_images", _describe_representative(representative))
        path, route = export_tflite(embedder, output, quantize, representative), quantize
        runner = TFLiteEmbedder if check else None
    report = None
    if check:
        images, source = parity_images((h, w), num_images, data_dir)
        pairs = None
        if verify_pairs_per_fold is None:
            verify_pairs_per_fold = 60 if route in ("dynamic", "int8") else 0
        if verify_pairs_per_fold and h == w:
            pairs = lfw_pair_subset(data_dir, verify_pairs_per_fold, h)
        report = parity_report(embedder, runner(path), route, path, images, source, pairs=pairs,
                               latency_repeats=latency_repeats)
        report.raise_if_failed()
    parity = None if report is None else {
        "route": report.route, "min_cosine": report.min_cosine, "mean_cosine": report.mean_cosine,
        "images_source": report.images_source, "verification": report.verification or None}
    record = build_metadata(fmt, quantize if fmt == "tflite" else "float32", (h, w),
                            int(embedder.output_shape[-1]), parity=parity, extra=extra, **fields)
    write_metadata(path, record)
    return path, report


def _describe_representative(representative):
    import numpy as np

    if representative is None:
        return "SyntheticFaces (generated)"
    if isinstance(representative, (str, os.PathLike)):
        return f"images under {representative}"
    return f"{len(np.asarray(representative))} images given by the caller"
