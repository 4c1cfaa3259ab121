"""Model zoo: registry contents, `load` from local / $KERAS_FACEMARGIN_HOME / cache / URL, hash checks."""

import hashlib

import numpy as np
import pytest

import keras_facemargin as kfm
from keras_facemargin.backbones import IResNet
from keras_facemargin.pretrained import (MODELS, PretrainedWeightsError, expected_weights_path, list_models,
                                         load)
from testing import load_script

NAMES = ["arcface_celeba_mbf", "arcface_mobilefacenet", "arcface_r100", "arcface_r50", "dlib_resnet_v1",
         "kappaface_r100", "kappaface_r50", "mbf_dlib_distill"]
TINY = {"stage_blocks": (1, 1, 1, 1), "stage_filters": (8, 8, 16, 16)}


@pytest.fixture
def homes(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.delenv("KERAS_FACEMARGIN_HOME", raising=False)
    return tmp_path


@pytest.fixture
def tiny_entry(monkeypatch, tmp_path):
    """A registry entry for a tiny IResNet with real weights on disk and their true sha256."""
    backbone = IResNet(image_size=32, embedding_dim=16, **TINY)
    rng = np.random.default_rng(0)
    backbone.set_weights([rng.normal(0, 0.2, w.shape).astype("float32") if "variance" not in w.path
                          else rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in backbone.weights])
    path = tmp_path / "tiny.weights.h5"
    backbone.save_weights(path)
    entry = dict(MODELS["arcface_r50"], backbone="iresnet18", backbone_kwargs=dict(TINY), embedding_dim=16,
                 input_size=(32, 32), weights_file="tiny_test.weights.h5",
                 sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    monkeypatch.setitem(MODELS, "tiny_test", entry)
    return backbone, path, entry


def _reference(backbone, x):
    e = np.asarray(backbone(x, training=False), np.float64)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def _x():
    return np.random.default_rng(1).uniform(-1, 1, (3, 32, 32, 3)).astype("float32")


def test_registry_lists_the_named_models_with_provenance():
    assert list_models() == NAMES
    assert kfm.list_models() == NAMES and kfm.load is load
    for name in NAMES:
        info = MODELS[name]
        assert info["reported_source"] and info["license"] and info["training_set"]
        assert info["weights_url"] is None  # nothing is downloaded
        assert info["crop"]["kind"] in ("arcface", "dlib_chip") and len(info["crop"]["template"]) == 5
        if info.get("source"):  # converted from a dependency's file: its hash, checked before reading
            assert len(info["source"]["sha256"]) == 64 and info["source"]["format"] == "dlib"
            assert info["input_size"] == (150, 150) and info["embedding_dim"] == 128
            continue
        assert info["backbone"] in kfm.backbones.BACKBONE_PRESETS
        if info["sha256"]:  # shipped: the hash of the packaged file
            from keras_facemargin.pretrained.loader import packaged_weights_path

            assert hashlib.sha256(packaged_weights_path(name).read_bytes()).hexdigest() == info["sha256"], name
            continue
        assert info["input_size"] == (112, 112) and info["embedding_dim"] == 512
        # Bring-your-own weights: no hash of a file that does not exist.
        assert info["sha256"] is None
    assert MODELS["arcface_r100"]["reported"]["IJB-C TAR@FAR=1e-4"] == 96.85


def test_unknown_name_lists_known_models():
    with pytest.raises(ValueError, match="Known models: .*arcface_r100.*kappaface_r50"):
        load("facenet_512")


def test_missing_weights_error_names_model_path_and_hash(homes):
    with pytest.raises(PretrainedWeightsError) as err:
        load("kappaface_r50")
    msg = str(err.value)
    assert "'kappaface_r50'" in msg
    assert str(homes / "keras_home" / "keras_facemargin" / "kappaface_r50_ms1mv2.weights.h5") in msg
    assert "sha256: none published" in msg and "weights=PATH" in msg and "KERAS_FACEMARGIN_HOME" in msg


def test_local_weights_file(homes, tiny_entry):
    backbone, path, _ = tiny_entry
    embedder = load("tiny_test", weights=path)
    got = np.asarray(embedder(_x()))
    np.testing.assert_allclose(got, _reference(backbone, _x()), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="include_head=True"):
        load("tiny_test", include_head=True, weights=path)
    with pytest.raises(FileNotFoundError, match="nope.weights.h5"):
        load("tiny_test", weights=homes / "nope.weights.h5")


def test_keras_facemargin_home_and_keras_cache(homes, tiny_entry, monkeypatch):
    backbone, path, _ = tiny_entry
    home = homes / "kfm_home"
    home.mkdir()
    (home / "tiny_test.weights.h5").write_bytes(path.read_bytes())
    monkeypatch.setenv("KERAS_FACEMARGIN_HOME", str(home))
    np.testing.assert_allclose(np.asarray(load("tiny_test")(_x())), _reference(backbone, _x()), atol=1e-5)
    monkeypatch.delenv("KERAS_FACEMARGIN_HOME")
    cached = expected_weights_path("tiny_test")
    assert cached == homes / "keras_home" / "keras_facemargin" / "tiny_test.weights.h5"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(path.read_bytes())
    np.testing.assert_allclose(np.asarray(load("tiny_test")(_x())), _reference(backbone, _x()), atol=1e-5)


def test_corrupt_file_fails_the_hash_and_is_not_loaded(homes, tiny_entry):
    _, path, entry = tiny_entry
    cached = expected_weights_path("tiny_test")
    cached.parent.mkdir(parents=True)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cached.write_bytes(bytes(data))
    with pytest.raises(PretrainedWeightsError, match=f"fail the hash check.*expected {entry['sha256']}"):
        load("tiny_test")
    corrupt = homes / "corrupt.weights.h5"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(PretrainedWeightsError, match="not loaded"):
        load("tiny_test", weights=corrupt)


def test_offline_download_error_is_clear(homes, tiny_entry, monkeypatch):
    _, _, entry = tiny_entry
    url = "http://127.0.0.1:9/tiny_test.weights.h5"  # discard port: connection refused
    monkeypatch.setitem(MODELS["tiny_test"], "weights_url", url)
    with pytest.raises(PretrainedWeightsError) as err:
        load("tiny_test")
    msg = str(err.value)
    assert "'tiny_test'" in msg and url in msg and entry["sha256"] in msg
    assert str(expected_weights_path("tiny_test")) in msg
    assert not expected_weights_path("tiny_test").exists()


def test_download_with_hash_verification(homes, tiny_entry, monkeypatch):
    """A served file is fetched into the Keras cache; a wrong hash is rejected."""
    import functools
    import http.server
    import threading

    _, path, entry = tiny_entry
    true_hash = entry["sha256"]  # `entry` is the registry dict that is patched below
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(path.parent))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{path.name}"
        monkeypatch.setitem(MODELS["tiny_test"], "weights_url", url)
        monkeypatch.setitem(MODELS["tiny_test"], "sha256", "0" * 64)
        with pytest.raises(PretrainedWeightsError, match="0{64}"):
            load("tiny_test")
        monkeypatch.setitem(MODELS["tiny_test"], "sha256", true_hash)
        load("tiny_test")
        assert expected_weights_path("tiny_test").read_bytes() == path.read_bytes()
    finally:
        server.shutdown()


def test_pth_weights_converted_on_the_fly(homes, tmp_path, monkeypatch):
    from keras_facemargin.convert.insightface import keras_layer_name
    from keras_facemargin.convert.pth import write_torch_state_dict

    # A state dict in insightface names taken from a Keras tiny IResNet: the round trip must agree.
    backbone = IResNet(image_size=32, embedding_dim=16, **TINY)
    rng = np.random.default_rng(2)
    for w in backbone.weights:
        w.assign(rng.uniform(0.5, 1.5, w.shape) if "variance" in w.path else rng.normal(0, 0.2, w.shape))
    sd = {}
    for layer in backbone.layers:
        if not layer.weights:
            continue
        prefix = next(k for k in _module_names() if keras_layer_name(k) == layer.name)
        if hasattr(layer, "moving_mean"):
            sd.update({f"{prefix}.bias": layer.beta.numpy(), f"{prefix}.running_mean": layer.moving_mean.numpy(),
                       f"{prefix}.running_var": layer.moving_variance.numpy()})
            if layer.scale:
                sd[f"{prefix}.weight"] = layer.gamma.numpy()
        elif hasattr(layer, "alpha"):
            sd[f"{prefix}.weight"] = layer.alpha.numpy().reshape(-1)
        elif layer.name == "head_fc":  # Keras rows are H, W, C; insightface's C, H, W
            k = layer.kernel.numpy().reshape(2, 2, 16, 16)
            sd["fc.weight"] = k.transpose(3, 2, 0, 1).reshape(16, -1)
            sd["fc.bias"] = layer.bias.numpy()
        else:
            sd[f"{prefix}.weight"] = layer.kernel.numpy().transpose(3, 2, 0, 1)
    write_torch_state_dict(sd, tmp_path / "backbone.pth")
    monkeypatch.setitem(MODELS, "tiny_pth", dict(MODELS["arcface_r50"], embedding_dim=16, input_size=(32, 32)))
    embedder = load("tiny_pth", weights=tmp_path / "backbone.pth")
    assert embedder.normalization == {"mean": 127.5, "std": 127.5}  # arcface_torch's, from the registry
    got = np.asarray(embedder(_x()))
    np.testing.assert_allclose(got, _reference(backbone, _x()), rtol=1e-5, atol=1e-5)


def _module_names():
    names = ["conv1", "bn1", "prelu", "bn2", "fc", "features"]
    for s in range(1, 5):
        p = f"layer{s}.0"
        names += [f"{p}.{m}" for m in ("bn1", "conv1", "bn2", "prelu", "conv2", "bn3", "downsample.0", "downsample.1")]
    return names


def test_a_url_without_a_hash_is_never_downloaded(homes, monkeypatch):
    import keras

    def no_network(*args, **kwargs):
        raise AssertionError("get_file must not be called for an unhashed URL")

    monkeypatch.setattr(keras.utils, "get_file", no_network)
    monkeypatch.setitem(MODELS, "unhashed", dict(MODELS["arcface_r50"], weights_url="https://example.invalid/w.h5",
                                                  sha256=None))
    with pytest.raises(PretrainedWeightsError, match="no sha256"):
        load("unhashed")
    for name, info in MODELS.items():  # and the shipped registry lists none
        assert name == "unhashed" or info["weights_url"] is None or len(info["sha256"] or "") == 64, name


@pytest.mark.parametrize("weights_file", ["tiny_test.pth", "tiny_test.onnx", "tiny_test.keras"])
def test_user_supplied_registry_file_is_hash_checked_whatever_its_extension(homes, tiny_entry, monkeypatch,
                                                                            weights_file):
    """weights=PATH naming the registry's weights_file is verified even when it is not .weights.h5."""
    monkeypatch.setitem(MODELS["tiny_test"], "weights_file", weights_file)
    monkeypatch.setitem(MODELS["tiny_test"], "sha256", hashlib.sha256(b"the published file").hexdigest())
    path = homes / weights_file
    path.write_bytes(b"a different file")
    with pytest.raises(PretrainedWeightsError, match=f"{weights_file} fail the hash check.*not loaded"):
        load("tiny_test", weights=path)


def test_normalization_follows_the_model(homes, tiny_entry, monkeypatch, tmp_path):
    """load() reports the preset's normalisation, a file's record wins over it, the argument over both."""
    from keras_facemargin.pretrained.loader import (PACKAGE_NORMALIZATION, parse_normalization, read_normalization,
                                                    with_package_normalization, write_normalization)

    backbone, path, _ = tiny_entry
    assert MODELS["tiny_test"]["normalization"] == {"mean": 127.5, "std": 127.5}
    assert load("tiny_test", weights=path).normalization == {"mean": 127.5, "std": 127.5}
    assert load("tiny_test", weights=path, normalization=128).normalization == PACKAGE_NORMALIZATION
    recorded = tmp_path / "recorded.weights.h5"
    recorded.write_bytes(path.read_bytes())
    monkeypatch.setitem(MODELS["tiny_test"], "sha256", None)  # a different file now
    write_normalization(recorded, {"mean": 0.0, "std": 1.0})
    assert read_normalization(recorded) == {"mean": 0.0, "std": 1.0}
    embedder = load("tiny_test", weights=recorded)
    assert embedder.normalization == {"mean": 0.0, "std": 1.0}
    np.testing.assert_allclose(np.asarray(embedder(_x())), _reference(backbone, _x()), atol=1e-5)  # same weights
    assert read_normalization(path) is None and read_normalization(tmp_path / "none.keras") is None
    assert parse_normalization("127.5") == {"mean": 127.5, "std": 127.5}
    for bad in ("abc", 0, {"mean": 1.0}, {"mean": 1.0, "std": float("nan")}, True):
        with pytest.raises(ValueError):
            parse_normalization(bad)


def test_with_package_normalization_is_exact(tmp_path):
    """A model expecting (x - 127.5) / 127.5, fed the package's (x - 127.5) / 128 through the adapter."""
    import keras

    from keras_facemargin.pretrained.loader import read_normalization, with_package_normalization, write_normalization

    backbone = IResNet(image_size=32, embedding_dim=16, **TINY)
    pixels = np.random.default_rng(3).integers(0, 256, (3, 32, 32, 3)).astype("float32")
    own = np.asarray(backbone((pixels - 127.5) / 127.5, training=False))
    wrapped = with_package_normalization(backbone, "127.5")
    assert wrapped.get_layer("input_normalization") is not None
    np.testing.assert_allclose(np.asarray(wrapped((pixels - 127.5) / 128.0, training=False)), own, atol=1e-5)
    assert with_package_normalization(backbone, 128) is backbone
    path = tmp_path / "tiny.keras"
    backbone.save(path)
    write_normalization(path, 127.5)
    assert read_normalization(path) == {"mean": 127.5, "std": 127.5}
    reloaded = keras.saving.load_model(path, compile=False)  # Keras ignores the record
    np.testing.assert_allclose(np.asarray(reloaded((pixels - 127.5) / 127.5, training=False)), own, atol=1e-5)


def test_tools_use_the_models_normalization(tmp_path, monkeypatch, capsys):
    """eval_verification / eval_ijb / export feed a converted model its own normalisation;
    --normalize overrides what the file records."""
    import keras_facemargin.evaluation as evaluation
    import keras_facemargin.evaluation.ijb as ijb
    import keras_facemargin.export as export
    from keras_facemargin.evaluation.bin_sets import write_bin
    from keras_facemargin.pretrained.loader import write_normalization

    backbone = IResNet(image_size=32, embedding_dim=16, **TINY)
    model = tmp_path / "converted.keras"
    backbone.save(model)
    write_normalization(model, {"mean": 127.5, "std": 127.5})
    rng = np.random.default_rng(4)
    write_bin(tmp_path / "tiny.bin", rng.integers(0, 256, (40, 32, 32, 3)).astype("uint8"), [True, False] * 10)

    seen = []
    real = evaluation.evaluate_verification_sets
    monkeypatch.setattr(evaluation, "evaluate_verification_sets",
                        lambda m, *a, **k: seen.append(m) or real(m, *a, progress=False, **k))
    tool = load_script("tools/eval_verification.py")
    assert tool.main(["--model", str(model), "--data", str(tmp_path / "tiny.bin")]) == 0
    assert "(x - 127.5) / 127.5 (recorded in the model file)" in capsys.readouterr().err
    assert "input_normalization" in [layer.name for layer in seen[-1].layers]
    assert tool.main(["--model", str(model), "--data", str(tmp_path / "tiny.bin"), "--normalize", "128"]) == 0
    assert "(x - 127.5) / 128 (--normalize)" in capsys.readouterr().err
    assert "input_normalization" not in [layer.name for layer in seen[-1].layers]

    def stop(m, *a, **k):
        seen.append(m)
        raise ValueError("stopped after capturing the model")

    monkeypatch.setattr(ijb, "evaluate_ijb", stop)
    assert load_script("tools/eval_ijb.py").main(["--model", str(model), "--data", str(tmp_path)]) == 2
    assert "input_normalization" in [layer.name for layer in seen[-1].layers]
    monkeypatch.setattr(export, "export_model", stop)
    assert load_script("tools/export.py").main(["--model", str(model), "--format", "onnx", "--no-check"]) == 2
    assert "input_normalization" in [layer.name for layer in seen[-1].layers]
    assert load_script("tools/export.py").main(["--model", str(model), "--format", "onnx", "--normalize", "128"]) == 2
    assert seen[-1] == str(model)  # the package's own normalisation: the file is exported as it is
