"""CurricularFace: adaptive curriculum learning loss (Huang et al., CVPR 2020)."""

import math

import keras
from keras import ops

from keras_facemargin.layers import _state
from keras_facemargin.layers import _zoo_common as zc
from keras_facemargin.layers.cosine_dense import CosineDense, _check_nonnegative, clipped_cos_sin


@keras.saving.register_keras_serializable(package="keras_facemargin")
class CurricularMarginDense(CosineDense):
    """CurricularFace head (Huang et al., CVPR 2020, eq. 8-10).

    Target logit `s*cos(theta_y + m)` with ArcFace's fallback
    `cos(theta_y) - m*sin(m)` where `theta_y + m > pi`. A negative cosine is
    modulated when it is "hard", i.e. larger than `cos(theta_y + m)`:
    `N(t, cos_j) = cos_j * (t + cos_j)`, otherwise kept. `t` is an EMA of the
    batch mean of `cos(theta_y)`: `t <- alpha * mean + (1 - alpha) * t`
    (eq. 10, alpha=0.01, t0=0), updated in training only, before the
    modulation (as in the official code), with the mean taken over all
    replicas. The hardness test uses the raw `cos(theta_y + m)` as the official
    code does.

    Args:
        num_classes: number of identities.
        scale: s (paper: 64).
        margin: m (paper: 0.5).
        t_momentum: alpha of the EMA of t (paper: 0.01).
        **kwargs: see `CosineDense`.

    Example:
        >>> head = CurricularMarginDense(num_classes=85742)
        >>> logits = head([embeddings, labels], training=True)  # updates head.t
    """

    def __init__(self, num_classes, scale=64.0, margin=0.5, t_momentum=0.01, **kwargs):
        super().__init__(num_classes, scale=scale, **kwargs)
        self.margin = _check_nonnegative("margin", margin)
        if self.margin >= math.pi:
            raise ValueError(f"`margin` must be smaller than pi. Received: margin={margin!r}")
        t_momentum = _check_nonnegative("t_momentum", t_momentum)
        if t_momentum > 1.0:
            raise ValueError(f"`t_momentum` must be in [0, 1]. Received: t_momentum={t_momentum!r}")
        self.t_momentum = t_momentum

    def build(self, input_shape):
        super().build(input_shape)
        # Every replica computes the same value (mean over the all-gathered batch).
        self.t = self.add_weight(
            name="t", shape=(), initializer="zeros", trainable=False, aggregation="only_first_replica"
        )

    def logits_from_cosine(self, cos, labels, embeddings=None, training=None):
        cos_y = zc.target_cosine(cos, labels)
        cos_c, sin = clipped_cos_sin(cos_y)
        phi = cos_c * math.cos(self.margin) - sin * math.sin(self.margin)
        target = ops.where(
            cos_c > math.cos(math.pi - self.margin), phi, cos_c - self.margin * math.sin(self.margin)
        )
        t = ops.convert_to_tensor(self.t)
        if training and _state.state_updates_enabled():
            batch_mean = ops.mean(_state.all_gather(ops.stop_gradient(cos_y)))
            t = self.t_momentum * batch_mean + (1.0 - self.t_momentum) * t
            self.t.assign(t)
        t = ops.stop_gradient(t)
        hard = cos > ops.expand_dims(ops.stop_gradient(phi), -1)
        cos = ops.where(hard, cos * (t + cos), cos)
        return self.apply_margin(cos, labels, target)

    def partial_fc_logits(self, cos, columns, class_ids, embeddings=None, training=None):
        """Partial FC: the labels only index columns of `cos` (t is a batch statistic),
        so the sampled columns work as is."""
        return self.logits_from_cosine(cos, columns, embeddings, training)

    def get_config(self):
        config = super().get_config()
        config.update({"margin": self.margin, "t_momentum": self.t_momentum})
        return config
