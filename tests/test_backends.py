"""The heads, backbones and stateful training paths on TensorFlow, JAX and PyTorch.

One subprocess per backend (`tests/backend_worker.py`, `KERAS_BACKEND` set)
runs every check and writes a JSON; the three run concurrently once per module.
Every backend is checked against float64 NumPy references of the papers'
equations (`numpy_reference*.py`: the margin heads' logits and gradients, the
KappaFace memory, kappa and psi), JAX and PyTorch are also compared with
TensorFlow on every head and backbone (TensorFlow itself is checked against
NumPy and, for the backbones, in test_backbones.py), and the model each backend
trained and saved is loaded here (TensorFlow, `safe_mode=True`).
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from numpy_reference import (
    arcface_target,
    combined_target,
    cosface_target,
    cosines,
    kappa_reference_from_sums,
    l2n,
    margin_logits,
)
from numpy_reference_zoo import central_difference, expface_target, softmax_logits, x2softmax_target
from testing import repo_env

HERE = Path(__file__).parent
BACKENDS = ("tensorflow", "jax", "torch")
OTHER_BACKENDS = ("jax", "torch")  # compared with TensorFlow (TensorFlow with TensorFlow proves nothing)
TOL = dict(rtol=1e-4, atol=1e-4)

pytestmark = [pytest.mark.backend, pytest.mark.slow, pytest.mark.xdist_group("backends")]


@pytest.fixture(scope="module")
def backend_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("backends")
    env = dict(repo_env(), OMP_NUM_THREADS="1", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    procs = {}
    for backend in BACKENDS:
        if importlib.util.find_spec(backend) is None:
            continue
        log = open(out / f"{backend}.log", "w")
        procs[backend] = (
            subprocess.Popen(
                [sys.executable, str(HERE / "backend_worker.py"), str(out)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env, KERAS_BACKEND=backend),
            ),
            log,
        )
    runs = {}
    for backend, (proc, log) in procs.items():
        try:
            proc.wait(timeout=900)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        path = out / f"{backend}.json"
        if proc.returncode == 0 and path.exists():
            runs[backend] = json.loads(path.read_text())
        else:
            runs[backend] = {"crash": (out / f"{backend}.log").read_text()[-4000:]}
    return out, runs


def _run(backend_runs, backend, section):
    out, runs = backend_runs
    if backend not in runs:
        pytest.skip(f"the {backend} backend is not installed (pip install '.[backends]')")
    run = runs[backend]
    assert "crash" not in run, f"the {backend} worker failed:\n{run['crash']}"
    result = run[section]
    assert "error" not in result, f"{backend} {section}: {result.get('traceback', result['error'])}"
    return result


def _reference(backend_runs, section):
    """The TensorFlow run's results (the reference of the other backends)."""
    return _run(backend_runs, "tensorflow", section)


def _errors(results):
    return {name: r["error"] for name, r in results.items() if "error" in r}


def _margin(target, scale=64.0):
    return lambda x, w, b, y: margin_logits(x, w, y, target, scale), lambda x, w, b: scale * cosines(x, w)


