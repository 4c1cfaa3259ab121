"""Row-sparse SGD for the Partial FC class-centre matrix: only the rows sampled in a step are read and written.

Semantics ("lazy rows", insightface arcface_torch `partial_fc.py` v1, which keeps a momentum bank and
writes back only the sampled rows; v2 instead lets torch SGD move every row):

- A row in the step's sampled set S (its gradient is a `tf.IndexedSlices` row) gets exactly Keras
  `SGD(momentum, nesterov, weight_decay)`'s update: ``w <- w - lr*wd*w; m <- mu*m - lr*g;
  w <- w + m`` (nesterov: ``w <- w + mu*m - lr*g``).
- A row outside S is not touched: its centre and momentum stay bit-identical (momentum is paused,
  not decayed; no weight decay). A row sampled at every step therefore follows dense Keras SGD.

Every other variable (backbone) gets plain Keras SGD. The momentum slots are those of
`keras.optimizers.SGD`, so checkpoints move between the two optimizers.
"""

import keras
from keras import ops

from keras_facemargin.errors import SparseUpdateError
from keras_facemargin.utils.keras_compat import optimizer_variable_key

_MARK = "_kfm_row_sparse"


def mark_row_sparse(variable):
    """Mark `variable` (a class-major (C, d) matrix) for row-sparse updates by `RowSparseSGD`."""
    setattr(variable, _MARK, True)
    return variable


def is_row_sparse(variable):
    return bool(getattr(variable, _MARK, False))


@keras.saving.register_keras_serializable(package="keras_facemargin")
class RowSparseSGD(keras.optimizers.SGD):
    """Keras SGD whose update of marked class-centre matrices touches only the sampled rows.

    `PartialFC(sample_rate < 1)` marks its class-major kernel; its TensorFlow gradient is an
    `IndexedSlices` of the K sampled rows, and this optimizer gathers those rows of the kernel and of
    the momentum, updates them and scatters them back (O(K d) instead of O(C d) per step; the
    dense SGD momentum densifies the gradient). Weight decay of marked variables is applied to the
    sampled rows only. On JAX and torch the gradient of a gather is dense: a marked variable with a
    dense gradient raises `SparseUpdateError` unless `dense_fallback=True`, which applies plain
    dense SGD to it (every row moves).

    Args:
        dense_fallback: allow a dense gradient for a marked variable (dense SGD semantics).
        **kwargs: `keras.optimizers.SGD` arguments.

    Example:
        >>> head = PartialFC(ArcMarginDense(2_000_000), sample_rate=0.1)
        >>> model.compile(optimizer=RowSparseSGD(0.1, momentum=0.9, weight_decay=5e-4),
        ...               loss=PartialFCLoss(head))
    """

    def __init__(self, *args, dense_fallback=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.dense_fallback = bool(dense_fallback)
        self._sparse_keys = set()

    def build(self, variables):
        if self.built:
            return
        sparse = [v for v in variables if is_row_sparse(v)]
        self._sparse_keys = {optimizer_variable_key(self, v) for v in sparse}
        if sparse and self.weight_decay is not None:
            self.exclude_from_weight_decay(var_list=sparse)  # decayed row-wise in update_step
        super().build(variables)
        if self.momentum != 0:
            self._sparse_slots = {optimizer_variable_key(self, v): m for v, m in zip(variables, self.momentums) if is_row_sparse(v)}

    def update_step(self, gradient, variable, learning_rate):
        # `optimizer_variable_key`: the same key for the Keras variable, its tf.Variable and, under tf.distribute,
        # each replica's component (what `update_step` gets inside `extended.update`).
        if optimizer_variable_key(self, variable) not in self._sparse_keys:
            return super().update_step(gradient, variable, learning_rate)
        if not _is_indexed_slices(gradient):
            if not self.dense_fallback:
                raise SparseUpdateError(
                    f"RowSparseSGD: variable {getattr(variable, 'path', variable.name)!r} is marked row-sparse but its gradient is dense "
                    f"(backend {keras.backend.backend()!r}; only TensorFlow gives IndexedSlices). Pass "
                    "dense_fallback=True for dense SGD on it, or use keras.optimizers.SGD."
                )
            if self.weight_decay is not None:
                lr = ops.cast(learning_rate, variable.dtype)
                self.assign_sub(variable, variable * ops.cast(self.weight_decay, variable.dtype) * lr)
            return super().update_step(gradient, variable, learning_rate)
        self._sparse_update(gradient, variable, learning_rate)

    def _sparse_update(self, gradient, variable, learning_rate):
        import tensorflow as tf

        dtype = variable.dtype
        lr = tf.cast(learning_rate, dtype)
        rows, inverse = tf.unique(tf.cast(gradient.indices, "int64"))  # duplicate rows are summed
        g = tf.math.unsorted_segment_sum(tf.cast(gradient.values, dtype), inverse, tf.shape(rows)[0])
        var = getattr(variable, "value", variable)
        var = var if isinstance(var, tf.Variable) else variable
        w = tf.gather(var, rows)
        if self.weight_decay is not None:
            w = w - w * tf.cast(self.weight_decay, dtype) * lr
        if self.momentum != 0:
            mu = tf.cast(self.momentum, dtype)
            slot = self._sparse_slots[optimizer_variable_key(self, variable)]
            m = mu * tf.gather(slot.value, rows) - lr * g
            slot = slot.value
            slot.scatter_update(tf.IndexedSlices(m, rows))
            w = w + (mu * m - lr * g if self.nesterov else m)
        else:
            w = w - lr * g
        var.scatter_update(tf.IndexedSlices(w, rows))

    def get_config(self):
        config = super().get_config()
        config["dense_fallback"] = self.dense_fallback
        return config


def _is_indexed_slices(x):
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return isinstance(x, tf.IndexedSlices)
