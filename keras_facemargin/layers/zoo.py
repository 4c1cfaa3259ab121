"""The loss zoo: every head of the package, registered by name (one line per head).

The ArcFace/KappaFace papers' baselines and their successors. A new head is its own
module plus one `register_head` line here (see :mod:`keras_facemargin.layers.base` for
the protocol it implements). Imported by `keras_facemargin.layers`, so the table of
:mod:`keras_facemargin.layers.registry` is full whenever a head can be built.

Example:
    >>> from keras_facemargin.layers import head_names
    >>> "kappaface" in head_names()
    True
"""

from keras_facemargin.layers.ablation_losses import InterLossDense, IntraLossDense
from keras_facemargin.layers.adaface import AdaMarginDense
from keras_facemargin.layers.arcface import ArcMarginDense
from keras_facemargin.layers.center_loss import CenterLossDense
from keras_facemargin.layers.combined import CombinedMarginDense
from keras_facemargin.layers.cosface import CosMarginDense
from keras_facemargin.layers.cosine_dense import CosineDense
from keras_facemargin.layers.curricularface import CurricularMarginDense
from keras_facemargin.layers.expface import ExpMarginDense
from keras_facemargin.layers.kappaface import KappaMarginDense
from keras_facemargin.layers.ldam import LDAMDense
from keras_facemargin.layers.magface import MagMarginDense
from keras_facemargin.layers.registry import register_head
from keras_facemargin.layers.softmax import SoftmaxDense
from keras_facemargin.layers.sphereface import SphereMarginDense
from keras_facemargin.layers.subface import SubFaceDense
from keras_facemargin.layers.x2softmax import X2SoftmaxDense

register_head("kappaface", KappaMarginDense)
register_head("arcface", ArcMarginDense)
register_head("cosface", CosMarginDense)
register_head("combined", CombinedMarginDense)
register_head("normsoftmax", CosineDense)
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
