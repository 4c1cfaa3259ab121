"""Two MultiWorkerMirroredStrategy workers on 127.0.0.1 (custom loop): identical state on both, and a run
stopped mid-epoch resumes to the uninterrupted run's state.

tests/training_script.py: tiny IResNet, 16 synthetic identities, 6 global steps of 16 images per epoch
(8 per worker), 2 epochs, a checkpoint every 2 steps, KappaFace memory buffer.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from testing import run_workers
from worker_launch import crash_workers

HERE = Path(__file__).parent
STEPS, BATCH = 6, 16
pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.xdist_group('tf_config_workers')]


def train(out, *extra):
    return run_workers(HERE / "training_script.py", lambda i: ["multiworker", str(out), "--tag", str(i), *extra],
                       timeout=240)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    return out, train(out)


def test_two_workers_end_with_identical_weights_and_kappa(uninterrupted):
    out, outputs = uninterrupted
    assert [o["replicas"] for o in outputs] == [2, 2]

    a, b = (np.load(out / f"state_{i}.npz") for i in range(2))
    assert a.files == b.files
    different = [k for k in a.files if not np.array_equal(a[k], b[k])]
    assert not different, different  # weights, BN statistics, kappa, psi, memory, optimizer slots

    keys = a.files
    psi = a[next(k for k in keys if k.endswith("/psi"))]
    kappa = a[next(k for k in keys if k.endswith("/kappa"))]
    assert np.all((psi > 0) & (psi < 1)) and np.ptp(kappa) > 0  # updated by the custom loop's KappaUpdater
    # Each worker saw half of every global batch; the on_read counts sum over both workers.
    for epoch in (0, 1):
        assert a[f"counts/{epoch}"].sum() == outputs[0]["steps_per_epoch"] * outputs[0]["batch_size"]
    # Only the chief (worker 0) wrote the run folder's history; one line per epoch.
    run_dir = Path(outputs[0]["run_dir"])
    lines = (run_dir / "history.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1]
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("ckpt-*.index")) == ["ckpt-10.index", "ckpt-12.index"]


def test_two_workers_stopped_mid_epoch_resume_to_the_uninterrupted_state(uninterrupted, tmp_path):
    import tensorflow as tf

    full_out, _ = uninterrupted
    # Both workers os._exit(3) (abrupt, like kill -9) right after global step 9 = epoch 1, third step;
    # the newest checkpoint is step 8: epoch 1 with 2 of its 6 steps done.
    crash_workers(HERE / "training_script.py",
                  lambda i: ["multiworker", tmp_path, "--tag", i, "--crash-at", 9], returncode=3, timeout=240)
    ckpt_dir = tmp_path / "tiny" / "checkpoints"
    assert tf.train.latest_checkpoint(str(ckpt_dir)).endswith("ckpt-8")

    outputs = train(tmp_path)  # resumes: skips the 2 consumed batches of epoch 1 on each worker, runs 4
    assert [o["resumed_from_step"] for o in outputs] == [8, 8]
    assert outputs[0]["history"]["epoch"] == [0, 1]  # each epoch logged once

    full, resumed = np.load(full_out / "state_0.npz"), np.load(tmp_path / "state_0.npz")
    other = np.load(tmp_path / "state_1.npz")
    state_keys = sorted(k for k in full.files if k.startswith(("model/", "opt/")))
    assert state_keys == sorted(k for k in resumed.files if k.startswith(("model/", "opt/")))
    iterations = next(k for k in state_keys if k.endswith("/iteration"))
    assert resumed[iterations] == full[iterations] == 2 * STEPS  # no step lost, none run twice
    # The KappaFace feature counts of epoch 1 (summed over both workers) hold the 2 checkpointed steps
    # plus the 4 run after the resume: per identity exactly the uninterrupted epoch's, so the resumed
    # run trained on the batches it had not consumed yet, in the same order.
    assert full["counts/1"].sum() == STEPS * BATCH
    np.testing.assert_array_equal(resumed["counts/1"], full["counts/1"])
    # Every weight, BatchNorm statistic, memory row, momentum slot and count is bit-identical: the data
    # order depends only on (seed, epoch), every step is the same float32 computation on the same inputs,
    # and the 2-worker all-reduce is one addition (a + b == b + a).
    # kappa and psi, computed at the end of epoch 1 from the float feature sums, agree to float32 rounding
    # only: the checkpoint stores the cross-worker SUM of the on_read accumulators and TF restores it as
    # half on each worker, so the resumed epoch adds the same per-sample features in another order
    # ((s01+s11)/2 + s02.. instead of s01 + s02.. + s11..). kappa = r(d - r^2)/(1 - r^2) amplifies that
    # last-bit difference near r = 1 (measured: 1.9e-6 relative); a wrong batch fails the exact checks.
    rounded = [k for k in state_keys if k.endswith(("/kappa", "/psi"))]
    assert len(rounded) == 2
    different = [k for k in state_keys if k not in rounded and not np.array_equal(full[k], resumed[k])]
    assert not different, different
    for k in rounded:
        np.testing.assert_allclose(resumed[k], full[k], rtol=1e-5, atol=0, err_msg=k)
    assert not [k for k in state_keys if not np.array_equal(resumed[k], other[k])]  # both workers agree
