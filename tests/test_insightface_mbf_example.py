"""examples/insightface_mbf_int8.py's PyTorch side: the ArcFace loss and resuming training.

The full script (train the insightface MobileFaceNet, convert, export TFLite int8, LFW) is an
experiment (docs/results.md); here its ArcFace head is checked against NumPy from the paper's
equation and a stopped-and-resumed run against an uninterrupted one, on a tiny insightface
MobileFaceNet (scale 1, blocks 1-1-1-1) and random 112x112 images.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch==2.13.0 (extra 'torch-parity') not installed")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import insightface_mbf_int8 as ex  # noqa: E402

from numpy_reference import l2n  # noqa: E402


def test_arcface_head_is_the_paper_equation():
    """L = -log(e^{s cos(theta_y + m)} / (e^{s cos(theta_y + m)} + sum_{j != y} e^{s cos theta_j})) (eq. 3)."""
    rng = np.random.default_rng(0)
    emb, y = rng.normal(size=(6, 16)), np.array([0, 3, 4, 4, 1, 2])
    head = ex.ArcFaceHead(5, 16, scale=30.0, margin=0.4, generator=torch.Generator().manual_seed(0))
    w = head.weight.detach().numpy().astype(np.float64)
    cos = l2n(emb) @ l2n(w).T
    logits = 30.0 * cos
    logits[np.arange(6), y] = 30.0 * np.cos(np.arccos(cos[np.arange(6), y]) + 0.4)
    logits -= logits.max(axis=1, keepdims=True)
    expected = np.mean(np.log(np.exp(logits).sum(axis=1)) - logits[np.arange(6), y])
    got = head.loss(torch.tensor(emb, dtype=torch.float32), torch.tensor(y)).item()
    assert got == pytest.approx(expected, rel=1e-5)
    assert 0.01 * 0.5 < float(np.std(w)) < 0.01 * 2  # PartialFC's N(0, 0.01) initialisation


def _run(out, monkeypatch, **overrides):
    monkeypatch.setitem(ex.VARIANTS, "tiny", {"num_features": 32, "blocks": (1, 1, 1, 1), "scale": 1})
    args = ex.parse_args(["--network", "tiny", "--epochs", "2", "--batch-size", "4", "--checkpoint-every", "2",
                          "--threads", "1", "--warmup-epochs", "0.5"])
    for k, v in overrides.items():
        setattr(args, k, v)
    rng = np.random.default_rng(1)
    data = {"x": rng.integers(0, 256, (10, 112, 112, 3), dtype=np.uint8), "y": np.arange(10) % 3, "num_classes": 3}
    out.mkdir(exist_ok=True)
    return ex.train(args, data, out)


@pytest.fixture
def deterministic():
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


@pytest.mark.slow
def test_stopped_and_resumed_training_equals_an_uninterrupted_run(tmp_path, monkeypatch, deterministic):
    straight = _run(tmp_path / "straight", monkeypatch)
    assert straight is not None
    assert _run(tmp_path / "resumed", monkeypatch, max_minutes=0.0) is None  # stopped at step 2 of 4
    ckpt = torch.load(tmp_path / "resumed" / "checkpoint_gpu_0.pt", weights_only=True)
    assert ckpt["global_step"] == 2 and set(ckpt) >= {"state_dict_backbone", "state_dict_softmax_fc", "state_optimizer"}
    resumed = _run(tmp_path / "resumed", monkeypatch)
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different  # weights and BN statistics
    final = torch.load(tmp_path / "resumed" / "checkpoint_gpu_0.pt", weights_only=True)
    assert final["global_step"] == 4
    assert [line.count('"step"') for line in (tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines()] == [1, 1]
