"""Margin-based softmax heads. Each takes `[embeddings, labels]` and returns `scale * logits`.

Every head follows one protocol (`base.FaceHead`); `registry.build_head` builds any of them
by name, and `zoo` lists them (one `register_head` line per head).
"""

from keras_facemargin.layers import kappa_math, zoo  # noqa: F401  (zoo fills the head registry)
from keras_facemargin.layers.arcface import ArcMarginDense
from keras_facemargin.layers.combined import CombinedMarginDense
from keras_facemargin.layers.cosface import CosMarginDense
from keras_facemargin.layers.base import FaceHead
from keras_facemargin.layers.cosine_dense import CosineDense
from keras_facemargin.layers.kappaface import KappaMarginDense
from keras_facemargin.layers.registry import HEADS, build_head, head_names, register_head

from keras_facemargin.layers.ablation_losses import AngularTripletLoss, InterLossDense, IntraLossDense
from keras_facemargin.layers.adaface import AdaMarginDense
from keras_facemargin.layers.center_loss import CenterLossDense
from keras_facemargin.layers.curricularface import CurricularMarginDense
from keras_facemargin.layers.expface import ExpMarginDense
from keras_facemargin.layers.ldam import LDAMDense
from keras_facemargin.layers.magface import MagMarginDense
from keras_facemargin.layers.partial_fc import PartialFC, PartialFCLoss, SampleBudgetError
from keras_facemargin.layers.softmax import SoftmaxDense
from keras_facemargin.layers.sphereface import SphereMarginDense
from keras_facemargin.layers.subface import SubFaceDense
from keras_facemargin.layers.x2softmax import X2SoftmaxDense

__all__ = [
    "ArcMarginDense",
    "CombinedMarginDense",
    "CosMarginDense",
    "CosineDense",
    "FaceHead",
    "KappaMarginDense",
    "kappa_math",
    "HEADS",
    "build_head",
    "head_names",
    "register_head",
    "AdaMarginDense",
    "AngularTripletLoss",
    "CenterLossDense",
    "CurricularMarginDense",
    "ExpMarginDense",
    "InterLossDense",
    "IntraLossDense",
    "LDAMDense",
    "MagMarginDense",
    "PartialFC",
    "PartialFCLoss",
    "SampleBudgetError",
    "SoftmaxDense",
    "SphereMarginDense",
    "SubFaceDense",
    "X2SoftmaxDense",
]
