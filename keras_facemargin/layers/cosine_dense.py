"""Shared base of the margin heads: a bias-free dense layer on the unit sphere."""

import math
import numbers

import keras
import numpy as np
from keras import ops

from keras_facemargin.layers import _state
from keras_facemargin.layers.base import (  # noqa: F401  (build_class_kernel, prepare_indices: re-exported)
    FaceHead,
    build_class_kernel,
    class_centres,
    prepare_indices,
    sampled_cosine,
    split_inputs,
)
from keras_facemargin.layers.normalized_matmul import normalized_matmul

# Cosines are clipped to [-1 + COS_EPS, 1 - COS_EPS] before acos/sqrt so that
# neither the value nor the gradient is ever NaN or infinite.
COS_EPS = 1e-7


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)


def _check_positive(name, value):
    if not _is_real(value) or value <= 0:
        raise ValueError(f"`{name}` must be a positive finite number. Received: {name}={value!r}")
    return float(value)


def _check_nonnegative(name, value):
    if not _is_real(value) or value < 0:
        raise ValueError(f"`{name}` must be a non-negative finite number. Received: {name}={value!r}")
    return float(value)


def _check_class_counts(class_counts, num_classes):
    """`class_counts` as int64, checked: 1-D, length `num_classes`, all > 0."""
    counts = np.asarray(class_counts)
    if counts.ndim != 1 or counts.shape[0] != num_classes:
        raise ValueError(
            f"`class_counts` must be a 1-D sequence of length num_classes={num_classes}. "
            f"Received shape: {counts.shape}"
        )
    if not np.all(np.isfinite(counts.astype(float))) or np.any(counts <= 0):
        bad = np.flatnonzero(~(counts > 0))[:5].tolist()
        raise ValueError(
            "`class_counts` must be positive (every class needs at least one training image); "
            f"classes {bad} have a count <= 0."
        )
    return counts.astype("int64")


def _check_num_classes(num_classes):
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"`num_classes` must be an integer >= 2. Received: num_classes={num_classes!r}")
    return num_classes


