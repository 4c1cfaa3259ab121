"""JAX runs checkpoint and resume: `WeightsCheckpoint` (.npz) in the trainer, sharded or not.

Two subprocesses of tests/jax_checkpoint_worker.py (KERAS_BACKEND=jax, 2 host devices): the first
runs a tiny KappaFace (memory buffer) trainer run uninterrupted for 2 epochs and stops the same run
after epoch 0 (DataParallel; class-sharded) or inside epoch 1 (class-sharded, a checkpoint every 2
steps); the second resumes the stopped runs. Every model and optimizer variable at the end (weights,
BatchNorm statistics, kappa, psi, feature sums/counts, memory buffer, momentum, iterations) must
equal the uninterrupted run's, the resumed process must train only the remaining steps, the restored
values must be the checkpoint's and, sharded, keep their layout (half of the class columns and
memory rows per device). A checkpoint of another model is refused, naming the file and variable.
The rest runs in this (TensorFlow) process: the callback on its own, and the refusals between
tf.train and .npz checkpoints.
"""

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from testing import JAX_TWO_CPU_XLA_FLAGS

WORKER = Path(__file__).with_name("jax_checkpoint_worker.py")
pytestmark = pytest.mark.xdist_group("jax_checkpoint")  # the two worker subprocesses run once per module
STEPS = 3


