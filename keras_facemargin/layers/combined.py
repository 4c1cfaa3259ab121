"""Combined margin `cos(m1*theta + m2) - m3` (ArcFace paper, eq. 4)."""

import math

import keras
from keras import ops

from keras_facemargin.layers.cosine_dense import CosineDense, _check_nonnegative, _check_positive, clipped_cos_sin


@keras.saving.register_keras_serializable(package="keras_facemargin")
class CombinedMarginDense(CosineDense):
    """Combined margin head: target logit `s * (cos(m1*theta_y + m2) - m3)`.

    `(m1, m2, m3)` = (1, 0.5, 0) is ArcFace, (1, 0, 0.35) CosFace, (m, 0, 0) a
    SphereFace-style multiplicative margin, and the ArcFace paper's CM1/CM2 are
    (1, 0.3, 0.2) and (0.9, 0.4, 0.15) (Table 2 of Deng et al.).

    Where `m1*theta + m2 > pi` the cosine would turn back up; there the target is
    continued as `cos(theta) - delta`, with `delta` the margin penalty at the
    switch point `theta_t = (pi - m2) / m1`, so the target is continuous and
    monotone. (For pure ArcFace, `ArcMarginDense` keeps insightface's exact
    `cos(theta) - m*sin(m)` fallback.)

    Args:
        num_classes: number of identities.
        scale: s.
        m1: multiplicative angular margin (>= 1 for a margin, > 0).
        m2: additive angular margin.
        m3: additive cosine margin.

    Example:
        >>> head = CombinedMarginDense(num_classes=1000, m1=1.0, m2=0.3, m3=0.2)
    """

    def __init__(self, num_classes, scale=64.0, m1=1.0, m2=0.3, m3=0.2, **kwargs):
        super().__init__(num_classes, scale=scale, **kwargs)
        self.m1 = _check_positive("m1", m1)
        self.m2 = _check_nonnegative("m2", m2)
        self.m3 = _check_nonnegative("m3", m3)
        if self.m2 >= math.pi:
            raise ValueError(f"`m2` must be smaller than pi. Received: m2={m2!r}")

    def target_logit(self, cos_y, labels):
        cos_c, _ = clipped_cos_sin(cos_y)
        theta = ops.arccos(cos_c)
        theta_t = min((math.pi - self.m2) / self.m1, math.pi)
        delta = math.cos(theta_t) - (math.cos(self.m1 * theta_t + self.m2) - self.m3)
        inside = theta <= theta_t
        # Keep the untaken branch finite for the gradient of ops.where.
        theta_in = ops.where(inside, theta, 0.0)
        phi = ops.cos(self.m1 * theta_in + self.m2) - self.m3
        return ops.where(inside, phi, cos_c - delta)

    def get_config(self):
        config = super().get_config()
        config.update({"m1": self.m1, "m2": self.m2, "m3": self.m3})
        return config
