"""Face-recognition backbones (insightface-compatible layouts).

The insightface-style backbones map channels-last float images normalised as
`(pixel - 127.5) / 128` to a raw (not L2-normalised) embedding; `DlibResNet` (dlib's face
ResNet) takes RGB pixels 0..255 and normalises them itself, as dlib does.
"""

from keras_facemargin.backbones.dlib_resnet import DlibResNet
from keras_facemargin.backbones.embedding_head import embedding_head
from keras_facemargin.backbones.iresnet import IResNet
from keras_facemargin.backbones.iresnet import IResNet18
from keras_facemargin.backbones.iresnet import IResNet34
from keras_facemargin.backbones.iresnet import IResNet50
from keras_facemargin.backbones.iresnet import IResNet100
from keras_facemargin.backbones.iresnet import IResNet200
from keras_facemargin.backbones.mobilefacenet import MobileFaceNet
from keras_facemargin.backbones.presets import BACKBONE_PRESETS
from keras_facemargin.backbones.presets import get_backbone
from keras_facemargin.backbones.resnet import KerasApplicationBackbone

__all__ = [
    "IResNet",
    "IResNet18",
    "IResNet34",
    "IResNet50",
    "IResNet100",
    "IResNet200",
    "MobileFaceNet",
    "KerasApplicationBackbone",
    "DlibResNet",
    "embedding_head",
    "BACKBONE_PRESETS",
    "get_backbone",
]
