"""Adapter putting the face embedding head on `keras.applications` ResNets.

He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016,
https://arxiv.org/abs/1512.03385) and "Identity Mappings in Deep Residual
Networks" (ECCV 2016, https://arxiv.org/abs/1603.05027), with the
ArcFace embedding head (https://arxiv.org/abs/1801.07698).
"""

import keras

from keras_facemargin.backbones.embedding_head import embedding_head
from keras_facemargin.backbones.embedding_head import validate_dropout
from keras_facemargin.backbones.embedding_head import validate_embedding_dim
from keras_facemargin.backbones.embedding_head import legacy_config
from keras_facemargin.backbones.embedding_head import resolve_image_size

SUPPORTED_ARCHITECTURES = (
    "ResNet50",
    "ResNet101",
    "ResNet152",
    "ResNet50V2",
    "ResNet101V2",
    "ResNet152V2",
)


@keras.saving.register_keras_serializable(package="keras_facemargin")
class KerasApplicationBackbone(keras.Model):
    """A `keras.applications` ResNet trunk with the face embedding head.

    Builds `keras.applications.<architecture>(include_top=False,
    weights=None)` on the model input (always randomly initialised: no
    download), then the shared BN -> Dropout -> Flatten -> Dense -> BN
    (no scale) head of `embedding_head`. The trunk's layers are inlined in
    this model, so their names are the stable `keras.applications` names
    (`conv1_conv`, `conv2_block1_1_conv`, ...); the head layers are
    `head_bn`, `head_dropout`, `head_flatten`, `head_fc`, `head_features`.

    Note that these ResNets downsample by 32 (7x7 stem conv stride 2 plus
    max-pooling), not 16 like `IResNet`: a 112x112 input gives a 4x4x2048
    (V1) map before the head. Inputs are expected normalised as
    `(pixel - 127.5) / 128`, like the other backbones (not the ImageNet
    preprocessing of `keras.applications`).

    Args:
        architecture: str, one of `SUPPORTED_ARCHITECTURES` ("ResNet50",
            "ResNet101", "ResNet152", "ResNet50V2", "ResNet101V2",
            "ResNet152V2").
        image_size: input size, an int or `(height, width)`, at least 32x32;
            default `(112, 112)`. The old `image_shape=(height, width, 3)`
            still works, with a warning.
        embedding_dim: int, embedding size.
        dropout: float in `[0, 1)`, dropout rate before the dense layer.
        fp16_head: bool; with `False` (default) `head_fc` and
            `head_features` are forced to float32 under mixed precision.
        name: model name, default `f"{architecture.lower()}_face"`.
        **kwargs: passed to `keras.Model` (e.g. `trainable`).

    Example:
    >>> model = KerasApplicationBackbone("ResNet50", image_size=112)
    >>> model.output_shape
    (None, 512)
    """

    def __init__(
        self,
        architecture="ResNet50",
        image_size=None,
        embedding_dim=512,
        dropout=0.0,
        fp16_head=False,
        name=None,
        **kwargs,
    ):
        if architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                "`architecture` must be one of "
                f"{list(SUPPORTED_ARCHITECTURES)}. "
                f"Received: architecture={architecture!r}"
            )
        image_size = resolve_image_size(image_size, kwargs, (112, 112), min_size=32)
        image_shape = image_size + (3,)
        embedding_dim = validate_embedding_dim(embedding_dim)
        dropout = validate_dropout(dropout)

        # === Functional model ===
        inputs = keras.Input(shape=image_shape, name="images")
        trunk = getattr(keras.applications, architecture)(
            include_top=False,
            weights=None,
            input_tensor=inputs,
            input_shape=image_shape,
            pooling=None,
        )
        outputs = embedding_head(
            trunk.output,
            embedding_dim,
            dropout,
            name_prefix="head",
            head_dtype=None if fp16_head else "float32",
        )
        super().__init__(
            inputs=inputs,
            outputs=outputs,
            name=name or f"{architecture.lower()}_face",
            **kwargs,
        )

        # === Config ===
        self.architecture = architecture
        self.image_size = image_size
        self.image_shape = image_shape  # the Keras input shape, (height, width, 3)
        self.embedding_dim = embedding_dim
        self.dropout = dropout
        self.fp16_head = bool(fp16_head)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "architecture": self.architecture,
            "image_size": self.image_size,
            "embedding_dim": self.embedding_dim,
            "dropout": self.dropout,
            "fp16_head": self.fp16_head,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**legacy_config(config))
