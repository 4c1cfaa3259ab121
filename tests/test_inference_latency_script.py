"""benchmarks/inference_latency.py end to end at a tiny size (IResNet-18, 32x32, one timed call).

The script builds the PyTorch IResNet of test_insightface_parity.py, converts it with
`convert_insightface`, exports TFLite and checks parity before timing; this keeps it working as
those move. The ONNX and XLA rows are left out here to stay fast (both are exercised by the
script's full runs; the ONNX export itself by test_export.py).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="torch==2.13.0 (extra 'torch-parity') not installed")
pytest.importorskip("ai_edge_litert")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "inference_latency.py"
RUNTIMES = ("tf.function", "tflite", "torch-channels_last", "torch-contiguous")


@pytest.mark.slow
def test_inference_latency_script_tiny(tmp_path):
    out = tmp_path / "latency.json"
    cmd = [sys.executable, str(SCRIPT), "--depth", "18", "--size", "32", "--batch", "1", "2",
           "--iters", "1", "--rounds", "1", "--warmup", "0", "--threads", "1", "--omp-passive",
           "--runtimes", ",".join(RUNTIMES), "--json", str(out)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "| runtime | batch | median ms/batch | images/s | IQR % | x tf.function |" in proc.stdout
    res = json.loads(out.read_text())
    assert [(r["runtime"], r["batch"]) for r in res["rows"]] == [(n, b) for n in RUNTIMES for b in (1, 2)]
    assert all(v < 1e-3 for v in res["parity"].values()), res["parity"]
    assert set(res["parity"]) == {"converted backbone (raw)", *RUNTIMES}
    for r in res["rows"]:
        assert r["images_per_s"] > 0 and r["n"] == 1
        if r["runtime"] == "tf.function":
            assert r["ratio"] == pytest.approx(1.0)
    assert res["env"]["omp_wait_policy"] == "PASSIVE"
