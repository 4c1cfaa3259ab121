"""AdaFace: quality-adaptive margin from feature norms (Kim, Jain & Liu, CVPR 2022)."""

import math

import keras
from keras import ops

from keras_facemargin.layers import _state
from keras_facemargin.layers import _zoo_common as zc
from keras_facemargin.layers.cosine_dense import CosineDense, _check_nonnegative, _check_positive


@keras.saving.register_keras_serializable(package="keras_facemargin")
class AdaMarginDense(CosineDense):
    """AdaFace head (Kim et al., CVPR 2022, eq. 9-12), following the official `head.py`.

    The feature norm `n = clip(||x||, 0.001, 100)`, detached, is standardised
    with EMA batch statistics and clipped: `g = clip(h * (n - mu)/(sigma + eps),
    -1, 1)`. The target logit is `s * (cos(clip(theta_y - m*g, eps, pi - eps))
    - (m + m*g))`: an angular margin `-m*g` and an additive one `m + m*g`.
    All cosines are first clipped to [-1 + eps, 1 - eps] with eps = 1e-3, as in
    the official code, so non-target logits are `s * clip(cos(theta_j))`.

    In training, before computing g, the statistics are updated with the
    current batch (over all replicas): `mu <- t_alpha * mean(n) + (1 - t_alpha) * mu`,
    `sigma <- t_alpha * std(n) + (1 - t_alpha) * sigma`, with the unbiased std
    (torch's default; 0 for a batch of one). They start at mu=20, sigma=100 as
    in the official code. A zero feature is safe (n is clipped to 0.001).

    Args:
        num_classes: number of identities.
        scale: s (paper: 64).
        margin: m (paper: 0.4).
        h: concentration of g (paper: 0.333).
        t_alpha: EMA momentum of the norm statistics (official config: 0.01).
        **kwargs: see `CosineDense`.

    Example:
        >>> head = AdaMarginDense(num_classes=85742)
        >>> logits = head([embeddings, labels], training=True)  # updates batch_mean/batch_std
    """

    EPS = 1e-3

    def __init__(self, num_classes, scale=64.0, margin=0.4, h=0.333, t_alpha=0.01, **kwargs):
        super().__init__(num_classes, scale=scale, **kwargs)
        self.margin = _check_nonnegative("margin", margin)
        self.h = _check_positive("h", h)
        t_alpha = _check_nonnegative("t_alpha", t_alpha)
        if t_alpha > 1.0:
            raise ValueError(f"`t_alpha` must be in [0, 1]. Received: t_alpha={t_alpha!r}")
        self.t_alpha = t_alpha

    def build(self, input_shape):
        super().build(input_shape)
        kw = dict(shape=(), trainable=False, aggregation="only_first_replica")
        self.batch_mean = self.add_weight(name="batch_mean", initializer=keras.initializers.Constant(20.0), **kw)
        self.batch_std = self.add_weight(name="batch_std", initializer=keras.initializers.Constant(100.0), **kw)

    def logits_from_cosine(self, cos, labels, embeddings, training=None):
        eps = self.EPS
        norms = ops.stop_gradient(ops.clip(zc.safe_norm(ops.cast(embeddings, self.compute_dtype)), 0.001, 100.0))
        mean = ops.convert_to_tensor(self.batch_mean)
        std = ops.convert_to_tensor(self.batch_std)
        if training and _state.state_updates_enabled():
            everything = _state.all_gather(norms)
            n = ops.cast(ops.shape(everything)[0], norms.dtype)
            b_mean = ops.mean(everything)
            b_std = ops.sqrt(ops.sum(ops.square(everything - b_mean)) / ops.maximum(n - 1.0, 1.0))
            mean = self.t_alpha * b_mean + (1.0 - self.t_alpha) * mean
            std = self.t_alpha * b_std + (1.0 - self.t_alpha) * std
            self.batch_mean.assign(mean)
            self.batch_std.assign(std)
        g = ops.clip((norms - mean) / (std + eps) * self.h, -1.0, 1.0)
        cos = ops.clip(cos, -1.0 + eps, 1.0 - eps)
        theta = ops.arccos(zc.target_cosine(cos, labels))
        theta_m = ops.clip(theta - self.margin * g, eps, math.pi - eps)
        target = ops.cos(theta_m) - (self.margin + self.margin * g)
        return self.apply_margin(cos, labels, target)

    def partial_fc_logits(self, cos, columns, class_ids, embeddings=None, training=None):
        """Partial FC: the labels only index columns of `cos` (the norm statistics see the whole batch),
        so the sampled columns work as is."""
        return self.logits_from_cosine(cos, columns, embeddings, training)

    def get_config(self):
        config = super().get_config()
        config.update({"margin": self.margin, "h": self.h, "t_alpha": self.t_alpha})
        return config
