"""Choosing the `tf.distribute` strategy of a run, and who the chief is."""

import os

from keras_facemargin.utils.cluster import is_chief, task_info  # noqa: F401  (re-exported)


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
