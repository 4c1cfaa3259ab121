"""The model shipped inside the package: offline load, hash check, and its registry numbers on LFW."""

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

import keras_facemargin as kfm
from keras_facemargin.pretrained.loader import PretrainedWeightsError, packaged_weights_path
from keras_facemargin.pretrained.registry import get_model_info
from testing import DATA_DIR

#: the model whose weights ship inside the package (the default model, dlib_resnet_v1, is converted
#: from the face_recognition_models dependency instead: tests/test_dlib_resnet.py)
SHIPPED = "arcface_celeba_mbf"



@pytest.fixture
def offline_home(tmp_path, monkeypatch):
    """No Keras cache and no $KERAS_FACEMARGIN_HOME: only the package's own file can be found."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.delenv("KERAS_FACEMARGIN_HOME", raising=False)
    return tmp_path


def test_default_model_is_shipped_with_its_hash_and_thresholds():
    info = get_model_info(SHIPPED)
    path = packaged_weights_path(SHIPPED)
    assert path.is_file() and path.stat().st_size < 5 * 2**20
    assert hashlib.sha256(path.read_bytes()).hexdigest() == info["sha256"]
    assert set(info["thresholds"]) == {"0.01", "0.001", "0.0001", "accuracy"}
    assert 0 < info["thresholds"]["accuracy"] < info["thresholds"]["0.01"] < info["thresholds"]["0.001"] \
        < info["thresholds"]["0.0001"] < 1
    assert "non-commercial" in info["license"]


def test_load_offline_from_the_package(offline_home):
    info = get_model_info(SHIPPED)
    emb = kfm.load(SHIPPED)
    h, w = info["input_size"]
    assert emb.input_shape == (None, h, w, 3) and emb.output_shape == (None, info["embedding_dim"])
    out = np.asarray(emb(np.random.default_rng(0).uniform(-1, 1, (2, h, w, 3)).astype("float32")))
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert emb.normalization == info["normalization"]
    assert not list(Path(os.environ["KERAS_HOME"]).glob("**/*.h5"))  # nothing downloaded or cached


def test_a_tampered_file_earlier_on_the_search_path_is_refused(offline_home, monkeypatch):
    home = offline_home / "kfm_home"
    home.mkdir()
    data = bytearray(packaged_weights_path(SHIPPED).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (home / get_model_info(SHIPPED)["weights_file"]).write_bytes(bytes(data))
    monkeypatch.setenv("KERAS_FACEMARGIN_HOME", str(home))
    with pytest.raises(PretrainedWeightsError, match="fail the hash check"):
        kfm.load(SHIPPED)


@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.skipif(not (DATA_DIR / "lfw" / "pairs.txt").is_file(), reason=f"LFW not found under {DATA_DIR} (set KFM_DATA_DIR)")
def test_shipped_model_reproduces_its_registry_lfw_accuracy(offline_home):
    info = get_model_info(SHIPPED)
    emb = kfm.load(SHIPPED)
    r = kfm.evaluation.lfw_verification(emb, DATA_DIR / "lfw", image_size=info["input_size"][0], progress=False)
    assert 100 * r.accuracy_mean == pytest.approx(info["reported"]["LFW (centre crop)"], abs=0.06)
