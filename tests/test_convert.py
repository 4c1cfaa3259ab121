"""insightface IResNet weights (ONNX graph / PyTorch state dict) -> Keras, against onnxruntime."""

import numpy as np
import pytest
from testing import load_script, row_cosine

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from keras_facemargin.convert import insightface, insightface_onnx, pth  # noqa: E402
from keras_facemargin.errors import ExternalDataError, WeightsConversionError  # noqa: E402

BLOCKS, FILTERS, EMB, SIZE = (1, 2, 1, 1), (8, 8, 16, 16), 16, 32


def random_state_dict(seed=0, blocks=BLOCKS, filters=FILTERS, emb=EMB, hw=SIZE // 16):
    """insightface IResNet state dict (PyTorch names/layouts) with non-trivial BN statistics."""
    rng = np.random.default_rng(seed)
    sd = {}

    def conv(name, o, i, k):
        sd[f"{name}.weight"] = rng.normal(0, np.sqrt(2.0 / (i * k * k)), (o, i, k, k)).astype("float32")

    def bn(name, c, affine=True):
        if affine:
            sd[f"{name}.weight"] = rng.uniform(0.5, 1.5, c).astype("float32")
        sd[f"{name}.bias"] = rng.normal(0, 0.2, c).astype("float32")
        sd[f"{name}.running_mean"] = rng.normal(0, 0.2, c).astype("float32")
        sd[f"{name}.running_var"] = rng.uniform(0.5, 2.0, c).astype("float32")

    conv("conv1", filters[0], 3, 3)
    bn("bn1", filters[0])
    sd["prelu.weight"] = rng.uniform(0.1, 0.4, filters[0]).astype("float32")
    cin = filters[0]
    for s, (n, c) in enumerate(zip(blocks, filters), start=1):
        for b in range(n):
            p = f"layer{s}.{b}"
            bn(f"{p}.bn1", cin)
            conv(f"{p}.conv1", c, cin, 3)
            bn(f"{p}.bn2", c)
            sd[f"{p}.prelu.weight"] = rng.uniform(0.1, 0.4, c).astype("float32")
            conv(f"{p}.conv2", c, c, 3)
            bn(f"{p}.bn3", c)
            if b == 0:
                conv(f"{p}.downsample.0", c, cin, 1)
                bn(f"{p}.downsample.1", c)
            cin = c
    bn("bn2", cin)
    sd["fc.weight"] = rng.normal(0, np.sqrt(1.0 / (cin * hw * hw)), (emb, cin * hw * hw)).astype("float32")
    sd["fc.bias"] = rng.normal(0, 0.1, emb).astype("float32")
    bn("features", emb, affine=False)
    sd["features.weight"] = np.ones(emb, "float32")  # fixed gamma, present in the state dict
    return sd


def iresnet_onnx(sd, fuse_bn=False, blocks=BLOCKS, size=SIZE, bn_as_mul_add=False, input_scaling=None):
    """An ONNX graph of insightface's IResNet forward (NCHW, eval mode), as torch.onnx exports it.

    With `fuse_bn`, conv+BN pairs are folded into biased convs with anonymous initializer names
    (what torch.onnx's constant folding produces, e.g. in w600k_r50.onnx). `bn_as_mul_add` writes
    every BatchNormalization as Mul + Add by per-channel constants; `input_scaling=(mean, std)`
    puts ``Sub(mean)``, ``Div(std)`` in front (the graph then takes raw pixels).
    """
    nodes, inits, counter = [], {}, [0]

    def init(name, value):
        if fuse_bn:
            counter[0] += 1
            name = f"onnx::Conv_{counter[0]}"
        inits[name] = np.asarray(value, "float32")
        return name

    def fresh(prefix):
        counter[0] += 1
        return f"{prefix}_{counter[0]}"

    def bn(x, p):
        gamma = sd.get(f"{p}.weight", np.ones_like(sd[f"{p}.bias"]))
        ins = [x, init(f"{p}.weight", gamma), init(f"{p}.bias", sd[f"{p}.bias"]),
               init(f"{p}.running_mean", sd[f"{p}.running_mean"]), init(f"{p}.running_var", sd[f"{p}.running_var"])]
        y = fresh(p)
        if bn_as_mul_add:
            g = gamma / np.sqrt(sd[f"{p}.running_var"] + 1e-5)
            shape = (-1, 1, 1) if p != "features" else (-1,)
            scale, shift = fresh(f"{p}_scale"), fresh(f"{p}_shift")
            inits[scale] = g.reshape(shape).astype("float32")
            inits[shift] = (sd[f"{p}.bias"] - sd[f"{p}.running_mean"] * g).reshape(shape).astype("float32")
            mid = fresh(p)
            nodes.append(helper.make_node("Mul", [x, scale], [mid], name=f"{p}_mul"))
            nodes.append(helper.make_node("Add", [mid, shift], [y], name=f"{p}_add"))
            return y
        nodes.append(helper.make_node("BatchNormalization", ins, [y], epsilon=1e-5, name=p))
        return y

    def conv(x, p, stride, pad, bn_prefix=None):
        w = sd[f"{p}.weight"]
        y = fresh(p)
        if fuse_bn and bn_prefix:
            g = sd[f"{bn_prefix}.weight"] / np.sqrt(sd[f"{bn_prefix}.running_var"] + 1e-5)
            wf = w * g[:, None, None, None]
            bf = sd[f"{bn_prefix}.bias"] - sd[f"{bn_prefix}.running_mean"] * g
            ins = [x, init(f"{p}.weight", wf), init(f"{p}.bias", bf)]
        else:
            ins = [x, init(f"{p}.weight", w)]
        nodes.append(helper.make_node("Conv", ins, [y], kernel_shape=list(w.shape[2:]), strides=[stride, stride],
                                      pads=[pad] * 4, name=p))
        if bn_prefix and not fuse_bn:
            y = bn(y, bn_prefix)
        return y

    def prelu(x, p):
        y = fresh(p)
        nodes.append(helper.make_node("PRelu", [x, init(f"{p}.weight", sd[f"{p}.weight"].reshape(-1, 1, 1))], [y]))
        return y

    x = "input.1"
    if input_scaling is not None:
        inits["pixel_mean"] = np.array(input_scaling[0], "float32")
        inits["pixel_std"] = np.array(input_scaling[1], "float32")
        nodes.append(helper.make_node("Sub", [x, "pixel_mean"], ["centred"], name="input_sub"))
        nodes.append(helper.make_node("Div", ["centred", "pixel_std"], ["scaled"], name="input_div"))
        x = "scaled"
    x = conv(x, "conv1", 1, 1, "bn1")
    x = prelu(x, "prelu")
    for s, n in enumerate(blocks, start=1):
        for b in range(n):
            p, stride = f"layer{s}.{b}", 2 if b == 0 else 1
            y = bn(x, f"{p}.bn1")
            y = conv(y, f"{p}.conv1", 1, 1, f"{p}.bn2")
            y = prelu(y, f"{p}.prelu")
            y = conv(y, f"{p}.conv2", stride, 1, f"{p}.bn3")
            if b == 0:
                x = conv(x, f"{p}.downsample.0", stride, 0, f"{p}.downsample.1")
            out = fresh("add")
            nodes.append(helper.make_node("Add", [y, x], [out]))
            x = out
    x = bn(x, "bn2")
    flat = fresh("flatten")
    nodes.append(helper.make_node("Flatten", [x], [flat], axis=1))
    fc = fresh("fc")
    nodes.append(helper.make_node("Gemm", [flat, init("fc.weight", sd["fc.weight"]), init("fc.bias", sd["fc.bias"])],
                                  [fc], transB=1, name="fc"))
    out = bn(fc, "features")
    nodes[-1].output[0] = "683"
    emb = sd["fc.weight"].shape[0]
    graph = helper.make_graph(
        nodes, "iresnet",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["N", emb])],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    del out
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _images(n=6, seed=1):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (n, SIZE, SIZE, 3)).astype("float32")