@keras.saving.register_keras_serializable(package="keras_facemargin")
class CosineDense(FaceHead):
    """Scaled cosine classifier `s * cos(theta_j)` with L2-normalised weights.

    This is Norm-Softmax (NormFace, Wang et al. 2017) and the base class of all
    margin heads. Subclasses override `target_logit(cos_y, labels)` to change
    the target-class cosine.

    Call with `[embeddings, labels]` during training or with `embeddings` (or
    `[embeddings]`) at inference. Embeddings are L2-normalised inside the layer.
    Labels are integer class ids of shape (B,) or (B, 1).

    Args:
        num_classes: number of identities C.
        scale: the logit scale s.
        kernel_initializer: initializer of the (d, C) class-centre matrix.
        kernel_regularizer: optional regularizer of that matrix.

    Example:
        >>> head = CosineDense(num_classes=10, scale=30.0)
        >>> logits = head([embeddings, labels])
    """

    def __init__(
        self,
        num_classes,
        scale=64.0,
        kernel_initializer="glorot_normal",
        kernel_regularizer=None,
        **kwargs,
    ):
        # Margin heads stay float32 under mixed precision unless asked otherwise.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_classes = _check_num_classes(num_classes)
        self.scale = _check_positive("scale", scale)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def build(self, input_shape):
        build_class_kernel(self, input_shape)

    # -- math -------------------------------------------------------------------
    def cosine(self, embeddings):
        """cos(theta_j) between L2-normalised embeddings and class centres, (B, C).

        `x_n @ normalize(W)` through `normalized_matmul`: the same function as normalising the
        kernel, with a hand-written gradient that keeps the C x d work to the matmuls and one
        scaled copy (see `keras_facemargin.layers.normalized_matmul`).
        """
        x = ops.normalize(ops.cast(embeddings, self.compute_dtype), axis=-1, epsilon=1e-12)
        w = ops.cast(self.kernel, self.compute_dtype)
        class_axis = 0 if getattr(self, "class_major_kernel", False) else 1
        return ops.clip(normalized_matmul(x, w, class_axis=class_axis), -1.0, 1.0)

    def target_logit(self, cos_y, labels):
        """Target-class cosine after the margin; identity for Norm-Softmax."""
        return cos_y

    def _prepare_labels(self, labels, batch_size_like=None):
        return prepare_indices(labels, self.num_classes, "labels")

    def apply_margin(self, cos, labels, cos_y_new):
        """Replace the target column of `cos` by `cos_y_new`, then scale.

        A scatter of B values instead of a (B, C) one-hot blend: at 85k classes
        the one-hot formulation costs three extra passes over the logits.
        """
        rows = ops.arange(ops.shape(labels)[0], dtype=labels.dtype)
        indices = ops.stack([rows, labels], axis=1)
        return self.scale * ops.scatter_update(cos, indices, ops.cast(cos_y_new, cos.dtype))

    def inference_logits(self, embeddings, cos):
        """Logits without labels: `s * cos(theta_j)` (SphereFace uses ||x|| instead of s)."""
        return self.scale * cos

    def logits_from_cosine(self, cos, labels, embeddings=None, training=None):
        """Training logits from a cosine matrix; the extension point of the heads.

        Heads that only change the target cosine override `target_logit`; heads
        that change more (negatives, feature norms, extra losses) override this.
        `SubFaceDense` calls it with cosines computed on a feature subspace.
        """
        cos_y = ops.take_along_axis(cos, ops.expand_dims(labels, -1), axis=-1)[:, 0]
        return self.apply_margin(cos, labels, self.target_logit(cos_y, labels))

    def check_extra_input(self, extra):
        """Refuse a third input; heads that take one (KappaMarginDense) override this."""
        if extra is not None:
            raise ValueError(
                f"{type(self).__name__} takes `embeddings` or `[embeddings, labels]`; "
                "a third input (sample index / encoder embeddings) is used only by KappaMarginDense."
            )

    def call(self, inputs, training=None):
        embeddings, labels, extra = split_inputs(inputs)
        self.check_extra_input(extra)
        cos = self.cosine(embeddings)
        if labels is None:
            return self.inference_logits(embeddings, cos)
        labels = self._prepare_labels(labels, cos)
        if training and _state.state_updates_enabled():
            self.observe_batch(embeddings, labels, extra)
        return self.logits_from_cosine(cos, labels, embeddings, training)

    # -- Partial FC (the head protocol, see keras_facemargin.layers.base) ---------------
    def sampled_logits(self, embeddings, centres, classes, columns, class_ids, training=None, cos=None):
        """Cosines to the sampled centres (unless given), then `partial_fc_logits`."""
        if cos is None:
            cos = sampled_cosine(embeddings, centres, self.compute_dtype)
        return self.partial_fc_logits(cos, columns, class_ids, embeddings, training)

    def partial_fc_logits(self, cos, columns, class_ids, embeddings=None, training=None):
        """`logits_from_cosine` on sampled cosines (B, K): the margin on column `columns`,
        with `target_logit` given the TRUE class ids `class_ids` (class-indexed margins).

        A head that overrides `logits_from_cosine` overrides this too; when its labels only
        index columns of `cos` (no class-indexed state, no C-wide tensors) that is
        `return self.logits_from_cosine(cos, columns, embeddings, training)`.
        """
        cos_y = ops.take_along_axis(cos, ops.expand_dims(columns, -1), axis=-1)[:, 0]
        return self.apply_margin(cos, columns, self.target_logit(cos_y, class_ids))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "scale": self.scale,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            }
        )
        return config


def clipped_cos_sin(cos):
    """Clip cos(theta) away from +-1 and return (cos, sin(theta) >= 0).

    The clip is straight-through: its gradient is 1, so a cosine of exactly +-1
    still receives the (finite) gradient of the clipped point instead of 0.
    """
    cos = cos + ops.stop_gradient(ops.clip(cos, -1.0 + COS_EPS, 1.0 - COS_EPS) - cos)
    sin = ops.sqrt(ops.maximum(1.0 - ops.square(cos), 0.0))
    return cos, sin


def arc_target(cos_y, margin, easy_margin=False):
    """ArcFace target `cos(theta + m)` with the original fallback (eq. 3 of ArcFace).

    Where `theta + m > pi` the function would stop decreasing, so insightface
    uses `cos(theta) - m * sin(m)` there (monotone). With `easy_margin` the
    margin is applied only where `cos(theta) > 0`. `margin` may be a scalar or a
    per-sample tensor (KappaFace).
    """
    cos_c, sin = clipped_cos_sin(cos_y)
    cos_m, sin_m = ops.cos(margin), ops.sin(margin)
    phi = cos_c * cos_m - sin * sin_m
    if easy_margin:
        return ops.where(cos_c > 0.0, phi, cos_c)
    threshold = ops.cos(math.pi - margin)
    return ops.where(cos_c > threshold, phi, cos_c - margin * sin_m)
