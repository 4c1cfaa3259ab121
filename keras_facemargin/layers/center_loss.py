"""Center loss (Wen, Zhang, Li & Qiao, ECCV 2016) on top of a softmax classifier."""

import keras
from keras import ops

from keras_facemargin.layers import _state
from keras_facemargin.layers import _zoo_common as zc
from keras_facemargin.layers.base import CLASSES, prepare_indices, split_inputs
from keras_facemargin.layers.cosine_dense import _check_nonnegative
from keras_facemargin.layers.softmax import SoftmaxDense


@keras.saving.register_keras_serializable(package="keras_facemargin")
class CenterLossDense(SoftmaxDense):
    """Softmax head plus the center loss `lambda/2 * mean_i ||x_i - c_{y_i}||^2` (Wen et al. eq. 2, 5).

    Returns the softmax logits `W^T x + b`; when called with labels it adds the
    center loss with `add_loss` (averaged over the batch, as the official Caffe
    `CenterLossLayer`: sum / M / 2). The centres are not trained by gradient
    descent; in training they follow the paper's update (eq. 4, Algorithm 1),
    computed with the centres before the update:
    `c_j <- c_j - alpha * sum_i [y_i = j](c_j - x_i) / (1 + sum_i [y_i = j])`.
    Under `tf.distribute` the update uses the features of all replicas.
    Defaults lambda=0.003, alpha=0.5 (the paper's face experiments).

    Args:
        num_classes: number of identities.
        center_weight: lambda.
        center_alpha: alpha, the centre learning rate (in [0, 1]).
        center_initializer: initial centres (the paper does not specify; glorot_uniform here).
        **kwargs: see `SoftmaxDense`.

    Example:
        >>> head = CenterLossDense(num_classes=10575)
        >>> logits = head([embeddings, labels], training=True)  # updates head.centers
    """

    def __init__(
        self, num_classes, center_weight=0.003, center_alpha=0.5, center_initializer="glorot_uniform", **kwargs
    ):
        super().__init__(num_classes, **kwargs)
        self.center_weight = _check_nonnegative("center_weight", center_weight)
        self.center_alpha = _check_nonnegative("center_alpha", center_alpha)
        if self.center_alpha > 1.0:
            raise ValueError(f"`center_alpha` must be in [0, 1]. Received: center_alpha={center_alpha!r}")
        self.center_initializer = keras.initializers.get(center_initializer)

    def build(self, input_shape):
        super().build(input_shape)
        self.centers = self.add_weight(
            name="centers",
            shape=(self.num_classes, self.embedding_dim),
            initializer=self.center_initializer,
            trainable=False,
            aggregation="only_first_replica",
        )

    def call(self, inputs, training=None):
        embeddings, labels, _ = split_inputs(inputs)
        logits = self.logits(embeddings)
        if labels is None:
            return logits
        self.center_term(embeddings, prepare_indices(labels, self.num_classes, "labels"), training)
        return logits

    def sampled_logits(self, embeddings, centres, classes, columns, class_ids, training=None, cos=None):
        """The softmax logits on the sampled rows, plus the center loss of the TRUE class ids."""
        logits = super().sampled_logits(embeddings, centres, classes, columns, class_ids, training)
        self.center_term(embeddings, class_ids, training)
        return logits

    def variable_axes(self):
        return {**super().variable_axes(), "centers": (CLASSES, None)}

    def center_term(self, embeddings, labels, training=None):
        """Add the center loss of `labels` (class ids) and, in training, update their centres."""
        x = ops.cast(embeddings, self.compute_dtype)
        centers = ops.stop_gradient(_state.gather_rows(self.centers, labels))
        zc.add_loss_if_concrete(
            self, self.center_weight * 0.5 * ops.mean(ops.sum(ops.square(x - centers), axis=-1))
        )
        if training and _state.state_updates_enabled():
            self._update_centers(ops.stop_gradient(x), labels)

    def _update_centers(self, x, labels):
        x, labels = _state.all_gather(x), _state.all_gather(labels)
        old = _state.gather_rows(self.centers, labels)
        counts = ops.segment_sum(ops.ones_like(labels, dtype=x.dtype), labels, num_segments=self.num_classes)
        per_sample = (old - x) / ops.expand_dims(1.0 + ops.take(counts, labels, axis=0), -1)
        _state.scatter_add_rows(self.centers, labels, -self.center_alpha * per_sample)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "center_weight": self.center_weight,
                "center_alpha": self.center_alpha,
                "center_initializer": keras.initializers.serialize(self.center_initializer),
            }
        )
        return config
