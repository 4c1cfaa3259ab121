"""`FaceVerifier`'s ``model`` argument resolved: what to load, and the defaults that come with it.

A model is one of:

* a zoo name (``keras_facemargin.list_models()``): loaded with ``keras_facemargin.load``; its
  registry entry gives the normalisation, crop geometry, input size and calibrated thresholds;
* a ``.keras`` file or a Keras model (embedder, backbone or FaceRecognizer): the package's
  normalisation and the ArcFace crop unless told otherwise, no thresholds;
* an exported model, a ``.tflite`` / ``.onnx`` file or a SavedModel directory: run with its
  runtime (:func:`keras_facemargin.export.runtime.open_exported`); the metadata written beside it by
  the export (``m.tflite.json``, ...) gives the normalisation, crop, input size and the thresholds
  of the zoo model it came from.

`resolve_model` reads only metadata (cheap); `ModelSource.load` loads the weights, so a missing
threshold is reported before any weights are loaded.

Example::

    from keras_facemargin.inference.model_source import resolve_model, resolve_threshold
    source = resolve_model("m.tflite")
    threshold, origin, far = resolve_threshold(source, None, None)
    embedder, image_size, dim = source.load()
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from keras_facemargin.errors import ConfigurationError

__all__ = ["ModelSource", "resolve_model", "resolve_threshold"]

_DEFAULT_SIZE = 112


@dataclass
class ModelSource:
    """A resolved ``model`` argument (see the module docstring).

    Attributes:
        name: the zoo name, or the file / directory name, or the Keras model's name.
        kind: ``"registry"``, ``"keras_file"``, ``"keras_model"`` or ``"exported"``.
        info: the registry entry (zoo models), else None.
        metadata: the export metadata (exported models), else None.
        thresholds: calibrated ``{"accuracy"|far_key: t}`` (registry or export metadata), or None.
        thresholds_origin: ``"registry:NAME"`` or ``"export:FILE"``, or None.
        normalization, crop: the defaults that come with the model (None: the package's / ArcFace's).
        path: the file the model comes from, or None.
    """

    name: str
    kind: str
    info: Optional[dict] = None
    metadata: Optional[dict] = None
    thresholds: Optional[dict] = None
    thresholds_origin: Optional[str] = None
    normalization: Optional[dict] = None
    crop: Optional[dict] = None
    path: Optional[str] = None
    _load: Callable = field(default=None, repr=False)

    def load(self):
        """``(embedder, (H, W), embedding_dim)``: a Keras embedder or an exported model's runtime callable."""
        return self._load()


def _registry():
    from keras_facemargin.pretrained import registry

    return registry


def _keras_loaded(model, info):
    from keras_facemargin.export.savedmodel import as_embedder

    embedder = as_embedder(model)
    shape = embedder.input_shape
    h, w = shape[1], shape[2]
    if h is None or w is None:
        h, w = tuple(info["input_size"]) if info and info.get("input_size") else (_DEFAULT_SIZE, _DEFAULT_SIZE)
    return embedder, (int(h), int(w)), int(embedder.output_shape[-1])


def _from_registry(name, weights):
    from keras_facemargin.pretrained import loader

    info = _registry().get_model_info(name)
    return ModelSource(name=name, kind="registry", info=info, thresholds=info.get("thresholds") or None,
                       thresholds_origin=f"registry:{name}", normalization=info.get("normalization") or None,
                       crop=info.get("crop"), _load=lambda: _keras_loaded(loader.load(name, weights=weights), info))


def _from_export(path, weights):
    from keras_facemargin.export.metadata import read_metadata
    from keras_facemargin.export.runtime import open_exported

    if weights is not None:
        raise ConfigurationError("no_model", "`weights` applies to zoo names only; an exported model holds its "
                                 "weights", str(path))
    if not Path(path).exists():
        raise ConfigurationError("no_model", "exported model not found", str(path))
    meta = read_metadata(path)
    name = Path(path).name

    def load():
        embedder, checked = open_exported(path)
        if checked.get("sha256") != meta.get("sha256"):  # the file changed since it was resolved
            from keras_facemargin.errors import ExportMetadataError

            raise ExportMetadataError("metadata_mismatch", "the exported model changed while it was being loaded",
                                      str(path))
        return embedder, tuple(meta["input"]["size"]), int(meta["embedding_dim"])

    return ModelSource(name=name, kind="exported", metadata=meta, thresholds=meta.get("thresholds") or None,
                       thresholds_origin=f"export:{name}", normalization=meta["input"]["normalization"],
                       crop=meta["crop"], path=str(path), _load=load)


