"""Plain softmax classifier (a biased dense layer), the baseline of the ArcFace paper."""

import keras
from keras import ops

from keras_facemargin.layers import _state
from keras_facemargin.layers.base import CLASSES, FaceHead, build_class_kernel, class_centres, split_inputs
from keras_facemargin.layers.cosine_dense import _check_num_classes


@keras.saving.register_keras_serializable(package="keras_facemargin")
class SoftmaxDense(FaceHead):
    """Softmax head: logits `W^T x + b` on the raw (unnormalised) embedding.

    The "Softmax" row of the ArcFace paper's comparisons (Deng et al., CVPR
    2019, eq. 1). It accepts `[embeddings, labels]` like the margin heads so
    it can be swapped in by name; the labels are ignored.

    Args:
        num_classes: number of identities C.
        use_bias: add the bias b (eq. 1 has one).
        kernel_initializer, bias_initializer, kernel_regularizer: as in `Dense`.

    Example:
        >>> head = SoftmaxDense(num_classes=10)
        >>> logits = head([embeddings, labels])  # == head(embeddings)
    """

    def __init__(
        self,
        num_classes,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_classes = _check_num_classes(num_classes)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def build(self, input_shape):
        build_class_kernel(self, input_shape)
        self.bias = (
            self.add_weight(name="bias", shape=(self.num_classes,), initializer=self.bias_initializer)
            if self.use_bias
            else None
        )

    def logits(self, embeddings):
        logits = ops.matmul(ops.cast(embeddings, self.compute_dtype), class_centres(self))
        return logits + self.bias if self.use_bias else logits

    def call(self, inputs, training=None):
        embeddings, _, _ = split_inputs(inputs)
        return self.logits(embeddings)

    # -- the head protocol (keras_facemargin.layers.base) ----------------------------
    def sampled_logits(self, embeddings, centres, classes, columns, class_ids, training=None, cos=None):
        """`W_S^T x + b_S` on the sampled rows (the labels are not used)."""
        logits = ops.matmul(ops.cast(embeddings, self.compute_dtype), ops.transpose(centres))
        if self.use_bias:
            logits = logits + _state.gather_rows(self.bias, classes)
        return logits

    def variable_axes(self):
        axes = super().variable_axes()
        if self.use_bias:
            axes["bias"] = (CLASSES,)
        return axes

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            }
        )
        return config
