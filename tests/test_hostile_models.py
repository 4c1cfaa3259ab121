"""Hostile model files: typed refusals before anything is built, under a memory and a time limit.

Each crafted file is loaded in a subprocess limited to 3 GB of address space and 120 s, through the
CLI (`kfm verify --model bad.keras --json`: exit 2, one JSON object, no traceback) and through the
Python API (the typed error). Before the fix:

* module "posix", class "system": a TypeError traceback (no code ran, but the error was untyped);
* a FaceRecognizer whose head declares 2**31 - 1 (or a million) classes: TensorFlow asked for
  the memory (out of memory under the limit);
* config.json or the normalisation record nested 4,000 deep: RecursionError;
* an HDF5 weights dataset declaring 3.6 GB it does not store: read whole by Keras.

Valid files still load, with the same outputs (`test_valid_models_still_load`).
"""

import json
import os
import resource
import subprocess
import sys
import zipfile

import h5py
import numpy as np
import pytest
from testing import repo_env

from keras_facemargin.errors import ModelFileError, UnsafeModelError
from keras_facemargin.utils.model_files import MAX_JSON_DEPTH, check_keras_file, json_depth, loads_bounded

LIMIT_BYTES = 3 << 30
TIMEOUT_S = 120
DEEP = 4000


def _limit():
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT_BYTES, LIMIT_BYTES))


def _run(args):
    env = repo_env(TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=TIMEOUT_S, env=env,
                          preexec_fn=_limit)


def _empty_h5(path, attrs=None, datasets=None):
    with h5py.File(path, "w") as f:
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
        for name, (shape, dtype) in (datasets or {}).items():
            f.create_dataset(name, shape=shape, dtype=dtype, chunks=True)  # nothing written: nothing stored
    return path


def _keras_zip(path, config, weights_path=None, extra=None):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        z.writestr("config.json", config if isinstance(config, str) else json.dumps(config))
        if weights_path is not None:
            z.write(weights_path, "model.weights.h5")
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return path


def _face_recognizer_config(num_classes, embedding_dim=16):
    """The config.json of a trained FaceRecognizer (tiny IResNet, ArcMarginDense head), as Keras writes it."""
    policy = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}, "registered_name": None}
    return {
        "module": "keras_facemargin.models", "class_name": "FaceRecognizer", "registered_name": "keras_facemargin>FaceRecognizer",
        "build_config": {"input_shape": {"images": [None, 32, 32, 3], "labels": [None]}},
        "config": {
            "name": "face_recognizer", "trainable": True, "dtype": policy,
            "backbone": {"module": "keras_facemargin.backbones.iresnet", "class_name": "IResNet",
                         "registered_name": "keras_facemargin>IResNet", "build_config": {"input_shape": None},
                         "config": {"name": "iresnet18", "trainable": True, "depth": 18, "image_size": [32, 32],
                                    "embedding_dim": embedding_dim, "dropout": 0.0, "stage_blocks": [1, 1, 1, 1],
                                    "stage_filters": [4, 8, 8, 8], "fp16_head": False}},
            "head": {"module": "keras_facemargin.layers.arcface", "class_name": "ArcMarginDense",
                     "registered_name": "keras_facemargin>ArcMarginDense",
                     "build_config": {"input_shape": [[None, embedding_dim], [None]]},
                     "config": {"name": "arc_margin_dense", "trainable": True, "dtype": policy,
                                "num_classes": num_classes, "scale": 64.0, "margin": 0.5, "easy_margin": False,
                                "kernel_regularizer": None,
                                "kernel_initializer": {"module": "keras.initializers", "class_name": "GlorotNormal",
                                                       "config": {"seed": None}, "registered_name": None}}}}}


