"""Class-sharded ModelParallel on JAX (2 host devices) equals the unsharded run; the --shard-classes checks.

One subprocess (XLA_FLAGS must be set before JAX starts; tests/jax_class_sharding_worker.py) fits a
tiny FaceRecognizer with ArcMarginDense and with KappaMarginDense (memory buffer, KappaUpdater) for
2 epochs on one device and under `class_sharded_distribution` over 2 host devices, from the same
weights and batches, and runs the trainer with backend="jax", shard_classes=True. The losses, every
final weight and the KappaFace state must agree, and each device must hold half of the class
columns of the kernel (and of its momentum, the per-class state and the memory-buffer rows).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from testing import JAX_TWO_CPU_XLA_FLAGS

WORKER = Path(__file__).with_name("jax_class_sharding_worker.py")
pytestmark = pytest.mark.xdist_group("jax_class_sharding")  # one worker subprocess for the module
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
KINDS = ("arcface", "kappaface")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    pytest.importorskip("jax")
    out = tmp_path_factory.mktemp("jax_shard") / "result.json"
    env = dict(os.environ, KERAS_BACKEND="jax", XLA_FLAGS=JAX_TWO_CPU_XLA_FLAGS,
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(WORKER), str(out), "trainer"], env=env, capture_output=True,
                          text=True, timeout=900, cwd=str(WORKER.parents[1]))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.backend
@pytest.mark.distributed
@pytest.mark.slow
def test_two_host_devices(runs):
    assert runs["devices"] == ["cpu:0", "cpu:1"]


@pytest.mark.backend
@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_sharded_fit_equals_unsharded(runs, kind):
    single, sharded = runs[kind]["single"], runs[kind]["sharded"]
    assert len(single["loss"]) == 2
    np.testing.assert_allclose(sharded["loss"], single["loss"], rtol=1e-4, atol=1e-5)
    assert len(sharded["weights"]) == len(single["weights"])
    for path, a, b in zip(single["weight_paths"], single["weights"], sharded["weights"]):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5, err_msg=path)
    np.testing.assert_allclose(sharded["kernel"], single["kernel"], rtol=1e-4, atol=1e-5)
    assert not np.allclose(single["loss"][0], single["loss"][1])  # it trained


@pytest.mark.backend
@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_each_device_holds_half_of_the_kernel(runs, kind):
    single, sharded = runs[kind]["single"], runs[kind]["sharded"]
    d, c = sharded["kernel_shape"]
    assert single["kernel_devices"] == 1 and single["kernel_shards"] == [[d, c]]
    assert sharded["kernel_devices"] == 2
    assert sharded["kernel_shards"] == [[d, c // 2], [d, c // 2]]
    assert sorted(sharded["kernel_shard_columns"]) == [[0, c // 2], [c // 2, c]]
    assert sharded["momentum_shards"] == [[d, c // 2], [d, c // 2]]  # the SGD slot follows the kernel
    # the backbone is replicated: a full copy on each device
    full = single["backbone_kernel_shards"][0]
    assert sharded["backbone_kernel_shards"] == [full, full]


@pytest.mark.backend
@pytest.mark.distributed
@pytest.mark.slow
def test_kappaface_state_equal_and_sharded(runs):
    single, sharded = runs["kappaface"]["single"], runs["kappaface"]["sharded"]
    for key in ("kappa", "psi", "memory", "feature_sums", "feature_counts", "class_count_weights"):
        np.testing.assert_allclose(sharded[key], single[key], rtol=1e-4, atol=1e-5, err_msg=key)
    c, (n, d) = len(single["kappa"]), np.shape(single["memory"])
    for key in ("kappa", "psi", "feature_counts", "class_count_weights"):
        assert sharded[key + "_shards"] == [[c // 2], [c // 2]], key
    assert sharded["feature_sums_shards"] == [[c // 2, d], [c // 2, d]]
    assert sharded["memory_shards"] == [[n // 2, d], [n // 2, d]]  # buffer rows split by sample
    assert not np.allclose(single["psi"], 1.0)  # KappaUpdater ran: epoch 2 used the new margins
    assert (np.abs(np.asarray(single["memory"])).sum(axis=1) > 0).all()  # every sample's row written


@pytest.mark.backend
@pytest.mark.distributed
@pytest.mark.slow
def test_num_classes_not_divisible_raises(runs):
    name, is_value_error, message = runs["errors"]["indivisible"]
    assert name == "ClassShardingError" and is_value_error
    assert "num_classes=5" in message and "device count 2" in message


@pytest.mark.backend
@pytest.mark.distributed
@pytest.mark.slow
def test_already_built_head_raises(runs):
    name, is_value_error, message = runs["errors"]["built"]
    assert name == "ClassShardingError" and is_value_error and "already built" in message


@pytest.mark.backend
@pytest.mark.distributed
@pytest.mark.slow
def test_odd_sample_count_replicates_the_memory_buffer_with_a_warning(runs):
    odd = runs["errors"]["odd_samples"]
    assert any("num_samples=25" in w and "replicated" in w for w in odd["warnings"])
    assert odd["memory"] is None  # no layout: replicated
    assert odd["kernel"] == [None, "devices"] and odd["kappa"] == ["devices"]
    assert odd["backbone"] is None


@pytest.mark.backend
@pytest.mark.distributed
@pytest.mark.slow
def test_trainer_jax_shard_classes_end_to_end(runs):
    t = runs["trainer"]
    results = t["results"]
    assert results["backend"] == {"name": "jax", "devices": 2, "distribution": "ModelParallel",
                                  "kernel_shards": [[[16, 4], [16, 4]]]}
    losses = results["history"]["loss"]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert results["history"]["kappa_classes_seen"][-1] > 0  # KappaUpdater ran on the sharded state
    assert t["loaded_kernel_shape"] == [16, 8]  # model.keras holds the whole (d, C) kernel
    assert "model.keras" in t["files"] and "checkpoints" in t["files"]
    assert t["checkpoints"] == ["ckpt-3.npz", "ckpt-4.npz"]  # every step (save_every_steps=1), newest 2 kept
    assert t["distribution_after"] == "None"  # the trainer restored the global distribution
    assert t["warnings"] and "num_samples=111" in t["warnings"][0]  # odd |D|: buffer replicated, said so


# -- without a device mesh (the test process runs on TensorFlow) -----------------------------------------


def test_shard_classes_needs_jax():
    from keras_facemargin.training import get_experiment

    with pytest.raises(ValueError, match=r"needs backend='jax' \(--backend jax.*Received: backend='tensorflow'"):
        get_experiment("synthetic", shard_classes=True)
    with pytest.raises(ValueError, match="MirroredStrategy"):
        get_experiment("synthetic", shard_classes=True, backend="tensorflow")
    cfg = get_experiment("synthetic", backend="jax", shard_classes=True)
    assert (cfg.backend, cfg.shard_classes) == ("jax", True)
    assert type(cfg).from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="backend"):
        get_experiment("synthetic", backend="torch")
    with pytest.raises(ValueError, match="Partial FC"):
        get_experiment("synthetic", backend="jax", shard_classes=True, sample_rate=0.5)
    with pytest.raises(ValueError, match="multi_worker"):
        get_experiment("synthetic", backend="jax", multi_worker=True)


def test_example_flags(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import train_ms1mv2 as example

    cfg = example.config_from_args(example.parse_args(["--backend", "jax", "--shard-classes"]))
    assert (cfg.backend, cfg.shard_classes) == ("jax", True)
    assert example.backend_flag(["--loss", "arcface", "--backend", "jax"]) == "jax"
    assert example.backend_flag(["--backend=jax"]) == "jax" and example.backend_flag([]) is None
    with pytest.raises(SystemExit, match="shard_classes.*needs backend='jax'"):
        example.config_from_args(example.parse_args(["--shard-classes"]))
    # keras already runs on TensorFlow in this process: --backend jax must say so, not train.
    with pytest.raises(SystemExit, match="backend is 'jax'.*keras already runs on the 'tensorflow' backend"):
        example.main(["--backend", "jax", "--output", "/nonexistent"])


def test_trainer_refuses_a_backend_mismatch():
    from keras_facemargin.training import Trainer, get_experiment

    with pytest.raises(ValueError, match="KERAS_BACKEND=jax"):
        Trainer(get_experiment("synthetic", backend="jax"))


def test_class_sharded_distribution_needs_jax():
    from keras_facemargin.layers import ArcMarginDense
    from keras_facemargin.training.distribution import class_sharded_distribution

    with pytest.raises(NotImplementedError, match="JAX backend"):
        class_sharded_distribution(ArcMarginDense(4))
