"""benchmarks/gpu_throughput.py cannot rot: its tiny CPU configuration runs (TensorFlow through Keras, and
the plain-PyTorch reference when torch is installed) and prints a positive images/s; the FLOP count is
insightface's 6.3 G multiply-accumulates for IResNet-50 at 112x112; the peak table matches device names."""

import importlib.util
import re
import subprocess
import sys

import pytest

from testing import REPO, load_script, repo_env

SCRIPT = REPO / "benchmarks" / "gpu_throughput.py"


def test_flops_and_peak_table():
    bench = load_script("benchmarks/gpu_throughput.py")
    backbone = dict(bench.FULL, classes=0)
    assert abs(bench.forward_macs(backbone) / 1e9 - 6.3) < 0.05
    assert bench.train_flops(backbone) == 6 * bench.forward_macs(backbone)
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.0
    assert bench.peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.0
    assert bench.peak_tflops("NVIDIA H200", "fp16") == 989.0
    assert bench.peak_tflops("NVIDIA A100-SXM4-80GB", "bf16") == 312.0
    assert bench.peak_tflops("Tesla V100-SXM2-16GB", "bf16") is None
    assert bench.peak_tflops("CPU", "bf16") is None


@pytest.mark.slow
def test_tiny_cpu_configuration_runs_and_prints_images_per_second():
    runners = ["tensorflow"] + (["torch-native"] if importlib.util.find_spec("torch") else [])
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--steps", "2", "--backends", *runners],
                          capture_output=True, text=True, timeout=300, env=repo_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "TINY configuration on the CPU" in proc.stdout
    for runner in runners:
        found = re.search(rf"^{runner}: ([0-9.]+) images/s", proc.stdout, re.M)
        assert found and float(found.group(1)) > 0, proc.stdout
    assert re.search(r"^\| keras/tensorflow \| CPU \| [0-9.]+ \| 1\.00 \|", proc.stdout, re.M), proc.stdout
