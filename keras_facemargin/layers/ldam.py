"""LDAM: label-distribution-aware margin (Cao et al., NeurIPS 2019)."""

import keras
import numpy as np
from keras import ops

from keras_facemargin.layers.cosine_dense import CosineDense, _check_class_counts, _check_positive


def ldam_margins(class_counts, max_margin=0.5):
    """Delta_j = C / n_j^(1/4), with C chosen so that max_j Delta_j = max_margin (eq. 12)."""
    m = 1.0 / np.sqrt(np.sqrt(np.asarray(class_counts, dtype="float64")))
    return m * (max_margin / m.max())


@keras.saving.register_keras_serializable(package="keras_facemargin")
class LDAMDense(CosineDense):
    """LDAM head: target logit `s * (cos(theta_y) - Delta_y)`, `Delta_j ∝ n_j^(-1/4)`.

    Cao et al., NeurIPS 2019, eq. 12-13, as in the official `LDAMLoss`
    (`m_list = 1/sqrt(sqrt(n))`, rescaled so the largest margin is `max_m`,
    subtracted from the target of a normalised linear layer, scaled by s=30).
    The imbalance baseline of the KappaFace paper. The paper's deferred
    re-weighting (DRW) schedule is a loss weighting, not part of this head.

    Args:
        num_classes: number of identities.
        class_counts: length-C training images per class (all > 0).
        scale: s (official: 30).
        max_margin: the largest margin, of the rarest class (official: 0.5).
        **kwargs: see `CosineDense`.

    Example:
        >>> head = LDAMDense(num_classes=3, class_counts=[100, 10, 1])
    """

    def __init__(self, num_classes, class_counts, scale=30.0, max_margin=0.5, **kwargs):
        super().__init__(num_classes, scale=scale, **kwargs)
        self.class_counts = _check_class_counts(class_counts, num_classes)
        self.max_margin = _check_positive("max_margin", max_margin)
        self.class_margins = ldam_margins(self.class_counts, self.max_margin).astype("float32")

    def target_logit(self, cos_y, labels):
        return cos_y - ops.take(ops.convert_to_tensor(self.class_margins, cos_y.dtype), labels, axis=0)

    def get_config(self):
        config = super().get_config()
        config.update({"class_counts": self.class_counts.tolist(), "max_margin": self.max_margin})
        return config
