"""Keras callback running pair-verification benchmarks at epoch end.

Writes ``val_<name>_accuracy`` (10-fold accuracy mean) and ``val_<name>_tar_far1e-3``
(TAR at FAR 1e-3 over all pairs) into the epoch logs, so later callbacks in the list
(``ModelCheckpoint(monitor="val_lfw_accuracy", mode="max")``, ``EarlyStopping``, ``History``,
TensorBoard) see them. Put this callback **before** the ones that read the keys. On epochs
that are skipped (``every_n_epochs``) the keys are absent.

Example::

    cb = VerificationCallback({"lfw": "faces_emore/lfw.bin"}, every_n_epochs=1)
    ckpt = keras.callbacks.ModelCheckpoint("best.keras", monitor="val_lfw_accuracy", mode="max",
                                           save_best_only=True)
    model.fit(ds, epochs=20, callbacks=[cb, ckpt])
"""

from __future__ import annotations

import os

import keras
import numpy as np

from keras_facemargin.evaluation.bin_sets import (
    PairSet,
    _model_image_size,
    evaluate_pair_set,
    load_verification_set,
)

__all__ = ["VerificationCallback"]


def _far_key(far):
    return f"tar_far{far:.0e}".replace("e-0", "e-").replace("e+0", "e+")


def _arrays_to_set(name, value, folds):
    a, b, same = value
    a, b = np.asarray(a), np.asarray(b)
    same = np.asarray(same).astype(bool).reshape(-1)
    if a.shape != b.shape or a.ndim != 4 or a.shape[0] != same.size or a.dtype != np.uint8:
        raise ValueError(f"set '{name}': expected uint8 images_a, images_b of equal shape (n, H, W, 3) and "
                         f"is_same (n,), got {a.dtype} {a.shape}, {b.dtype} {b.shape}, {same.shape}.")
    n = same.size
    return PairSet(name=name, images=np.concatenate([a, b]), index_a=np.arange(n), index_b=n + np.arange(n),
                   is_same=same, folds=folds, source="arrays")


class VerificationCallback(keras.callbacks.Callback):
    """Run the 10-fold verification protocol on pair sets every ``every_n_epochs`` epochs.

    Args:
        sets: ``{name: (images_a, images_b, is_same)}`` uint8 arrays, ``{name: path}`` (``.bin`` or
            an LFW/CFP folder), ``{name: PairSet}``, or a list of ``.bin`` paths (named by file
            stem). Files are loaded once, at the first evaluation, at the model's input size.
        every_n_epochs: evaluate after epochs ``n-1, 2n-1, ...`` (0-based), i.e. every n-th epoch.
        flip: flip-test embeddings.
        batch_size: images per forward pass.
        folds: folds for array sets (``.bin`` sets use 10).
        far_targets: FARs logged as ``val_<name>_tar_far<far>`` (default ``(1e-3,)``).
        verbose: print one line per set.

    Attributes:
        history: ``{name: [VerificationResult, ...]}`` of all evaluations.
    """

    def __init__(self, sets, every_n_epochs: int = 1, flip: bool = True, batch_size: int = 64, folds=10,
                 far_targets=(1e-3,), verbose: int = 1):
        super().__init__()
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"`every_n_epochs` must be a positive integer, got {every_n_epochs!r}.")
        if isinstance(sets, (str, os.PathLike)):
            sets = [sets]
        if isinstance(sets, (list, tuple)):
            named = {}
            for p in sets:
                stem = os.path.splitext(os.path.basename(os.fspath(p)))[0]
                if stem in named:
                    raise ValueError(f"Sets {os.fspath(named[stem])!r} and {os.fspath(p)!r} share the name "
                                     f"{stem!r} (file stem) and would overwrite each other; pass a dict "
                                     "{name: path} instead.")
                named[stem] = p
            sets = named
        if not isinstance(sets, dict) or not sets:
            raise ValueError("`sets` must be a non-empty dict name -> arrays/path/PairSet or a list of paths.")
        self._spec = dict(sets)
        self._loaded = None
        self.every_n_epochs = every_n_epochs
        self.flip = flip
        self.batch_size = batch_size
        self.folds = folds
        self.far_targets = tuple(float(f) for f in far_targets)
        self.verbose = verbose
        self.history = {name: [] for name in self._spec}

    def _load(self):
        if self._loaded is not None:
            return self._loaded
        size = _model_image_size(self.model)
        loaded = {}
        for name, value in self._spec.items():
            if isinstance(value, PairSet):
                loaded[name] = value
            elif isinstance(value, (tuple, list)) and len(value) == 3:
                loaded[name] = _arrays_to_set(name, value, self.folds)
            elif isinstance(value, (str, os.PathLike)):
                loaded[name] = load_verification_set(value, image_size=size)
            else:
                raise ValueError(f"set '{name}': expected (images_a, images_b, is_same), a path or a PairSet, "
                                 f"got {type(value).__name__}.")
        self._loaded = loaded
        return loaded

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        logs = logs if logs is not None else {}
        for name, ps in self._load().items():
            r = evaluate_pair_set(self.model, ps, flip=self.flip, batch_size=self.batch_size,
                                  far_targets=self.far_targets)
            self.history[name].append(r)
            logs[f"val_{name}_accuracy"] = r.accuracy_mean
            for far in self.far_targets:
                logs[f"val_{name}_{_far_key(far)}"] = r.tar_at_far[far]
            if self.verbose:
                tars = " ".join(f"TAR@FAR={f:g}: {100 * r.tar_at_far[f]:.2f}%" for f in self.far_targets)
                print(f"\nEpoch {epoch + 1}: {name} accuracy {100 * r.accuracy_mean:.2f} +- "
                      f"{100 * r.accuracy_std:.2f}% (threshold {r.best_threshold:.3f}) {tars}")