def _ort(model, x_nhwc):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input.1": np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))})[0]


@pytest.mark.parametrize("fuse_bn", [False, True], ids=["named", "fused_bn_anonymous"])
def test_onnx_iresnet_converts_to_keras_with_parity(tmp_path, fuse_bn):
    sd = random_state_dict(seed=3)
    model = iresnet_onnx(sd, fuse_bn=fuse_bn)
    path = tmp_path / "r_tiny.onnx"
    onnx.save(model, str(path))
    x = _images()
    expected = _ort(model, x)
    keras_model = insightface.convert_insightface(path)
    assert keras_model.stage_blocks == BLOCKS and keras_model.stage_filters == FILTERS
    assert keras_model.input_shape[1:] == (SIZE, SIZE, 3) and keras_model.output_shape[-1] == EMB
    got = np.asarray(keras_model(x, training=False))
    assert np.abs(expected).mean() > 0.05  # not a degenerate network
    assert row_cosine(got, expected).min() >= 0.9999
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)
    _, info = insightface_onnx.onnx_to_state_dict(model)
    assert info["fused_bn"] == (2 * sum(BLOCKS) + 4 + 1 if fuse_bn else 0)


def test_flatten_permutation_is_needed():
    """The fc rows must be permuted CHW -> HWC: without it the embeddings disagree."""
    sd = random_state_dict(seed=4)
    model = iresnet_onnx(sd)
    x = _images()
    expected = _ort(model, x)
    c = FILTERS[-1]
    hw = SIZE // 16
    wrong = dict(sd)
    # Pretend PyTorch flattened H, W, C: the converter's CHW->HWC permutation then scrambles it.
    wrong["fc.weight"] = sd["fc.weight"].reshape(EMB, c, hw, hw).transpose(0, 2, 3, 1).reshape(EMB, -1)
    got = np.asarray(insightface.iresnet_from_state_dict(wrong)(x, training=False))
    assert row_cosine(got, expected).min() < 0.99


