"""VerificationCallback writes val_<set>_* into the epoch logs; ModelCheckpoint can monitor them."""

import pickle

import cv2
import keras
import numpy as np

from keras_facemargin.evaluation import evaluate_pairs
from keras_facemargin.callbacks import VerificationCallback


def _tiny_model():
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(inp)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    out = keras.layers.Dense(8)(keras.layers.Flatten()(x))
    return keras.Model(inp, out)


def test_callback_logs_and_checkpoint(tmp_path):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    n = 40
    a = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    b = a.copy()
    same = rng.random(n) < 0.5
    b[~same] = rng.integers(0, 256, (int((~same).sum()), 16, 16, 3), dtype=np.uint8)
    # the same pairs as an insightface .bin (PNG, lossless) under another name, loaded once
    bins = []
    for i in range(n):
        for im in (a[i], b[i]):
            bins.append(cv2.imencode(".png", cv2.cvtColor(im, cv2.COLOR_RGB2BGR))[1].tobytes())
    with open(tmp_path / "agedb_30.bin", "wb") as f:
        pickle.dump((bins, same.tolist()), f, protocol=pickle.HIGHEST_PROTOCOL)

    model = _tiny_model()
    model.compile(optimizer="sgd", loss="mse")
    cb = VerificationCallback({"lfw": (a, b, same), "agedb_30": str(tmp_path / "agedb_30.bin")},
                              batch_size=16, verbose=0)
    ckpt = keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras"), monitor="val_lfw_accuracy", mode="max",
                                           save_best_only=True, verbose=0)
    x = rng.integers(0, 256, (32, 16, 16, 3)).astype("float32") / 255.0
    hist = model.fit(x, rng.standard_normal((32, 8)), epochs=2, batch_size=16, verbose=0, callbacks=[cb, ckpt])
    for key in ("val_lfw_accuracy", "val_lfw_tar_far1e-3", "val_agedb_30_accuracy", "val_agedb_30_tar_far1e-3"):
        assert key in hist.history and len(hist.history[key]) == 2
    assert (tmp_path / "best.keras").exists()  # ModelCheckpoint found the monitored key
    # last epoch's value = an independent evaluation of the final weights
    ref = evaluate_pairs(model, a, b, same, flip=True, batch_size=16)
    assert abs(hist.history["val_lfw_accuracy"][-1] - ref.accuracy_mean) < 1e-9
    assert abs(hist.history["val_agedb_30_accuracy"][-1] - ref.accuracy_mean) < 1e-9  # same pairs via .bin
    assert len(cb.history["lfw"]) == 2


def test_every_n_epochs_skips(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
    same = np.arange(20) % 2 == 0
    model = _tiny_model()
    model.compile(optimizer="sgd", loss="mse")
    cb = VerificationCallback({"lfw": (a, a[::-1], same)}, every_n_epochs=2, verbose=0)
    logs = {}
    cb.set_model(model)
    cb.on_epoch_end(0, logs)
    assert "val_lfw_accuracy" not in logs
    cb.on_epoch_end(1, logs)
    assert 0.0 <= logs["val_lfw_accuracy"] <= 1.0


def test_bin_paths_with_the_same_stem_are_refused(tmp_path):
    import pytest

    a, b = tmp_path / "v1" / "lfw.bin", tmp_path / "v2" / "lfw.bin"
    with pytest.raises(ValueError, match=r"v1/lfw\.bin.*v2/lfw\.bin.*'lfw'"):
        VerificationCallback([str(a), str(b)])
    cb = VerificationCallback([str(a), str(tmp_path / "cfp_fp.bin")])  # distinct stems: both kept
    assert sorted(cb.history) == ["cfp_fp", "lfw"]
