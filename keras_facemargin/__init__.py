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
``backbones`` are imported at once (so that ``.keras`` files naming them reload under
``safe_mode=True``), every other subpackage on first use. ``docs/architecture.md`` maps the layout.
"""

import importlib as _importlib

__version__ = "0.2.0"

from keras_facemargin import backbones  # noqa: E402,F401  (registers the backbones' serialisable classes)
from keras_facemargin import layers  # noqa: E402,F401  (registers the heads)

_SUBPACKAGES = ("callbacks", "cli", "convert", "data", "errors", "evaluation", "export", "inference", "models",
                "pretrained", "training", "utils")
_ATTRIBUTES = {
    "FaceRecognizer": "keras_facemargin.models",
    "FaceVerifier": "keras_facemargin.inference.verifier",
    "load": "keras_facemargin.pretrained",
    "list_models": "keras_facemargin.pretrained",
    "model_info": "keras_facemargin.pretrained",
}

__all__ = ["__version__", "backbones", "layers", *_SUBPACKAGES, *_ATTRIBUTES]


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
