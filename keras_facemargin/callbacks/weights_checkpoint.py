"""Backend-agnostic step and epoch checkpoints: every model and optimizer variable in one `.npz` file.

`WeightsCheckpoint` is what the trainer checkpoints JAX runs with (`tf.train.Checkpoint`, behind
`TrainingCheckpoint`, cannot track JAX variables). It has `TrainingCheckpoint`'s interface
(`restore()` -> global step, `save(step)`, `latest`, `saved_step`, `first_step`), so a resumed
run restarts at `divmod(step, steps_per_epoch)` the same way.

A checkpoint `ckpt-<step>.npz` is a NumPy `.npz` (a zip of `.npy` members) holding

* `model/<variable.path>` for every variable of `model.variables`: weights, BatchNorm statistics,
  KappaFace kappa/psi/class counts, the feature sums and counts, the memory buffer, the momentum
  encoder's copy of the backbone, seed-generator states;
* `optimizer/<variable.path>` for every variable of `optimizer.variables`: iterations, momentum
  slots (a `LossScaleOptimizer`'s scale and its inner optimizer's variables);
* `manifest.json`: format, global step, epoch, steps per epoch and, in variable order, each
  variable's key, path, shape and dtype.

A path that occurs twice (the momentum encoder is a clone of the backbone, same layer names) gets
`#1`, `#2`, ... appended to its key. Each variable is read whole (`keras.ops.convert_to_numpy`;
on JAX this gathers the shards of a class-sharded variable) and written one at a time to a
temporary file unique to the writer (`keras_facemargin.utils.atomic.atomic_writer`:
`.ckpt-<step>.npz.<pid>-<thread>-<random>.tmp`, fsync-ed), which then replaces the final name
(`os.replace`): a crash while saving leaves the previous checkpoints intact. On restore each value is `assign`ed to its variable, which
on JAX lays it out again under the variable's own layout (sharded or replicated). Variables are
matched in order; their count, shapes, dtypes and paths (up to Keras's automatic `_<n>` name
suffixes, which depend on what the process built before; optimizer slot names embed them too) must
match the model, or `restore` raises `ValueError` naming the file and the first variable that differs.

Example:
    >>> ckpt = WeightsCheckpoint("run/checkpoints", model, steps_per_epoch=1000, save_every_steps=200)
    >>> step = ckpt.restore()            # 0 on a fresh run
    >>> initial_epoch, skip = divmod(step, 1000)
    >>> model.fit(..., callbacks=[KappaUpdater(), ckpt])
"""

import glob
import json
import os
import re
import zipfile

import keras
import numpy as np

from keras_facemargin.callbacks.monitoring import NonFiniteLossError
from keras_facemargin.callbacks.save_schedule import SaveSchedule
from keras_facemargin.utils.atomic import atomic_writer

FORMAT = "keras_facemargin.WeightsCheckpoint/1"
MANIFEST = "manifest.json"
_FILE = re.compile(r"^ckpt-(\d+)\.npz$")
_AUTO_SUFFIX = re.compile(r"_\d+(?=[_/]|$)")  # "dense_2/kernel", "sgd_1/dense_2_kernel_momentum"


def weights_checkpoints(directory):
    """The `(step, path)` of every `ckpt-<step>.npz` in `directory`, oldest first."""
    found = []
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            match = _FILE.match(name)
            if match:
                found.append((int(match.group(1)), os.path.join(str(directory), name)))
    return sorted(found)


def latest_weights_checkpoint(directory):
    """The newest `ckpt-<step>.npz` of `directory`, or None."""
    found = weights_checkpoints(directory)
    return found[-1][1] if found else None


def tensorflow_checkpoint(directory):
    """A `tf.train` checkpoint of `directory` (its newest `.index` prefix, or the `checkpoint` state
    file), or None; found without importing TensorFlow."""
    indexes = glob.glob(os.path.join(glob.escape(str(directory)), "*.index"))
    if indexes:
        def number(path):
            match = re.search(r"-(\d+)\.index$", path)
            return int(match.group(1)) if match else -1

        return max(indexes, key=number)[: -len(".index")]
    state = os.path.join(str(directory), "checkpoint")
    return state if os.path.isfile(state) else None


def _canonical(path):
    return _AUTO_SUFFIX.sub("", path)


