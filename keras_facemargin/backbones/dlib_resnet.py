"""dlib's face ResNet (``dlib_face_recognition_resnet_model_v1``) as a Keras 3 functional model.

The architecture is dlib's ``dnn_face_recognition_ex.cpp`` (op list:
`dlib_resnet_v1_spec`): a 29-convolution ResNet on 150x150 RGB
chips with 128-d output (no bias in the last layer, no L2 normalisation). Numerics follow dlib:

* input ``(pixel - mean_c) / 256`` per RGB channel (dlib's ``input_rgb_image``), done by the
  model's first layer, so the model takes RGB pixels in ``0..255``;
* a strided convolution has no padding (dlib's default padding is ``0`` for stride > 1 and
  ``kernel // 2`` otherwise), so sizes go 150 -> 72 -> 35 -> 17 -> 8 -> 3 (pooled shortcut 4)
  -> 1 (shortcut 2);
* batch norm is dlib's ``affine`` (``gamma * x + beta`` per channel);
* dlib's ``add_prev`` adds tensors of different shapes by zero-extending both to the larger size
  (channels and, in the last two down-sampling blocks, rows and columns): `ZeroExtendAdd`.

Weights come from dlib's ``.dat`` file through `keras_facemargin.convert.dlib`; use
``keras_facemargin.load("dlib_resnet_v1")``.

Example::

    model = DlibResNet()                 # random weights
    model.output_shape                   # (None, 128)
"""

from __future__ import annotations

import keras
from keras import ops

from keras_facemargin.backbones.embedding_head import resolve_image_size


__all__ = ["DlibResNet", "dlib_resnet_v1_spec", "DLIB_RESNET_V1", "ChannelAffine", "ZeroExtendAdd", "DLIB_MEAN_RGB",
           "DLIB_INPUT_SCALE"]

#: dlib's ``input_rgb_image`` means (``avg_red``, ``avg_green``, ``avg_blue``), as its file stores them.
DLIB_MEAN_RGB = (122.782, 117.001, 104.298)
#: dlib's input divisor.
DLIB_INPUT_SCALE = 256.0


def dlib_resnet_v1_spec():
    """The face ResNet of dlib's ``dnn_face_recognition_ex.cpp``, as a list of ops, input to output.

    Each op is a tuple: ``("con", name, filters, kernel, stride)``, ``("affine", name)``,
    ``("relu", name)``, ``("max_pool", name, size, stride)``, ``("avg_pool", name, size, stride)``,
    ``("avg_pool_everything", name)``, ``("fc", name, units)``, ``("tag", id)``, ``("skip", id)``
    and ``("add_prev", name, tag_id)``. The blocks are dlib's::

        block     = affine(con3x3(relu(affine(con3x3/stride(x)))))
        ares      = relu(block(x) + x)                            # add_prev1, tag1 = x
        ares_down = relu(avg_pool2x2/2(x) + block/2(x))           # add_prev2, tag2 = block output
        levels    = 3 x ares 32 | ares_down 64 + 3 x ares 64 | ares_down 128 + 2 x ares 128 |
                    ares_down 256 + 2 x ares 256 | ares_down 256
        net       = fc_no_bias 128(avg_pool_everything(levels(max_pool3x3/2(relu(affine(con7x7/2))))))

    Example::

        [op[0] for op in dlib_resnet_v1_spec()][:4]    # ['con', 'affine', 'relu', 'max_pool']
    """
    ops = [("con", "stem_conv", 32, 7, 2), ("affine", "stem_affine"), ("relu", "stem_relu"),
           ("max_pool", "stem_pool", 3, 2)]
    levels = (("level4", 32, 3, False), ("level3", 64, 4, True), ("level2", 128, 3, True),
              ("level1", 256, 3, True), ("level0", 256, 1, True))
    for level, filters, blocks, first_down in levels:
        for b in range(blocks):
            p = f"{level}_block{b}"
            down = first_down and b == 0
            ops += [("tag", 1), ("con", f"{p}_conv_a", filters, 3, 2 if down else 1), ("affine", f"{p}_affine_a"),
                    ("relu", f"{p}_relu_a"), ("con", f"{p}_conv_b", filters, 3, 1), ("affine", f"{p}_affine_b")]
            if down:
                ops += [("tag", 2), ("skip", 1), ("avg_pool", f"{p}_shortcut_pool", 2, 2), ("add_prev", f"{p}_add", 2)]
            else:
                ops += [("add_prev", f"{p}_add", 1)]
            ops += [("relu", f"{p}_relu")]
    ops += [("avg_pool_everything", "global_pool"), ("fc", "embedding", 128)]
    return ops


#: The op list of dlib's face ResNet (`dlib_resnet_v1_spec`).
DLIB_RESNET_V1 = tuple(dlib_resnet_v1_spec())


