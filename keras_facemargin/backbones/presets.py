"""Plain-data registry of backbone configurations and `get_backbone`.

Every entry of `BACKBONE_PRESETS` is a plain dict (JSON-friendly)::

    {
        "class_name": "IResNet",            # class in keras_facemargin.backbones
        "kwargs": {"depth": 50},            # constructor arguments
        "image_size": (112, 112),           # expected input (height, width)
        "normalization": {"mean": 127.5, "std": 128.0},  # (x - mean) / std
        "embedding_dim": 512,
        "params": 43_590_848,               # insightface parameter count
        "insightface_name": "r50",          # arcface_torch `network` name
        "description": "...",
    }

"params" counts trainable parameters plus the fixed gamma of the final BN
(what ``sum(p.numel() for p in model.parameters())`` gives in PyTorch);
BatchNorm running statistics are not counted.
"""

import copy

_NORMALIZATION = {"mean": 127.5, "std": 128.0}


def _iresnet(depth, params, insightface_name, extra):
    return {
        "class_name": "IResNet",
        "kwargs": {"depth": depth},
        "image_size": (112, 112),
        "normalization": dict(_NORMALIZATION),
        "embedding_dim": 512,
        "params": params,
        "insightface_name": insightface_name,
        "description": (
            f"IResNet-{depth} (insightface arcface_torch '{insightface_name}'), "
            f"112x112 input, 512-d embedding. {extra}"
        ),
    }


BACKBONE_PRESETS = {
    "iresnet18": _iresnet(18, 24_025_600, "r18", "Blocks (2, 2, 2, 2)."),
    "iresnet34": _iresnet(34, 34_139_328, "r34", "Blocks (3, 4, 6, 3)."),
    "iresnet50": _iresnet(50, 43_590_848, "r50", "Blocks (3, 4, 14, 3)."),
    "iresnet100": _iresnet(100, 65_156_160, "r100", "Blocks (3, 13, 30, 3)."),
    "iresnet200": _iresnet(200, 118_833_920, "r200", "Blocks (6, 26, 60, 6)."),
    "mobilefacenet": {
        "class_name": "MobileFaceNet",
        "kwargs": {"blocks": (1, 4, 6, 2), "outer_width_factor": 2},
        "image_size": (112, 112),
        "normalization": dict(_NORMALIZATION),
        "embedding_dim": 512,
        "params": 2_059_520,
        "insightface_name": "mbf",
        "description": (
            "MobileFaceNet (insightface arcface_torch 'mbf'), 112x112 input, "
            "GDC head, 512-d embedding."
        ),
    },
    "resnet50": {
        "class_name": "KerasApplicationBackbone",
        "kwargs": {"architecture": "ResNet50"},
        "image_size": (112, 112),
        "normalization": dict(_NORMALIZATION),
        "embedding_dim": 512,
        "params": None,
        "insightface_name": None,
        "description": (
            "keras.applications ResNet50 trunk (random init, stride 32) with "
            "the BN-Dropout-Flatten-Dense-BN face embedding head."
        ),
    },
}


def get_backbone(name, **overrides):
    """Build a backbone from `BACKBONE_PRESETS`.

    Args:
        name: str, a key of `BACKBONE_PRESETS` (case-insensitive), e.g.
            `"iresnet50"` or `"mobilefacenet"`.
        **overrides: constructor arguments replacing or extending the
            preset's `kwargs` (e.g. `embedding_dim=128`, `dropout=0.2`).
            `image_size` defaults to the preset's, and `embedding_dim`
            to the preset's.

    Returns:
        A `keras.Model` backbone mapping normalised images to raw embeddings.

    Example:
    >>> backbone = get_backbone("iresnet50", dropout=0.2)
    """
    from keras_facemargin.backbones.iresnet import IResNet
    from keras_facemargin.backbones.mobilefacenet import MobileFaceNet
    from keras_facemargin.backbones.resnet import KerasApplicationBackbone

    key = name.lower() if isinstance(name, str) else name
    if key not in BACKBONE_PRESETS:
        raise ValueError(
            f"Unknown backbone `name`={name!r}. "
            f"Known names: {sorted(BACKBONE_PRESETS)}"
        )
    preset = BACKBONE_PRESETS[key]
    kwargs = copy.deepcopy(preset["kwargs"])
    if "image_shape" not in overrides:  # the old spelling, still accepted by the constructors
        kwargs.setdefault("image_size", tuple(preset["image_size"]))
    kwargs.setdefault("embedding_dim", preset["embedding_dim"])
    kwargs.update(overrides)
    classes = {cls.__name__: cls for cls in (IResNet, MobileFaceNet, KerasApplicationBackbone)}
    cls = classes[preset["class_name"]]
    return cls(**kwargs)
