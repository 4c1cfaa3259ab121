"""X2-Softmax: quadratic target logit with an angle-adaptive margin (Xu et al., arXiv:2312.05281)."""

import keras
from keras import ops

from keras_facemargin.layers import _zoo_common as zc
from keras_facemargin.layers.cosine_dense import CosineDense, clipped_cos_sin


@keras.saving.register_keras_serializable(package="keras_facemargin")
class X2SoftmaxDense(CosineDense):
    """X2-Softmax head: target logit `s * (a * (theta_y - h)^2 + k)`, others `s*cos(theta_j)`.

    The quadratic replaces cos(theta) for the target class only (as in the
    authors' released training code, `--loss X2SOFTMAX --lossparameters 64
    -0.9 0.0 0.65`, i.e. s=64, a=-0.9, h=0, k=0.65). With a < 0 it decreases
    on [h, pi], and the margin `cos(theta) - f(theta)` grows with theta.

    Deviation: that code writes the quadratic into the logits in-place under
    `torch.no_grad()`, so its backward pass treats d f / d cos(theta_y) as 1.
    Here the gradient is the true derivative of f (the paper's function).

    Args:
        num_classes: number of identities.
        scale: s.
        a: curvature (< 0).
        h: vertex angle (radians).
        k: value at the vertex.
        **kwargs: see `CosineDense`.

    Example:
        >>> head = X2SoftmaxDense(num_classes=1000)
    """

    def __init__(self, num_classes, scale=64.0, a=-0.9, h=0.0, k=0.65, **kwargs):
        super().__init__(num_classes, scale=scale, **kwargs)
        self.a = zc.check_finite("a", a)
        if self.a >= 0:
            raise ValueError(f"`a` must be negative (a downward parabola). Received: a={a!r}")
        self.h = zc.check_finite("h", h)
        self.k = zc.check_finite("k", k)

    def target_logit(self, cos_y, labels):
        cos_c, _ = clipped_cos_sin(cos_y)
        theta = ops.arccos(cos_c)
        return self.a * ops.square(theta - self.h) + self.k

    def get_config(self):
        config = super().get_config()
        config.update({"a": self.a, "h": self.h, "k": self.k})
        return config
