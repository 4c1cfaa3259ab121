"""Backend glue for the non-trainable state of the margin heads.

The margin formulas themselves are written in `keras.ops`. Row-wise scatter
updates of large state tables (a memory buffer of |D| x d rows, a C x d
accumulator) and cross-replica gathers are not expressible efficiently in
`keras.ops`, so they live here: a fast TensorFlow path (sparse scatter on the
variable, `ReplicaContext.all_gather`), a JAX scatter-add, and a dense,
backend-agnostic fallback.

Every update goes through the variable's own `assign` (or a TF scatter outside
a stateless scope), so inside Keras' `StatelessScope`, where the JAX trainer
runs each train step, the new values are recorded in the scope and written
back by the trainer, exactly as BatchNormalization's moving statistics are.
Reads (`gather_rows`, `read`) see the values assigned earlier in the same scope.
"""

import sys

from keras import backend, ops

from keras_facemargin.utils.keras_compat import in_stateless_scope, in_symbolic_scope, replica_local_value


def _tf():
    if backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    return tf


def _local_tf_variable(variable):
    """The per-replica TF variable behind a Keras variable.

    For a `synchronization="on_read"` variable inside a replica context this is
    the replica's own copy (TensorFlow does not implement scatter ops on the
    distributed wrapper); otherwise it is the variable itself.
    """
    tf = _tf()
    value = variable.value
    if tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context():
        return value
    if variable.synchronization == "on_read":
        local = replica_local_value(value)
        if local is not None:
            return local
    return value


def state_updates_enabled():
    """False only while Keras traces a layer symbolically (shape inference).

    Keras runs `call` on symbolic tensors to infer shapes (inside a symbolic
    scope); the state updates are skipped there. In a stateless scope (every
    JAX train step, `Layer.stateless_call`) they run and are recorded.
    """
    return not in_symbolic_scope()


def _tf_direct(variable):
    """The TF backend outside a stateless scope: scatter straight into the variable."""
    return _tf() is not None and not in_stateless_scope()


def _torch_direct(variable, updates):
    """The torch backend outside a stateless scope: index in place into the variable.

    (Not when an autocast scope hands out a cast copy of the value.)
    """
    return (
        backend.backend() == "torch"
        and not in_stateless_scope()
        and variable.value.dtype == updates.dtype
    )


def _torch_world_size():
    if backend.backend() != "torch":
        return 1
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _foreign_tf_replicas():
    """Replicas of a `tf.distribute` strategy in scope while the backend is not TensorFlow."""
    if backend.backend() == "tensorflow" or "tensorflow" not in sys.modules:
        return 1
    tf = sys.modules["tensorflow"]
    return tf.distribute.get_strategy().num_replicas_in_sync if tf.distribute.has_strategy() else 1


def check_replicated_state(owner):
    """Raise where per-step state cannot be kept in sync across replicas.

    Under multi-process `torch.distributed` each process would update the
    state with its own shard of the batch only, and a `tf.distribute` strategy
    does nothing for the variables of another backend: both would give a
    silently different result.
    """
    world = _torch_world_size()
    if world > 1:
        raise NotImplementedError(
            f"{owner} keeps state updated from the whole batch, which is not synchronised across the "
            f"{world} processes of torch.distributed on the torch backend. Train this head on one process, "
            "or use the TensorFlow backend (tf.distribute.MirroredStrategy) or the JAX backend "
            "(keras.distribution.DataParallel), where the state follows the global batch."
        )
    replicas = _foreign_tf_replicas()
    if replicas > 1:
        raise NotImplementedError(
            f"{owner} is running under a tf.distribute strategy ({replicas} replicas) on the "
            f"{backend.backend()} backend; tf.distribute strategies work only with KERAS_BACKEND=tensorflow. "
            "On JAX use keras.distribution (e.g. keras.distribution.DataParallel)."
        )


def read(variable):
    """The variable's current value (the stateless scope's, when inside one)."""
    return ops.convert_to_tensor(variable.value)


