"""ArcFace: additive angular margin (Deng et al., CVPR 2019, eq. 3)."""

import keras

from keras_facemargin.layers.cosine_dense import CosineDense, _check_nonnegative, arc_target


@keras.saving.register_keras_serializable(package="keras_facemargin")
class ArcMarginDense(CosineDense):
    """ArcFace head: logits `s*cos(theta_j)`, target logit `s*cos(theta_y + m)`.

    Defaults are the paper's (s=64, m=0.5, Sec. 3.1). Where `theta_y + m > pi`
    the target becomes `cos(theta_y) - m*sin(m)` as in the official insightface
    code, so the target logit stays monotone in theta. `easy_margin=True` applies
    the margin only where `cos(theta_y) > 0`.

    Args:
        num_classes: number of identities.
        scale: s.
        margin: additive angular margin m (radians).
        easy_margin: see above.
        **kwargs: see `CosineDense`.

    Example:
        >>> head = ArcMarginDense(num_classes=85742)
        >>> logits = head([embeddings, labels])   # training
        >>> cosines = head(embeddings)            # inference: s*cos(theta_j)
    """

    def __init__(self, num_classes, scale=64.0, margin=0.5, easy_margin=False, **kwargs):
        super().__init__(num_classes, scale=scale, **kwargs)
        self.margin = _check_nonnegative("margin", margin)
        self.easy_margin = bool(easy_margin)

    def target_logit(self, cos_y, labels):
        return arc_target(cos_y, self.margin, self.easy_margin)

    def get_config(self):
        config = super().get_config()
        config.update({"margin": self.margin, "easy_margin": self.easy_margin})
        return config