def _entries(group, variables):
    """(key, path, shape, dtype) of each variable, keys unique within the group."""
    seen, out = {}, []
    for v in variables:
        path = v.path
        n = seen.get(path, 0)
        seen[path] = n + 1
        key = f"{group}/{path}" + (f"#{n}" if n else "")
        out.append({"key": key, "path": path, "shape": [int(d) for d in v.shape],
                    "dtype": keras.backend.standardize_dtype(v.dtype)})
    return out


def _describe(entry):
    return f"{entry['path']!r} {tuple(entry['shape'])} {entry['dtype']}"


def _to_storable(array):
    """(array NumPy can write without pickling, stored dtype name): ml_dtypes types as raw unsigned ints."""
    if array.dtype.isbuiltin == 1 or array.dtype.kind in "biufc?":
        return array, None
    return array.view(f"u{array.dtype.itemsize}"), str(array.dtype)


def _from_stored(array, stored_as):
    if stored_as is None:
        return array
    import ml_dtypes

    return array.view(np.dtype(getattr(ml_dtypes, stored_as)))


class WeightsCheckpoint(SaveSchedule):
    """Step and epoch checkpoints of the whole training state in `.npz` files, on any backend (see the module).

    Written every `save_every_steps` steps (0: never mid-epoch) and at each epoch end, as
    `directory/ckpt-<global step>.npz`; the newest `max_to_keep` are kept. The global step is
    `epoch * steps_per_epoch + steps done`. On JAX, `fit` keeps the state outside the variables
    during an epoch; a mid-epoch save first writes it back (`model.jax_state_sync()`, what Keras
    callbacks do through `Callback.model`).

    Args:
        directory: checkpoint folder (created on the first save).
        model: the model; its `variables` are saved.
        steps_per_epoch: steps in an epoch S (recorded; a checkpoint with another S is refused).
        save_every_steps: mid-epoch period in steps (0: epoch ends only).
        max_to_keep: checkpoints kept.
        optimizer: the optimizer (default `model.optimizer`); `restore` builds it on
            `model.trainable_variables` if it is not built yet.

    Raises (restore):
        ValueError: the newest checkpoint does not match the model (file and first differing
            variable named), was written with another `steps_per_epoch`, is unreadable, or
            `directory` holds `tf.train` checkpoints (`TrainingCheckpoint`'s) instead.
    """

    def __init__(self, directory, model, steps_per_epoch, save_every_steps=0, max_to_keep=2, optimizer=None):
        super().__init__()
        self.directory = str(directory)
        self.steps_per_epoch = int(steps_per_epoch)
        self.save_every_steps = int(save_every_steps)
        self.max_to_keep = int(max_to_keep)
        if self.max_to_keep < 1:
            raise ValueError(f"`max_to_keep` must be >= 1. Received: max_to_keep={max_to_keep}")
        self._state_model = model
        self._optimizer = optimizer
        self.latest = latest_weights_checkpoint(self.directory)
        self.saved_step = None
        self.first_step = 0  # steps of the epoch done before this `fit` call (resumed epoch)
        self._epoch = 0

    @property
    def optimizer(self):
        return self._optimizer if self._optimizer is not None else getattr(self._state_model, "optimizer", None)

    def _groups(self):
        groups = [("model", list(self._state_model.variables))]
        if self.optimizer is not None:
            groups.append(("optimizer", list(self.optimizer.variables)))
        return groups

    def _sync(self):
        sync = getattr(self._state_model, "jax_state_sync", None)
        if sync is not None:
            sync()

    # -- restore ---------------------------------------------------------------------
    def restore(self):
        """Restore the newest checkpoint of `directory`, if any; returns its global step (0 if none).

        The model must be built (its variables created); the optimizer is built here if it is not.
        """
        path = latest_weights_checkpoint(self.directory)
        if path is None:
            found = tensorflow_checkpoint(self.directory)
            if found:
                raise ValueError(
                    f"{self.directory} holds the TensorFlow (tf.train) checkpoint {found}, which WeightsCheckpoint "
                    f"(the {keras.backend.backend()} run's checkpoints) cannot read. Resume it with "
                    "backend='tensorflow' (--backend tensorflow), or start a new run (--name)."
                )
            return 0
        optimizer = self.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self._state_model.trainable_variables)
        try:
            archive = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile) as e:
            raise ValueError(f"Cannot read the checkpoint {path}: {e}") from e
        with archive:
            try:
                manifest = json.loads(archive.read(MANIFEST))
            except (KeyError, ValueError) as e:
                raise ValueError(f"{path} is not a WeightsCheckpoint file (no readable {MANIFEST}): {e}") from e
            if manifest.get("format") != FORMAT:
                raise ValueError(f"{path} has format {manifest.get('format')!r}; expected {FORMAT!r}.")
            if int(manifest["steps_per_epoch"]) != self.steps_per_epoch:
                raise ValueError(
                    f"Cannot resume from {path}: it was written with {manifest['steps_per_epoch']} steps per epoch, "
                    f"this run has {self.steps_per_epoch} (another batch size, data or steps_per_epoch): its global "
                    f"step {manifest['step']} would map to another epoch and lr. Restore those options, or start a "
                    "new run (--name)."
                )
            plan = self._match(path, manifest)
            for variable, entry in plan:
                with archive.open(entry["key"] + ".npy") as f:
                    value = np.lib.format.read_array(f, allow_pickle=False)
                variable.assign(_from_stored(value, entry.get("stored_as")))
        self.latest = path
        self.saved_step = int(manifest["step"])
        return self.saved_step

    def _match(self, path, manifest):
        """Pair the model's variables with the manifest's entries, or raise naming the first that differs."""
        plan = []
        saved_groups = manifest["variables"]
        for group, variables in self._groups():
            saved = saved_groups.get(group, [])
            mine = _entries(group, variables)
            for i in range(max(len(saved), len(mine))):
                a = mine[i] if i < len(mine) else None
                b = saved[i] if i < len(saved) else None
                problem = None
                if a is None:
                    problem = (f"the checkpoint has more {group} variables ({len(saved)}) than this run "
                               f"({len(mine)}); the first extra one is {_describe(b)}")
                elif b is None:
                    problem = (f"this run has more {group} variables ({len(mine)}) than the checkpoint "
                               f"({len(saved)}); the first missing one is {_describe(a)}")
                elif (_canonical(a["path"]) != _canonical(b["path"]) or a["shape"] != b["shape"]
                      or a["dtype"] != b["dtype"]):
                    problem = f"{group} variable {i} is {_describe(a)} in this run but {_describe(b)} in the checkpoint"
                if problem:
                    raise ValueError(
                        f"Cannot restore {path}: it does not match this model: {problem}. It was written by a run "
                        "with other options (backbone, embedding_dim, identities, head, estimator, buffer_dtype, "
                        "optimizer); restore them, or start a new run (--name)."
                    )
                plan.append((variables[i], b))
        return plan

    # -- save ------------------------------------------------------------------------
    def save(self, step):
        """Write `ckpt-<step>.npz` (atomically) and drop all but the newest `max_to_keep`; returns its path.

        Raises `NonFiniteLossError` instead of saving when a trainable weight is NaN/inf, so the
        newest checkpoint is always a usable one.
        """
        self._sync()
        step = int(step)
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, f"ckpt-{step}.npz")
        trainable = {id(v) for v in self._state_model.trainable_variables}
        manifest = {"format": FORMAT, "backend": keras.backend.backend(), "step": step,
                    "epoch": step // self.steps_per_epoch, "steps_per_epoch": self.steps_per_epoch, "variables": {}}
        with atomic_writer(path, "wb") as raw:
            with zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                for group, variables in self._groups():
                    entries = _entries(group, variables)
                    for v, entry in zip(variables, entries):
                        value = np.asarray(keras.ops.convert_to_numpy(v.value))
                        if id(v) in trainable and value.dtype.kind == "f" and not np.all(np.isfinite(value)):
                            raise NonFiniteLossError(
                                f"Weights became NaN/inf by global step {step} (epoch {self._epoch}): "
                                f"{v.path}; not saving. Last good checkpoint: {self.latest} "
                                f"(global step {self.saved_step})."
                            )
                        stored, stored_as = _to_storable(value)
                        if stored_as:
                            entry["stored_as"] = stored_as
                        with archive.open(entry["key"] + ".npy", "w", force_zip64=True) as f:
                            np.lib.format.write_array(f, stored, allow_pickle=False)
                    manifest["variables"][group] = entries
                archive.writestr(MANIFEST, json.dumps(manifest, indent=1))
        for _, old in weights_checkpoints(self.directory)[: -self.max_to_keep]:
            os.remove(old)
        self.latest, self.saved_step = path, step
        return path
