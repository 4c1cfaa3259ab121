"""Improved ResNet (IResNet) face backbones, insightface-compatible.

Layout of insightface ``recognition/arcface_torch/backbones/iresnet.py``
(the "r18/r34/r50/r100/r200" models of ArcFace), i.e. the "IR" residual
unit of Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face
Recognition" (CVPR 2019, https://arxiv.org/abs/1801.07698) built on
Duta et al., "Improved Residual Networks for Image and Video Recognition"
(https://arxiv.org/abs/2004.04989) and He et al., "Identity Mappings in
Deep Residual Networks" (https://arxiv.org/abs/1603.05027).

Layer names map one-to-one to the PyTorch module names::

    stem_conv / stem_bn / stem_prelu          conv1 / bn1 / prelu
    stage{s}_block{b}_bn1                     layer{s}.{b}.bn1
    stage{s}_block{b}_conv1                   layer{s}.{b}.conv1
    stage{s}_block{b}_bn2                     layer{s}.{b}.bn2
    stage{s}_block{b}_prelu                   layer{s}.{b}.prelu
    stage{s}_block{b}_conv2                   layer{s}.{b}.conv2
    stage{s}_block{b}_bn3                     layer{s}.{b}.bn3
    stage{s}_block0_downsample_conv           layer{s}.0.downsample.0
    stage{s}_block0_downsample_bn             layer{s}.0.downsample.1
    head_bn / head_fc / head_features         bn2 / fc / features

(`s` is 1-based like insightface's ``layer1..layer4``; `b` is 0-based.)
"""

import keras

from keras_facemargin.backbones.embedding_head import _is_int
from keras_facemargin.backbones.embedding_head import batch_norm
from keras_facemargin.backbones.embedding_head import embedding_head
from keras_facemargin.backbones.embedding_head import prelu
from keras_facemargin.backbones.embedding_head import validate_dropout
from keras_facemargin.backbones.embedding_head import validate_embedding_dim
from keras_facemargin.backbones.embedding_head import legacy_config
from keras_facemargin.backbones.embedding_head import resolve_image_size
from keras_facemargin.backbones.embedding_head import validate_int_tuple

IRESNET_STAGE_BLOCKS = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    200: (6, 26, 60, 6),
}

# insightface initialises every conv with N(0, 0.1).
_CONV_INIT = {"class_name": "RandomNormal", "config": {"stddev": 0.1}}


def _conv(filters, kernel_size, strides, name):
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="valid",
        use_bias=False,
        kernel_initializer=keras.initializers.get(_CONV_INIT),
        name=name,
    )


def _ibasic_block(x, filters, stride, downsample, name):
    """insightface ``IBasicBlock``: BN-Conv-BN-PReLU-Conv-BN + shortcut."""
    shortcut = x
    y = batch_norm(f"{name}_bn1")(x)
    y = keras.layers.ZeroPadding2D(1, name=f"{name}_pad1")(y)
    y = _conv(filters, 3, 1, f"{name}_conv1")(y)
    y = batch_norm(f"{name}_bn2")(y)
    y = prelu(f"{name}_prelu")(y)
    y = keras.layers.ZeroPadding2D(1, name=f"{name}_pad2")(y)
    y = _conv(filters, 3, stride, f"{name}_conv2")(y)
    y = batch_norm(f"{name}_bn3")(y)
    if downsample:
        shortcut = _conv(filters, 1, stride, f"{name}_downsample_conv")(x)
        shortcut = batch_norm(f"{name}_downsample_bn")(shortcut)
    return keras.layers.Add(name=f"{name}_add")([y, shortcut])