def _shape_bomb(d):
    """A valid Flatten + Dense(4) model whose kernel dataset declares (30000, 30000) float32 (3.6 GB), stores nothing."""
    import keras

    inputs = keras.Input((8, 8, 3))
    keras.Model(inputs, keras.layers.Dense(4, name="dense")(keras.layers.Flatten()(inputs))).save(d / "small.keras")
    with zipfile.ZipFile(d / "small.keras") as z:
        config = z.read("config.json").decode()
        (d / "small.h5").write_bytes(z.read("model.weights.h5"))
    with h5py.File(d / "small.h5", "a") as f:
        del f["layers/dense/vars/0"]
        f.create_dataset("layers/dense/vars/0", shape=(30000, 30000), dtype="float32", chunks=True)
    return _keras_zip(d / "shape_bomb.keras", config, d / "small.h5")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    empty = _empty_h5(d / "empty.h5")
    deep_record = "[" * DEEP + "]" * DEEP
    f = {
        "posix": _keras_zip(d / "posix.keras", {"module": "posix", "class_name": "system", "registered_name": None,
                                                "config": {"command": f"touch {d / 'PWNED'}"}}, empty),
        "lambda": _keras_zip(d / "lambda.keras", {
            "module": "keras.layers", "class_name": "Lambda", "registered_name": None,
            "config": {"name": "l", "function": {"class_name": "__lambda__",
                                                 "config": {"value": ["4wAAAA==", None, None]}}}}, empty),
        "head_2g": _keras_zip(d / "head_2g.keras", _face_recognizer_config(2**31 - 1), empty),
        "head_1m": _keras_zip(d / "head_1m.keras", _face_recognizer_config(1_000_000), empty),
        "deep_config": _keras_zip(d / "deep_config.keras",
                                  '{"module": "keras.layers", "class_name": "Dense", "config": {"units": '
                                  + deep_record + "}}", empty),
        "deep_record_h5": _empty_h5(d / "deep_record.weights.h5", attrs={"keras_facemargin": deep_record}),
        "shape_bomb": _shape_bomb(d),
    }
    assert os.path.getsize(f["head_2g"]) < 4096  # a tiny file
    return f


