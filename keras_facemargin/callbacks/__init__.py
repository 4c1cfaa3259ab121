"""Every callback of the package, in one place.

* `head_state`: what a head's own state needs during `fit`: `KappaUpdater` (KappaFace's
  kappa/psi, eq. 3-13, at each epoch end), `SphereFaceAnnealing` (SphereFace's lambda),
  `head_callbacks(model)` (the ones a model's heads need) and `find_layers`.
* `monitoring`: `ThroughputLogger` (images/s and lr in the logs), `NaNGuard`
  (stops on a non-finite loss, raising `NonFiniteLossError`).
* `checkpoint`: `TrainingCheckpoint` (step and epoch checkpoints a resumed run continues
  from), with `sync_replica_statistics` for BatchNorm statistics under a strategy.
* `weights_checkpoint`: `WeightsCheckpoint`, the same interface on any backend (JAX runs of the
  trainer): every model and optimizer variable in one `.npz` per checkpoint, written atomically.
* `history`: `HistoryFile` (one JSON line per epoch) and `read_history` / `truncate_history`.
* `verification`: `VerificationCallback` (pair-verification sets at epoch end, `val_<set>_accuracy`).

They are plain `keras.callbacks.Callback`s, used by `model.fit` and by
`keras_facemargin.training.custom_loop` alike. Order matters at epoch ends: `KappaUpdater`
must run before `TrainingCheckpoint` / `WeightsCheckpoint`, so an epoch-end checkpoint holds the state the next
epoch starts from; `keras_facemargin.training.trainer` builds the list in that order.

Example:
    >>> import keras_facemargin as kfm
    >>> model.fit(ds, epochs=5, callbacks=kfm.callbacks.head_callbacks(model))
"""

from keras_facemargin.callbacks.checkpoint import (  # noqa: F401
    TrainingCheckpoint,
    replica_local_variables,
    sync_replica_statistics,
)
from keras_facemargin.callbacks.head_state import (  # noqa: F401
    KappaUpdater,
    SphereFaceAnnealing,
    find_layers,
    head_callbacks,
)
from keras_facemargin.callbacks.history import HistoryFile, read_history, truncate_history  # noqa: F401
from keras_facemargin.callbacks.monitoring import (  # noqa: F401
    NaNGuard,
    NonFiniteLossError,
    ThroughputLogger,
    current_lr,
)
from keras_facemargin.callbacks.verification import VerificationCallback  # noqa: F401
from keras_facemargin.callbacks.weights_checkpoint import (  # noqa: F401
    WeightsCheckpoint,
    latest_weights_checkpoint,
)