def _worker(mode, out, cache):
    env = dict(os.environ, KERAS_BACKEND="jax", XLA_FLAGS=JAX_TWO_CPU_XLA_FLAGS,
               JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, str(WORKER), mode, str(out)], env=env, capture_output=True, text=True,
                          timeout=900, cwd=str(WORKER.parents[1]))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads((out / f"{mode}.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    pytest.importorskip("jax")
    out = tmp_path_factory.mktemp("jax_ckpt")
    cache = tmp_path_factory.mktemp("jax_cache")  # the second process reuses the first one's compilations
    first = _worker("first", out, cache)
    resumed = _worker("resume", out, cache)
    return out, first, resumed


def _state(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _checkpoint(path):
    """(manifest, {key: array}) of a WeightsCheckpoint file, read with plain zipfile/NumPy."""
    with zipfile.ZipFile(path) as z:
        manifest = json.loads(z.read("manifest.json"))
    with np.load(path) as f:
        return manifest, {k: f[k] for k in f.files if k != "manifest.json"}


def _names(paths):
    """Variable paths without Keras's automatic `_<n>` suffixes (each model of a process gets other ones)."""
    return [re.sub(r"_\d+(?=[_/]|$)", "", str(p)) for p in paths]


# (variant, steps done when stopped, step of the newest checkpoint)
CASES = [("dp", 3, 3), ("shard", 3, 3), ("shard_mid", 5, 4)]


@pytest.mark.backend
@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("variant, done, stopped_at", CASES)
def test_resumed_run_equals_the_uninterrupted_one(runs, variant, done, stopped_at):
    out, first, resumed = runs
    full_name = "full_shard" if variant == "shard_mid" else f"full_{variant}"
    assert first[full_name]["steps"] == 2 * STEPS and first[variant]["steps"] == done
    assert first[variant]["results"] is None  # stopped: no results.json
    r = resumed[variant]
    assert r["results"]["resumed_from_step"] == stopped_at
    assert r["steps"] == 2 * STEPS - stopped_at  # only the remaining steps were trained here
    assert r["results"]["history"]["epoch"] == [0, 1]  # each epoch logged once
    full, res = _state(out / f"{full_name}.npz"), _state(out / f"{variant}.npz")
    for group in ("model_paths", "opt_paths"):
        assert _names(full[group]) == _names(res[group])
    keys = [k for k in full if k.startswith(("model/", "opt/"))]
    assert len(keys) > 100 and sorted(keys) == sorted(k for k in res if k.startswith(("model/", "opt/")))
    paths = {f"{g}/{i}": p for g in ("model", "opt") for i, p in enumerate(full[f"{g}_paths"])}
    for k in keys:
        np.testing.assert_array_equal(res[k], full[k], err_msg=paths[k])  # same programs, same data: bit-identical
    by_path = {name: full[k] for k, name in zip(keys, _names(paths[k] for k in keys))}
    assert by_path["sgd/iteration"] == 2 * STEPS
    kappa = {name.rsplit("/", 1)[1]: value for name, value in by_path.items() if "kappa_margin_dense/" in name}
    assert set(kappa) >= {"kappa", "psi", "memory", "feature_sums", "feature_counts", "class_counts"}
    assert not np.allclose(kappa["psi"], 1.0)  # KappaUpdater ran at both epoch ends
    assert (np.abs(kappa["memory"]).sum(axis=1) > 0).sum() >= 3 * 8  # the samples seen have rows
    assert not np.allclose(full["model/0"], _state(out / f"{variant}.restored.npz")["model/0"])  # it trained on


@pytest.mark.backend
@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("variant, done, stopped_at", CASES)
def test_restore_puts_back_the_checkpoint_under_each_layout(runs, variant, done, stopped_at):
    out, first, resumed = runs
    manifest, saved = _checkpoint(out / f"{variant}.from.npz")
    assert manifest["step"] == stopped_at and manifest["steps_per_epoch"] == STEPS
    restored = _state(out / f"{variant}.restored.npz")
    for group, short in (("model", "model"), ("optimizer", "opt")):
        entries = manifest["variables"][group]
        assert _names(e["path"] for e in entries) == _names(restored[f"{short}_paths"])
        for i, e in enumerate(entries):
            np.testing.assert_array_equal(restored[f"{short}/{i}"], saved[e["key"]], err_msg=e["path"])
            assert list(saved[e["key"]].shape) == e["shape"]
    shards = resumed[variant]["shards"]
    d, c = 16, 4
    if variant == "dp":  # DataParallel: every variable replicated on both devices
        assert shards["kernel"] == [[d, c], [d, c]] and shards["memory"] == [[74, d], [74, d]]
    else:
        assert shards["kernel"] == [[d, c // 2], [d, c // 2]]
        assert shards["kernel_momentum"] == [[d, c // 2], [d, c // 2]]
        assert shards["kappa"] == shards["psi"] == [[c // 2], [c // 2]]
        assert shards["memory"] == [[37, d], [37, d]]  # memory-buffer rows split by sample
    full = first["full_shard" if variant != "dp" else "full_dp"]["results"]["backend"]
    assert full == resumed[variant]["results"]["backend"]


@pytest.mark.backend
@pytest.mark.distributed
@pytest.mark.slow
def test_checkpoints_written_and_kept(runs):
    _, first, resumed = runs
    assert first["full_dp"]["checkpoints"] == ["ckpt-3.npz", "ckpt-6.npz"]  # epoch ends only
    assert first["full_shard"]["checkpoints"] == ["ckpt-4.npz", "ckpt-6.npz"]  # 2, 3, 4, 6: the newest 2 kept
    assert first["shard_mid"]["checkpoints"] == ["ckpt-3.npz", "ckpt-4.npz"]
    assert resumed["shard_mid"]["checkpoints"] == ["ckpt-4.npz", "ckpt-6.npz"]
    assert resumed["devices"] == ["cpu:0", "cpu:1"]


@pytest.mark.backend
@pytest.mark.distributed
@pytest.mark.slow
def test_a_checkpoint_of_another_model_is_refused(runs):
    out, _, resumed = runs
    name, message = resumed["mismatch"]
    assert name == "ValueError"
    assert f"Cannot restore {out / 'other' / 'checkpoints' / 'ckpt-6.npz'}: it does not match this model" in message
    assert "'head_fc/kernel' (32, 8) float32 in this run but 'head_fc/kernel' (32, 16) float32" in message


# -- in this process (TensorFlow backend) -----------------------------------------------------------


def _tiny(seed):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.BatchNormalization(),
                              keras.layers.Dropout(0.5, seed=seed), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def test_weights_checkpoint_round_trip_and_refusals(tmp_path):
    import keras

    from keras_facemargin.callbacks import NonFiniteLossError, TrainingCheckpoint, WeightsCheckpoint

    model = _tiny(0)
    x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
    model.fit(x, x[:, :2], batch_size=4, epochs=1, verbose=0)
    ckpt = WeightsCheckpoint(tmp_path / "w", model, steps_per_epoch=4, max_to_keep=2)
    assert ckpt.restore() == 0 and ckpt.latest is None
    for step in (4, 8, 12):
        path = ckpt.save(step)
    assert sorted(os.listdir(tmp_path / "w")) == ["ckpt-12.npz", "ckpt-8.npz"] and ckpt.latest == path
    state = [np.array(v.value) for v in model.variables + model.optimizer.variables]
    assert any("seed_generator" in v.path for v in model.variables)  # seed states are part of it

    other = _tiny(1)  # other weights, same architecture (its layer names get other _<n> suffixes)
    assert other.optimizer.iterations.numpy() == 0
    restored = WeightsCheckpoint(tmp_path / "w", other, steps_per_epoch=4)
    assert restored.restore() == 12 and restored.latest == path and restored.saved_step == 12
    for a, v in zip(state, other.variables + other.optimizer.variables):
        np.testing.assert_array_equal(np.array(v.value), a, err_msg=v.path)

    wide = keras.Sequential([keras.Input((3,)), keras.layers.Dense(5), keras.layers.Dense(2)])
    wide.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match=r"Cannot restore .*ckpt-12\.npz: it does not match this model: model "
                                         r"variable 0 is .*kernel' \(3, 5\) float32 in this run but .*\(3, 4\)"):
        WeightsCheckpoint(tmp_path / "w", wide, steps_per_epoch=4).restore()
    with pytest.raises(ValueError, match="written with 4 steps per epoch, this run has 5"):
        WeightsCheckpoint(tmp_path / "w", _tiny(2), steps_per_epoch=5).restore()

    # tf.train checkpoints and .npz ones are not mistaken for each other
    with pytest.raises(ValueError, match=r"holds the WeightsCheckpoint .*ckpt-12\.npz"):
        TrainingCheckpoint(tmp_path / "w", model, steps_per_epoch=4).restore()
    TrainingCheckpoint(tmp_path / "tf", model, steps_per_epoch=4).save(4)
    with pytest.raises(ValueError, match=r"holds the TensorFlow \(tf.train\) checkpoint .*ckpt-4, .*'tensorflow'"):
        WeightsCheckpoint(tmp_path / "tf", model, steps_per_epoch=4).restore()

    # a NaN weight: nothing written, the last good checkpoint stays the newest
    model.layers[0].kernel.assign(np.full((3, 4), np.nan, "float32"))
    with pytest.raises(NonFiniteLossError, match=r"global step 16 .*Last good checkpoint: .*ckpt-12\.npz"):
        ckpt.save(16)
    assert sorted(os.listdir(tmp_path / "w")) == ["ckpt-12.npz", "ckpt-8.npz"]
