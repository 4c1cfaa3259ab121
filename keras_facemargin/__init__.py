"""keras_facemargin: margin-based softmax face recognition for Keras 3.

Public API::

    import keras_facemargin as kfm
    kfm.load(name), kfm.list_models(), kfm.model_info(name)   # the model zoo
    kfm.FaceVerifier                                          # photo -> verdict, identify, galleries
    kfm.layers.ArcMarginDense, kfm.layers.KappaMarginDense, ...
    kfm.backbones.IResNet, kfm.backbones.MobileFaceNet, kfm.backbones.DlibResNet, ...
    kfm.FaceRecognizer, kfm.callbacks.KappaUpdater
    kfm.data, kfm.evaluation, kfm.training, kfm.export, kfm.inference, kfm.errors

Importing the package sets no backend and imports no TensorFlow of its own: ``layers`` and
``backbones`` and ``models`` are imported at once (so that ``.keras`` files naming their classes
reload under ``safe_mode=True``), every other subpackage on first use. TensorFlow's start-up banner
is filtered out of stderr (:mod:`keras_facemargin.utils.tf_logs`). ``docs/architecture.md`` maps the layout.
"""

import importlib as _importlib

__version__ = "0.3.0"

from keras_facemargin.utils.tf_logs import import_keras_filtered as _import_keras_filtered

_import_keras_filtered()  # TensorFlow's start-up banner stays out of stderr (KFM_TF_LOGS=1 keeps it)

from keras_facemargin import backbones  # noqa: E402,F401  (registers the backbones' serialisable classes)
from keras_facemargin import layers  # noqa: E402,F401  (registers the heads)
from keras_facemargin import models  # noqa: E402,F401  (registers FaceRecognizer)

_SUBPACKAGES = ("callbacks", "cli", "convert", "data", "errors", "evaluation", "export", "inference",
                "pretrained", "training", "utils")
_ATTRIBUTES = {
    "FaceVerifier": "keras_facemargin.inference.verifier",
    "load": "keras_facemargin.pretrained",
    "list_models": "keras_facemargin.pretrained",
    "model_info": "keras_facemargin.pretrained",
}

from keras_facemargin.models import FaceRecognizer  # noqa: E402,F401

__all__ = ["__version__", "backbones", "layers", "models", "FaceRecognizer", *_SUBPACKAGES, *_ATTRIBUTES]


def __getattr__(name):
    """Import a subpackage or a public attribute on first use (PEP 562)."""
    if name in _SUBPACKAGES:
        return _importlib.import_module(f"keras_facemargin.{name}")
    if name in _ATTRIBUTES:
        value = getattr(_importlib.import_module(_ATTRIBUTES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'keras_facemargin' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
