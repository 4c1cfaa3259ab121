"""keras_facemargin: margin-based softmax face recognition for Keras 3.

Public API::

    import keras_facemargin as kfm
    kfm.layers.ArcMarginDense, kfm.layers.KappaMarginDense, ...
    kfm.backbones.IResNet, kfm.backbones.MobileFaceNet, kfm.backbones.KerasApplicationBackbone
    kfm.FaceRecognizer, kfm.callbacks.KappaUpdater
    kfm.data (synthetic faces, RecordIO / folder / TFRecord pipelines, alignment, LFW, CelebA)
    kfm.evaluation (pair verification, .bin sets, IJB-B/C, MegaFace)
    kfm.training (the paper recipe, resumable and multi-worker training)
    kfm.export (SavedModel / TFLite / ONNX with parity checks)
    kfm.load(name), kfm.list_models(), kfm.model_info(name)
    kfm.FaceVerifier (photo -> verdict; face_verifier.calibrate_thresholds, face_gallery.Gallery)
"""

__version__ = "0.1.0"

import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from keras_facemargin import backbones  # noqa: E402,F401
from keras_facemargin import callbacks  # noqa: E402,F401
from keras_facemargin import data  # noqa: E402,F401
from keras_facemargin import evaluation  # noqa: E402,F401
from keras_facemargin import export  # noqa: E402,F401
from keras_facemargin import layers  # noqa: E402,F401
from keras_facemargin import training  # noqa: E402,F401
from keras_facemargin.models import FaceRecognizer  # noqa: E402,F401
from keras_facemargin.pretrained import list_models, load, model_info  # noqa: E402,F401
from keras_facemargin.inference.verifier import FaceVerifier  # noqa: E402,F401
