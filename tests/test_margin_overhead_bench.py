"""benchmarks/margin_overhead.py cannot rot: a tiny configuration runs every head (both KappaFace
estimators, and again with `--autodiff-cosine`) and prints a positive step time and ratio for each;
the autodiff cosine it restores is the same function as the heads' `normalized_matmul`."""

import re
import subprocess
import sys

import numpy as np
import pytest

from testing import REPO, load_script, repo_env

SCRIPT = REPO / "benchmarks" / "margin_overhead.py"


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--autodiff-cosine"]])
def test_tiny_configuration_prints_every_head(extra):
    cmd = [sys.executable, str(SCRIPT), "--classes", "50", "--steps", "2", "--repeats", "1",
           "--batch-size", "8", "--image-size", "32", "--embedding-dim", "16", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=repo_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    expected = "autodiff" if extra else "normalized_matmul"
    assert f"cosine gradient: {expected}" in proc.stdout
    for head in ("softmax", "arcface", "kappa_buffer", "kappa_encoder"):
        found = re.search(rf"^\s+50\s+{head}\s+([0-9.]+)\s+([0-9.]+)", proc.stdout, re.M)
        assert found and float(found.group(1)) > 0 and float(found.group(2)) > 0, proc.stdout
    assert re.search(r"^\s+50\s+softmax\s+[0-9.]+\s+1\.000", proc.stdout, re.M), proc.stdout


def test_the_autodiff_ablation_computes_the_same_cosines():
    import keras

    from keras_facemargin.layers import ArcMarginDense
    from keras_facemargin.layers.cosine_dense import CosineDense

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 6)).astype("float32")
    head = ArcMarginDense(9)
    head.build((None, 6))
    reference = x / np.linalg.norm(x, axis=1, keepdims=True) @ (
        keras.ops.convert_to_numpy(head.kernel) / np.linalg.norm(keras.ops.convert_to_numpy(head.kernel), axis=0))
    fused = keras.ops.convert_to_numpy(head.cosine(x))
    original = CosineDense.cosine
    try:
        load_script("benchmarks/margin_overhead.py").use_autodiff_cosine()
        autodiff = keras.ops.convert_to_numpy(head.cosine(x))
    finally:
        CosineDense.cosine = original
    np.testing.assert_allclose(fused, reference, atol=1e-6)
    np.testing.assert_allclose(autodiff, reference, atol=1e-6)
