"""CosFace / LMCL: additive cosine margin (Wang et al., CVPR 2018, eq. 4)."""

import keras

from keras_facemargin.layers.cosine_dense import CosineDense, _check_nonnegative


@keras.saving.register_keras_serializable(package="keras_facemargin")
class CosMarginDense(CosineDense):
    """CosFace head: target logit `s * (cos(theta_y) - m)`.

    Defaults follow the CosFace paper (s=64, m=0.35, Sec. 4.1). insightface's
    arcface_torch configs use m=0.4.

    Args:
        num_classes: number of identities.
        scale: s.
        margin: additive cosine margin m.

    Example:
        >>> head = CosMarginDense(num_classes=1000, margin=0.4)
    """

    def __init__(self, num_classes, scale=64.0, margin=0.35, **kwargs):
        super().__init__(num_classes, scale=scale, **kwargs)
        self.margin = _check_nonnegative("margin", margin)

    def target_logit(self, cos_y, labels):
        return cos_y - self.margin

    def get_config(self):
        config = super().get_config()
        config.update({"margin": self.margin})
        return config
