"""The per-epoch history file of a run (JSON lines) and its reader."""

import json
from pathlib import Path

import keras
import numpy as np


class HistoryFile(keras.callbacks.Callback):
    """Appends each epoch's logs as one JSON line to `path` (survives restarts).

    `read_history(path)` returns them as `{key: [values per epoch]}`, keeping the
    last record of an epoch written twice.

    Args:
        path: the `.jsonl` file.
        enabled: write only when True (False on non-chief workers).
    """

    def __init__(self, path, enabled=True):
        super().__init__()
        self.path = Path(path)
        self.enabled = enabled

    def on_epoch_end(self, epoch, logs=None):
        if not self.enabled:
            return
        record = {"epoch": int(epoch)}
        for key, value in (logs or {}).items():
            try:
                record[key] = float(np.asarray(value))
            except (TypeError, ValueError):
                continue
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def read_history(path, before_epoch=None):
    """`{key: [value per epoch]}` from a `HistoryFile`, epochs sorted, `epoch` included.

    Args:
        path: the `.jsonl` file (missing: empty history).
        before_epoch: keep only epochs `< before_epoch`.
    """
    path = Path(path)
    by_epoch = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                by_epoch[record["epoch"]] = record
    epochs = sorted(e for e in by_epoch if before_epoch is None or e < before_epoch)
    keys = sorted({k for e in epochs for k in by_epoch[e]})
    return {k: [by_epoch[e].get(k, float("nan")) for e in epochs] for k in keys}


def truncate_history(path, before_epoch):
    """Drop the records of epochs `>= before_epoch` (a resumed run rewrites them)."""
    path = Path(path)
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["epoch"] < before_epoch]
    path.write_text("".join(line + "\n" for line in keep))


