"""The ArcFace paper's ablation losses (Deng et al., CVPR 2019, eq. 5-7)."""

import math

import keras
from keras import ops

from keras_facemargin.layers import _zoo_common as zc
from keras_facemargin.layers.base import class_centres, sampled_cosine
from keras_facemargin.layers.cosine_dense import CosineDense, _check_nonnegative, clipped_cos_sin


@keras.saving.register_keras_serializable(package="keras_facemargin")
class IntraLossDense(CosineDense):
    """Intra-Loss head (ArcFace eq. 5): Norm-Softmax plus `(1/pi) * theta_y`.

    Returns the Norm-Softmax logits `s*cos(theta_j)` and, when called with
    labels, adds `weight * mean_i(theta_{y_i}) / pi` with `add_loss`, which
    pulls each feature towards its class centre.

    Args:
        num_classes: number of identities.
        scale: s (paper: 64).
        weight: multiplier of the extra term (eq. 5: 1).
        **kwargs: see `CosineDense`.

    Example:
        >>> head = IntraLossDense(num_classes=10)
    """

    def __init__(self, num_classes, scale=64.0, weight=1.0, **kwargs):
        super().__init__(num_classes, scale=scale, **kwargs)
        self.weight = _check_nonnegative("weight", weight)

    def logits_from_cosine(self, cos, labels, embeddings=None, training=None):
        cos_y, _ = clipped_cos_sin(zc.target_cosine(cos, labels))
        zc.add_loss_if_concrete(self, self.weight * ops.mean(ops.arccos(cos_y)) / math.pi)
        return self.scale * cos

    def partial_fc_logits(self, cos, columns, class_ids, embeddings=None, training=None):
        """Partial FC: the labels only index columns of `cos` (the extra term is a batch mean),
        so the sampled columns work as is."""
        return self.logits_from_cosine(cos, columns, embeddings, training)

    def get_config(self):
        config = super().get_config()
        config.update({"weight": self.weight})
        return config


@keras.saving.register_keras_serializable(package="keras_facemargin")
class InterLossDense(CosineDense):
    """Inter-Loss head (ArcFace eq. 6): Norm-Softmax minus the mean angle between centres.

    Adds `-weight/(pi (N - 1)) * mean_i sum_{j != y_i} arccos(W_{y_i}^T W_j)`
    (N classes, normalised centres) with `add_loss`, which pushes the centre
    of each sample's class away from all other centres.

    Args:
        num_classes: number of identities.
        scale: s (paper: 64).
        weight: multiplier of the extra term (eq. 6: 1).
        **kwargs: see `CosineDense`.

    Example:
        >>> head = InterLossDense(num_classes=10)
    """

    def __init__(self, num_classes, scale=64.0, weight=1.0, **kwargs):
        super().__init__(num_classes, scale=scale, **kwargs)
        self.weight = _check_nonnegative("weight", weight)

    def logits_from_cosine(self, cos, labels, embeddings=None, training=None):
        w = ops.normalize(ops.cast(class_centres(self), self.compute_dtype), axis=0, epsilon=1e-12)
        zc.add_loss_if_concrete(self, self.inter_term(w, labels))
        return self.scale * cos

    def sampled_logits(self, embeddings, centres, classes, columns, class_ids, training=None, cos=None):
        """Partial FC: Norm-Softmax on the sample, the eq. 6 term over the sampled centres (K of them)."""
        if cos is None:
            cos = sampled_cosine(embeddings, centres, self.compute_dtype)
        w_unit = ops.transpose(ops.normalize(centres, axis=-1, epsilon=1e-12))
        zc.add_loss_if_concrete(self, self.inter_term(w_unit, columns))
        return self.scale * cos

    def inter_term(self, w, labels):
        """The eq. 6 term over the N columns of the normalised centres `w` (d, N); `labels` index them.

        N = C, or the sampled classes under `PartialFC` (the mean then runs over the sample).
        """
        n = w.shape[1]
        w_y = ops.take(w, labels, axis=1)  # (d, B)
        centre_cos, _ = clipped_cos_sin(ops.matmul(ops.transpose(w_y), w))  # (B, N)
        others = 1.0 - ops.one_hot(labels, n, dtype=centre_cos.dtype)
        angles = ops.sum(ops.arccos(centre_cos) * others, axis=-1)
        return -self.weight * ops.mean(angles) / (math.pi * (n - 1))

    def get_config(self):
        config = super().get_config()
        config.update({"weight": self.weight})
        return config


@keras.saving.register_keras_serializable(package="keras_facemargin")
class AngularTripletLoss(keras.losses.Loss):
    """Angular triplet loss (ArcFace eq. 7) for `model.compile(loss=...)`.

    `y_true` are integer identities (B,), `y_pred` embeddings (B, d). For every
    valid triplet (anchor i, positive p with y_p = y_i, p != i, negative n with
    y_n != y_i) in the batch the loss is
    `max(0, arccos(x_i . x_p) + alpha - arccos(x_i . x_n))` on L2-normalised
    features; the batch loss is the mean over all valid triplets (0 when the
    batch has none). The paper does not specify the mining; this is the
    "batch-all" choice. alpha=0.35 as in the paper's Table 3 ("Triplet (0.35)").

    Args:
        margin: alpha (radians).

    Example:
        >>> embedder.compile(optimizer="sgd", loss=AngularTripletLoss(margin=0.35))
    """

    def __init__(self, margin=0.35, name="angular_triplet_loss", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.margin = _check_nonnegative("margin", margin)

    def call(self, y_true, y_pred):
        x = ops.normalize(ops.cast(y_pred, "float32"), axis=-1, epsilon=1e-12)
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        cos, _ = clipped_cos_sin(ops.matmul(x, ops.transpose(x)))
        theta = ops.arccos(cos)  # (B, B)
        same = ops.equal(ops.expand_dims(labels, 0), ops.expand_dims(labels, 1))
        not_self = ops.logical_not(ops.cast(ops.eye(ops.shape(labels)[0]), "bool"))
        pos = ops.cast(ops.logical_and(same, not_self), "float32")  # (i, p)
        neg = ops.cast(ops.logical_not(same), "float32")  # (i, n)
        hinge = ops.relu(ops.expand_dims(theta, 2) + self.margin - ops.expand_dims(theta, 1))  # (i, p, n)
        valid = ops.expand_dims(pos, 2) * ops.expand_dims(neg, 1)
        per_anchor = ops.sum(hinge * valid, axis=(1, 2))
        count = ops.sum(valid)
        # Spread the triplet mean over the anchors so that the default
        # sum-over-batch reduction returns exactly the mean over triplets.
        batch = ops.cast(ops.shape(labels)[0], "float32")
        return per_anchor * batch / ops.maximum(count, 1.0)

    def get_config(self):
        config = super().get_config()
        config.update({"margin": self.margin})
        return config
