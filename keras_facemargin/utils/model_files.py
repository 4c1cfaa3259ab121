"""The safe loader of model files from outside: ``.keras`` models and ``.weights.h5`` weights.

Everything below is checked before Keras reads the config, builds a layer or allocates a
variable; a file that fails raises :class:`~keras_facemargin.errors.ModelFileError` (or its
subclass :class:`~keras_facemargin.errors.UnsafeModelError`), a ``ValueError`` naming the file,
the member or field, and what was expected. The CLI reports it with exit code 2.

``.keras`` files (:func:`check_keras_file`, :func:`load_keras_model`):

* a zip archive holding ``config.json`` (at most :data:`MAX_CONFIG_BYTES`) and a weights member
  (``model.weights.h5`` or ``.npz``); every member at most :data:`MAX_MODEL_BYTES` uncompressed and,
  above 1 MiB, at most :data:`MAX_COMPRESSION_RATIO` times its compressed size;
* JSON (the config, the normalisation record) nested at most :data:`MAX_JSON_DEPTH` levels
  (:func:`loads_bounded`; no ``RecursionError`` whatever the nesting);
* every serialised object of the config names a module of ``keras`` or ``keras_facemargin`` (or
  ``builtins`` for Keras' own activation functions), a registered name ``keras_facemargin>...`` if
  any, and no Python lambda: anything else is an :class:`~keras_facemargin.errors.UnsafeModelError`
  (e.g. module ``posix``, class ``system``);
* declared sizes: every dimension the config declares (``num_classes``, ``num_samples``, ``units``,
  ``filters``, ``embedding_dim``, ``stage_filters``, ``image_size``, input shapes, ...) is an integer
  of at most :data:`MAX_DIM`, and the variables that loading will allocate (a lower bound from the
  config: a head's ``num_classes x embedding_dim`` class centres, KappaFace's ``num_samples x
  embedding_dim`` memory, a dense layer's ``units x inputs``, a convolution's kernel, an IResNet's
  stages and embedding layer, ...; two bytes per value) must fit in :data:`MAX_MODEL_BYTES` and in
  the weights member actually in the archive (plus :data:`SLACK_BYTES`): a 768-byte file declaring
  ``ArcMarginDense(num_classes=2**31 - 1)`` is refused without allocating anything;
* the weights archive (HDF5): no external, virtual or linked datasets, and each dataset's declared
  size at most :data:`MAX_COMPRESSION_RATIO` times the bytes it stores (plus 1 MiB), all together at
  most :data:`MAX_MODEL_BYTES`.

Then Keras loads the file with ``safe_mode=True``; an error it raises is re-raised as a
:class:`~keras_facemargin.errors.ModelFileError` naming the file.

``.weights.h5`` files (:func:`check_weights_h5`): the HDF5 checks above.

Example::

    from keras_facemargin.utils.model_files import load_keras_model
    model = load_keras_model("runs/demo/model.keras")     # or ModelFileError / UnsafeModelError
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import tempfile
import zipfile
import zlib

import numpy as np

from keras_facemargin.errors import ModelFileError, UnsafeModelError
from keras_facemargin.utils.untrusted import plain_text, short_repr

__all__ = ["MAX_JSON_DEPTH", "MAX_CONFIG_BYTES", "MAX_RECORD_BYTES", "MAX_MODEL_BYTES", "MAX_DIM",
           "MAX_COMPRESSION_RATIO", "SLACK_BYTES", "loads_bounded", "check_keras_file", "check_weights_h5",
           "load_keras_model"]

#: Deepest nesting of a JSON document read from a model file (real configs: about 10).
MAX_JSON_DEPTH = 64
#: Largest ``config.json`` of a ``.keras`` file (a KappaFace head of 2M classes writes about 10 MB).
MAX_CONFIG_BYTES = 32 << 20
#: Largest normalisation record (``keras_facemargin.json`` member / ``keras_facemargin`` attribute).
MAX_RECORD_BYTES = 64 << 10
#: Largest weights archive and largest total of the variables a model file declares (8 GiB).
MAX_MODEL_BYTES = 8 << 30
#: Largest single dimension a config may declare (``num_classes``, ``units``, ``num_samples``, ...).
MAX_DIM = 1 << 28
#: Largest ratio of uncompressed to stored bytes of a zip member or HDF5 dataset above 1 MiB.
MAX_COMPRESSION_RATIO = 100
#: Declared variables may exceed the weights archive by this much (layers saved unbuilt).
SLACK_BYTES = 16 << 20

_WEIGHTS_MEMBERS = ("model.weights.h5", "model.weights.npz")
_SMALL = 1 << 20
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_SPECIAL = {"__keras_tensor__", "__tensor__", "__numpy__", "__bytes__", "__ellipsis__", "__slice__", "__tuple__",
            "__typespec__"}


# ----------------------------------------------------------------------------------------- JSON
def json_depth(text):
    """Deepest ``[`` / ``{`` nesting of a JSON text (strings skipped), in linear time, no recursion.

    Example::

        json_depth('{"a": [[1]]}')   # 3
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", "replace")
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    if not brackets:
        return 0
    codes = np.frombuffer(brackets.encode("ascii"), np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1).astype(np.int64)
    return int(np.cumsum(steps).max())


def loads_bounded(text, file, where=None, max_depth=MAX_JSON_DEPTH):
    """``json.loads(text)`` for JSON read from a model file: nesting at most `max_depth`, else
    :class:`~keras_facemargin.errors.ModelFileError` (as for text that is not JSON).

    Args:
        text: ``str`` or UTF-8 ``bytes``.
        file: the file, for the message. where: the member / attribute, for the message.
        max_depth: deepest nesting admitted.

    Example::

        loads_bounded(zf.read("config.json"), "m.keras", "config.json")
    """
    depth = json_depth(text)
    if depth > max_depth:
        raise ModelFileError(file, f"JSON nested {depth} levels deep; at most {max_depth} are read", where)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise ModelFileError(file, f"not valid JSON ({plain_text(str(err), 120)})", where) from None


# ------------------------------------------------------------------------------------ the config
def _check_names(obj, file, path="config"):
    """Refuse objects naming code outside keras / keras_facemargin (iteratively: no recursion limit)."""
    stack = [(obj, path)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(value))
            continue
        if not isinstance(value, dict):
            continue
        if "class_name" in value:
            _check_object(value, file, where)
        stack.extend((v, f"{where}.{plain_text(k, 40)}") for k, v in value.items())


def _allowed_module(module):
    return module is None or (isinstance(module, str) and (
        module in ("keras", "keras_facemargin") or module.startswith(("keras.", "keras_facemargin."))))


def _check_object(value, file, where):
    class_name, module = value.get("class_name"), value.get("module")
    registered = value.get("registered_name")
    if not isinstance(class_name, str):
        raise ModelFileError(file, f"'class_name' must be a string, got {short_repr(class_name)}", where)
    if class_name == "__lambda__":
        raise UnsafeModelError(file, "the config holds a Python lambda (code); refused, nothing was run", where)
    if class_name in _SPECIAL and class_name != "__typespec__":
        return
    if class_name == "function" and module == "builtins":
        return  # Keras resolves these in keras.activations / losses / metrics only
    if not _allowed_module(module):
        raise UnsafeModelError(
            file, f"names module {plain_text(module)!r}, class {plain_text(class_name)!r}: only the modules of "
                  "keras and keras_facemargin may be named; refused before anything was imported or run", where)
    if registered is not None and registered != class_name and not (
            isinstance(registered, str) and registered.startswith("keras_facemargin>")):
        raise UnsafeModelError(
            file, f"names the registered object {plain_text(registered)!r}: only keras_facemargin's "
                  "('keras_facemargin>...') may be named; refused before anything was imported or run", where)


def _dim(value, file, where, field, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_DIM:
        raise ModelFileError(file, f"{field} must be an integer in [0, {MAX_DIM}], got {short_repr(value)}", where)
    return value


def _dims(value, file, where, field):
    values = value if isinstance(value, (list, tuple)) else [value]
    if len(values) > 64:
        raise ModelFileError(file, f"{field} has {len(values)} entries; at most 64", where)
    return [_dim(v, file, where, field, allow_none=True) for v in values]


def _last_dim(shape, file, where):
    """The last dimension of a build_config input shape (the first one of a list of shapes)."""
    if isinstance(shape, dict):
        shape = shape.get("input_shape", shape.get("shapes_dict"))
    if isinstance(shape, dict):
        shape = next(iter(shape.values()), None)
    while isinstance(shape, list) and shape and isinstance(shape[0], list):
        shape = shape[0]
    if not isinstance(shape, list) or not shape:
        return None
    dims = _dims(shape, file, where, "an input shape")
    return dims[-1]


def _layer_elements(cfg, d, file, where):
    """A lower bound of the values the variables of one serialised object hold (see the module docstring)."""
    n = 0
    if "num_classes" in cfg:
        classes = _dim(cfg["num_classes"], file, where, "num_classes")
        n += classes * d
        if "num_samples" in cfg and cfg.get("estimator", "memory_buffer") == "memory_buffer":
            n += _dim(cfg["num_samples"], file, where, "num_samples") * d
    elif "units" in cfg:
        n += _dim(cfg["units"], file, where, "units") * d
    elif "filters" in cfg:
        kernel = [k or 1 for k in _dims(cfg.get("kernel_size", 1), file, where, "kernel_size")]
        groups = _dim(cfg.get("groups", 1), file, where, "groups") or 1
        n += _dim(cfg["filters"], file, where, "filters") * math.prod(kernel) * max(1, d // groups)
    elif "input_dim" in cfg and "output_dim" in cfg:
        n += _dim(cfg["input_dim"], file, where, "input_dim") * _dim(cfg["output_dim"], file, where, "output_dim")
    embedding = _dim(cfg.get("embedding_dim", 0), file, where, "embedding_dim")
    size = [s or 112 for s in _dims(cfg.get("image_size") or 112, file, where, "image_size")]
    h, w = (size * 2)[:2]
    if "stage_filters" in cfg:  # IResNet: a 3x3 f->f convolution per stage, then (H/16 x W/16 x f) -> d
        f = [v or 1 for v in _dims(cfg["stage_filters"], file, where, "stage_filters")]
        n += 9 * sum(v * v for v in f) + embedding * f[-1] * math.ceil(h / 16) * math.ceil(w / 16)
    elif "width_multiplier" in cfg:  # MobileFaceNet: 64 x width channels, then a linear 1x1 to d
        width = cfg["width_multiplier"]
        if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 1024:
            raise ModelFileError(file, f"width_multiplier must be a number in (0, 1024], got {short_repr(width)}",
                                 where)
        channels = max(1, int(64 * width))
        n += 9 * channels * channels + embedding * channels
    else:
        n += embedding
    return n


def declared_bytes(config, file):
    """A lower bound of the bytes of the variables loading `config` will allocate, and the largest items.

    Counted: objects with a ``build_config``, everything inside a built object or a functional
    model's ``layers``, and backbones (built by their constructor). Two bytes per value. Every
    declared dimension is checked (at most :data:`MAX_DIM`), counted or not.

    Returns:
        ``(total bytes, [(bytes, class name, where)] largest first, at most 5)``.

    Example::

        declared_bytes(json.loads(zf.read("config.json")), "m.keras")
    """
    items = []
    stack = [(config, False, None, "config")]
    while stack:
        value, built, d_in, where = stack.pop()
        if isinstance(value, list):
            stack.extend((v, built, d_in, f"{where}[{i}]") for i, v in enumerate(value))
            continue
        if not isinstance(value, dict):
            continue
        cfg = value.get("config") if "class_name" in value else None
        if not isinstance(cfg, dict):
            stack.extend((v, built, None, f"{where}.{plain_text(k, 40)}") for k, v in value.items())
            continue
        name = plain_text(value.get("class_name"), 60)
        built = built or value.get("build_config") is not None
        for key in ("batch_shape", "batch_input_shape"):
            if cfg.get(key) is not None:
                _dims(cfg[key], file, where, key)
        d = _last_dim(value.get("build_config"), file, where) or d_in or 1
        n = _layer_elements(cfg, d, file, where)  # checks every declared dimension, built or not
        if n and (built or "image_size" in cfg):
            items.append((2 * n, name, where))
        child_d = d
        backbone = cfg.get("backbone")
        if isinstance(backbone, dict) and isinstance(backbone.get("config"), dict):  # a FaceRecognizer's head
            child_d = _dim(backbone["config"].get("embedding_dim", 0), file, where, "embedding_dim") or d
        for key, child in cfg.items():
            stack.append((child, built or key == "layers", child_d if key == "head" else None,
                          f"{where}.{plain_text(key, 40)}"))
    items.sort(key=lambda t: -t[0])
    return sum(t[0] for t in items), items[:5]


# ----------------------------------------------------------------------------------- the archive
class _Window(io.RawIOBase):
    """A read-only view of bytes ``[start, start + size)`` of a file (a stored zip member), seekable."""

    def __init__(self, path, start, size):
        super().__init__()
        self._f = open(path, "rb")  # noqa: SIM115
        self._start, self._size, self._pos = start, size, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer):
        n = max(0, min(len(buffer), self._size - self._pos))
        if n == 0:
            return 0
        self._f.seek(self._start + self._pos)
        data = self._f.read(n)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self):
        self._f.close()
        super().close()


def _member_data_offset(path, info):
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise ModelFileError(path, "damaged zip (bad local header)", info.filename)
    name_len, extra_len = int.from_bytes(header[26:28], "little"), int.from_bytes(header[28:30], "little")
    return info.header_offset + 30 + name_len + extra_len


@contextlib.contextmanager
def _open_member_h5(path, zf, info):
    """The HDF5 member as an ``h5py.File``: a window on the archive when stored, else an extracted copy."""
    import h5py

    if info.compress_type == zipfile.ZIP_STORED:
        raw = _Window(path, _member_data_offset(path, info), info.file_size)
        try:
            with h5py.File(raw, "r") as h5:
                yield h5
        finally:
            raw.close()
        return
    with tempfile.TemporaryDirectory(prefix="kfm_h5_") as tmp:
        target = os.path.join(tmp, "weights.h5")
        with zf.open(info) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        with h5py.File(target, "r") as h5:
            yield h5


def _check_h5(h5, file, where, max_bytes):
    """HDF5 checks: no links out, no external / virtual datasets, declared sizes backed by stored bytes."""
    import h5py

    total, problems = 0, []

    def visit(name, link):
        nonlocal total
        if isinstance(link, (h5py.ExternalLink, h5py.SoftLink)):
            problems.append(f"{name}: a {type(link).__name__} (only plain groups and datasets are read)")
            return
        obj = h5.get(name)
        if not isinstance(obj, h5py.Dataset):
            return
        if obj.external or obj.is_virtual:
            problems.append(f"{name}: an external or virtual dataset")
            return
        declared = math.prod(obj.shape or ()) * obj.dtype.itemsize
        stored = obj.id.get_storage_size()
        total += declared
        if declared > MAX_COMPRESSION_RATIO * stored + _SMALL:
            problems.append(f"{name}: declares {obj.shape} ({declared:,} bytes) but stores {stored:,} bytes")

    h5.visititems_links(visit)
    if problems:
        raise ModelFileError(file, f"weights archive: {problems[0]} (a shape bomb?); refused", where)
    if total > max_bytes:
        raise ModelFileError(file, f"weights archive declares {total:,} bytes of datasets; at most {max_bytes:,}",
                             where)
    return total


def check_weights_h5(path, max_bytes=MAX_MODEL_BYTES):
    """Check a ``.weights.h5`` file (or an HDF5 weights archive) before Keras reads it; returns its
    datasets' total bytes.

    Raises:
        ModelFileError: links, external or virtual datasets, a dataset declaring far more than it
            stores, or more than `max_bytes` in all. OSError: unreadable file.

    Example::

        check_weights_h5("backbone.weights.h5")
    """
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            return _check_h5(h5, str(path), None, max_bytes)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        if isinstance(err, (ModelFileError, FileNotFoundError)):
            raise
        raise ModelFileError(path, f"not a readable HDF5 weights file ({plain_text(str(err), 160)})") from None


def check_keras_file(path, max_bytes=MAX_MODEL_BYTES):
    """Check a ``.keras`` file as the module docstring says, without building or allocating anything.

    Args:
        path: the ``.keras`` file.
        max_bytes: cap on the weights archive and on the variables the config declares.

    Returns:
        ``{"config": dict, "declared_bytes": int, "weights_bytes": int}``.

    Raises:
        FileNotFoundError: no such file. ModelFileError / UnsafeModelError: see the module docstring.

    Example::

        check_keras_file("model.keras")["declared_bytes"]
    """
    file = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Model file not found: {file}")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise ModelFileError(file, f"not a .keras zip archive ({plain_text(str(err), 120)})") from None
    with zf:
        infos = {i.filename: i for i in zf.infolist()}
        for info in infos.values():
            if info.file_size > max_bytes:
                raise ModelFileError(file, f"member of {info.file_size:,} bytes; at most {max_bytes:,}",
                                     plain_text(info.filename))
            if info.file_size > _SMALL and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
                raise ModelFileError(file, f"member expands {info.compress_size:,} -> {info.file_size:,} bytes "
                                           f"(more than {MAX_COMPRESSION_RATIO}x: a zip bomb?)",
                                     plain_text(info.filename))
        config_info = infos.get("config.json")
        if config_info is None:
            raise ModelFileError(file, "no config.json member: not a Keras 3 .keras file")
        if config_info.file_size > MAX_CONFIG_BYTES:
            raise ModelFileError(file, f"{config_info.file_size:,} bytes; at most {MAX_CONFIG_BYTES:,}", "config.json")
        try:
            with zf.open(config_info) as f:
                text = f.read(MAX_CONFIG_BYTES + 1)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as err:
            raise ModelFileError(file, f"unreadable member ({plain_text(str(err), 120)})", "config.json") from None
        config = loads_bounded(text, file, "config.json")
        if not isinstance(config, dict) or not isinstance(config.get("class_name"), str):
            raise ModelFileError(file, "must be a serialised Keras object ({'class_name', 'config', ...})",
                                 "config.json")
        _check_names(config, file)
        if not isinstance(config.get("config"), (dict, type(None))):
            raise ModelFileError(file, "'config' must be an object", "config.json")
        declared, largest = declared_bytes(config, file)
        weights = next((infos[n] for n in _WEIGHTS_MEMBERS if n in infos), None)
        weights_bytes = 0 if weights is None else weights.file_size
        if declared > max_bytes or declared > weights_bytes + SLACK_BYTES:
            what = "; ".join(f"{cls} at {where}: {n:,} bytes" for n, cls, where in largest[:3])
            limit = (f"the cap of {max_bytes:,} bytes" if declared > max_bytes else
                     f"the {weights_bytes:,}-byte weights archive in the file (+ {SLACK_BYTES:,})")
            raise ModelFileError(file, f"declares variables of at least {declared:,} bytes ({what}), more than "
                                       f"{limit}; refused before allocating them", "config.json")
        if weights is not None and weights.filename.endswith(".h5"):
            try:
                with _open_member_h5(path, zf, weights) as h5:
                    _check_h5(h5, file, weights.filename, max_bytes)
            except (OSError, ValueError, KeyError, RuntimeError, EOFError, NotImplementedError, zlib.error) as err:
                if isinstance(err, ModelFileError):
                    raise
                raise ModelFileError(file, f"unreadable weights archive ({plain_text(str(err), 160)})",
                                     weights.filename) from None
    return {"config": config, "declared_bytes": declared, "weights_bytes": weights_bytes}


def load_keras_model(path, compile=False, max_bytes=MAX_MODEL_BYTES):
    """`check_keras_file`, then ``keras.saving.load_model(path, compile=compile, safe_mode=True)``.

    The caller registers the package's serialisable classes first (``import keras_facemargin.models``;
    ``utils`` imports nothing of the package above it). An error Keras raises while rebuilding the
    model is re-raised as :class:`~keras_facemargin.errors.ModelFileError` naming the file.

    Example::

        import keras_facemargin.models  # noqa: F401
        model = load_keras_model("runs/demo/model.keras")
    """
    import keras

    check_keras_file(path, max_bytes)
    try:
        return keras.saving.load_model(path, compile=compile, safe_mode=True)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, RecursionError) as err:
        if isinstance(err, ModelFileError):
            raise
        raise ModelFileError(path, f"Keras cannot rebuild this model ({type(err).__name__}: "
                                   f"{plain_text(str(err), 300)})") from err