@keras.saving.register_keras_serializable(package="keras_facemargin")
class IResNet(keras.Model):
    """Improved ResNet (IResNet) face-recognition backbone (insightface).

    Stem: 3x3 conv (`stage_filters[0]` = 64 filters, stride 1) -> BN ->
    PReLU. Four stages of ``IBasicBlock``s (BN -> 3x3 conv -> BN -> PReLU
    -> 3x3 conv(stride) -> BN, plus shortcut); the first block of every
    stage has stride 2 and a 1x1-conv/BN downsample shortcut. Head: BN ->
    Dropout -> Flatten -> Dense(embedding_dim) -> BN without scale (see
    `embedding_head`; its Dropout-before-Flatten equals insightface's
    Flatten-before-Dropout since dropout is elementwise).
    Explicit `ZeroPadding2D(1)` + "valid" convolutions reproduce PyTorch's
    symmetric padding, so insightface weights convert one-to-one (transpose
    conv kernels OIHW -> HWIO, PReLU (C,) -> (1, 1, C), and permute the
    `head_fc` kernel from CHW to HWC flatten order).

    Inputs are channels-last float images normalised as
    `(pixel - 127.5) / 128`. The output is the raw, not L2-normalised,
    embedding.

    Total downsampling is 16: a 112x112 input gives 56, 28, 14 and 7 pixel
    stage outputs and a 7x7x512 map before the head (as in insightface).

    Args:
        depth: int, one of 18, 34, 50, 100, 200. Selects the number of
            blocks per stage (ignored when `stage_blocks` is given, but
            still validated and used for the default name).
        image_size: input size, an int or `(height, width)`; default
            `(112, 112)` (RGB: the input is `(height, width, 3)`). The old
            `image_shape=(height, width, 3)` still works, with a warning.
        embedding_dim: int, embedding size (insightface `num_features`).
        dropout: float in `[0, 1)`, dropout rate before the dense layer.
        stage_blocks: optional tuple of 4 ints overriding the blocks per
            stage (e.g. `(1, 1, 1, 1)` for tiny test models).
        stage_filters: tuple of 4 ints, filters per stage.
        fp16_head: bool. insightface runs the body under autocast but
            computes `fc`/`features` in float32. With `False` (default)
            `head_fc` and `head_features` are forced to `"float32"` even
            under a mixed-precision policy; with `True` they follow the
            global dtype policy.
        name: model name, default `f"iresnet{depth}"`.
        **kwargs: passed to `keras.Model` (e.g. `trainable`).

    Example:
    >>> model = IResNet(depth=50)                  # insightface "r50"
    >>> tiny = IResNet(stage_blocks=(1, 1, 1, 1), stage_filters=(8, 8, 16, 16),
    ...                image_size=32, embedding_dim=16)
    >>> tiny(np.zeros((2, 32, 32, 3), "float32")).shape
    TensorShape([2, 16])
    """

    def __init__(
        self,
        depth=50,
        image_size=None,
        embedding_dim=512,
        dropout=0.0,
        stage_blocks=None,
        stage_filters=(64, 128, 256, 512),
        fp16_head=False,
        name=None,
        **kwargs,
    ):
        if not _is_int(depth) or int(depth) not in IRESNET_STAGE_BLOCKS:
            raise ValueError(
                f"`depth` must be one of {sorted(IRESNET_STAGE_BLOCKS)}. "
                f"Received: depth={depth!r}"
            )
        image_size = resolve_image_size(image_size, kwargs, (112, 112), min_size=16)
        image_shape = image_size + (3,)
        embedding_dim = validate_embedding_dim(embedding_dim)
        dropout = validate_dropout(dropout)
        if stage_blocks is not None:
            stage_blocks = validate_int_tuple(stage_blocks, "stage_blocks")
        stage_filters = validate_int_tuple(stage_filters, "stage_filters")
        depth = int(depth)
        blocks = stage_blocks or IRESNET_STAGE_BLOCKS[depth]

        # === Functional model ===
        inputs = keras.Input(shape=image_shape, name="images")
        x = keras.layers.ZeroPadding2D(1, name="stem_pad")(inputs)
        x = _conv(stage_filters[0], 3, 1, "stem_conv")(x)
        x = batch_norm("stem_bn")(x)
        x = prelu("stem_prelu")(x)
        for stage, (num_blocks, filters) in enumerate(
            zip(blocks, stage_filters), start=1
        ):
            for block in range(num_blocks):
                x = _ibasic_block(
                    x,
                    filters,
                    stride=2 if block == 0 else 1,
                    downsample=block == 0,
                    name=f"stage{stage}_block{block}",
                )
        outputs = embedding_head(
            x,
            embedding_dim,
            dropout,
            name_prefix="head",
            head_dtype=None if fp16_head else "float32",
        )
        super().__init__(
            inputs=inputs,
            outputs=outputs,
            name=name or f"iresnet{depth}",
            **kwargs,
        )

        # === Config ===
        self.depth = depth
        self.image_size = image_size
        self.image_shape = image_shape  # the Keras input shape, (height, width, 3)
        self.embedding_dim = embedding_dim
        self.dropout = dropout
        self.stage_blocks = stage_blocks
        self.stage_filters = stage_filters
        self.fp16_head = bool(fp16_head)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "depth": self.depth,
            "image_size": self.image_size,
            "embedding_dim": self.embedding_dim,
            "dropout": self.dropout,
            "stage_blocks": self.stage_blocks,
            "stage_filters": self.stage_filters,
            "fp16_head": self.fp16_head,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**legacy_config(config))


def IResNet18(**kwargs):
    """IResNet-18 (insightface "r18", blocks (2, 2, 2, 2)). See `IResNet`."""
    return IResNet(depth=18, **kwargs)


def IResNet34(**kwargs):
    """IResNet-34 (insightface "r34", blocks (3, 4, 6, 3)). See `IResNet`."""
    return IResNet(depth=34, **kwargs)


def IResNet50(**kwargs):
    """IResNet-50 (insightface "r50", blocks (3, 4, 14, 3)). See `IResNet`."""
    return IResNet(depth=50, **kwargs)


def IResNet100(**kwargs):
    """IResNet-100 (insightface "r100", blocks (3, 13, 30, 3)). See `IResNet`."""
    return IResNet(depth=100, **kwargs)


def IResNet200(**kwargs):
    """IResNet-200 (insightface "r200", blocks (6, 26, 60, 6)). See `IResNet`."""
    return IResNet(depth=200, **kwargs)