def test_pth_state_dict_round_trip_without_torch(tmp_path):
    sd = random_state_dict(seed=5)
    sd["layer1.0.bn1.num_batches_tracked"] = np.array(7.0, "float32")  # ignored by the loader
    path = tmp_path / "backbone.pth"
    pth.write_torch_state_dict(sd, path)
    read = pth.read_torch_state_dict(path)
    assert sorted(read) == sorted(sd)
    for key in sd:
        np.testing.assert_array_equal(read[key], sd[key])
    x = _images()
    expected = _ort(iresnet_onnx(sd), x)  # independent reference: onnxruntime on the same weights
    got = np.asarray(insightface.convert_insightface(path)(x, training=False))
    assert row_cosine(got, expected).min() >= 0.9999


def test_pth_reader_refuses_code(tmp_path):
    import pickle
    import zipfile

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"x": Evil()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load (__builtin__|builtins)\.print"):
        pth.read_torch_state_dict(path)
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="not a torch zip archive"):
        pth.read_torch_state_dict(legacy)


def test_pth_interoperates_with_torch(tmp_path):
    torch = pytest.importorskip("torch", reason="torch not installed: torch.save/torch.load cross-check skipped")
    sd = random_state_dict(seed=6)
    ours = tmp_path / "ours.pth"
    pth.write_torch_state_dict(sd, ours)
    loaded = torch.load(ours, weights_only=True)
    for key, value in sd.items():
        np.testing.assert_array_equal(loaded[key].numpy(), value)
    theirs = tmp_path / "theirs.pth"
    tsd = {k: torch.from_numpy(v) for k, v in sd.items()}
    tsd["conv1.weight"] = tsd["conv1.weight"].half()  # float16 storage
    tsd["layer1.0.conv1.weight"] = torch.from_numpy(sd["layer1.0.conv1.weight"]).transpose(0, 1).contiguous().transpose(0, 1)  # strided
    tsd["layer1.0.bn1.num_batches_tracked"] = torch.tensor(3)
    torch.save({"state_dict": {f"module.{k}": v for k, v in tsd.items()}}, theirs)
    read = pth.read_torch_state_dict(theirs)
    np.testing.assert_array_equal(read["layer1.0.conv1.weight"], sd["layer1.0.conv1.weight"])
    np.testing.assert_array_equal(read["conv1.weight"], sd["conv1.weight"].astype("float16").astype("float32"))
    assert read["layer1.0.bn1.num_batches_tracked"] == 3


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        insightface.convert_insightface(tmp_path / "missing.onnx")
    sd = random_state_dict()
    del sd["layer2.1.bn3.running_var"]
    with pytest.raises(ValueError, match="layer2.1.bn3.running_var"):
        insightface.iresnet_from_state_dict(sd)
    with pytest.raises(WeightsConversionError, match="MobileFaceNet state dict: use mobilefacenet_from_state_dict"):
        insightface.iresnet_config_from_state_dict({"layers.0.layers.0.weight": np.zeros((1, 1, 1, 1))})
    with pytest.raises(WeightsConversionError, match="Not an insightface IResNet .* or MobileFaceNet"):
        insightface.backbone_from_state_dict({"weight": np.zeros((1, 1))})