# The registry's defaults (build_head(name, C)), from the papers: (training logits, inference logits).
NUMPY_HEADS = {
    "arcface": _margin(lambda c: arcface_target(c, 0.5)),
    "cosface": _margin(lambda c: cosface_target(c, 0.35)),
    "combined": _margin(lambda c: combined_target(c, 1.0, 0.3, 0.2)),
    "expface": _margin(lambda c: expface_target(c, 0.7)),
    "x2softmax": _margin(x2softmax_target),
    "normsoftmax": _margin(lambda c: c),
    "softmax": (lambda x, w, b, y: softmax_logits(x, w, b), lambda x, w, b: softmax_logits(x, w, b)),
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_heads_equal_numpy_references(backend_runs, backend):
    """Logits, inference logits and both gradients of the step against float64 NumPy (finite differences)."""
    heads = _run(backend_runs, backend, "heads")
    assert set(NUMPY_HEADS) <= set(heads)
    for name, (train_ref, infer_ref) in NUMPY_HEADS.items():
        got = heads[name]
        x, y = np.asarray(got["inputs"]["embeddings"]), np.asarray(got["inputs"]["labels"])
        cot = np.asarray(got["inputs"]["cotangent"])
        weights = {path.rsplit("/", 1)[-1]: np.asarray(v) for path, v in got["initial_weights"].items()}
        w, b = weights["kernel"], weights.get("bias")
        logits = train_ref(x, w, b, y)
        scale = np.abs(logits).max()
        np.testing.assert_allclose(got["logits"], logits, rtol=1e-4, atol=1e-4 * scale, err_msg=f"{name}: logits")
        np.testing.assert_allclose(got["inference"], infer_ref(x, w, b), rtol=1e-4, atol=1e-4 * scale,
                                   err_msg=f"{name}: inference")
        grad_x = central_difference(lambda z: np.sum(train_ref(z, w, b, y) * cot), x)
        grad_w = central_difference(lambda z: np.sum(train_ref(x, z, b, y) * cot), w)
        (kernel_path,) = [p for p in got["grad_weights"] if p.endswith("/kernel")]
        for key, got_grad, ref in (("embeddings", got["grad_embeddings"], grad_x),
                                   ("kernel", got["grad_weights"][kernel_path], grad_w)):
            np.testing.assert_allclose(got_grad, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max(),
                                       err_msg=f"{name}: d/d{key}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_head_runs_with_gradients_and_its_step_state_is_the_eager_state(backend_runs, backend):
    heads = _run(backend_runs, backend, "heads")
    import keras_facemargin as kfm

    assert sorted(heads) == kfm.layers.head_names()
    assert not _errors(heads)
    for name, got in heads.items():
        for path, grad in got["grad_weights"].items():
            assert np.abs(grad).max() > 0, f"{name}: no gradient for {path}"
        # The step's new state: recorded in the stateless scope, and the same when called directly.
        assert got["state"].keys() == got["eager_state"].keys()
        for path, value in got["state"].items():
            np.testing.assert_allclose(got["eager_state"][path], value, **TOL, err_msg=f"{name}: eager {path}")


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_every_head_forward_backward_and_state_match_tensorflow(backend_runs, backend):
    heads = _run(backend_runs, backend, "heads")
    reference = _reference(backend_runs, "heads")
    assert heads.keys() == reference.keys()
    for name, got in heads.items():
        ref = reference[name]
        for key in ("logits", "inference", "grad_embeddings"):
            np.testing.assert_allclose(got[key], ref[key], **TOL, err_msg=f"{name}: {key}")
        np.testing.assert_allclose(got["extra_loss"], ref["extra_loss"], **TOL, err_msg=f"{name}: add_loss")
        assert got["grad_weights"].keys() == ref["grad_weights"].keys()
        for path, grad in got["grad_weights"].items():
            np.testing.assert_allclose(grad, ref["grad_weights"][path], **TOL, err_msg=f"{name}: d/d{path}")
        assert got["state"].keys() == ref["state"].keys()
        for path, value in got["state"].items():
            np.testing.assert_allclose(value, ref["state"][path], **TOL, err_msg=f"{name}: state {path}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_stateful_heads_update_their_state_in_the_step(backend_runs, backend):
    heads = _run(backend_runs, backend, "heads")
    moved = {
        "adaface": ("batch_mean", "batch_std"),
        "centerloss": ("centers",),
        "curricularface": ("t",),
        "kappaface": ("memory", "feature_sums", "feature_counts"),
        "kappaface_cos": ("memory", "feature_sums", "feature_counts"),
        "kappaface_exp": ("memory", "feature_sums", "feature_counts"),
    }
    for name, variables in moved.items():
        head = heads[name]
        for path, value in head["state"].items():
            if path.rsplit("/", 1)[-1] in variables:
                assert not np.allclose(value, head["initial_state"][path]), f"{name}: {path} not updated"
        changed = {p.rsplit("/", 1)[-1] for p, v in head["state"].items() if not np.allclose(v, head["initial_state"][p])}
        assert set(variables) <= changed, f"{name}: {sorted(set(variables) - changed)} not updated"


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_every_backbone_matches_tensorflow(backend_runs, backend):
    backbones = _run(backend_runs, backend, "backbones")
    assert not _errors(backbones)
    assert {"iresnet", "mobilefacenet"} <= set(backbones)
    reference = _reference(backend_runs, "backbones")
    for name, got in backbones.items():
        for key, value in got.items():
            np.testing.assert_allclose(value, reference[name][key], rtol=1e-4, atol=1e-4, err_msg=f"{name}: {key}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_memory_buffer_state_equals_numpy_reference(backend_runs, backend):
    r = _run(backend_runs, backend, "memory_buffer")
    index, labels = np.asarray(r["index"]), np.asarray(r["labels"])
    feats = l2n(np.asarray(r["features"]))
    n, dim = len(index) // 2, feats.shape[1]
    # KappaFace eq. 5, batch by batch (8 per step, in order); the sums use the updated rows.
    memory, sums = np.zeros((n, dim)), np.zeros((4, dim))
    for start in range(0, len(index), 8):
        rows, y = index[start:start + 8], labels[start:start + 8]
        new = 0.3 * memory[rows] + 0.7 * feats[start:start + 8]
        memory[rows] = l2n(new)
        np.add.at(sums, y, memory[rows])
    epoch = r["after_epoch"]
    np.testing.assert_array_equal(epoch["feature_counts"], np.bincount(labels, minlength=4))
    np.testing.assert_allclose(epoch["memory"], memory, atol=1e-5)
    np.testing.assert_allclose(epoch["feature_sums"], sums, atol=1e-4)
    # KappaUpdater: kappa and psi (eq. 3, 6, 8-13, the paper's T, gamma) from the accumulated features, then a
    # reset. Reference: NumPy from the sums this test computed, and from the sums the step accumulated.
    class_counts = np.bincount(labels[:n], minlength=4)
    after = r["after_updater"]
    kappa, psi, _, _ = kappa_reference_from_sums(sums, np.bincount(labels, minlength=4), class_counts, dim)
    np.testing.assert_allclose(after["kappa"], kappa, rtol=1e-3)
    np.testing.assert_allclose(after["psi"], psi, rtol=1e-3, atol=1e-4)
    kappa, psi, _, _ = kappa_reference_from_sums(epoch["feature_sums"], epoch["feature_counts"], class_counts, dim)
    np.testing.assert_allclose(after["kappa"], kappa, rtol=1e-4)
    np.testing.assert_allclose(after["psi"], psi, rtol=1e-5, atol=1e-6)
    assert not np.allclose(after["psi"], 1.0)
    assert r["updater_logs"]["kappa_classes_seen"] == 4
    assert not np.any(after["feature_counts"]) and not np.any(after["feature_sums"])
    # Inside fit, on this backend.
    history = r["fit_history"]
    assert history["kappa_classes_seen"] == [4.0] and np.isfinite(history["loss"]).all()
    assert not np.any(r["after_fit_with_updater"]["feature_counts"])
    assert not np.allclose(r["after_fit_with_updater"]["psi"], after["psi"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_momentum_encoder_state_equals_ema_reference(backend_runs, backend):
    r = _run(backend_runs, backend, "momentum_encoder")
    labels = np.asarray(r["labels"])
    epoch = r["after_epoch"]
    assert r["steps"] == 3
    assert r["encoder_max_abs_error"] < 1e-5
    np.testing.assert_array_equal(epoch["feature_counts"], np.bincount(labels, minlength=4))
    np.testing.assert_array_equal(epoch["feature_counts"], r["reference_counts"])
    np.testing.assert_allclose(epoch["feature_sums"], r["reference_sums"], atol=1e-4)
    if backend != "tensorflow":
        ref = _reference(backend_runs, "momentum_encoder")["after_epoch"]
        np.testing.assert_allclose(epoch["feature_sums"], ref["feature_sums"], atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_curricularface_centerloss_sphereface_state(backend_runs, backend):
    r = _run(backend_runs, backend, "stateful_heads")
    assert r["curricularface_t"] != 0.0
    assert not np.allclose(r["centerloss_centers"], r["centerloss_initial"])
    # SphereFaceAnnealing set lambda before every step, the last one with iteration 3.
    assert r["sphereface_iterations"] == 3
    assert r["sphereface_lambda"] == pytest.approx(r["sphereface_expected"], rel=1e-6)
    assert np.isfinite(r["sphereface_loss"]).all()
    if backend != "tensorflow":
        ref = _reference(backend_runs, "stateful_heads")
        np.testing.assert_allclose(r["curricularface_t"], ref["curricularface_t"], rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(r["curricularface_kernel"], ref["curricularface_kernel"], atol=1e-3)
        np.testing.assert_allclose(r["centerloss_centers"], ref["centerloss_centers"], atol=1e-3)
        np.testing.assert_allclose(r["sphereface_loss"], ref["sphereface_loss"], rtol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_keras_file_trained_on_backend_loads_here(backend_runs, backend):
    r = _run(backend_runs, backend, "memory_buffer")
    import keras

    import keras_facemargin  # noqa: F401 - registers the serialisable classes

    out, _ = backend_runs
    model = keras.saving.load_model(out / f"{backend}_kappa.keras", safe_mode=True)
    emb = model.embedder.predict(np.asarray(r["roundtrip_images"], "float32"), verbose=0)
    np.testing.assert_allclose(emb, r["roundtrip_embeddings"], atol=1e-5)
    state = r["after_fit_with_updater"]
    np.testing.assert_allclose(model.head.psi.numpy(), state["psi"], rtol=1e-6)
    np.testing.assert_allclose(model.head.memory.numpy(), state["memory"], atol=1e-6)


@pytest.mark.parametrize("patch", ["_torch_world_size", "_foreign_tf_replicas"])
def test_unsynchronised_replicas_raise_naming_the_alternative(monkeypatch, patch):
    import keras_facemargin as kfm
    from keras_facemargin.layers import _state

    monkeypatch.setattr(_state, patch, lambda: 2)
    f, y = np.ones((2, 4), "float32"), np.array([0, 1])
    kappa = kfm.layers.KappaMarginDense(2, class_counts=[1, 1], estimator="momentum_encoder")
    for head, inputs in [(kappa, [f, y, f]), (kfm.layers.CurricularMarginDense(2), [f, y])]:
        with pytest.raises(NotImplementedError, match="keras.distribution"):
            head(inputs, training=True)
