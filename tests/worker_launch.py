"""Launch TF_CONFIG worker processes on 127.0.0.1 for the multi-worker tests, and collect their results.

Each worker is ``python <script> <args...>`` with the repository on ``PYTHONPATH`` and its own
``TF_CONFIG`` (``cluster.worker`` = one free local port per worker, ``task.index`` = its rank). A
worker reports by printing one line ``RESULT <json>``; the last such line of each is returned.
Workers still running when one fails or times out are killed.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def repo_env():
    """The current environment with the repository first on ``PYTHONPATH``."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


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
    """Run ``num_workers`` workers of ``script`` (``args_for(index)`` gives each one's arguments).

    Returns:
        the workers' ``RESULT`` dicts, in rank order. Fails (AssertionError with the stderr tail)
        when a worker exits non-zero.
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
