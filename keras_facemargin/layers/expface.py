"""ExpFace: exponential angular margin (Zheng & Gong, arXiv:2509.19753, 2025)."""

import math

import keras
from keras import ops

from keras_facemargin.layers.cosine_dense import CosineDense, _check_positive, clipped_cos_sin


def exp_target(cos_y, exponent):
    """cos(pi * (theta/pi)^m_e); `exponent` may be a scalar or a per-sample tensor.

    theta comes from the clipped cosine (straight-through), so theta >= 4.5e-4
    and the power's gradient stays finite at theta = 0.
    """
    cos_c, _ = clipped_cos_sin(cos_y)
    theta = ops.arccos(cos_c)
    return ops.cos(math.pi * ops.power(theta / math.pi, exponent))


@keras.saving.register_keras_serializable(package="keras_facemargin")
class ExpMarginDense(CosineDense):
    """ExpFace head: target logit `s * cos(pi * (theta_y / pi)^m)`.

    The similarity of the ExpFace paper's method section (T_ExpFace(theta) =
    cos(pi (theta/pi)^{m_e})); non-target logits are `s*cos(theta_j)`. With
    0 < m < 1 the penalty `pi (theta/pi)^m - theta` is largest for mid-range
    angles and vanishes at 0 and pi; the target is monotone in theta on
    [0, pi], so no fallback is needed. m=1 is Norm-Softmax. Default m=0.7
    and s=64 as specified in this project's issue (the paper's experiment
    settings were not available to check).

    Args:
        num_classes: number of identities.
        scale: s.
        margin: the exponent m_e in (0, 1].
        **kwargs: see `CosineDense`.

    Example:
        >>> head = ExpMarginDense(num_classes=1000, margin=0.7)
    """

    def __init__(self, num_classes, scale=64.0, margin=0.7, **kwargs):
        super().__init__(num_classes, scale=scale, **kwargs)
        margin = _check_positive("margin", margin)
        if margin > 1.0:
            raise ValueError(f"`margin` (the exponent m_e) must be in (0, 1]. Received: margin={margin!r}")
        self.margin = margin

    def target_logit(self, cos_y, labels):
        return exp_target(cos_y, self.margin)

    def get_config(self):
        config = super().get_config()
        config.update({"margin": self.margin})
        return config
