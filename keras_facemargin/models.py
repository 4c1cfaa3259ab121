"""`FaceRecognizer`: backbone + margin head, trained with `fit`, used through `embedder`."""

import keras
from keras import ops

from keras_facemargin.layers import _state
from keras_facemargin.layers.kappaface import KappaMarginDense


def split_face_inputs(inputs):
    """Return (images, labels, sample_index) from the accepted input layouts.

    Accepted: a dict with "images" and optionally "labels" and "index"; a
    tuple/list `(images, labels)` or `(images, labels, index)`; or images alone.
    """
    if isinstance(inputs, dict):
        if "images" not in inputs:
            raise ValueError(
                "A dict input must have an 'images' key (and optionally 'labels', 'index'); "
                f"got keys {sorted(inputs)}."
            )
        return inputs["images"], inputs.get("labels"), inputs.get("index")
    if isinstance(inputs, (list, tuple)):
        if not 1 <= len(inputs) <= 3:
            raise ValueError(
                "Expected (images,), (images, labels) or (images, labels, index); "
                f"got a sequence of length {len(inputs)}."
            )
        padded = list(inputs) + [None] * (3 - len(inputs))
        return tuple(padded)
    return inputs, None, None


def kappa_head(head):
    """The `KappaMarginDense` that `head` is or wraps (e.g. in `PartialFC`), else None."""
    while not isinstance(head, KappaMarginDense):
        head = getattr(head, "head", None)
        if not isinstance(head, keras.layers.Layer):
            return None
    return head


@keras.saving.register_keras_serializable(package="keras_facemargin")
class FaceRecognizer(keras.Model):
    """A face-recognition training model: `(images, labels) -> margin logits`.

    The backbone maps images to embeddings; the head (any layer of
    `keras_facemargin.layers`) maps `[embeddings, labels]` to scaled logits, to
    be trained with `SparseCategoricalCrossentropy(from_logits=True)`. With a
    `KappaMarginDense(estimator="momentum_encoder")` head the model also owns the
    momentum encoder, an EMA copy of the backbone (eq. 7 of KappaFace) updated
    at every training step before it embeds the batch; all its weights,
    BatchNormalization statistics included, follow the EMA (the official code
    copies only parameters).

    Inputs: a dict `{"images", "labels", "index"}` (what
    `keras_facemargin.data` pipelines yield), or a tuple. The sample index is
    needed only by the memory-buffer estimator.

    Args:
        backbone: a Keras model mapping images to (batch, d) embeddings.
        head: a margin layer, e.g. `ArcMarginDense` or `KappaMarginDense`.

    Example:
        >>> model = FaceRecognizer(IResNet(depth=50), ArcMarginDense(num_classes=85742))
        >>> model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        >>> model.fit(dataset, epochs=24, callbacks=[KappaUpdater()])
        >>> embeddings = model.embedder.predict(images)  # L2-normalised
    """

    def __init__(self, backbone, head, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(backbone, keras.Model):
            raise ValueError(f"`backbone` must be a keras.Model. Received: {type(backbone).__name__}")
        if not isinstance(head, keras.layers.Layer):
            raise ValueError(f"`head` must be a keras Layer. Received: {type(head).__name__}")
        self.backbone = backbone
        self.head = head
        self.momentum_encoder = None
        kappa = kappa_head(head)  # also inside PartialFC
        if kappa is not None and kappa.estimator == "momentum_encoder":
            encoder = keras.models.clone_model(backbone)
            encoder.set_weights(backbone.get_weights())
            encoder.trainable = False
            self.momentum_encoder = encoder

    def _update_momentum_encoder(self):
        m = kappa_head(self.head).encoder_momentum
        for target, source in zip(self.momentum_encoder.weights, self.backbone.weights):
            target.assign(m * target + (1.0 - m) * ops.cast(source, target.dtype))

    def call(self, inputs, training=None):
        images, labels, index = split_face_inputs(inputs)
        kappa_training = bool(training) and labels is not None and kappa_head(self.head) is not None
        if kappa_training and self.momentum_encoder is not None and _state.state_updates_enabled():
            # EMA from the weights as they were before this step touches them.
            self._update_momentum_encoder()
        embeddings = self.backbone(images, training=training)
        if labels is None:
            return self.head(embeddings, training=training)
        if not kappa_training:
            return self.head([embeddings, labels], training=training)
        if self.momentum_encoder is not None:
            extra = self.momentum_encoder(images, training=False)
        elif index is None:
            raise ValueError(
                "KappaMarginDense with the memory buffer needs the sample index: feed "
                "{'images', 'labels', 'index'} (keras_facemargin.data pipelines do)."
            )
        else:
            extra = index
        return self.head([embeddings, labels, extra], training=training)

    @property
    def embedder(self):
        """The backbone followed by L2 normalisation (no head), sharing weights."""
        cached = self.__dict__.get("_embedder_model")
        if cached is None:
            inputs = keras.Input(shape=self.backbone.input_shape[1:], name="images")
            outputs = keras.layers.UnitNormalization(name="l2_normalize")(self.backbone(inputs))
            cached = keras.Model(inputs, outputs, name="embedder")
            # Bypass Keras attribute tracking: the embedder only re-uses weights.
            object.__setattr__(self, "_embedder_model", cached)
        return cached

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "backbone": keras.saving.serialize_keras_object(self.backbone),
                "head": keras.saving.serialize_keras_object(self.head),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        config["head"] = keras.saving.deserialize_keras_object(config["head"])
        return cls(**config)
