"""Choosing the `tf.distribute` strategy of a run, and who the chief is."""

import json
import os


def get_strategy(multi_worker=False, devices=None):
    """The strategy for a run.

    - `multi_worker=True`: `MultiWorkerMirroredStrategy` configured from the
      `TF_CONFIG` environment variable (which must be set); train it with
      `keras_facemargin.training.custom_loop` (Keras 3.15's `fit` fails under
      it, keras-team/keras#20585).
    - otherwise `MirroredStrategy` over `devices` (default: all visible GPUs,
      or all logical CPU devices when there are several and no GPU), or the
      default strategy when that is a single device.

    Args:
        multi_worker: use `MultiWorkerMirroredStrategy`.
        devices: explicit device names for `MirroredStrategy`.

    Returns:
        A `tf.distribute.Strategy`.

    Example:
        >>> strategy = get_strategy()
        >>> with strategy.scope():
        ...     model = build_model()
    """
    import tensorflow as tf

    if multi_worker:
        if not os.environ.get("TF_CONFIG"):
            raise ValueError(
                "`multi_worker=True` needs the TF_CONFIG environment variable, e.g. "
                '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}.'
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    if devices is None:
        gpus = tf.config.list_logical_devices("GPU")
        cpus = tf.config.list_logical_devices("CPU")
        devices = [d.name for d in gpus] if gpus else [d.name for d in cpus]
    if len(devices) > 1:
        return tf.distribute.MirroredStrategy(list(devices))
    return tf.distribute.get_strategy()


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
