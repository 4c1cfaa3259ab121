"""Two MultiWorkerMirroredStrategy workers on 127.0.0.1 (custom loop) end with identical state."""

import json
from pathlib import Path

import numpy as np
import pytest
from testing import run_workers

HERE = Path(__file__).parent


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.xdist_group('tf_config_workers')
def test_two_workers_end_with_identical_weights_and_kappa(tmp_path):
    outputs = run_workers(HERE / "training_script.py", lambda i: ["multiworker", str(tmp_path), "--tag", str(i)],
                          timeout=240)
    assert [o["replicas"] for o in outputs] == [2, 2]

    a, b = (np.load(tmp_path / f"state_{i}.npz") for i in range(2))
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
