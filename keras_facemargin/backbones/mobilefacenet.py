"""MobileFaceNet face backbone (insightface "mbf"), insightface-compatible.

Chen et al., "MobileFaceNets: Efficient CNNs for Accurate Real-Time Face
Verification on Mobile Devices" (CCBR 2018, https://arxiv.org/abs/1804.07573),
in the layout of insightface ``recognition/arcface_torch/backbones/
mobilefacenet.py`` (``get_mbf``: ``scale=2, blocks=(1, 4, 6, 2)``;
``get_mbf_large``: ``scale=4, blocks=(2, 8, 12, 4)``). insightface's ``scale``
is ``outer_width_factor`` here (in this package ``scale`` is only the logit scale).

Layer names map to the PyTorch module names (``L`` = ``layers``)::

    stem_conv / stem_bn / stem_prelu        L.0.layers.{0,1,2}
    stage1_conv / _bn / _prelu              L.1.layers.{0,1,2}  (blocks[0] == 1)
    stage1_block{i}_*                       L.1.layers.{i}      (blocks[0] > 1)
    stage{k}_downsample_*                   L.{2,4,6}           (k = 2, 3, 4)
    stage{k}_block{i}_*                     L.{3,5,7}.layers.{i}
      *_expand_conv/_bn/_prelu              .layers.0.layers.{0,1,2}
      *_dw_conv/_bn/_prelu                  .layers.1.layers.{0,1,2}
      *_project_conv/_bn                    .layers.2.layers.{0,1}
    sep_conv / sep_bn / sep_prelu           conv_sep.layers.{0,1,2}
    head_gdc_conv / head_gdc_bn             features.layers.0.layers.{0,1}
    head_fc / head_features                 features.layers.{2,3}
"""

import warnings

import keras
from keras import ops

from keras_facemargin.backbones.embedding_head import _is_int
from keras_facemargin.backbones.embedding_head import batch_norm
from keras_facemargin.backbones.embedding_head import prelu
from keras_facemargin.backbones.embedding_head import validate_dropout
from keras_facemargin.backbones.embedding_head import validate_embedding_dim
from keras_facemargin.backbones.embedding_head import legacy_config
from keras_facemargin.backbones.embedding_head import resolve_image_size
from keras_facemargin.backbones.embedding_head import validate_int_tuple

# PyTorch kaiming_normal_(mode="fan_out", nonlinearity="relu"), as insightface.
_KAIMING_FAN_OUT = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "untruncated_normal"},
}
# For Keras depthwise kernels (k, k, C, 1), "fan_in" = k*k*C equals PyTorch's
# fan_out of the (C, 1, k, k) weight.
_KAIMING_DEPTHWISE = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_in", "distribution": "untruncated_normal"},
}