@pytest.mark.parametrize("offset, size, stride, match", [
    (0, (64,), (1,), "reaches element 63 of a storage of 4 elements"),  # oversized: would read heap memory
    (-1, (4,), (1,), "offset -1"),
    (0, (2, 2), (8, 1), "reaches element 9"),  # stride past the end
    (0, (4,), (-1,), "negative"),
    (4, (), (), "reaches element 4"),  # scalar past the end
])
def test_pth_reader_refuses_out_of_bounds_tensor_views(tmp_path, offset, size, stride, match):
    """A crafted .pth whose tensor view reaches outside its storage is refused, naming the file."""
    import io
    import pickle
    import zipfile

    good = tmp_path / "good.pth"
    pth.write_torch_state_dict({"w": np.arange(4, dtype="float32")}, good)
    np.testing.assert_array_equal(pth.read_torch_state_dict(good)["w"], np.arange(4))

    class Crafted:  # the module's own tensor reference with a patched view
        def __reduce__(self):
            pid = ("storage", pth._FloatStorageRef, "0", "cpu", 4)
            return (pth._rebuild_tensor_v2, (pth._Persistent(pid), offset, size, stride, False,
                                                 __import__("collections").OrderedDict()))

    buf = io.BytesIO()
    pth._TorchPickler(buf, protocol=2).dump({"w": Crafted()})
    bad = tmp_path / "crafted.pth"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, buf.getvalue() if name.endswith("data.pkl") else src.read(name))
    with pytest.raises(pickle.UnpicklingError, match=match) as info:
        pth.read_torch_state_dict(bad)
    assert "crafted.pth" in str(info.value)


@pytest.mark.parametrize("variant", ["bn_as_mul_add", "input_scaling"])
def test_onnx_variants_convert(tmp_path, variant):
    """BNs written as Mul/Add pairs convert; an input scaling in the graph becomes the normalisation."""
    sd = random_state_dict(seed=8)
    scaling = (127.5, 128.0) if variant == "input_scaling" else None
    model = iresnet_onnx(sd, bn_as_mul_add=variant == "bn_as_mul_add", input_scaling=scaling)
    path = tmp_path / f"{variant}.onnx"
    onnx.save(model, str(path))
    x = _images()
    pixels = x * 128.0 + 127.5
    expected = _ort(model, pixels if scaling else x)
    backbone, info = insightface.convert_insightface(path, return_info=True)
    got = np.asarray(backbone(x, training=False))
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)
    if scaling:
        assert info["normalization"] == {"mean": 127.5, "std": 128.0} and info["normalization_source"] == "graph"
    else:
        assert info["normalization_source"] == "insightface default"
        assert info["fused_bn"] == 2 * sum(BLOCKS) + 4 + 1 + sum(BLOCKS) + 2  # every BN became Mul/Add


def test_onnx_external_data_without_torch(tmp_path, monkeypatch):
    sd = random_state_dict(seed=9)
    model = iresnet_onnx(sd)
    folder = tmp_path / "model"
    folder.mkdir()
    path = folder / "r_tiny.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="r_tiny.onnx.data", size_threshold=0)
    monkeypatch.chdir(tmp_path)  # not the model's folder
    with pytest.raises(ExternalDataError, match="r_tiny.onnx.data.*allow_external_data=True"):
        insightface_onnx.onnx_to_state_dict(path)
    got, _ = insightface_onnx.onnx_to_state_dict(path, allow_external_data=True)
    want, _ = insightface_onnx.onnx_to_state_dict(iresnet_onnx(sd))  # onnx.save made `model` external
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
    (folder / "r_tiny.onnx.data").write_bytes(b"short")
    with pytest.raises(ExternalDataError, match="needs .* bytes"):
        insightface_onnx.onnx_to_state_dict(path, allow_external_data=True)


