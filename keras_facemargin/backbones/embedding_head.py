"""Shared embedding head and argument validation for face backbones.

The head follows the "option E" output layer of ArcFace / insightface
(Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face
Recognition", CVPR 2019, https://arxiv.org/abs/1801.07698)::

    BN -> Dropout -> Flatten -> Dense(embedding_dim) -> BN (no scale)

The final BatchNormalization has no trainable gamma: insightface's
``features = BatchNorm1d(num_features)`` has its weight fixed to 1.0 and
``requires_grad = False``, which is exactly Keras' ``scale=False``.
"""

import numbers
import warnings

import keras

# PyTorch BatchNorm defaults used by insightface (eps=1e-5, momentum=0.1).
# Keras' momentum is the weight of the *old* running value: 1 - 0.1 = 0.9.
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9


def batch_norm(name, scale=True, dtype=None):
    """A `BatchNormalization` with insightface's (PyTorch) hyper-parameters."""
    return keras.layers.BatchNormalization(
        axis=-1,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        scale=scale,
        name=name,
        dtype=dtype,
    )


def prelu(name, dtype=None):
    """Per-channel PReLU (``torch.nn.PReLU(C)``), slopes initialised to 0.25."""
    return keras.layers.PReLU(
        alpha_initializer=keras.initializers.Constant(0.25),
        shared_axes=[1, 2],
        name=name,
        dtype=dtype,
    )


def embedding_head(
    x,
    embedding_dim,
    dropout=0.0,
    name_prefix="head",
    head_dtype=None,
    kernel_initializer="glorot_uniform",
):
    """Build the BN-Dropout-Flatten-Dense-BN embedding head on `x`.

    Args:
        x: 4D feature map `(batch, H, W, C)` (a symbolic `KerasTensor`).
        embedding_dim: int, size of the output embedding (e.g. 512).
        dropout: float in `[0, 1)`, dropout rate before the dense layer.
        name_prefix: str, prefix of the layer names. With the default the
            layers are `head_bn`, `head_dropout`, `head_flatten`, `head_fc`
            and `head_features`.
        head_dtype: optional dtype policy for `head_fc` and `head_features`
            (e.g. `"float32"` to keep them in full precision under mixed
            precision, like insightface's ``fc(x.float())``). `None` uses
            the global policy.
        kernel_initializer: initializer of the dense kernel.

    Returns:
        The raw (not L2-normalised) embedding tensor `(batch, embedding_dim)`.

    Note:
        Keras flattens channels-last (``h, w, c`` order) while PyTorch
        flattens ``c, h, w``; converting insightface's ``fc.weight`` therefore
        needs ``w.reshape(D, C, H, W).transpose(2, 3, 1, 0).reshape(-1, D)``.

    Example:
    >>> inputs = keras.Input((7, 7, 512))
    >>> emb = embedding_head(inputs, 512)
    >>> tuple(emb.shape)
    (None, 512)
    """
    validate_embedding_dim(embedding_dim)
    validate_dropout(dropout)
    p = name_prefix
    x = batch_norm(f"{p}_bn")(x)
    x = keras.layers.Dropout(dropout, name=f"{p}_dropout")(x)
    x = keras.layers.Flatten(name=f"{p}_flatten")(x)
    x = keras.layers.Dense(
        embedding_dim,
        use_bias=True,
        kernel_initializer=kernel_initializer,
        name=f"{p}_fc",
        dtype=head_dtype,
    )(x)
    x = batch_norm(f"{p}_features", scale=False, dtype=head_dtype)(x)
    return x


# ---------------------------------------------------------------------------
# Argument validation shared by all backbones.
# ---------------------------------------------------------------------------


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def validate_image_shape(image_shape, min_size=16, channels=(3,)):
    """Validate and normalise `image_shape` to a tuple `(H, W, C)`."""
    try:
        shape = tuple(image_shape)
    except TypeError:
        raise ValueError(
            "`image_shape` must be a tuple (height, width, 3). "
            f"Received: image_shape={image_shape!r}"
        )
    if len(shape) != 3 or not all(
        _is_int(d) for d in shape
    ):
        raise ValueError(
            "`image_shape` must be a tuple of 3 ints (height, width, 3). "
            f"Received: image_shape={image_shape!r}"
        )
    if shape[2] not in channels:
        raise ValueError(
            f"`image_shape` must be channels-last with {channels} channels, "
            f"i.e. (height, width, 3). Received: image_shape={image_shape!r}"
        )
    if shape[0] < min_size or shape[1] < min_size:
        raise ValueError(
            f"`image_shape` is too small: height and width must be >= "
            f"{min_size} for this backbone's total downsampling. "
            f"Received: image_shape={image_shape!r}"
        )
    return tuple(int(d) for d in shape)