@keras.saving.register_keras_serializable(package="keras_facemargin")
class GroupedConv2D(keras.layers.Layer):
    """Grouped 2-D convolution (no bias, "valid" padding) computed as a depthwise conv.

    Same weights and result as `keras.layers.Conv2D(filters, kernel_size,
    groups=groups, use_bias=False)` (kernel `(kh, kw, in/groups, filters)`),
    but TensorFlow's CPU kernels have no grouped convolution: Keras falls back
    to XLA there, which made a MobileFaceNet train step take ~100 s. Here
    output `(g, j)` is the sum over the group's inputs `i` of a depthwise conv
    with multiplier `filters/groups`, which runs on the fast depthwise kernels.

    Args:
        filters: output channels (a multiple of `groups`).
        kernel_size: int or (kh, kw).
        strides: int or (sh, sw).
        groups: number of groups (divides the input channels).
        kernel_initializer: initializer of the grouped kernel.
    """

    def __init__(self, filters, kernel_size, strides=1, groups=1, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        self.strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
        self.groups = int(groups)
        if self.groups < 1 or self.filters % self.groups:
            raise ValueError(f"`filters` ({filters}) must be a positive multiple of `groups` ({groups}).")
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        if channels % self.groups:
            raise ValueError(f"Input channels ({channels}) must be a multiple of `groups` ({self.groups}).")
        self.kernel = self.add_weight(
            name="kernel",
            shape=(*self.kernel_size, channels // self.groups, self.filters),
            initializer=self.kernel_initializer,
        )

    def call(self, inputs):
        kh, kw, ci, _ = self.kernel.shape
        g, co = self.groups, self.filters // self.groups
        # (kh, kw, ci, g*co) -> depthwise kernel (kh, kw, g*ci, co): input channel k*ci + i, multiplier j.
        kernel = ops.reshape(ops.cast(self.kernel, self.compute_dtype), (kh, kw, ci, g, co))
        kernel = ops.reshape(ops.transpose(kernel, (0, 1, 3, 2, 4)), (kh, kw, g * ci, co))
        y = ops.depthwise_conv(inputs, kernel, strides=self.strides, padding="valid")
        h, w = ops.shape(y)[1], ops.shape(y)[2]
        y = ops.sum(ops.reshape(y, (-1, h, w, g, ci, co)), axis=4)
        return ops.reshape(y, (-1, h, w, g * co))

    def compute_output_shape(self, input_shape):
        def out(n, k, s):
            return None if n is None else (n - k) // s + 1

        return (
            input_shape[0],
            out(input_shape[1], self.kernel_size[0], self.strides[0]),
            out(input_shape[2], self.kernel_size[1], self.strides[1]),
            self.filters,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "groups": self.groups,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config


def _conv(filters, kernel_size, strides, name, groups=1, dtype=None):
    if groups > 1:
        return GroupedConv2D(
            filters,
            kernel_size,
            strides=strides,
            groups=groups,
            kernel_initializer=keras.initializers.get(_KAIMING_FAN_OUT),
            name=name,
            dtype=dtype,
        )
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="valid",
        groups=groups,
        use_bias=False,
        kernel_initializer=keras.initializers.get(_KAIMING_FAN_OUT),
        name=name,
        dtype=dtype,
    )


def _depthwise(kernel_size, strides, name, dtype=None):
    return keras.layers.DepthwiseConv2D(
        kernel_size,
        strides=strides,
        padding="valid",
        use_bias=False,
        depthwise_initializer=keras.initializers.get(_KAIMING_DEPTHWISE),
        name=name,
        dtype=dtype,
    )


def _conv_block(x, filters, kernel_size, strides, name, groups=1, dtype=None):
    """insightface ``ConvBlock``: Conv (pad k//2) -> BN -> PReLU."""
    if kernel_size > 1:
        x = keras.layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
    x = _conv(filters, kernel_size, strides, f"{name}_conv", groups, dtype)(x)
    x = batch_norm(f"{name}_bn", dtype=dtype)(x)
    return prelu(f"{name}_prelu", dtype=dtype)(x)


def _depthwise_unit(x, out_channels, expand_channels, strides, residual, name):
    """insightface ``DepthWise``: 1x1 expand -> 3x3 depthwise -> 1x1 linear."""
    shortcut = x
    y = _conv_block(x, expand_channels, 1, 1, f"{name}_expand")
    y = keras.layers.ZeroPadding2D(1, name=f"{name}_dw_pad")(y)
    y = _depthwise(3, strides, f"{name}_dw_conv")(y)
    y = batch_norm(f"{name}_dw_bn")(y)
    y = prelu(f"{name}_dw_prelu")(y)
    y = _conv(out_channels, 1, 1, f"{name}_project_conv")(y)
    y = batch_norm(f"{name}_project_bn")(y)
    if residual:
        y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return y


@keras.saving.register_keras_serializable(package="keras_facemargin")
class MobileFaceNet(keras.Model):
    """MobileFaceNet face-recognition backbone (insightface "mbf").

    Conv-BN-PReLU stem (stride 2), a grouped 3x3 conv (or residual
    bottlenecks when `blocks[0] > 1`), three stride-2 bottlenecks each
    followed by `blocks[k]` residual bottlenecks (1x1 expand conv-BN-PReLU,
    3x3 depthwise conv-BN-PReLU, 1x1 linear conv-BN), a 1x1 conv-BN-PReLU
    to 512 channels, then the global depthwise convolution (GDC) head:
    linear depthwise conv with a kernel equal to the final feature-map size
    (7x7 for 112x112 inputs) -> BN -> Flatten -> Dense(no bias) -> BN.

    Channels for `width_multiplier=1.0, outer_width_factor=2` are exactly
    insightface's `get_mbf` (its `scale=2`): outer widths
    `64*outer_width_factor`/`128*outer_width_factor`, expansion widths
    128/256/512 (not scaled by it, as in insightface) and 512 GDC
    channels. `width_multiplier` scales every channel count (outer,
    expansion, group count and GDC channels) for small models.

    Differences from insightface (all no-ops at the defaults):
    the GDC kernel follows the actual final feature-map size instead of a
    hard-coded 7x7; an optional `head_dropout` (rate `dropout`, default 0)
    sits before `head_fc`; explicit `ZeroPadding2D` + "valid" convolutions
    reproduce PyTorch's symmetric padding. Like insightface, and unlike
    `IResNet`, the final `head_features` BN keeps a trainable gamma.
    Weight conversion: transpose OIHW conv kernels to HWIO (depthwise
    `(C, 1, k, k)` to `(k, k, C, 1)`), PReLU `(C,)` to `(1, 1, C)`, `fc`
    weight `(D, C)` to `(C, D)` (after GDC the map is 1x1, so no flatten
    permutation is needed).

    Args:
        image_size: input size, an int or `(height, width)`, at least 16x16;
            default `(112, 112)`. Total downsampling is 16. The old
            `image_shape=(height, width, 3)` still works, with a warning.
        embedding_dim: int, embedding size (insightface `num_features`).
        width_multiplier: positive float scaling all channel counts.
        blocks: tuple of 4 positive ints, residual blocks per stage
            (insightface `blocks`; `(2, 8, 12, 4)` with `outer_width_factor=4`
            is "mbf_large").
        outer_width_factor: positive int, insightface's `scale`: the factor
            of the outer widths (2 for "mbf"). The old keyword `scale` still
            works, with a warning; saved configs with `scale` load as is.
        dropout: float in `[0, 1)`, dropout rate before `head_fc`.
        fp16_head: bool. insightface computes `conv_sep` and the GDC head in
            float32 under autocast; with `False` (default) those layers are
            forced to `"float32"` under mixed precision, with `True` they
            follow the global dtype policy.
        name: model name, default `"mobilefacenet"`.
        **kwargs: passed to `keras.Model` (e.g. `trainable`).

    Example:
    >>> model = MobileFaceNet()                       # insightface "mbf"
    >>> tiny = MobileFaceNet(image_size=32, width_multiplier=0.125,
    ...                      blocks=(1, 1, 1, 1), embedding_dim=16)
    >>> tiny(np.zeros((2, 32, 32, 3), "float32")).shape
    TensorShape([2, 16])
    """

    def __init__(
        self,
        image_size=None,
        embedding_dim=512,
        width_multiplier=1.0,
        blocks=(1, 4, 6, 2),
        outer_width_factor=2,
        dropout=0.0,
        fp16_head=False,
        name=None,
        **kwargs,
    ):
        if "scale" in kwargs:  # the old name (insightface's)
            warnings.warn("MobileFaceNet's `scale` is now `outer_width_factor` (`scale` is only the logit scale "
                          "in this package).", DeprecationWarning, stacklevel=2)
            outer_width_factor = kwargs.pop("scale")
        image_size = resolve_image_size(image_size, kwargs, (112, 112), min_size=16)
        image_shape = image_size + (3,)
        embedding_dim = validate_embedding_dim(embedding_dim)
        dropout = validate_dropout(dropout)
        blocks = validate_int_tuple(blocks, "blocks")
        if not _is_int(outer_width_factor) or outer_width_factor <= 0:
            raise ValueError(
                "`outer_width_factor` must be a positive int. "
                f"Received: outer_width_factor={outer_width_factor!r}"
            )
        outer_width_factor = int(outer_width_factor)
        if (
            isinstance(width_multiplier, bool)
            or not isinstance(width_multiplier, (int, float))
            or not width_multiplier > 0
        ):
            raise ValueError(
                "`width_multiplier` must be a positive float. "
                f"Received: width_multiplier={width_multiplier!r}"
            )
        width_multiplier = float(width_multiplier)

        def ch(n):
            return max(1, int(round(n * width_multiplier)))

        c1 = outer_width_factor * ch(64)  # insightface 64 * scale
        c2 = outer_width_factor * ch(128)  # insightface 128 * scale
        head_dtype = None if fp16_head else "float32"

        # === Functional model ===
        inputs = keras.Input(shape=image_shape, name="images")
        x = _conv_block(inputs, c1, 3, 2, "stem")
        if blocks[0] == 1:
            x = _conv_block(x, c1, 3, 1, "stage1", groups=ch(64))
        else:
            for i in range(blocks[0]):
                x = _depthwise_unit(x, c1, ch(128), 1, True, f"stage1_block{i}")
        stages = (
            # (out channels, downsample expansion, residual expansion)
            (c1, ch(128), ch(128)),
            (c2, ch(256), ch(256)),
            (c2, ch(512), ch(256)),
        )
        for k, (out_c, down_e, res_e) in enumerate(stages, start=2):
            x = _depthwise_unit(x, out_c, down_e, 2, False, f"stage{k}_downsample")
            for i in range(blocks[k - 1]):
                x = _depthwise_unit(x, out_c, res_e, 1, True, f"stage{k}_block{i}")
        gdc_channels = ch(512)
        x = _conv_block(x, gdc_channels, 1, 1, "sep", dtype=head_dtype)
        # Global depthwise conv: kernel = the actual final spatial size.
        kernel = (int(x.shape[1]), int(x.shape[2]))
        x = _depthwise(kernel, 1, "head_gdc_conv", dtype=head_dtype)(x)
        x = batch_norm("head_gdc_bn", dtype=head_dtype)(x)
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
        x = keras.layers.Flatten(name="head_flatten")(x)
        x = keras.layers.Dense(
            embedding_dim,
            use_bias=False,
            kernel_initializer=keras.initializers.get(_KAIMING_FAN_OUT),
            name="head_fc",
            dtype=head_dtype,
        )(x)
        outputs = batch_norm("head_features", dtype=head_dtype)(x)
        super().__init__(
            inputs=inputs,
            outputs=outputs,
            name=name or "mobilefacenet",
            **kwargs,
        )

        # === Config ===
        self.image_size = image_size
        self.image_shape = image_shape  # the Keras input shape, (height, width, 3)
        self.embedding_dim = embedding_dim
        self.width_multiplier = width_multiplier
        self.blocks = blocks
        self.outer_width_factor = outer_width_factor
        self.dropout = dropout
        self.fp16_head = bool(fp16_head)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "image_size": self.image_size,
            "embedding_dim": self.embedding_dim,
            "width_multiplier": self.width_multiplier,
            "blocks": self.blocks,
            "outer_width_factor": self.outer_width_factor,
            "dropout": self.dropout,
            "fp16_head": self.fp16_head,
        }

    @classmethod
    def from_config(cls, config):
        # Files saved before the renames hold `image_shape` and `scale` (the outer-width factor).
        return cls(**legacy_config(config, renamed={"scale": "outer_width_factor"}))
