"""Exported models run: FaceVerifier on .tflite (float32, int8), .onnx and SavedModel exports of a zoo model
gives the Keras model's verdicts on real LFW pairs; the metadata sidecar round-trips and refuses tampering."""

import json
import shutil

import numpy as np
import pytest

from testing import DATA_DIR

pytestmark = pytest.mark.skipif(not (DATA_DIR / "lfw" / "pairs.txt").is_file(),
                                reason="LFW not found (set KFM_DATA_DIR)")

NAME = "arcface_celeba_mbf"  # small, ships in the wheel
NUM_PAIRS = 12  # per class (matched / mismatched), from pairs.txt (evaluation only, nothing chosen on it)


class CachingDetector:
    """The same detections for every verifier (detect once per image)."""

    def __init__(self):
        from keras_facemargin.data.align import MTCNNDetector

        self.inner, self.cache = MTCNNDetector(), {}

    def detect_batch(self, images):
        keys = [im.tobytes().__hash__() for im in images]
        todo = [i for i, k in enumerate(keys) if k not in self.cache]
        if todo:
            for i, d in zip(todo, self.inner.detect_batch([images[i] for i in todo])):
                self.cache[keys[i]] = d
        return [self.cache[k] for k in keys]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    from keras_facemargin.inference.zoo_export import export_pretrained

    out = tmp_path_factory.mktemp("exports")
    paths = {}
    for key, fmt, q, name in [("tflite", "tflite", "float32", "m.tflite"), ("int8", "tflite", "int8", "m8.tflite"),
                              ("onnx", "onnx", "float32", "m.onnx"), ("savedmodel", "savedmodel", "float32", "sm")]:
        paths[key] = export_pretrained(NAME, fmt, out / name, quantize=q, data_dir=DATA_DIR, check=False)[0]
    return paths


