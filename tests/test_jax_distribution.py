"""KappaFace under JAX keras.distribution.DataParallel on 2 host (CPU) devices.

One subprocess (XLA_FLAGS must be set before JAX starts) fits the same tiny
FaceRecognizer (tiny IResNet, 16x16 images, 4 classes, KappaMarginDense with the
memory buffer) for one epoch twice: single-device, then with
`DataParallel(devices=jax.devices())`. The accumulators, the memory buffer and the
kappa computed from them must agree, and kappa must be updated for every class seen.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from testing import JAX_TWO_CPU_XLA_FLAGS

pytest.importorskip("jax")

WORKER = Path(__file__).with_name("jax_distribution_worker.py")
pytestmark = [pytest.mark.backend, pytest.mark.distributed, pytest.mark.slow,
              pytest.mark.xdist_group("jax_distribution")]  # one worker subprocess for the module


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("jax_dp") / "result.json"
    env = dict(os.environ, KERAS_BACKEND="jax", XLA_FLAGS=JAX_TWO_CPU_XLA_FLAGS,
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(WORKER), str(out)], env=env, capture_output=True, text=True,
                          timeout=900, cwd=str(WORKER.parents[1]))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def test_two_host_devices(runs):
    assert len(runs["devices"]) == 2
    assert runs["single"]["kernel_devices"] == 1
    assert runs["data_parallel"]["kernel_devices"] == 2  # variables live on the 2-device mesh


@pytest.mark.parametrize("key", ["feature_counts", "feature_sums", "memory", "kappa"])
def test_data_parallel_equals_single_device(runs, key):
    single, dp = (np.asarray(runs[r][key], "float64") for r in ("single", "data_parallel"))
    np.testing.assert_allclose(dp, single, atol=1e-4, rtol=1e-5)


def test_state_recorded_and_kappa_updated_for_every_class(runs):
    for name in ("single", "data_parallel"):
        r = runs[name]
        counts = np.asarray(r["feature_counts"])
        assert counts.sum() == 24 and (counts > 0).all(), name  # every sample recorded once
        assert (np.abs(np.asarray(r["memory"])).sum(axis=1) > 0).all(), name  # every buffer row written
        assert r["update"]["kappa_classes_seen"] == r["classes_in_data"] == 4, name
        assert (np.asarray(r["kappa"]) > 0).all(), name  # kappa starts at 0
    np.testing.assert_allclose(runs["data_parallel"]["loss"], runs["single"]["loss"], rtol=1e-4)
