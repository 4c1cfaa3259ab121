"""Fault tolerance: a run killed mid-epoch resumes exactly; a NaN stops the run and keeps the last good checkpoint.

Each run is a fresh process of tests/training_script.py (tiny IResNet, 16 synthetic identities,
6 steps of 16 images per epoch, 2 epochs, a checkpoint every 2 steps, KappaFace memory buffer).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from testing import repo_env

HERE = Path(__file__).parent
STEPS, BATCH = 6, 16


def run_script(*args, expect_rc=0):
    env = repo_env()
    env.pop("TF_CONFIG", None)
    proc = subprocess.run([sys.executable, str(HERE / "training_script.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == expect_rc, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    return (json.loads(lines[-1][len("RESULT "):]) if lines else None), proc


@pytest.mark.slow
def test_killed_mid_epoch_resumes_with_the_same_state(tmp_path):
    import tensorflow as tf

    full, _ = run_script("single", tmp_path / "full")
    # os._exit(3) after global step 9 = epoch 1, third step; the last checkpoint is step 8.
    run_script("single", tmp_path / "killed", "--crash-at", 9, expect_rc=3)
    ckpt_dir = tmp_path / "killed" / "tiny" / "checkpoints"
    assert tf.train.latest_checkpoint(str(ckpt_dir)).endswith("ckpt-8")
    history_before = (tmp_path / "killed" / "tiny" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in history_before] == [0]

    # The checkpoint holds the whole KappaFace state and the optimizer.
    names = [n for n, _ in tf.train.list_variables(str(ckpt_dir / "ckpt-8"))]
    for part in ("head/feature_sums", "head/feature_counts", "head/memory", "head/kappa", "head/psi",
                 "optimizer/_iterations", "step"):
        assert any(part in n for n in names), part
    assert sum("optimizer/_variables" in n for n in names) > 10  # momentum slots
    reader = tf.train.load_checkpoint(str(ckpt_dir / "ckpt-8"))
    counts_key = next(n for n in names if "head/feature_counts" in n)
    step_key = next(n for n in names if n.startswith("step"))
    assert reader.get_tensor(step_key) == 8
    assert reader.get_tensor(counts_key).sum() == 2 * BATCH  # the 2 steps of epoch 1 done before the save

    resumed, _ = run_script("single", tmp_path / "killed")
    assert resumed["resumed_from_step"] == 8
    assert resumed["history"]["epoch"] == [0, 1]  # each epoch logged once

    a = np.load(tmp_path / "full" / "state_0.npz")
    b = np.load(tmp_path / "killed" / "state_0.npz")
    # Nothing lost, nothing counted twice: the features accumulated in the resumed epoch are
    # exactly that epoch's samples (the labels its dataset yields), as in the uninterrupted run.
    expected = np.bincount(a["labels/1"], minlength=16)
    assert expected.sum() == STEPS * BATCH
    np.testing.assert_array_equal(b["counts/1"], expected)
    np.testing.assert_array_equal(a["counts/1"], expected)
    # Deterministic data order per (seed, epoch): every model and optimizer variable (weights,
    # BatchNorm statistics, kappa, psi, memory buffer, momentum slots, iterations) is bit-identical.
    state_keys = [k for k in a.files if k.startswith(("model/", "opt/"))]
    assert sorted(state_keys) == sorted(k for k in b.files if k.startswith(("model/", "opt/")))
    assert any(k.endswith("/psi") for k in state_keys) and any(k.endswith("/memory") for k in state_keys)
    different = [k for k in state_keys if not np.array_equal(a[k], b[k])]
    assert not different, different
    psi = a[next(k for k in state_keys if k.endswith("/psi"))]
    assert np.all(psi < 1)  # updated at the epoch ends, not left at the initial 1


@pytest.mark.slow
def test_nan_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    import tensorflow as tf

    # A weight set to NaN after global step 3: step 4 (epoch 0, step index 3) has a NaN loss.
    _, proc = run_script("single", tmp_path, "--nan-at", 3, "--estimator", "momentum_encoder", expect_rc=1)
    ckpt_dir = tmp_path / "tiny" / "checkpoints"
    assert "NonFiniteLossError" in proc.stderr
    assert "at epoch 0 step 3 (0-based)" in proc.stderr
    assert f"last good checkpoint: {ckpt_dir / 'ckpt-2'} (global step 2)" in proc.stderr
    assert tf.train.latest_checkpoint(str(ckpt_dir)).endswith("ckpt-2")
    reader = tf.train.load_checkpoint(str(ckpt_dir / "ckpt-2"))
    names = [n for n, _ in tf.train.list_variables(str(ckpt_dir / "ckpt-2"))]
    assert sum("momentum_encoder" in n for n in names) > 10  # the encoder is part of the state
    for name in names:
        if name != "_CHECKPOINTABLE_OBJECT_GRAPH":
            assert np.all(np.isfinite(reader.get_tensor(name))), name


def test_checkpoint_refuses_non_finite_weights(tmp_path):
    import keras

    from keras_facemargin.callbacks import NonFiniteLossError, TrainingCheckpoint

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    ckpt = TrainingCheckpoint(tmp_path, model, steps_per_epoch=4)
    good = ckpt.save(4)
    model.layers[0].kernel.assign(np.full((3, 2), np.inf, "float32"))
    with pytest.raises(NonFiniteLossError, match="global step 8.*Last good checkpoint: .*ckpt-4"):
        ckpt.save(8)
    assert ckpt.latest == good
    assert TrainingCheckpoint(tmp_path, model, steps_per_epoch=4).restore() == 4
    assert np.all(np.isfinite(model.layers[0].kernel.numpy()))
