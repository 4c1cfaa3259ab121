"""Pretrained model zoo: `load`, `list_models` and the registry of named models.

Weights of other frameworks (insightface ``.onnx`` / ``.pth``, dlib ``.dat``) are converted by
:mod:`keras_facemargin.convert`, which `load` calls.

Example::

    import keras_facemargin as kfm
    kfm.list_models()
    embedder = kfm.load("arcface_r50", weights="backbone.pth")   # insightface checkpoint, converted
"""

from keras_facemargin.pretrained.loader import (PretrainedWeightsError, expected_weights_path, list_models,
                                                load, sha256_of)
from keras_facemargin.pretrained.registry import MODELS, get_model_info

#: ``keras_facemargin.model_info(name)``: the registry entry (head, input size, crop geometry,
#: normalisation, thresholds, reported results, licence, sha256).
model_info = get_model_info

__all__ = ["MODELS", "PretrainedWeightsError", "expected_weights_path", "get_model_info", "list_models",
           "load", "model_info", "sha256_of"]