@pytest.fixture(scope="module")
def lfw_pairs():
    from keras_facemargin.data.lfw import load_lfw_pairs

    pairs = load_lfw_pairs(DATA_DIR / "lfw")
    paths, ia, ib = pairs.unique_paths()
    half = pairs.pairs_per_fold
    idx = [k for f in range(3) for k in list(range(2 * half * f, 2 * half * f + NUM_PAIRS // 3 + 1))
           + list(range(2 * half * f + half, 2 * half * f + half + NUM_PAIRS // 3 + 1))]
    return [(paths[ia[i]], paths[ib[i]]) for i in idx], pairs.is_same[idx]


@pytest.fixture(scope="module")
def reference(lfw_pairs):
    import keras_facemargin as kfm

    detector = CachingDetector()
    keras_verifier = kfm.FaceVerifier(NAME, detector=detector)
    results = [keras_verifier.verify(a, b) for a, b in lfw_pairs[0]]
    return detector, keras_verifier, np.array([r.score for r in results]), np.array([r.is_same for r in results])


@pytest.mark.parametrize("key,bound", [("tflite", 1e-4), ("onnx", 1e-4), ("savedmodel", 1e-4), ("int8", 0.05)])
def test_exported_verdicts_match_keras(exports, lfw_pairs, reference, key, bound):
    """Same verdicts and scores within 0.01 (float) as the Keras model on real LFW pairs.

    int8 (full integer, CelebA-calibrated): measured max |score difference| 0.019 on 20 pairs; the bound is
    0.05 and a verdict may differ only for a pair whose Keras score is within that bound of the threshold.
    """
    import keras_facemargin as kfm

    detector, keras_verifier, ref_scores, ref_same = reference
    v = kfm.FaceVerifier(str(exports[key]), detector=detector)
    assert v.threshold == keras_verifier.threshold and v.threshold_source.startswith("export:")
    assert v.image_size == keras_verifier.image_size and v.crop == keras_verifier.crop
    assert v.normalization == keras_verifier.normalization
    results = [v.verify(a, b) for a, b in lfw_pairs[0]]
    scores, same = np.array([r.score for r in results]), np.array([r.is_same for r in results])
    diff = np.abs(scores - ref_scores)
    print(f"{key}: max |score - keras| = {diff.max():.6f} over {len(scores)} LFW pairs")
    assert diff.max() < min(bound, 0.01) if key != "int8" else diff.max() < bound
    assert diff.max() > 0 or key == "savedmodel"  # really another runtime (the SavedModel runs the same TF graph)
    near = np.abs(ref_scores - v.threshold) < bound
    assert np.array_equal(same[~near], ref_same[~near])
    if key != "int8":
        assert np.array_equal(same, ref_same)
    # an explicit threshold overrides the recorded ones
    assert kfm.FaceVerifier(str(exports[key]), threshold=0.9, detector=detector).threshold == 0.9


def test_sidecar_round_trip(exports):
    from keras_facemargin.export.metadata import model_digest, read_metadata, sidecar_path
    from keras_facemargin.pretrained.registry import get_model_info

    info = get_model_info(NAME)
    for key, path in exports.items():
        meta = read_metadata(path)
        assert meta == json.loads(sidecar_path(path).read_text())
        assert meta["sha256"] == model_digest(path) and meta["source_model"] == NAME
        assert meta["thresholds"] == info["thresholds"]
        assert meta["crop"]["template"] == [list(p) for p in info["crop"]["template"]]
        assert meta["input"]["size"] == list(info["input_size"]) and meta["embedding_dim"] == info["embedding_dim"]
        assert meta["quantization"] == ("int8" if key == "int8" else "float32")
    assert "CelebA training identities" in read_metadata(exports["int8"])["calibration_images"]
    from pathlib import Path

    assert sidecar_path(exports["savedmodel"]) == Path(exports["savedmodel"]) / "keras_facemargin.json"


def _copy(path, dst):
    import pathlib

    from keras_facemargin.export.metadata import sidecar_path

    path, dst = pathlib.Path(path), pathlib.Path(dst)
    if path.is_dir():
        shutil.copytree(path, dst)
    else:
        shutil.copy(path, dst)
        shutil.copy(sidecar_path(path), sidecar_path(dst))
    return dst


def test_tampered_missing_and_mismatched_metadata(exports, tmp_path):
    import keras_facemargin as kfm
    from keras_facemargin.errors import ConfigurationError, ExportMetadataError
    from keras_facemargin.export.metadata import MAX_SIDECAR_BYTES, read_metadata, sidecar_path

    m = _copy(exports["tflite"], tmp_path / "m.tflite")
    side = sidecar_path(m)
    good = side.read_text()
    # missing sidecar
    side.unlink()
    with pytest.raises(ExportMetadataError, match="no metadata") as e:
        kfm.FaceVerifier(str(m))
    assert e.value.reason == "metadata_missing" and e.value.file == str(side) and e.value.exit_code == 2
    assert isinstance(e.value, ConfigurationError)
    # sha256 of another file
    side.write_text(good)
    other = json.loads(good)
    other["sha256"] = "0" * 64
    side.write_text(json.dumps(other))
    with pytest.raises(ExportMetadataError, match="sha256") as e:
        read_metadata(m)
    assert e.value.reason == "metadata_mismatch" and str(side) in str(e.value)
    # the model file changed after the export
    side.write_text(good)
    with open(m, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ExportMetadataError) as e:
        read_metadata(m)
    assert e.value.reason == "metadata_mismatch"
    _copy(exports["tflite"], tmp_path / "n.tflite")
    n = tmp_path / "n.tflite"
    cases = {
        "not valid JSON": "{not json",
        "JSON object": "[1, 2]",
        "nested deeper": "[" * 5000 + "]" * 5000,
        "'crop.size'": json.dumps({**json.loads(good), "crop": {**json.loads(good)["crop"], "size": "big"}}),
        "input.normalization.std": json.dumps({**json.loads(good), "input": {**json.loads(good)["input"],
                                                                             "normalization": {"mean": 0, "std": 0}}}),
        "thresholds": json.dumps({**json.loads(good), "thresholds": {"accuracy": 7}}),
        "NaN is not a JSON number": good.replace('"accuracy": 0.2864', '"accuracy": NaN'),
        "newer": json.dumps({**json.loads(good), "version": 99}),
        "over the": " " * (MAX_SIDECAR_BYTES + 1),
    }
    for match, text in cases.items():
        sidecar_path(n).write_text(text)
        with pytest.raises(ExportMetadataError, match=match) as e:
            read_metadata(n)
        assert e.value.reason == "metadata_invalid" and str(sidecar_path(n)) in str(e.value), match
    # a sidecar of another format
    s = _copy(exports["onnx"], tmp_path / "o.onnx")
    sidecar_path(s).write_text(json.dumps({**json.loads(sidecar_path(s).read_text()), "model_format": "tflite"}))
    with pytest.raises(ExportMetadataError, match="tflite export"):
        read_metadata(s)


def test_onnx_carries_its_metadata_inside(exports, tmp_path):
    from keras_facemargin.export.metadata import read_metadata, sidecar_path

    m = _copy(exports["onnx"], tmp_path / "m.onnx")
    sidecar_path(m).unlink()
    meta = read_metadata(m)  # from metadata_props
    assert meta["source_model"] == NAME and meta["thresholds"] == read_metadata(exports["onnx"])["thresholds"]


def test_no_threshold_without_recorded_thresholds(exports, tmp_path):
    import keras_facemargin as kfm
    from keras_facemargin.errors import ConfigurationError
    from keras_facemargin.export.metadata import sidecar_path

    m = _copy(exports["tflite"], tmp_path / "m.tflite")
    meta = json.loads(sidecar_path(m).read_text())
    meta["thresholds"] = None
    sidecar_path(m).write_text(json.dumps(meta))
    with pytest.raises(ConfigurationError, match="no calibrated thresholds") as e:
        kfm.FaceVerifier(str(m))
    assert e.value.reason == "no_threshold"
    assert kfm.FaceVerifier(str(m), threshold=0.3).threshold == 0.3


def test_cli_export_and_verify_end_to_end(lfw_pairs, reference, tmp_path, capsys):
    from keras_facemargin.cli import main

    _, _, ref_scores, ref_same = reference
    out = tmp_path / "cli.onnx"
    assert main(["export", NAME, "--format", "onnx", "--output", str(out), "--no-check", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["metadata"] == str(out) + ".json"
    (a, b), k = lfw_pairs[0][0], 0
    assert main(["verify", "--model", str(out), str(a), str(b), "--json"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got["is_same"] == bool(ref_same[k]) and abs(got["score"] - ref_scores[k]) < 0.01
    (tmp_path / "fake.tflite").write_bytes(b"TFL3")
    assert main(["verify", "--model", str(tmp_path / "fake.tflite"), str(a), str(b), "--json"]) == 2
    err = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert err["error"] == "metadata_missing" and "fake.tflite.json" in err["file"]
