"""Launching TF_CONFIG worker processes that are expected to die (a crash hook), for resume tests.

`testing.run_workers` runs workers to a clean exit and collects their ``RESULT`` lines; a run that is
stopped on purpose (``training_script.py --crash-at N``: ``os._exit(3)`` after global step N, as
abrupt as ``kill -9``: no cleanup, no flush) ends with another exit status and no result.
"""

import json
import subprocess
import sys

from testing import free_ports, repo_env


def crash_workers(script, args_for, returncode, num_workers=2, timeout=600):
    """Run ``num_workers`` TF_CONFIG workers of ``script`` on 127.0.0.1; each must exit with ``returncode``.

    Args:
        script: the worker script.
        args_for: ``index -> [arguments]`` of worker ``index``.
        returncode: the exit status every worker must end with.
        num_workers: processes, each its own free loopback port.
        timeout: seconds per worker.

    Workers still running when one fails or times out are killed.

    Example::

        crash_workers(TESTS / "training_script.py", lambda i: ["multiworker", out, "--crash-at", "9"], 3)
    """
    workers = [f"127.0.0.1:{p}" for p in free_ports(num_workers)]
    procs = []
    try:
        for index in range(num_workers):
            env = repo_env()
            env["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
            procs.append(subprocess.Popen([sys.executable, str(script), *map(str, args_for(index))],
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
        for index, proc in enumerate(procs):
            _, stderr = proc.communicate(timeout=timeout)
            assert proc.returncode == returncode, f"worker {index}: exit {proc.returncode}\n{stderr[-4000:]}"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
