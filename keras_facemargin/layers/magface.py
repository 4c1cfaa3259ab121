"""MagFace: magnitude-aware angular margin (Meng et al., CVPR 2021)."""

import keras
from keras import ops

from keras_facemargin.layers import _zoo_common as zc
from keras_facemargin.layers.cosine_dense import CosineDense, _check_nonnegative, _check_positive, arc_target


@keras.saving.register_keras_serializable(package="keras_facemargin")
class MagMarginDense(CosineDense):
    """MagFace head (Meng et al., CVPR 2021, eq. 3-5).

    With the feature magnitude `a = clip(||x||, l_a, u_a)` the margin is
    `m(a) = (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m` and the target logit
    `s*cos(theta_y + m(a))`; the regulariser `g(a) = 1/a + a/u_a^2`, averaged
    over the batch and weighted by `lambda_g`, is added with `add_loss`
    whenever the layer is called with labels (the official `MagLoss`:
    `loss = CE + lambda_g * mean(g(a))`). Gradients flow into `a` through both
    `m(a)` and `g(a)` (inside [l_a, u_a]; the clip stops them outside).

    Defaults are the official training script's (`run/run.sh` of
    IrvingMeng/MagFace): l_a=10, u_a=110, l_m=0.45, u_m=0.8, s=64,
    lambda_g=35. (The trainer's argparse default lambda_g=20 is below the
    feasibility bound `s*k*u_a^2*l_a^2/(u_a^2-l_a^2)` = 22.6 that the same
    trainer prints.) `easy_margin=True` is the official `MagLinear` default
    (margin only where cos(theta) > 0); with `easy_margin=False` the ArcFace
    fallback `cos(theta) - m(a) sin(m(a))` is used where `theta + m(a) > pi`.

    A zero feature is safe: `a` is clipped to l_a and the norm has a finite
    (zero) gradient at 0.

    Args:
        num_classes: number of identities.
        scale: s.
        lower_norm, upper_norm: l_a, u_a.
        lower_margin, upper_margin: l_m, u_m.
        lambda_g: weight of the regulariser g (0 disables it).
        easy_margin: see above.
        **kwargs: see `CosineDense`.

    Example:
        >>> head = MagMarginDense(num_classes=85742)
        >>> logits = head([embeddings, labels])   # head.losses holds lambda_g * mean g(a)
    """

    def __init__(
        self,
        num_classes,
        scale=64.0,
        lower_norm=10.0,
        upper_norm=110.0,
        lower_margin=0.45,
        upper_margin=0.8,
        lambda_g=35.0,
        easy_margin=True,
        **kwargs,
    ):
        super().__init__(num_classes, scale=scale, **kwargs)
        self.lower_norm = _check_positive("lower_norm", lower_norm)
        self.upper_norm = _check_positive("upper_norm", upper_norm)
        if self.upper_norm <= self.lower_norm:
            raise ValueError(
                f"`upper_norm` must be larger than `lower_norm`. Received: lower_norm={lower_norm!r}, "
                f"upper_norm={upper_norm!r}"
            )
        self.lower_margin = _check_nonnegative("lower_margin", lower_margin)
        self.upper_margin = _check_nonnegative("upper_margin", upper_margin)
        if self.upper_margin < self.lower_margin:
            raise ValueError(
                f"`upper_margin` must be >= `lower_margin`. Received: lower_margin={lower_margin!r}, "
                f"upper_margin={upper_margin!r}"
            )
        self.lambda_g = _check_nonnegative("lambda_g", lambda_g)
        self.easy_margin = bool(easy_margin)

    def magnitude(self, embeddings):
        """a = clip(||x||, l_a, u_a), (B,)."""
        norm = zc.safe_norm(ops.cast(embeddings, self.compute_dtype))
        return ops.clip(norm, self.lower_norm, self.upper_norm)

    def margins(self, magnitude):
        """m(a) (eq. 3)."""
        slope = (self.upper_margin - self.lower_margin) / (self.upper_norm - self.lower_norm)
        return slope * (magnitude - self.lower_norm) + self.lower_margin

    def regularizer(self, magnitude):
        """g(a) = 1/a + a/u_a^2 (eq. 4), per sample."""
        return 1.0 / magnitude + magnitude / self.upper_norm**2

    def logits_from_cosine(self, cos, labels, embeddings, training=None):
        a = self.magnitude(embeddings)
        target = arc_target(zc.target_cosine(cos, labels), self.margins(a), self.easy_margin)
        if self.lambda_g > 0:
            zc.add_loss_if_concrete(self, self.lambda_g * ops.mean(self.regularizer(a)))
        return self.apply_margin(cos, labels, target)

    def partial_fc_logits(self, cos, columns, class_ids, embeddings=None, training=None):
        """Partial FC: the labels only index columns of `cos` (the margin follows the feature norm),
        so the sampled columns work as is."""
        return self.logits_from_cosine(cos, columns, embeddings, training)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "lower_norm": self.lower_norm,
                "upper_norm": self.upper_norm,
                "lower_margin": self.lower_margin,
                "upper_margin": self.upper_margin,
                "lambda_g": self.lambda_g,
                "easy_margin": self.easy_margin,
            }
        )
        return config
