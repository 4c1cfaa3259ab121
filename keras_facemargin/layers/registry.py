"""Margin heads by name: one registry for the demo, the examples and the CLIs.

Each entry maps a loss name to its layer class and the published defaults
(the class defaults are the papers'); `build_head` fills in what the head
needs from the training set (class counts, number of samples).

Example:
    >>> head = build_head("kappaface", num_classes=10, class_counts=counts, num_samples=123)
    >>> head = build_head("arcface", num_classes=10, margin=0.4)

The table and `build_head` live in :mod:`keras_facemargin.layers._head_table` (so that
``SubFaceDense`` can build its inner head without importing this module); this module
fills the table with the loss zoo.
"""

from keras_facemargin.layers._head_table import HEADS, build_head, head_names, register_head
from keras_facemargin.layers.kappaface import KappaMarginDense

__all__ = ["HEADS", "build_head", "head_names", "register_head"]

# -- the loss zoo (ArcFace/KappaFace papers' baselines and successors) ----------
from keras_facemargin.layers.ablation_losses import InterLossDense, IntraLossDense  # noqa: E402
from keras_facemargin.layers.adaface import AdaMarginDense  # noqa: E402
from keras_facemargin.layers.center_loss import CenterLossDense  # noqa: E402
from keras_facemargin.layers.curricularface import CurricularMarginDense  # noqa: E402
from keras_facemargin.layers.expface import ExpMarginDense  # noqa: E402
from keras_facemargin.layers.ldam import LDAMDense  # noqa: E402
from keras_facemargin.layers.magface import MagMarginDense  # noqa: E402
from keras_facemargin.layers.softmax import SoftmaxDense  # noqa: E402
from keras_facemargin.layers.sphereface import SphereMarginDense  # noqa: E402
from keras_facemargin.layers.subface import SubFaceDense  # noqa: E402
from keras_facemargin.layers.x2softmax import X2SoftmaxDense  # noqa: E402

register_head("softmax", SoftmaxDense)
register_head("sphereface", SphereMarginDense)
register_head("curricularface", CurricularMarginDense)
register_head("magface", MagMarginDense)
register_head("adaface", AdaMarginDense)
register_head("expface", ExpMarginDense)
register_head("x2softmax", X2SoftmaxDense)
register_head("subface", SubFaceDense)  # wraps "arcface" by default
register_head("intra", IntraLossDense)
register_head("inter", InterLossDense)
register_head("centerloss", CenterLossDense)
register_head("ldam", LDAMDense)
register_head("kappaface_cos", KappaMarginDense, target="cos")
register_head("kappaface_exp", KappaMarginDense, target="exp", margin=0.3)
