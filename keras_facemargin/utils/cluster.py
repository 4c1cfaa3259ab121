"""Which task of a `tf.distribute` cluster this process is, from the `TF_CONFIG` environment variable.

Plain JSON parsing (no TensorFlow import), shared by the strategy choice
(`keras_facemargin.training.strategy`) and the checkpoint callbacks.

Example:
    >>> task_type, index, num_workers = task_info()   # (None, 0, 1) without TF_CONFIG
    >>> is_chief()
    True
"""

import json
import os


def task_info():
    """`(task_type, task_index, num_workers)` from `TF_CONFIG` (`(None, 0, 1)` when unset)."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None, 0, 1
    config = json.loads(raw)
    cluster = config.get("cluster", {})
    task = config.get("task", {})
    num_workers = sum(len(v) for k, v in cluster.items() if k in ("chief", "worker"))
    return task.get("type"), int(task.get("index", 0)), max(1, num_workers)


def is_chief(strategy=None):
    """True for the process that writes the run's files (single process: always).

    With a `chief` task in `TF_CONFIG` that task is the chief, otherwise worker 0.
    """
    task_type, task_index, _ = task_info()
    if task_type is None:
        return True
    if strategy is not None:
        resolver = getattr(strategy, "cluster_resolver", None)
        if resolver is not None and resolver.task_type is not None:
            task_type, task_index = resolver.task_type, resolver.task_id
    raw = json.loads(os.environ["TF_CONFIG"])
    if "chief" in raw.get("cluster", {}):
        return task_type == "chief"
    return task_type == "worker" and task_index == 0