# --------------------------------------------------------------------------------------- in-process
def test_json_depth_and_bounded_loads():
    assert json_depth('{"a": [1, {"b": "[[[[[["}]}') == 3  # brackets inside strings do not count
    assert json_depth('"\\"[[["') == 0
    assert loads_bounded('{"a": [[1]]}', "f") == {"a": [[1]]}
    with pytest.raises(ModelFileError, match=f"nested {DEEP} levels deep"):
        loads_bounded("[" * DEEP + "]" * DEEP, "f.keras", "config.json")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        loads_bounded("{", "f.keras")
    loads_bounded("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH, "f")  # the limit itself is admitted


def test_checks_name_what_is_wrong(files):
    with pytest.raises(UnsafeModelError, match="module 'posix', class 'system'"):
        check_keras_file(files["posix"])
    with pytest.raises(UnsafeModelError, match="lambda"):
        check_keras_file(files["lambda"])
    with pytest.raises(ModelFileError, match="num_classes must be an integer"):
        check_keras_file(files["head_2g"])
    with pytest.raises(ModelFileError, match=r"ArcMarginDense .*32,000,000 bytes.*weights archive"):
        check_keras_file(files["head_1m"])  # 1e6 classes x 16 dims x 2 bytes > the ~1 kB archive + slack
    with pytest.raises(ModelFileError, match="nested"):
        check_keras_file(files["deep_config"])
    with pytest.raises(ModelFileError, match="shape bomb"):
        check_keras_file(files["shape_bomb"])
    assert not (files["posix"].parent / "PWNED").exists()


def test_malformed_archives(tmp_path):
    not_zip = tmp_path / "a.keras"
    not_zip.write_bytes(b"PK\x03\x04 truncated")
    bomb = tmp_path / "bomb.keras"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", " " * (64 << 20))  # 64 MB of blanks in about 64 kB
    cases = {
        not_zip: "not a .keras zip archive",
        _keras_zip(tmp_path / "list.keras", "[]"): "must be a serialised Keras object",
        bomb: "zip bomb",
        _keras_zip(tmp_path / "other.keras", {"module": "keras.layers", "class_name": "Dense",
                                              "registered_name": "other_package>Dense", "config": {}}): "registered",
        _keras_zip(tmp_path / "units.keras", {"module": "keras.layers", "class_name": "Dense",
                                              "config": {"units": "4"}}): "units must be an integer",
    }
    for path, match in cases.items():
        with pytest.raises(ModelFileError, match=match):
            check_keras_file(path)


def test_valid_models_still_load(tmp_path):
    """Nothing that was valid is lost: a trained FaceRecognizer and a backbone round-trip exactly."""
    import keras

    from keras_facemargin.backbones import IResNet
    from keras_facemargin.export.savedmodel import load_embedder
    from keras_facemargin.layers.kappaface import KappaMarginDense
    from keras_facemargin.models import FaceRecognizer
    from keras_facemargin.pretrained.loader import read_normalization, write_normalization

    backbone = IResNet(depth=18, image_size=(32, 32), embedding_dim=16, stage_blocks=[1, 1, 1, 1],
                       stage_filters=[4, 8, 8, 8])
    model = FaceRecognizer(backbone, KappaMarginDense(12, class_counts=np.ones(12), num_samples=8))
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = {"images": np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype("float32"),
         "labels": np.arange(8, dtype="int32"), "index": np.arange(8, dtype="int32")}
    model.fit(x, x["labels"], epochs=1, verbose=0)
    model.save(tmp_path / "fr.keras")
    backbone.save(tmp_path / "bb.keras")
    write_normalization(tmp_path / "bb.keras", 127.5)
    reference = np.asarray(model.embedder(x["images"], training=False))
    for name in ("fr.keras", "bb.keras"):
        info = check_keras_file(tmp_path / name)
        assert 0 < info["declared_bytes"] <= info["weights_bytes"]
        embedder = load_embedder(tmp_path / name)
        np.testing.assert_allclose(np.asarray(embedder(x["images"], training=False)), reference, atol=1e-5)
    assert read_normalization(tmp_path / "bb.keras") == {"mean": 127.5, "std": 127.5}


# ------------------------------------------------------------------------------------ subprocesses
CASES = ["posix", "lambda", "head_2g", "head_1m", "deep_config", "shape_bomb"]
EXPECTED = {"posix": "UnsafeModelError", "lambda": "UnsafeModelError"}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_cli_verify_refuses_with_one_json_object(files, case, tmp_path):
    photo = tmp_path / "p.png"
    photo.write_bytes(b"\x89PNG\r\n\x1a\n")  # never read: the model is refused first
    proc = _run(["-m", "keras_facemargin", "verify", "--model", str(files[case]), str(photo), str(photo),
                 "--threshold", "0.5", "--json"])
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout
    report = json.loads(lines[0])
    assert report["status"] == "error" and report["error"] == "configuration"
    assert report["file"] == str(files[case]) and str(files[case]) in report["message"]
    assert not (files["posix"].parent / "PWNED").exists()


@pytest.mark.slow
def test_api_raises_the_typed_error(files):
    """`load_embedder` on every case, in one limited subprocess: the typed error (a ValueError) each time."""
    code = ("import sys\nfrom keras_facemargin.export import load_embedder\nfor path in sys.argv[1:]:\n"
            "    try:\n        load_embedder(path)\n        print('LOADED', path)\n"
            "    except Exception as e:\n        print('ERROR', type(e).__name__, isinstance(e, ValueError), path)\n")
    proc = _run(["-c", code, *(str(files[case]) for case in CASES)])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    expected = [f"ERROR {EXPECTED.get(case, 'ModelFileError')} True {files[case]}" for case in CASES]
    assert proc.stdout.splitlines() == expected, proc.stdout + proc.stderr[-3000:]


@pytest.mark.slow
def test_deep_normalization_records(files, tmp_path):
    """A record nested 4,000 deep, in a .weights.h5 attribute (CLI, zoo model) and in a .keras member (API)."""
    photo = tmp_path / "p.png"
    photo.write_bytes(b"\x89PNG\r\n\x1a\n")
    proc = _run(["-m", "keras_facemargin", "verify", "--model", "arcface_r50", "--weights",
                 str(files["deep_record_h5"]), str(photo), str(photo), "--threshold", "0.5", "--json"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip())
    assert report["file"] == str(files["deep_record_h5"]) and "nested 4000 levels deep" in report["message"]

    import keras

    from keras_facemargin.backbones import IResNet

    good = tmp_path / "good.keras"
    IResNet(depth=18, image_size=(32, 32), embedding_dim=16, stage_blocks=[1, 1, 1, 1],
            stage_filters=[4, 8, 8, 8]).save(good)
    with zipfile.ZipFile(good, "a") as z:
        z.writestr("keras_facemargin.json", "[" * DEEP + "]" * DEEP)
    keras.saving.load_model(good, compile=False)  # the model itself is valid
    code = ("import sys, keras_facemargin as kfm\ntry:\n    kfm.load('arcface_r50', weights=sys.argv[1])\n"
            "except Exception as e:\n    print('ERROR', type(e).__name__, str(e))\n")
    proc = _run(["-c", code, str(good)])
    assert "ERROR ModelFileError" in proc.stdout and "nested 4000 levels deep" in proc.stdout, \
        proc.stdout + proc.stderr[-3000:]