def resolve_image_size(image_size, legacy, default, min_size=16, stacklevel=3):
    """The input size `(height, width)` of a backbone, from `image_size` or the old `image_shape`.

    `image_size` is the one spelling of the input size (as `TrainConfig.image_size` and the
    presets): an int (square) or `(height, width)`. Older code and saved configs passed
    `image_shape=(height, width, 3)`; a constructor pops it from its `**kwargs` into `legacy`
    (a dict): from a constructor call it still works, with a `DeprecationWarning`.

    Args:
        image_size: an int, `(height, width)`, or None for `default`.
        legacy: the constructor's `**kwargs`; an `image_shape` entry is removed from it.
        default: the backbone's `(height, width)`.
        min_size: smallest height/width for the backbone's total downsampling.
        stacklevel: of the warning (the constructor's caller).

    Returns:
        `(height, width)` as ints.

    Example:
        >>> resolve_image_size(112, {}, (112, 112))
        (112, 112)
    """
    if "image_shape" in legacy:
        image_shape = legacy.pop("image_shape")
        if image_size is not None:
            raise ValueError("Pass `image_size` only (`image_shape` is its old spelling, (height, width, 3)). "
                             f"Received: image_size={image_size!r}, image_shape={image_shape!r}")
        warnings.warn("`image_shape=(height, width, 3)` is deprecated: pass `image_size=(height, width)` "
                      "(or an int).", DeprecationWarning, stacklevel=stacklevel)
        return validate_image_shape(image_shape, min_size=min_size)[:2]
    if image_size is None:
        return tuple(default)
    size = (image_size, image_size) if _is_int(image_size) else image_size
    try:
        size = tuple(size)
    except TypeError:
        size = None
    if size is None or len(size) != 2 or not all(_is_int(d) for d in size):
        raise ValueError("`image_size` must be an int or a tuple (height, width) of ints. "
                         f"Received: image_size={image_size!r}")
    if size[0] < min_size or size[1] < min_size:
        raise ValueError(f"`image_size` is too small: height and width must be >= {min_size} for this "
                         f"backbone's total downsampling. Received: image_size={image_size!r}")
    return tuple(int(d) for d in size)


def legacy_config(config, renamed=()):
    """A saved backbone config in today's argument names (for `from_config`).

    `image_shape` (H, W, 3) becomes `image_size` (H, W); `renamed` maps other old keys to
    new ones (MobileFaceNet's `scale` -> `outer_width_factor`). No warning: saved files
    written before the rename are valid.
    """
    config = dict(config)
    if "image_shape" in config and "image_size" not in config:
        config["image_size"] = tuple(config.pop("image_shape"))[:2]
    for old, new in dict(renamed).items():
        if old in config and new not in config:
            config[new] = config.pop(old)
    return config


def validate_embedding_dim(embedding_dim):
    if (
        not _is_int(embedding_dim) or embedding_dim <= 0
    ):
        raise ValueError(
            "`embedding_dim` must be a positive int. "
            f"Received: embedding_dim={embedding_dim!r}"
        )
    return int(embedding_dim)


def validate_dropout(dropout):
    if (
        not isinstance(dropout, numbers.Real)
        or isinstance(dropout, bool)
        or not 0.0 <= dropout < 1.0
    ):
        raise ValueError(
            f"`dropout` must be a float in [0, 1). Received: dropout={dropout!r}"
        )
    return float(dropout)


def validate_int_tuple(value, arg_name, length=4):
    """Validate a tuple of `length` positive ints (e.g. `stage_blocks`)."""
    try:
        values = tuple(value)
    except TypeError:
        values = None
    if (
        values is None
        or len(values) != length
        or not all(
_is_int(v) and v > 0 for v in values
        )
    ):
        raise ValueError(
            f"`{arg_name}` must be a tuple of {length} positive ints. "
            f"Received: {arg_name}={value!r}"
        )
    return tuple(int(v) for v in values)
