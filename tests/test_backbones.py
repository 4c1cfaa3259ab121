"""Tests for keras_facemargin.backbones (tiny configs; full models build-only)."""

import numpy as np
import pytest

import keras

from keras_facemargin.backbones import BACKBONE_PRESETS
from keras_facemargin.backbones import IResNet
from keras_facemargin.backbones import IResNet18
from keras_facemargin.backbones import IResNet50
from keras_facemargin.backbones import IResNet100
from keras_facemargin.backbones import KerasApplicationBackbone
from keras_facemargin.backbones import MobileFaceNet
from keras_facemargin.backbones import embedding_head
from keras_facemargin.backbones import get_backbone

HEAD_NAMES = ["head_bn", "head_dropout", "head_flatten", "head_fc", "head_features"]

TINY = {
    "iresnet": lambda **kw: IResNet(
        stage_blocks=(1, 1, 1, 1),
        stage_filters=(8, 8, 16, 16),
        image_size=32,
        embedding_dim=16,
        **kw,
    ),
    "mobilefacenet": lambda **kw: MobileFaceNet(
        image_size=32,
        width_multiplier=0.125,
        blocks=(1, 1, 1, 1),
        embedding_dim=16,
        **kw,
    ),
    "resnet50": lambda **kw: KerasApplicationBackbone(
        "ResNet50", image_size=32, embedding_dim=16, **kw
    ),
}


def _images(n=2, size=32, seed=0):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(n, size, size, 3)).astype("float32")
    return (pixels - 127.5) / 128.0