def resolve_model(model, weights=None):
    """Resolve `model` (a zoo name, ``.keras`` path, Keras model, exported model path or None) to a `ModelSource`.

    Args:
        model: see the module docstring; None is ``keras_facemargin.pretrained.registry.DEFAULT_MODEL``.
        weights: a local weights file for a zoo name.

    Raises:
        ConfigurationError: ``no_model`` (unknown name, missing file, wrong file type).
        ExportMetadataError: an exported model whose metadata is missing, invalid or of another file.

    Example::

        resolve_model("arcface_celeba_mbf").thresholds["accuracy"]
    """
    import keras

    from keras_facemargin.export.metadata import exported_format

    registry = _registry()
    if model is None:
        model = registry.DEFAULT_MODEL
        if model is None:
            raise ConfigurationError(
                "no_model", "No model given and no default model ships with this version "
                "(keras_facemargin.pretrained.registry.DEFAULT_MODEL is None). Pass model=NAME (one of "
                f"{sorted(registry.MODELS)}, with weights=PATH if not cached), a .keras path, an exported model "
                "(.tflite, .onnx, SavedModel directory) or a Keras embedder.")
    if isinstance(model, (str, os.PathLike)):
        text = str(model)
        if isinstance(model, str) and model.lower() in registry.MODELS:
            return _from_registry(model.lower(), weights)
        if exported_format(model) is not None:
            return _from_export(model, weights)
        if text.endswith(".keras") or Path(model).exists():
            if not Path(model).is_file() or not text.endswith(".keras"):
                raise ConfigurationError(
                    "no_model", "expected a .keras model file, a .tflite / .onnx file or a SavedModel directory"
                    + ("" if Path(model).exists() else ", not found")
                    + " (for a backbone .weights.h5 / insightface .pth use model=NAME, weights=PATH)", text)
            from keras_facemargin.export.savedmodel import load_embedder

            return ModelSource(name=Path(model).name, kind="keras_file", path=text,
                               _load=lambda: _keras_loaded(load_embedder(model), None))
        raise ConfigurationError("no_model", f"Unknown model {text!r}: not a registry name ({sorted(registry.MODELS)}) "
                                 "nor an existing .keras, .tflite or .onnx file or SavedModel directory.")
    if isinstance(model, keras.Model):
        return ModelSource(name=model.name, kind="keras_model", _load=lambda: _keras_loaded(model, None))
    raise ConfigurationError("no_model", "`model` must be a registry name, a .keras path, an exported model path "
                             f"(.tflite, .onnx, SavedModel directory), a Keras model or None; got {type(model).__name__}.")


def _how_to_calibrate(source):
    model = repr(source.name) if source.kind == "registry" else "model"
    return ("Pass threshold=T, or calibrate on held-out (non-LFW) identities: `from keras_facemargin.inference."
            f"calibrate import calibrate_verifier; calibrate_verifier(FaceVerifier({model}, threshold=0.5), "
            "KFM_DATA_DIR)['thresholds']`" + (" and store the dict as the registry entry's 'thresholds' field."
                                              if source.kind == "registry" else "."))


def _calibrated(source, far):
    thresholds = source.thresholds
    where = ("in the registry (field 'thresholds')" if source.kind == "registry"
             else f"in its export metadata ({source.name} metadata field 'thresholds'; export a zoo model to record "
                  "them)")
    how = _how_to_calibrate(source)
    if not thresholds:
        raise ConfigurationError("no_threshold", f"Model {source.name!r} has no calibrated thresholds {where}. {how}")
    if far is None:
        if "accuracy" in thresholds:
            return float(thresholds["accuracy"])
        raise ConfigurationError("no_threshold", f"Model {source.name!r} has no 'accuracy' operating point; pass far= "
                                 f"one of {sorted(k for k in thresholds if k != 'accuracy')}, or: {how}")
    for key, value in thresholds.items():
        if key != "accuracy" and math.isclose(float(key), far, rel_tol=1e-9):
            return float(value)
    raise ConfigurationError("no_threshold", f"Model {source.name!r} has no threshold for far={far!r}; it has FARs "
                             f"{sorted((k for k in thresholds if k != 'accuracy'), key=float)}. Pick one of them with "
                             f"far=, or: {how}")


def resolve_threshold(source, threshold, far):
    """``(threshold, threshold_source, threshold_far)`` for a `ModelSource`.

    An explicit `threshold` wins (``"explicit"``); else the calibrated one of the registry entry or
    the export metadata, at the best-accuracy point or at `far` (a float, already checked).

    Raises:
        ConfigurationError: ``bad_threshold`` (not a cosine), ``no_threshold`` (none calibrated, or
            none at `far`; the message tells how to calibrate).

    Example::

        resolve_threshold(resolve_model("arcface_celeba_mbf"), None, 1e-3)
    """
    if threshold is not None:
        try:
            t = float(threshold)
        except (TypeError, ValueError):
            t = float("nan")
        if not (-1.0 <= t <= 1.0):
            raise ConfigurationError("bad_threshold", f"`threshold` must be a cosine in [-1, 1], got {threshold!r}.")
        return t, "explicit", None
    if source.kind in ("registry", "exported"):
        t = _calibrated(source, far)
        point = "accuracy" if far is None else f"far={float(far)!r}"  # verifier.far_key
        return t, f"{source.thresholds_origin}:{point}", far
    raise ConfigurationError(
        "no_threshold", f"No threshold for model {source.name!r}: only registry models and models exported from them "
        "carry calibrated thresholds. Pass threshold=T, or calibrate on held-out (non-LFW) identities: `from "
        "keras_facemargin.inference.calibrate import calibrate_verifier; calibrate_verifier(FaceVerifier(model, "
        "threshold=0.5), KFM_DATA_DIR)['thresholds']['accuracy']`.")