def test_onnx_that_is_not_a_face_network_names_the_node(tmp_path):
    sd = random_state_dict(seed=10)
    model = iresnet_onnx(sd)
    relu = helper.make_node("Relu", ["683"], ["683_relu"], name="extra_relu")
    model.graph.node.append(relu)
    model.graph.output[0].name = "683_relu"
    with pytest.raises(WeightsConversionError, match="'features' embedding .* feeds Relu node 'extra_relu'"):
        insightface_onnx.onnx_to_state_dict(model)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf at all \xff\xfe")
    with pytest.raises(WeightsConversionError, match="junk.onnx: not a readable ONNX model"):
        insightface.convert_insightface(junk)


def test_convert_tool_records_the_normalization(tmp_path, capsys):
    from keras_facemargin.pretrained.loader import read_normalization

    mod = load_script("tools/convert_insightface.py")
    sd = random_state_dict(seed=11)
    path = tmp_path / "r_tiny.onnx"
    onnx.save(iresnet_onnx(sd), str(path))
    out = tmp_path / "r_tiny.keras"
    assert mod.main([str(path), "--output", str(out), "--num-images", "4", "--data-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "IResNet (custom) stage_blocks=(1, 2, 1, 1)" in printed and "stage_blocks=50" not in printed
    assert "(x - 127.5) / 127.5 (insightface default)" in printed and "min cosine" in printed
    assert read_normalization(out) == {"mean": 127.5, "std": 127.5}
    h5 = tmp_path / "r_tiny.weights.h5"
    assert mod.main([str(path), "--output", str(h5), "--normalize", "128", "--num-images", "4",
                     "--data-dir", str(tmp_path)]) == 0
    assert read_normalization(h5) == {"mean": 127.5, "std": 128.0}
    assert mod.main([str(tmp_path / "missing.onnx"), "--output", str(h5)]) == 2


def test_training_checkpoint_reads_only_the_backbone(tmp_path, monkeypatch):
    """arcface_torch's checkpoint_gpu_0.pt: state_dict_backbone is used, the PartialFC centres and
    optimizer state are never read from the archive; bfloat16 tensors are widened exactly."""
    torch = pytest.importorskip("torch", reason="torch not installed: torch.save cross-check skipped")
    sd = random_state_dict(seed=12)
    backbone = {k: torch.from_numpy(v) for k, v in sd.items()}
    backbone["conv1.weight"] = backbone["conv1.weight"].bfloat16()
    path = tmp_path / "checkpoint_gpu_0.pt"
    torch.save({"epoch": 2, "global_step": 10, "state_dict_backbone": backbone,
                "state_dict_softmax_fc": {"weight": torch.zeros(300, EMB)},
                "state_optimizer": {"state": {0: {"momentum_buffer": torch.ones(3)}}, "param_groups": [{"lr": 0.1}]},
                "state_lr_scheduler": {"last_epoch": 10, "base_lrs": [0.1]}}, path)
    read = []
    real = pth._LazyStorage.array
    monkeypatch.setattr(pth._LazyStorage, "array", lambda self: read.append(self.numel) or real(self))
    got, info = pth.read_torch_checkpoint(path)
    assert info["key"] == "state_dict_backbone" and sorted(got) == sorted(sd)
    assert 300 * EMB not in read and 3 not in read  # PartialFC / momentum storages untouched
    assert any("'state_dict_softmax_fc' (1 tensors (weight (300, 16)): the PartialFC" in n for n in info["notes"])
    np.testing.assert_array_equal(got["conv1.weight"], backbone["conv1.weight"].float().numpy())
    np.testing.assert_array_equal(got["fc.weight"], sd["fc.weight"])
    torch.save({"epoch": 2, "optimizer": {"x": torch.ones(2)}}, tmp_path / "no_backbone.pt")
    with pytest.raises(WeightsConversionError, match="without a backbone state dict.*'optimizer'"):
        pth.read_torch_checkpoint(tmp_path / "no_backbone.pt")