def _randomize_weights(model, seed=0):
    """Random weights incl. BN statistics, so round trips test real values."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        value = rng.normal(0.0, 0.05, size=w.shape)
        if "variance" in w.path:
            value = rng.uniform(0.5, 1.5, size=w.shape)
        w.assign(value.astype(w.dtype))


def _weight_signature(model):
    return [(w.path, tuple(w.shape)) for w in model.weights]


def _trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


# ---------------------------------------------------------------------------
# Independent reference parameter counts (PyTorch `model.parameters()`,
# i.e. weights + biases + BN gamma/beta + PReLU slopes; no running stats).
# ---------------------------------------------------------------------------


def _conv(cin, cout, k, groups=1):
    return k * k * (cin // groups) * cout


def _bn(c):
    return 2 * c


def ref_iresnet_params(stage_blocks, filters=(64, 128, 256, 512), hw=7, emb=512):
    total = _conv(3, 64, 3) + _bn(64) + 64  # conv1, bn1, prelu
    cin = 64
    for num_blocks, c in zip(stage_blocks, filters):
        for b in range(num_blocks):
            total += _bn(cin) + _conv(cin, c, 3) + _bn(c) + c  # bn1 conv1 bn2 prelu
            total += _conv(c, c, 3) + _bn(c)  # conv2 bn3
            if b == 0:
                total += _conv(cin, c, 1) + _bn(c)  # downsample
            cin = c
    # bn2, fc (weight + bias), features (weight fixed to 1 + bias)
    return total + _bn(cin) + cin * hw * hw * emb + emb + _bn(emb)


def ref_mbf_params(blocks=(1, 4, 6, 2), scale=2, emb=512):
    def conv_block(cin, cout, k, groups=1):
        return _conv(cin, cout, k, groups) + _bn(cout) + cout

    def linear_block(cin, cout, k, groups=1):
        return _conv(cin, cout, k, groups) + _bn(cout)

    def depthwise(cin, cout, g):
        return conv_block(cin, g, 1) + conv_block(g, g, 3, g) + linear_block(g, cout, 1)

    c1, c2 = 64 * scale, 128 * scale
    total = conv_block(3, c1, 3)
    if blocks[0] == 1:
        total += conv_block(c1, c1, 3, groups=64)
    else:
        total += blocks[0] * depthwise(c1, c1, 128)
    total += depthwise(c1, c1, 128) + blocks[1] * depthwise(c1, c1, 128)
    total += depthwise(c1, c2, 256) + blocks[2] * depthwise(c2, c2, 256)
    total += depthwise(c2, c2, 512) + blocks[3] * depthwise(c2, c2, 256)
    total += conv_block(c2, 512, 1)
    total += linear_block(512, 512, 7, groups=512) + 512 * emb + _bn(emb)
    return total


# ---------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(TINY))
def test_tiny_output_shape(kind):
    model = TINY[kind]()
    assert model.output_shape == (None, 16)
    out = model(_images(), training=False)
    assert tuple(out.shape) == (2, 16)
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(out)))


def test_output_is_not_l2_normalised():
    model = TINY["iresnet"]()
    _randomize_weights(model)
    out = keras.ops.convert_to_numpy(model(_images(), training=False))
    assert not np.allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-3)


def test_iresnet_spatial_sequence_112():
    model = IResNet18()  # build only
    sizes = [
        tuple(model.get_layer(f"stage{s}_block0_add").output.shape[1:3])
        for s in range(1, 5)
    ]
    assert tuple(model.get_layer("stem_prelu").output.shape[1:3]) == (112, 112)
    assert sizes == [(56, 56), (28, 28), (14, 14), (7, 7)]
    assert tuple(model.get_layer("head_flatten").output.shape) == (None, 7 * 7 * 512)
    assert model.output_shape == (None, 512)


@pytest.mark.parametrize("size, final", [(32, 2), (40, 3), (112, 7)])
def test_mobilefacenet_gdc_kernel_follows_feature_map(size, final):
    model = MobileFaceNet(
        image_size=size, width_multiplier=0.125, blocks=(1, 1, 1, 1)
    )
    assert tuple(model.get_layer("sep_prelu").output.shape[1:3]) == (final, final)
    assert tuple(model.get_layer("head_gdc_conv").kernel_size) == (final, final)
    assert tuple(model.get_layer("head_gdc_conv").output.shape) == (None, 1, 1, 64)
    assert model.output_shape == (None, 512)


def test_mobilefacenet_residual_first_stage():
    model = MobileFaceNet(
        image_size=32,
        width_multiplier=0.125,
        blocks=(2, 1, 1, 1),
        embedding_dim=8,
    )
    names = {layer.name for layer in model.layers}
    assert {"stage1_block0_add", "stage1_block1_add"} <= names
    assert "stage1_conv" not in names
    assert tuple(model(_images()).shape) == (2, 8)


def test_embedding_head_function():
    inputs = keras.Input((3, 3, 8))
    outputs = embedding_head(inputs, 4, dropout=0.1, name_prefix="emb")
    model = keras.Model(inputs, outputs)
    assert [layer.name for layer in model.layers[1:]] == [
        n.replace("head", "emb") for n in HEAD_NAMES
    ]
    assert model.get_layer("emb_fc").kernel.shape == (72, 4)
    assert model.output_shape == (None, 4)


# ---------------------------------------------------------------------------
# Serialization
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(TINY))
def test_keras_file_round_trip_safe_mode(kind, tmp_path):
    model = TINY[kind](dropout=0.25)
    _randomize_weights(model)
    x = _images(seed=1)
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    path = str(tmp_path / f"{kind}.keras")
    model.save(path)
    restored = keras.saving.load_model(path, safe_mode=True)
    assert type(restored) is type(model)
    assert restored.get_config() == model.get_config()
    assert _weight_signature(restored) == _weight_signature(model)
    actual = keras.ops.convert_to_numpy(restored(x, training=False))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", sorted(TINY))
def test_config_round_trip(kind):
    model = TINY[kind](trainable=False)
    config = model.get_config()
    clone = model.__class__.from_config(config)
    assert clone.get_config() == config
    assert clone.trainable is False
    assert [layer.name for layer in clone.layers] == [
        layer.name for layer in model.layers
    ]
    assert _weight_signature(clone) == _weight_signature(model)


def test_configs_and_keywords_from_before_the_renames_still_build_the_same_model():
    """`image_shape` (H, W, 3) became `image_size`, MobileFaceNet's `scale` became `outer_width_factor`:
    saved configs load silently, the old keywords with a DeprecationWarning."""
    import warnings

    tiny = dict(width_multiplier=0.125, blocks=(1, 1, 1, 1), embedding_dim=16)
    new = MobileFaceNet(image_size=(32, 48), outer_width_factor=1, **tiny)
    assert new.input_shape == (None, 32, 48, 3) and new.get_config()["image_size"] == (32, 48)
    old = {k: v for k, v in new.get_config().items() if k not in ("image_size", "outer_width_factor")}
    old.update(image_shape=[32, 48, 3], scale=1)  # as a .keras file written before the renames holds it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = MobileFaceNet.from_config(old)
        old_iresnet = {k: v for k, v in TINY["iresnet"]().get_config().items() if k != "image_size"}
        iresnet = IResNet.from_config({**old_iresnet, "image_shape": (32, 32, 3)})
    assert loaded.get_config() == new.get_config() and _weight_signature(loaded) == _weight_signature(new)
    assert iresnet.input_shape == (None, 32, 32, 3)
    with pytest.warns(DeprecationWarning, match="image_size"):
        by_keyword = MobileFaceNet(image_shape=(32, 48, 3), outer_width_factor=1, **tiny)
    with pytest.warns(DeprecationWarning, match="outer_width_factor"):
        by_scale = MobileFaceNet(image_size=(32, 48), scale=1, **tiny)
    assert by_keyword.get_config() == by_scale.get_config() == new.get_config()


def test_get_config_lists_every_argument():
    import inspect

    for cls, model in [
        (IResNet, TINY["iresnet"]()),
        (MobileFaceNet, TINY["mobilefacenet"]()),
        (KerasApplicationBackbone, TINY["resnet50"]()),
    ]:
        params = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
        assert params <= set(model.get_config()), cls.__name__


# ---------------------------------------------------------------------------
# Layer names and layout
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(TINY))
def test_layer_names_are_stable(kind):
    a, b = TINY[kind](), TINY[kind]()
    assert [layer.name for layer in a.layers] == [layer.name for layer in b.layers]
    assert _weight_signature(a) == _weight_signature(b)
    assert a.name == b.name
    names = [layer.name for layer in a.layers]
    assert names[0] == "images"
    assert names[-3:] == ["head_flatten", "head_fc", "head_features"]
    if kind != "mobilefacenet":
        assert names[-5:] == HEAD_NAMES


def test_iresnet_expected_layer_names():
    names = {layer.name for layer in TINY["iresnet"]().layers}
    expected = {"stem_pad", "stem_conv", "stem_bn", "stem_prelu"}
    for s in range(1, 5):
        p = f"stage{s}_block0"
        expected |= {
            f"{p}_bn1", f"{p}_conv1", f"{p}_bn2", f"{p}_prelu", f"{p}_conv2",
            f"{p}_bn3", f"{p}_downsample_conv", f"{p}_downsample_bn", f"{p}_add",
        }
    expected |= set(HEAD_NAMES)
    assert expected <= names
    assert "stage1_block1_bn1" not in names


def test_default_model_names():
    tiny18 = IResNet(
        depth=18,
        stage_blocks=(1, 1, 1, 1),
        stage_filters=(8, 8, 8, 8),
        image_size=16,
    )
    assert tiny18.name == "iresnet18"
    assert TINY["mobilefacenet"]().name == "mobilefacenet"
    assert TINY["resnet50"]().name == "resnet50_face"
    assert TINY["iresnet"](name="custom").name == "custom"


@pytest.mark.parametrize("kind", ["iresnet", "resnet50"])
def test_head_features_has_no_gamma(kind):
    model = TINY[kind]()
    features = model.get_layer("head_features")
    assert features.scale is False
    assert features.gamma is None
    assert [w.path.split("/")[-1] for w in features.trainable_weights] == ["beta"]
    assert [tuple(w.shape) for w in features.weights] == [(16,)] * 3
    fc = model.get_layer("head_fc")
    assert fc.use_bias
    assert model.get_layer("head_bn").scale is True


def test_mobilefacenet_head_matches_insightface_gdc():
    model = TINY["mobilefacenet"]()
    # insightface GDC: Linear(512, emb, bias=False) -> BatchNorm1d (affine).
    assert model.get_layer("head_fc").use_bias is False
    assert model.get_layer("head_features").scale is True
    assert model.get_layer("head_gdc_conv").use_bias is False
    # grouped 3x3 conv after the stem: groups=64 (scaled) like insightface.
    conv = model.get_layer("stage1_conv")
    assert conv.groups == 8 and conv.filters == 16
    assert tuple(conv.kernel.shape) == (3, 3, 2, 16)


def _torch_to_keras_shape(name, shape):
    """insightface state-dict shape -> Keras weight shape."""
    if len(shape) == 4:  # conv weight OIHW -> HWIO
        o, i, h, w = shape
        return [(h, w, i, o)]
    if name == "prelu":  # (C,) -> (1, 1, C)
        return [(1, 1) + shape]
    # BatchNorm: weight, bias, running_mean, running_var
    return [shape] * 4


def test_iresnet_block_layout_matches_insightface():
    # Real stage-1/2 widths; build only.
    model = IResNet(stage_blocks=(2, 1, 1, 1), image_size=32)
    # insightface layer1.1 (no downsample) and layer2.0 (with downsample).
    reference = {
        "stage1_block1": [
            ("bn1", (64,)), ("conv1", (64, 64, 3, 3)), ("bn2", (64,)),
            ("prelu", (64,)), ("conv2", (64, 64, 3, 3)), ("bn3", (64,)),
        ],
        "stage2_block0": [
            ("bn1", (64,)), ("conv1", (128, 64, 3, 3)), ("bn2", (128,)),
            ("prelu", (128,)), ("conv2", (128, 128, 3, 3)), ("bn3", (128,)),
            ("downsample_conv", (128, 64, 1, 1)), ("downsample_bn", (128,)),
        ],
    }
    for block, layers in reference.items():
        actual, expected = [], []
        for suffix, torch_shape in layers:
            layer = model.get_layer(f"{block}_{suffix}")
            actual += [tuple(w.shape) for w in layer.weights]
            expected += _torch_to_keras_shape(suffix, torch_shape)
        assert actual == expected, block
    # Stride lives on conv2 (and the downsample conv), never on conv1.
    assert model.get_layer("stage2_block0_conv1").strides == (1, 1)
    assert model.get_layer("stage2_block0_conv2").strides == (2, 2)
    assert model.get_layer("stage2_block0_downsample_conv").strides == (2, 2)
    assert model.get_layer("stage1_block1_conv2").strides == (1, 1)
    for name in ["stem_conv", "stage2_block0_conv1", "stage2_block0_downsample_conv"]:
        assert model.get_layer(name).use_bias is False
        assert model.get_layer(name).padding == "valid"
    bn = model.get_layer("stage2_block0_bn1")
    assert bn.epsilon == pytest.approx(1e-5) and bn.momentum == pytest.approx(0.9)
    prelu = model.get_layer("stage1_block1_prelu")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(prelu.alpha), 0.25)
    # stem: conv 3x3x3x64 -> BN -> PReLU
    assert tuple(model.get_layer("stem_conv").kernel.shape) == (3, 3, 3, 64)


def test_stride2_padding_matches_pytorch():
    """Stride-2 3x3 conv with symmetric 1-pixel padding (PyTorch semantics)."""
    model = IResNet(
        stage_blocks=(1, 1, 1, 1),
        stage_filters=(4, 4, 4, 4),
        image_size=16,
        embedding_dim=4,
    )
    pad = model.get_layer("stage1_block0_pad2")
    conv = model.get_layer("stage1_block0_conv2")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1, 8, 8, 4)).astype("float32")  # even size: "same" != torch
    kernel = rng.normal(size=(3, 3, 4, 4)).astype("float32")
    conv.kernel.assign(kernel)
    actual = keras.ops.convert_to_numpy(conv(pad(x)))

    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    expected = np.zeros((1, 4, 4, 4), "float32")
    for i in range(4):
        for j in range(4):
            patch = xp[0, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3, :]
            expected[0, i, j] = np.einsum("hwc,hwco->o", patch, kernel)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
    # Keras "same" padding pads asymmetrically for stride 2: it would differ.
    same = keras.ops.convert_to_numpy(
        keras.ops.conv(x, kernel, strides=2, padding="same")
    )
    assert not np.allclose(same, expected, atol=1e-3)


# ---------------------------------------------------------------------------
# Parameter counts (build only, never run)
# ---------------------------------------------------------------------------

# insightface arcface_torch parameter counts at 112x112 / 512-d.
INSIGHTFACE_PARAMS = {18: 24_025_600, 50: 43_590_848, 100: 65_156_160}


def test_reference_arithmetic_matches_published_sizes():
    # Published sizes: r18 ~24.0M, r50 ~43.6M, r100 ~65.2M, mbf ~2.06M (fp32).
    assert ref_iresnet_params((2, 2, 2, 2)) == INSIGHTFACE_PARAMS[18]
    assert ref_iresnet_params((3, 4, 14, 3)) == INSIGHTFACE_PARAMS[50]
    assert ref_iresnet_params((3, 13, 30, 3)) == INSIGHTFACE_PARAMS[100]
    assert abs(ref_iresnet_params((2, 2, 2, 2)) / 24.0e6 - 1) < 0.005
    assert abs(ref_iresnet_params((3, 4, 14, 3)) / 43.6e6 - 1) < 0.005
    assert abs(ref_iresnet_params((3, 13, 30, 3)) / 65.2e6 - 1) < 0.005
    for name in ["iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200"]:
        depth = BACKBONE_PRESETS[name]["kwargs"]["depth"]
        from keras_facemargin.backbones.iresnet import IRESNET_STAGE_BLOCKS

        blocks = IRESNET_STAGE_BLOCKS[depth]
        assert BACKBONE_PRESETS[name]["params"] == ref_iresnet_params(blocks)
    assert BACKBONE_PRESETS["mobilefacenet"]["params"] == ref_mbf_params()


@pytest.mark.parametrize(
    "builder, depth", [(IResNet18, 18), (IResNet50, 50), (IResNet100, 100)]
)
def test_iresnet_parameter_counts(builder, depth):
    model = builder()
    # Keras has no (fixed) gamma on head_features: insightface counts 512 more.
    torch_like = _trainable_count(model) + 512
    assert torch_like == INSIGHTFACE_PARAMS[depth]
    assert abs(torch_like / INSIGHTFACE_PARAMS[depth] - 1) < 0.005
    # Non-trainable: BN running mean/var (2 per channel).
    non_trainable = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    assert model.count_params() == _trainable_count(model) + non_trainable
    del model
    keras.backend.clear_session()


def test_mobilefacenet_parameter_count():
    model = MobileFaceNet()
    assert _trainable_count(model) == ref_mbf_params()
    large = MobileFaceNet(blocks=(2, 8, 12, 4), outer_width_factor=4)
    assert _trainable_count(large) == ref_mbf_params((2, 8, 12, 4), scale=4)


# ---------------------------------------------------------------------------
# Mixed precision head
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fp16_head, out_dtype", [(False, "float32"), (True, "float16")])
def test_fp16_head(fp16_head, out_dtype):
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = TINY["iresnet"](fp16_head=fp16_head)
        assert model.get_layer("stage1_block0_conv1").compute_dtype == "float16"
        assert model.get_layer("head_fc").compute_dtype == out_dtype
        out = model(_images(), training=False)
        assert keras.backend.standardize_dtype(out.dtype) == out_dtype
    finally:
        keras.config.set_dtype_policy("float32")


# ---------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------


def test_presets_are_plain_data():
    required = {
        "class_name", "kwargs", "image_size", "normalization", "embedding_dim",
        "description",
    }
    for name in [
        "iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200",
        "mobilefacenet", "resnet50",
    ]:
        preset = BACKBONE_PRESETS[name]
        assert required <= set(preset), name
        assert preset["normalization"] == {"mean": 127.5, "std": 128.0}
        assert tuple(preset["image_size"]) == (112, 112)
        assert preset["embedding_dim"] == 512


def test_get_backbone_with_overrides():
    model = get_backbone(
        "IResNet50",
        stage_blocks=(1, 1, 1, 1),
        stage_filters=(8, 8, 8, 8),
        image_size=16,
        embedding_dim=8,
    )
    assert isinstance(model, IResNet)
    assert model.depth == 50 and model.output_shape == (None, 8)
    mbf = get_backbone("mobilefacenet", image_size=32, width_multiplier=0.125)
    assert isinstance(mbf, MobileFaceNet) and mbf.output_shape == (None, 512)
    res = get_backbone("resnet50", image_size=32, embedding_dim=8)
    assert isinstance(res, KerasApplicationBackbone)


def test_get_backbone_unknown_name():
    with pytest.raises(ValueError, match="iresnet50"):
        get_backbone("vgg16")


# ---------------------------------------------------------------------------
# Argument validation
# ---------------------------------------------------------------------------

BAD_ARGS = [
    (IResNet, {"depth": 42}, "depth"),
    (IResNet, {"depth": "50"}, "depth"),
    (IResNet, {"image_shape": (112, 112)}, "image_shape"),
    (IResNet, {"image_shape": (112, 112, 1)}, "image_shape"),
    (IResNet, {"image_shape": (8, 8, 3)}, "image_shape"),
    (IResNet, {"image_shape": None}, "image_shape"),
    (IResNet, {"image_size": (112, 112, 3)}, "image_size"),
    (IResNet, {"image_size": 8}, "image_size"),
    (IResNet, {"image_size": "112"}, "image_size"),
    (IResNet, {"image_size": 112, "image_shape": (112, 112, 3)}, "image_size"),
    (IResNet, {"embedding_dim": 0}, "embedding_dim"),
    (IResNet, {"embedding_dim": 1.5}, "embedding_dim"),
    (IResNet, {"dropout": 1.0}, "dropout"),
    (IResNet, {"dropout": -0.1}, "dropout"),
    (IResNet, {"stage_blocks": (1, 1, 1)}, "stage_blocks"),
    (IResNet, {"stage_filters": (8, 8, 0, 8)}, "stage_filters"),
    (MobileFaceNet, {"width_multiplier": 0}, "width_multiplier"),
    (MobileFaceNet, {"blocks": (1, 2)}, "blocks"),
    (MobileFaceNet, {"outer_width_factor": 0}, "outer_width_factor"),
    (MobileFaceNet, {"scale": 0}, "outer_width_factor"),  # the old name of outer_width_factor
    (MobileFaceNet, {"image_shape": (8, 8, 3)}, "image_shape"),
    (MobileFaceNet, {"image_size": (8, 8)}, "image_size"),
    (MobileFaceNet, {"dropout": 2}, "dropout"),
    (KerasApplicationBackbone, {"architecture": "ResNet18"}, "architecture"),
    (KerasApplicationBackbone, {"image_shape": (16, 16, 3)}, "image_shape"),
    (KerasApplicationBackbone, {"image_size": 16}, "image_size"),
    (KerasApplicationBackbone, {"embedding_dim": -1}, "embedding_dim"),
]


@pytest.mark.parametrize("cls, kwargs, arg", BAD_ARGS)
def test_bad_arguments(cls, kwargs, arg):
    with pytest.raises(ValueError, match=f"`{arg}`"):
        cls(**kwargs)


def test_bad_architecture_lists_allowed():
    with pytest.raises(ValueError, match="ResNet152V2"):
        KerasApplicationBackbone("ResNet18")


# ---------------------------------------------------------------------------
# One-to-one weight mapping: random insightface-style (PyTorch layout) state
# dict -> Keras, compared with a NumPy NCHW forward pass of insightface's
# IResNet in eval mode.
# ---------------------------------------------------------------------------


def _np_conv(x, w, stride, pad):
    """PyTorch Conv2d(bias=False): x (N, C, H, W), w (O, I, k, k)."""
    k = w.shape[-1]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho = (xp.shape[2] - k) // stride + 1
    wo = (xp.shape[3] - k) // stride + 1
    out = np.zeros((x.shape[0], w.shape[0], ho, wo))
    for a in range(k):
        for b in range(k):
            window = xp[:, :, a : a + stride * ho : stride, b : b + stride * wo : stride]
            out += np.einsum("nchw,oc->nohw", window, w[:, :, a, b])
    return out


def _np_bn(x, sd, prefix, eps=1e-5):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    gamma = sd.get(f"{prefix}.weight", np.ones_like(sd[f"{prefix}.bias"]))
    mean, var = sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"]
    return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * gamma.reshape(
        shape
    ) + sd[f"{prefix}.bias"].reshape(shape)


def _np_prelu(x, alpha):
    return np.where(x > 0, x, x * alpha.reshape(1, -1, 1, 1))


def _np_iresnet_forward(x_nchw, sd, stage_blocks):
    x = _np_bn(_np_conv(x_nchw, sd["conv1.weight"], 1, 1), sd, "bn1")
    x = _np_prelu(x, sd["prelu.weight"])
    for s, n in enumerate(stage_blocks, start=1):
        for b in range(n):
            p = f"layer{s}.{b}"
            stride = 2 if b == 0 else 1
            y = _np_bn(x, sd, f"{p}.bn1")
            y = _np_bn(_np_conv(y, sd[f"{p}.conv1.weight"], 1, 1), sd, f"{p}.bn2")
            y = _np_prelu(y, sd[f"{p}.prelu.weight"])
            y = _np_bn(_np_conv(y, sd[f"{p}.conv2.weight"], stride, 1), sd, f"{p}.bn3")
            if b == 0:
                x = _np_conv(x, sd[f"{p}.downsample.0.weight"], stride, 0)
                x = _np_bn(x, sd, f"{p}.downsample.1")
            x = y + x
    x = _np_bn(x, sd, "bn2").reshape(x.shape[0], -1)  # torch.flatten: C, H, W order
    x = x @ sd["fc.weight"].T + sd["fc.bias"]
    return _np_bn(x, sd, "features")


def _random_iresnet_state_dict(stage_blocks, filters, hw, emb, seed=0):
    rng = np.random.default_rng(seed)
    sd = {}

    def conv(name, o, i, k):
        sd[f"{name}.weight"] = rng.normal(0, np.sqrt(1.0 / (i * k * k)), (o, i, k, k))

    def bn(name, c, affine=True):
        if affine:
            sd[f"{name}.weight"] = rng.uniform(0.5, 1.5, c)
        sd[f"{name}.bias"] = rng.normal(0, 0.1, c)
        sd[f"{name}.running_mean"] = rng.normal(0, 0.1, c)
        sd[f"{name}.running_var"] = rng.uniform(0.5, 1.5, c)

    conv("conv1", filters[0], 3, 3)
    bn("bn1", filters[0])
    sd["prelu.weight"] = rng.uniform(0.1, 0.4, filters[0])
    cin = filters[0]
    for s, (n, c) in enumerate(zip(stage_blocks, filters), start=1):
        for b in range(n):
            p = f"layer{s}.{b}"
            bn(f"{p}.bn1", cin)
            conv(f"{p}.conv1", c, cin, 3)
            bn(f"{p}.bn2", c)
            sd[f"{p}.prelu.weight"] = rng.uniform(0.1, 0.4, c)
            conv(f"{p}.conv2", c, c, 3)
            bn(f"{p}.bn3", c)
            if b == 0:
                conv(f"{p}.downsample.0", c, cin, 1)
                bn(f"{p}.downsample.1", c)
            cin = c
    bn("bn2", cin)
    sd["fc.weight"] = rng.normal(0, np.sqrt(1.0 / (cin * hw * hw)), (emb, cin * hw * hw))
    sd["fc.bias"] = rng.normal(0, 0.1, emb)
    bn("features", emb, affine=False)  # weight fixed to 1.0 in insightface
    return sd


def _keras_name(torch_prefix):
    """insightface module path -> Keras layer name (the documented mapping)."""
    fixed = {"conv1": "stem_conv", "bn1": "stem_bn", "prelu": "stem_prelu",
             "bn2": "head_bn", "fc": "head_fc", "features": "head_features"}
    if torch_prefix in fixed:
        return fixed[torch_prefix]
    layer, block, rest = torch_prefix.split(".", 2)
    renames = {"downsample.0": "downsample_conv", "downsample.1": "downsample_bn"}
    rest = renames.get(rest, rest)
    return f"stage{layer[len('layer'):]}_block{block}_{rest}"


def _load_state_dict(model, sd, hw):
    prefixes = sorted({k.rsplit(".", 1)[0] for k in sd})
    for prefix in prefixes:
        layer = model.get_layer(_keras_name(prefix))
        if isinstance(layer, keras.layers.Conv2D):
            layer.kernel.assign(sd[f"{prefix}.weight"].transpose(2, 3, 1, 0))
        elif isinstance(layer, keras.layers.PReLU):
            layer.alpha.assign(sd[f"{prefix}.weight"].reshape(1, 1, -1))
        elif isinstance(layer, keras.layers.Dense):
            w = sd[f"{prefix}.weight"]  # (D, C*H*W) in C, H, W order
            c = w.shape[1] // (hw * hw)
            w = w.reshape(-1, c, hw, hw).transpose(2, 3, 1, 0).reshape(-1, w.shape[0])
            layer.kernel.assign(w)
            layer.bias.assign(sd[f"{prefix}.bias"])
        else:  # BatchNormalization
            if layer.scale:
                layer.gamma.assign(sd[f"{prefix}.weight"])
            else:
                assert f"{prefix}.weight" not in sd
            layer.beta.assign(sd[f"{prefix}.bias"])
            layer.moving_mean.assign(sd[f"{prefix}.running_mean"])
            layer.moving_variance.assign(sd[f"{prefix}.running_var"])
    return len(prefixes)


def test_iresnet_matches_insightface_numpy_reference():
    blocks, filters, emb = (1, 2, 1, 1), (8, 8, 16, 16), 16
    model = IResNet(stage_blocks=blocks, stage_filters=filters,
                    image_size=32, embedding_dim=emb)
    sd = _random_iresnet_state_dict(blocks, filters, hw=2, emb=emb)
    n_loaded = _load_state_dict(model, sd, hw=2)
    # Every weighted Keras layer received exactly one insightface tensor group.
    assert n_loaded == len([layer for layer in model.layers if layer.weights])
    x = _images(seed=5)
    expected = _np_iresnet_forward(x.transpose(0, 3, 1, 2).astype("float64"), sd, blocks)
    actual = keras.ops.convert_to_numpy(model(x, training=False))
    assert 0.1 < np.abs(expected).mean() < 100  # well-conditioned values
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("in_ch, groups, filters, strides", [(8, 4, 12, 1), (8, 2, 4, 2), (8, 8, 8, 1), (6, 1, 4, 1)])
def test_grouped_conv_matches_keras_conv2d_groups(in_ch, groups, filters, strides):
    """MobileFaceNet's grouped conv (via depthwise) equals Conv2D(groups=...) with the same kernel."""
    from keras_facemargin.backbones.mobilefacenet import GroupedConv2D

    x = np.random.default_rng(0).standard_normal((2, 9, 9, in_ch)).astype("float32")
    ref = keras.layers.Conv2D(filters, 3, strides=strides, groups=groups, use_bias=False)
    expected = keras.ops.convert_to_numpy(ref(x))
    layer = GroupedConv2D(filters, 3, strides=strides, groups=groups)
    layer.build(x.shape)
    assert tuple(layer.kernel.shape) == tuple(ref.kernel.shape)
    layer.kernel.assign(ref.kernel.numpy())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), expected, atol=1e-5)
    assert layer.compute_output_shape(x.shape) == expected.shape