@keras.saving.register_keras_serializable(package="keras_facemargin")
class ChannelAffine(keras.layers.Layer):
    """``gamma * x + beta`` per channel (last axis): dlib's ``affine`` layer (frozen batch norm).

    Args:
        gamma_initializer, beta_initializer: initial values (default ones and zeros).
        **kwargs: `keras.layers.Layer` arguments.

    Example::

        y = ChannelAffine()(keras.ops.ones((1, 4, 4, 8)))
    """

    def __init__(self, gamma_initializer="ones", beta_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.gamma_initializer = keras.initializers.get(gamma_initializer)
        self.beta_initializer = keras.initializers.get(beta_initializer)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError("ChannelAffine needs a known number of channels (last axis).")
        self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer=self.gamma_initializer)
        self.beta = self.add_weight(name="beta", shape=(channels,), initializer=self.beta_initializer)

    def call(self, inputs):
        return inputs * ops.cast(self.gamma, inputs.dtype) + ops.cast(self.beta, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"gamma_initializer": keras.initializers.serialize(self.gamma_initializer),
                       "beta_initializer": keras.initializers.serialize(self.beta_initializer)})
        return config


@keras.saving.register_keras_serializable(package="keras_facemargin")
class ZeroExtendAdd(keras.layers.Layer):
    """Sum of two NHWC tensors after zero-extending each to the larger rows, columns and channels.

    dlib's ``add_prev`` (``tt::add`` of differently sized tensors): the missing rows / columns
    (at the bottom / right) and channels (at the end) count as zeros.

    Example::

        y = ZeroExtendAdd()([keras.ops.ones((1, 3, 3, 8)), keras.ops.ones((1, 4, 4, 4))])   # (1, 4, 4, 8)
    """

    def _target(self, shapes):
        return tuple(max(a[i], b[i]) for i in (1, 2, 3) for a, b in [shapes])

    def call(self, inputs):
        if len(inputs) != 2:
            raise ValueError(f"ZeroExtendAdd takes two tensors, got {len(inputs)}.")
        a, b = inputs
        target = self._target((tuple(a.shape), tuple(b.shape)))

        def extend(x):
            pads = [[0, 0]] + [[0, t - s] for t, s in zip(target, tuple(x.shape)[1:])]
            return x if not any(p[1] for p in pads) else ops.pad(x, pads)

        return extend(a) + extend(b)

    def compute_output_shape(self, input_shape):
        a, b = input_shape
        return (a[0],) + self._target((tuple(a), tuple(b)))


def DlibResNet(image_size=None, input_mean=DLIB_MEAN_RGB, name="dlib_resnet_v1", **legacy):
    """dlib's face ResNet: RGB pixels ``0..255`` ``(batch, 150, 150, 3)`` -> raw 128-d descriptor.

    Layer names follow the op names of `dlib_resnet_v1_spec`
    (``stem_conv``, ``level3_block0_conv_a``, ``level3_block0_add``, ``embedding``, ...); the first
    layer, ``input_normalization``, is dlib's ``(x - mean) / 256`` as a `ChannelAffine`.

    Args:
        image_size: input size, an int or ``(H, W)``, default ``(150, 150)``; dlib's network is trained
            at 150x150 (other sizes build, but the weights are only meaningful at 150). The old
            ``image_shape=(H, W, 3)`` still works, with a warning.
        input_mean: the per-channel RGB means subtracted before dividing by 256.
        name: model name.
        **legacy: ``image_shape`` only (the old spelling of ``image_size``).

    Returns:
        A functional `keras.Model`.

    Example::

        model = DlibResNet()
        keras_facemargin.convert.dlib.load_dlib_weights(model, "dlib_face_recognition_resnet_model_v1.dat")
    """
    image_size = resolve_image_size(image_size, legacy, (150, 150), min_size=1)
    if legacy:
        raise TypeError(f"DlibResNet() got unexpected keyword arguments {sorted(legacy)}.")
    if len(input_mean) != 3:
        raise ValueError(f"`input_mean` must be 3 RGB values, got {input_mean!r}.")
    inputs = keras.Input(shape=image_size + (3,), name="images")
    x = ChannelAffine(gamma_initializer=keras.initializers.Constant(1.0 / DLIB_INPUT_SCALE),
                      beta_initializer=keras.initializers.Constant([-m / DLIB_INPUT_SCALE for m in input_mean]),
                      name="input_normalization")(inputs)
    tags = {}
    for op in DLIB_RESNET_V1:
        kind = op[0]
        if kind == "tag":
            tags[op[1]] = x
        elif kind == "skip":
            x = tags[op[1]]
        elif kind == "con":
            _, lname, filters, kernel, stride = op
            x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same" if stride == 1 else "valid",
                                    name=lname)(x)
        elif kind == "affine":
            x = ChannelAffine(name=op[1])(x)
        elif kind == "relu":
            x = keras.layers.ReLU(name=op[1])(x)
        elif kind == "max_pool":
            x = keras.layers.MaxPooling2D(op[2], strides=op[3], padding="valid", name=op[1])(x)
        elif kind == "avg_pool":
            x = keras.layers.AveragePooling2D(op[2], strides=op[3], padding="valid", name=op[1])(x)
        elif kind == "add_prev":
            x = ZeroExtendAdd(name=op[1])([x, tags[op[2]]])
        elif kind == "avg_pool_everything":
            x = keras.layers.GlobalAveragePooling2D(name=op[1])(x)
        elif kind == "fc":
            x = keras.layers.Dense(op[2], use_bias=False, name=op[1])(x)
        else:  # pragma: no cover - the spec is fixed
            raise ValueError(f"unknown op {op!r}")
    return keras.Model(inputs, x, name=name)
