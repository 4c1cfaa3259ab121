"""Helpers shared by the test files: paths, the real data, the repository's scripts, worker subprocesses.

One module for what several test files need (it lives in ``tests/``, not in the package: the tests run
from a checkout, and nothing here is useful to an installed package). What is *not* here:

* the independent references of the papers' equations: ``numpy_reference.py`` and
  ``numpy_reference_zoo.py`` (NumPy only, never the code under test);
* pytest fixtures: ``conftest.py`` (``data_dir``, ``lfw_root``), built on :data:`DATA_DIR`.

Example::

    from testing import DATA_DIR, load_script, run_workers

    tool = load_script("tools/align_faces.py")
"""

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
# Real data (LFW, CelebA) lives beside the repository, never inside it (see .ci/run).
DATA_DIR = Path(os.environ.get("KFM_DATA_DIR", REPO.parent / "shared" / "data"))


# -- the repository's scripts (examples/, benchmarks/, tools/) ---------------------------------------------
def load_script(relative_path):
    """The module of ``REPO / relative_path`` (executed once per call), named after its file.

    Args:
        relative_path: e.g. ``"tools/export.py"``.

    Example::

        tool = load_script("tools/align_faces.py")
        assert tool.main(["--help"]) == 0
    """
    path = REPO / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- worker subprocesses -------------------------------------------------------------------------------------
def repo_env(**overrides):
    """The current environment with the repository first on ``PYTHONPATH``, plus ``overrides``.

    Example::

        subprocess.run([sys.executable, "tests/training_script.py"], env=repo_env(KERAS_BACKEND="jax"))
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.update(overrides)
    return env


def free_ports(n):
    """``n`` distinct free TCP ports on 127.0.0.1 (all bound at once, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def result_of(stdout, stderr):
    """The JSON of the last ``RESULT `` line of a worker's stdout (fails with its stderr tail)."""
    lines = [x for x in stdout.splitlines() if x.startswith("RESULT ")]
    assert lines, stderr[-4000:]
    return json.loads(lines[-1][len("RESULT "):])


def run_workers(script, args_for, num_workers=2, timeout=600):
    """Run ``num_workers`` TF_CONFIG workers of ``script`` on 127.0.0.1 and collect their results.

    Each worker is ``python <script> <args_for(index)...>`` with the repository on ``PYTHONPATH`` and its
    own ``TF_CONFIG`` (``cluster.worker`` = one free local port per worker, ``task.index`` = its rank). A
    worker reports by printing one line ``RESULT <json>``. Workers still running when one fails or times
    out are killed.

    Returns:
        the workers' ``RESULT`` dicts, in rank order. Fails (AssertionError with the stderr tail)
        when a worker exits non-zero.

    Example::

        outputs = run_workers(TESTS / "training_script.py", lambda i: ["multiworker", str(tmp_path)])
    """
    workers = [f"127.0.0.1:{p}" for p in free_ports(num_workers)]
    procs = []
    try:
        for index in range(num_workers):
            env = repo_env()
            env["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
            procs.append(subprocess.Popen([sys.executable, str(script), *args_for(index)], stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True, env=env))
        outputs = []
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, stderr[-4000:]
            outputs.append(result_of(stdout, stderr))
        return outputs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()


# -- small array helpers -------------------------------------------------------------------------------------
def row_cosine(a, b):
    """Cosine similarity of row ``i`` of ``a`` with row ``i`` of ``b`` (NumPy, any dtype)."""
    return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def inputs_with_angles(kernel, labels, thetas, rng, norm_range=(0.5, 3.0)):
    """Embeddings at exactly angle ``thetas`` from their class centre (a column of ``kernel``).

    Args:
        kernel: ``(d, C)`` class centres (any norm).
        labels: ``(n,)`` class of each embedding.
        thetas: ``(n,)`` angles in radians.
        rng: a ``numpy.random.Generator``.
        norm_range: the embeddings' norms are uniform in this range.

    Returns:
        float32 ``(n, d)``.

    Example::

        x = inputs_with_angles(w, [0, 1], [0.1, 3.0], np.random.default_rng(0))
    """
    w = kernel / np.linalg.norm(kernel, axis=0, keepdims=True)
    xs = []
    for y, t in zip(labels, thetas):
        c = w[:, y]
        v = rng.standard_normal(w.shape[0])
        v -= v.dot(c) * c
        v /= np.linalg.norm(v)
        xs.append(np.cos(t) * c + np.sin(t) * v)
    return (np.stack(xs) * rng.uniform(*norm_range, (len(labels), 1))).astype("float32")


#: XLA_FLAGS for 2 JAX CPU devices. XLA's CPU collectives abort the process when a participant is
#: late by more than 40 s (rendezvous "termination timeout"): on a loaded 2-core machine, with another
#: test worker computing, one device thread can miss that; the timeouts are raised to 10 minutes.
JAX_TWO_CPU_XLA_FLAGS = ("--xla_force_host_platform_device_count=2 "
                         "--xla_cpu_collective_call_terminate_timeout_seconds=600 "
                         "--xla_cpu_collective_timeout_seconds=600")
