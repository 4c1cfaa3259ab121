"""KappaFace under a 2-replica MirroredStrategy (two logical CPU devices)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from testing import repo_env

HERE = Path(__file__).parent
pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _run(estimator):
    env = repo_env()
    proc = subprocess.run(
        [sys.executable, str(HERE / "mirrored_fit_script.py"), estimator],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.parametrize("estimator", ["memory_buffer", "momentum_encoder"])
def test_two_replica_fit_accumulator_equals_single_device_sum(estimator):
    out = _run(estimator)
    assert out["replicas"] == 2
    emb = np.asarray(out["embeddings"])
    feats = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.asarray(out["labels"])
    C = len(out["feature_counts"])
    ref = np.zeros((C, emb.shape[1]))
    np.add.at(ref, labels, feats)
    # Reading an on_read/sum variable adds both replicas' halves: every sample
    # counted exactly once (Keras' default aggregation would read replica 0 only).
    np.testing.assert_array_equal(out["feature_counts"], np.bincount(labels, minlength=C))
    np.testing.assert_allclose(out["feature_sums"], ref, atol=1e-5)
    if estimator == "memory_buffer":
        # The buffer holds every sample's feature, whichever replica saw it.
        np.testing.assert_allclose(out["memory"], feats, atol=1e-5)
    hist = out["history"]
    assert len(hist["loss"]) == 2 and np.all(np.isfinite(hist["loss"]))
    assert np.all(np.isfinite(hist["kappa_mean"])) and hist["margin_min"][-1] < hist["margin_max"][-1]
    psi = np.asarray(out["psi"])
    assert np.all((psi > 0) & (psi < 1))