def scatter_add_rows(variable, indices, updates):
    """`variable[indices] += updates` (duplicate indices accumulate)."""
    updates = ops.cast(updates, variable.dtype)
    if _tf_direct(variable):
        tf = _tf()
        _local_tf_variable(variable).scatter_add(tf.IndexedSlices(updates, indices))
        return
    if _torch_direct(variable, updates):
        import torch

        with torch.no_grad():
            variable.value.index_add_(0, indices.long(), updates)
        return
    if backend.backend() == "jax":
        variable.assign(variable.value.at[indices].add(updates))
        return
    shape = tuple(variable.shape)
    variable.assign_add(ops.segment_sum(updates, indices, num_segments=shape[0]))


def scatter_update_rows(variable, indices, updates):
    """`variable[indices] = updates` (one of duplicate indices wins)."""
    updates = ops.cast(updates, variable.dtype)
    if _tf_direct(variable):
        tf = _tf()
        _local_tf_variable(variable).scatter_update(tf.IndexedSlices(updates, indices))
        return
    if _torch_direct(variable, updates):
        import torch

        with torch.no_grad():
            variable.value.index_copy_(0, indices.long(), updates)
        return
    variable.assign(ops.scatter_update(read(variable), ops.expand_dims(indices, -1), updates))


def gather_rows(variable, indices):
    """`variable[indices]` as a tensor.

    On TensorFlow (outside a stateless or autocast scope) a gather from the resource variable
    itself (`ResourceGather`), not from a full read of it: where a `ReadVariableOp` output is still
    alive when the same step scatters into the variable (the KappaFace memory buffer, the Center-loss
    centres, RowSparseSGD's kernel), TensorFlow copies the whole variable first. Measured in a
    `tf.function` without outputs around `KappaMarginDense.observe_batch` with a 342,968 x 512 buffer:
    58 ms per step (a 702 MB copy) against 0.3 ms. The gradient is the same IndexedSlices.
    """
    if _tf_direct(variable):
        tf = _tf()
        local = _local_tf_variable(variable)
        if isinstance(local, tf.Variable):
            return tf.gather(local, indices)
    return ops.take(read(variable), indices, axis=0)


def all_gather(x):
    """Concatenate `x` along axis 0 across all replicas in sync.

    Outside a multi-replica `tf.distribute` step this is the identity. Under
    JAX's `keras.distribution` the step is traced on the global batch, so the
    identity is the gather. Multi-process `torch.distributed` is refused
    (`check_replicated_state`).
    """
    check_replicated_state("This head")
    tf = _tf()
    if tf is None or not tf.distribute.has_strategy():
        return x
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return x
    return ctx.all_gather(x, axis=0)


def check_labels_in_range(labels, num_classes, name="labels"):
    """Fail with a clear message when a label is outside [0, num_classes).

    Eagerly (NumPy or eager tensors) this raises `ValueError`. Inside a compiled
    TensorFlow graph it adds an assertion that fails the step with an
    `InvalidArgumentError` carrying the same message, instead of a silently
    wrong loss. Under XLA (`jit_compile=True`, which Keras picks by default on a
    GPU) assertions are compiled away: validate labels in the input pipeline
    (the package's pipelines do) or compile with `jit_compile=False`.
    """
    message = (
        f"`{name}` must be integer class ids in [0, num_classes={num_classes}); "
        "got a label outside that range."
    )
    tf = _tf()
    if tf is not None and tf.is_tensor(labels) and not tf.executing_eagerly():
        labels = tf.convert_to_tensor(labels)
        if labels.shape.num_elements() == 0:
            return labels
        with tf.control_dependencies(
            [
                tf.debugging.assert_greater_equal(labels, tf.zeros([], labels.dtype), message=message),
                tf.debugging.assert_less(labels, tf.cast(num_classes, labels.dtype), message=message),
            ]
        ):
            return tf.identity(labels)
    if ops.is_tensor(labels) and not _is_concrete(labels):
        return labels  # traced on another backend: no cheap check available
    values = ops.convert_to_numpy(labels)
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        raise ValueError(
            message[:-1] + f": min={int(values.min())}, max={int(values.max())}."
        )
    return labels


def _is_concrete(x):
    try:
        ops.convert_to_numpy(x)
        return True
    except Exception:  # noqa: BLE001 - symbolic/traced tensors cannot be converted
        return False
