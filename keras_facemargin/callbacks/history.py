"""The per-epoch history file of a run (JSON lines) and its reader.

``history.jsonl`` holds one JSON object per epoch. It is rewritten whole and atomically at each
epoch end (`keras_facemargin.utils.atomic`: unique temporary file, fsync, ``os.replace``), so a
kill -9 leaves the previous complete file or the new one. The file is a few hundred bytes per
epoch, so the rewrite costs nothing next to an epoch. Files written by older versions (appended
in place) may end in a torn line: the readers drop it with a ``RuntimeWarning`` and the next write
removes it; a damaged line elsewhere raises ``ValueError`` naming the file and line.
"""

import json
import warnings
from pathlib import Path

import keras
import numpy as np

from keras_facemargin.utils.atomic import atomic_write_text


class HistoryFile(keras.callbacks.Callback):
    """Records each epoch's logs as one JSON line of `path` (survives restarts and kill -9).

    `read_history(path)` returns them as `{key: [values per epoch]}`, keeping the
    last record of an epoch written twice.

    Args:
        path: the `.jsonl` file.
        enabled: write only when True (False on non-chief workers).

    Example::

        model.fit(ds, epochs=3, callbacks=[HistoryFile("runs/a/history.jsonl")])
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
        lines = [json.dumps(r) for r in _records(self.path)] + [json.dumps(record)]
        atomic_write_text(self.path, "".join(line + "\n" for line in lines))


def _records(path):
    """The records of a history file in file order (a torn last line dropped with a warning)."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
                raise ValueError("not an object with an integer 'epoch'")
        except ValueError as err:
            if all(not rest.strip() for rest in lines[i + 1:]):  # the last line: torn by a crash while appending
                warnings.warn(f"{path}: line {i + 1} is incomplete (a crash while writing it); dropped.",
                              RuntimeWarning, stacklevel=3)
                break
            raise ValueError(f"{path}: line {i + 1} is not a history record ({err}).") from None
        records.append(record)
    return records


def read_history(path, before_epoch=None):
    """`{key: [value per epoch]}` from a `HistoryFile`, epochs sorted, `epoch` included.

    Args:
        path: the `.jsonl` file (missing: empty history).
        before_epoch: keep only epochs `< before_epoch`.

    Example::

        read_history("runs/a/history.jsonl")["loss"]
    """
    by_epoch = {record["epoch"]: record for record in _records(path)}
    epochs = sorted(e for e in by_epoch if before_epoch is None or e < before_epoch)
    keys = sorted({k for e in epochs for k in by_epoch[e]})
    return {k: [by_epoch[e].get(k, float("nan")) for e in epochs] for k in keys}


def truncate_history(path, before_epoch):
    """Drop the records of epochs `>= before_epoch` (a resumed run rewrites them), atomically.

    Example::

        truncate_history("runs/a/history.jsonl", 2)
    """
    path = Path(path)
    if not path.exists():
        return
    keep = [json.dumps(r) for r in _records(path) if r["epoch"] < before_epoch]
    atomic_write_text(path, "".join(line + "\n" for line in keep))
