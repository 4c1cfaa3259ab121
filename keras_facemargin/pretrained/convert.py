"""Convert released insightface weights (IResNet, MobileFaceNet; ONNX graphs, PyTorch files) to Keras.

Both routes first produce an insightface *state dict* (``{"conv1.weight": array, ...}``, PyTorch
names and layouts), then `load_iresnet_state_dict` / `load_mobilefacenet_state_dict` fill
`keras_facemargin.backbones.IResNet` / `MobileFaceNet` one-to-one (names in
``backbones/iresnet.py`` and ``backbones/mobilefacenet.py``):

* conv ``(O, I/groups, kh, kw)`` -> Keras HWIO ``(kh, kw, I/groups, O)``; depthwise
  ``(C, 1, kh, kw)`` -> ``(kh, kw, C, 1)``;
* BatchNorm weight/bias/running_mean/running_var -> gamma/beta/moving_mean/moving_variance
  (IResNet's ``features`` has a fixed gamma of 1 in insightface; Keras ``head_features`` has no
  gamma there, so a gamma != 1, e.g. folded by an exporter, is folded exactly into the variance);
* PReLU ``(C,)`` -> ``(1, 1, C)``;
* ``fc.weight`` ``(D, C*H*W)``: PyTorch flattens C, H, W and Keras H, W, C, so the rows are
  permuted: ``w.reshape(D, C, H, W).transpose(2, 3, 1, 0).reshape(H*W*C, D)`` (MobileFaceNet's
  GDC leaves a 1x1 map: a plain transpose).

`read_torch_checkpoint` reads a ``torch.save`` zip file *without torch*: a ``backbone.pth`` state
dict, a DistributedDataParallel (``module.``) one, or arcface_torch's resume checkpoint
``checkpoint_gpu_<rank>.pt`` (its ``state_dict_backbone``; the PartialFC class centres, optimizer
and scheduler states are ignored, with a note). A restricted unpickler admits only
``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter`` and the
``torch.*Storage`` type markers; nothing else in the pickle can run, a tensor whose
size/stride/offset would reach outside its storage is refused, and only the tensors of the state
dict that is used are read from the archive.

`onnx_to_state_dict` reads an ONNX graph exported from PyTorch by following its *data flow*: from
the image input, each tensor's consumers decide what comes next (a block input feeding a BN and a
1x1 conv is a downsampling block, the residual Add joins the two branches, ...), so node order,
initializer names and exporter do not matter. Accepted: TorchScript (``dynamo=False``) and dynamo
exports at opsets 11 to 18, conv+BN and Gemm+BN folded or not (a folded BN becomes an identity BN
carrying the bias; a BN an optimiser removed as identity is restored as one), BNs written as
``Mul``/``Add`` pairs, onnxsim- and onnxruntime-optimised (``ORT_ENABLE_BASIC``) graphs, and an
input scaling baked into the graph (``Sub``/``Mul``/``Div`` by scalars: it becomes the converted
model's ``normalization``). Weights in an external ``.onnx.data`` file are read only with
``allow_external_data=True``, from the model file's own folder. Anything else raises
`WeightsFileError` naming the file and the node that does not fit.

Inputs of converted insightface models: arcface_torch trains with ``(x - 127.5) / 127.5``
(``Normalize(0.5, 0.5)``), not this package's ``/ 128``: ``info["normalization"]`` of
``convert_insightface(..., return_info=True)`` says which, and `keras_facemargin.load` and the
tools apply it.

Example::

    backbone = convert_insightface("w600k_r50.onnx")            # keras IResNet, 112x112, 512-d
    backbone, info = convert_insightface("w600k_mbf.onnx", return_info=True)
    info["arch"], info["normalization"]                          # 'mobilefacenet', {'mean': 127.5, 'std': 127.5}
    backbone.save_weights("w600k_mbf.weights.h5")
"""

from __future__ import annotations

import collections
import pickle
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np

from keras_facemargin.backbones.embedding_head import BN_EPSILON

__all__ = ["WeightsFileError", "ExternalDataError", "INSIGHTFACE_NORMALIZATION",
           "read_torch_state_dict", "read_torch_checkpoint", "write_torch_state_dict", "onnx_to_state_dict",
           "state_dict_architecture", "iresnet_config_from_state_dict", "load_iresnet_state_dict",
           "iresnet_from_state_dict", "mobilefacenet_config_from_state_dict", "load_mobilefacenet_state_dict",
           "mobilefacenet_from_state_dict", "backbone_from_state_dict", "convert_insightface",
           "keras_layer_name", "mobilefacenet_keras_layer_name"]

#: arcface_torch's input normalisation, ``(x - 127.5) / 127.5`` (``Normalize(mean=0.5, std=0.5)``).
INSIGHTFACE_NORMALIZATION = {"mean": 127.5, "std": 127.5}


class WeightsFileError(ValueError):
    """A weights file (``.pth``/``.onnx``) that cannot be converted; the message names the file and,
    for ONNX graphs, the node that does not fit (``.source`` and ``.node`` hold them)."""

    def __init__(self, message, source=None, node=None):
        super().__init__(message)
        self.source, self.node = source, node


class ExternalDataError(WeightsFileError):
    """An ONNX model keeps weights in external files and the caller did not allow reading them, or
    an external location is unsafe (outside the model's folder, missing, or too short)."""


# ----------------------------------------------------------------------------- torch-free .pth
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_STORAGE_ITEMSIZE = {name: 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
                     for name, dtype in _STORAGE_DTYPES.items()}
# Entries of a checkpoint dict that may hold the backbone's state dict, in order of preference
# (arcface_torch's resume checkpoint first).
_STATE_DICT_KEYS = ("state_dict_backbone", "state_dict", "model_state_dict", "model", "backbone")
_PARTIAL_FC_KEYS = ("state_dict_softmax_fc", "state_dict_partial_fc", "partial_fc", "head")


class _StorageType:
    def __init__(self, name):
        self.name = name


def _as_index_tuple(values, what):
    if not isinstance(values, (tuple, list)):
        raise pickle.UnpicklingError(f"tensor {what} is a {type(values).__name__}, not a tuple.")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise pickle.UnpicklingError(f"tensor {what} {tuple(values)!r} holds a non-integer {v!r}.")
        if v < 0:
            raise pickle.UnpicklingError(f"tensor {what} {tuple(values)!r} is negative.")
        out.append(int(v))
    return tuple(out)


def _check_view(numel, storage_offset, size, stride):
    """Validated ``(offset, size, stride)`` of a tensor view on a storage of `numel` elements."""
    if isinstance(storage_offset, bool) or not isinstance(storage_offset, (int, np.integer)) or storage_offset < 0:
        raise pickle.UnpicklingError(f"tensor storage offset {storage_offset!r} is not an integer >= 0.")
    storage_offset = int(storage_offset)
    size, stride = _as_index_tuple(size, "size"), _as_index_tuple(stride, "stride")
    if len(size) != len(stride):
        raise pickle.UnpicklingError(f"tensor size {size} and stride {stride} differ in length.")
    if all(n > 0 for n in size):  # a non-empty view: its last element must lie in the storage
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= numel:
            raise pickle.UnpicklingError(
                f"tensor of size {size}, stride {stride}, offset {storage_offset} reaches element {last} "
                f"of a storage of {numel} elements (corrupt or crafted file).")
    return storage_offset, size, stride


def _view(storage, storage_offset, size, stride):
    if not size:
        return np.array(storage[storage_offset])
    view = np.lib.stride_tricks.as_strided(storage[storage_offset:], shape=size,
                                           strides=[s * storage.itemsize for s in stride])
    return np.array(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    """Tensor view of a storage array, refusing any view that would reach outside the storage.

    ``size``/``stride``/``storage_offset`` come from the (untrusted) pickle and go to
    ``as_strided``, which does no bounds checking: they are validated first.
    """
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise pickle.UnpicklingError(f"tensor storage is a {type(storage).__name__}, not a storage.")
    storage_offset, size, stride = _check_view(storage.size, storage_offset, size, stride)
    return _view(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *state):
    return data


class _LazyStorage:
    """A storage of the archive, read only when a tensor of the used state dict needs it."""

    def __init__(self, archive, member, dtype_name, numel, source):
        self.archive, self.member, self.dtype_name, self.numel, self.source = archive, member, dtype_name, numel, source
        self._array = None

    def array(self):
        if self._array is None:
            try:
                info = self.archive.getinfo(self.member)
            except KeyError:
                raise pickle.UnpicklingError(f"{self.source}: storage {self.member} is missing from the archive.") from None
            need = self.numel * _STORAGE_ITEMSIZE[self.dtype_name]
            if info.file_size < need:
                raise pickle.UnpicklingError(f"{self.source}: storage {self.member} has {info.file_size} bytes, "
                                             f"expected {need} (truncated file?).")
            raw = self.archive.read(self.member)
            dtype = _STORAGE_DTYPES[self.dtype_name]
            if dtype == "bfloat16":
                arr = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
            else:
                arr = np.frombuffer(raw, np.dtype(dtype).newbyteorder("<"))
            self._array = arr
        return self._array


class _LazyTensor:
    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    @property
    def nbytes(self):
        return int(np.prod(self.size, dtype=np.int64)) * _STORAGE_ITEMSIZE[self.storage.dtype_name]

    def materialize(self):
        return _view(self.storage.array(), self.offset, self.size, self.stride)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, archive, prefix, source):
        super().__init__(file)
        self._archive, self._prefix, self._source = archive, prefix, source
        self._storages = {}

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self._rebuild_tensor_v2
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(
            f"{self._source}: refusing to load {module}.{name}; only plain tensor state dicts "
            "(OrderedDict of tensors) are read without torch.")

    def _rebuild_tensor_v2(self, storage, storage_offset, size, stride, *args, **kwargs):
        if not isinstance(storage, _LazyStorage):
            raise pickle.UnpicklingError(f"{self._source}: tensor storage is a {type(storage).__name__}, "
                                         "not a storage.")
        try:
            offset, size, stride = _check_view(storage.numel, storage_offset, size, stride)
        except pickle.UnpicklingError as e:
            raise pickle.UnpicklingError(f"{self._source}: {e}") from None
        return _LazyTensor(storage, offset, size, stride)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"{self._source}: unexpected persistent id {pid!r}.")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"{self._source}: unsupported storage type {storage_type!r}.")
        if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError(f"{self._source}: storage size {numel!r} is not an integer >= 0.")
        key = str(key)
        if key not in self._storages:
            self._storages[key] = _LazyStorage(self._archive, f"{self._prefix}data/{key}", storage_type.name,
                                               numel, self._source)
        storage = self._storages[key]
        if storage.dtype_name != storage_type.name or storage.numel != numel:
            raise pickle.UnpicklingError(f"{self._source}: storage {key} is declared twice, differently.")
        return storage


def _tensor_dicts(obj):
    """Names of the entries of a checkpoint dict that are dicts holding tensors."""
    return [k for k, v in obj.items() if isinstance(v, dict) and any(isinstance(t, _LazyTensor) for t in v.values())]


def _describe(value):
    if isinstance(value, dict):
        tensors = [v for v in value.values() if isinstance(v, _LazyTensor)]
        shapes = ", ".join(f"{k} {tuple(v.size)}" for k, v in list(value.items())[:2] if isinstance(v, _LazyTensor))
        return f"{len(tensors)} tensors ({shapes}{', ...' if len(tensors) > 2 else ''})" if tensors else "no tensors"
    return type(value).__name__


def read_torch_checkpoint(path):
    """Read the backbone state dict of a ``torch.save`` zip file into NumPy, without torch.

    Args:
        path: a ``.pth``/``.pt`` file holding a dict of tensors (``model.state_dict()``, e.g.
            arcface_torch's ``backbone.pth``/``model.pt``), or a checkpoint dict with a
            ``"state_dict_backbone"`` (arcface_torch's ``checkpoint_gpu_<rank>.pt``),
            ``"state_dict"``, ``"model_state_dict"``, ``"model"`` or ``"backbone"`` entry. A
            ``"module."`` (DistributedDataParallel) prefix is removed.

    Returns:
        ``(state_dict, info)``: ``dict`` name -> NumPy array (float32 for float16/bfloat16
        tensors) and ``{"key": checkpoint entry used or None, "ignored": [other entries],
        "notes": [str]}``. The tensors of ignored entries (PartialFC class centres, optimizer
        momentum) are never read from the archive.

    Raises:
        FileNotFoundError: no such file.
        WeightsFileError: not a torch zip file (e.g. the legacy pre-1.6 format), a corrupt archive,
            or no state dict in it.
        pickle.UnpicklingError: the pickle references anything besides tensors and dicts (never
            executed), or a tensor's size/stride/offset reaches outside its storage (names the file).

    Example::

        sd, info = read_torch_checkpoint("work_dirs/ms1mv3_r50/checkpoint_gpu_0.pt")
        info["notes"]   # ["... 'state_dict_softmax_fc' (PartialFC class centres ...) ignored ..."]
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PyTorch weights not found: {path}")
    if not zipfile.is_zipfile(path):
        raise WeightsFileError(f"{path} is not a torch zip archive (torch >= 1.6 `torch.save`); the legacy "
                               "format is not read without torch: re-save it with torch >= 1.6.", str(path))
    try:
        return _read_torch_checkpoint(path)
    except (WeightsFileError, pickle.UnpicklingError):
        raise
    except (zipfile.BadZipFile, EOFError, RuntimeError, NotImplementedError, UnicodeDecodeError, zlib.error,
            KeyError, TypeError, AttributeError, IndexError, ValueError, OverflowError, MemoryError) as err:
        raise WeightsFileError(f"{path}: corrupt or unsupported torch archive ({type(err).__name__}: {err}).",
                               str(path)) from None


def _read_torch_checkpoint(path):
    info = {"key": None, "ignored": [], "notes": []}
    with zipfile.ZipFile(path) as archive:
        pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise WeightsFileError(f"{path}: expected one */data.pkl in the archive, found {pkl}.", str(path))
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = f"{prefix}byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise WeightsFileError(f"{path}: big-endian archives are not supported.", str(path))
        with archive.open(pkl[0]) as f:
            obj = _RestrictedUnpickler(f, archive, prefix, str(path)).load()
        if isinstance(obj, dict) and not any(isinstance(v, _LazyTensor) for v in obj.values()):
            key = next((k for k in _STATE_DICT_KEYS if isinstance(obj.get(k), dict)), None)
            if key is None:
                candidates = _tensor_dicts(obj)
                raise WeightsFileError(
                    f"{path}: a checkpoint dict without a backbone state dict (looked for {list(_STATE_DICT_KEYS)}); "
                    f"entries holding tensors: {candidates or 'none'}; all entries: {sorted(map(str, obj))[:12]}.",
                    str(path))
            info["key"] = key
            info["ignored"] = [str(k) for k in obj if k != key]
            for k in obj:
                if k in _PARTIAL_FC_KEYS:
                    info["notes"].append(
                        f"{path.name}: {k!r} ({_describe(obj[k])}: the PartialFC / margin-head class centres) "
                        "ignored: only the backbone is converted.")
            others = [str(k) for k in obj if k != key and k not in _PARTIAL_FC_KEYS]
            if others:
                info["notes"].append(f"{path.name}: backbone weights from {key!r}; also ignored: {others}.")
            obj = obj[key]
        if not isinstance(obj, dict):
            raise WeightsFileError(f"{path} holds a {type(obj).__name__}, not a state dict.", str(path))
        out = {}
        for name, value in obj.items():
            if not isinstance(value, _LazyTensor):
                continue
            name = str(name)
            name = name[len("module."):] if name.startswith("module.") else name
            arr = value.materialize()
            out[name] = arr.astype(np.float32) if arr.dtype.kind == "f" else arr
    return out, info


def read_torch_state_dict(path):
    """Read a PyTorch state dict saved with ``torch.save`` (zip format) into NumPy, without torch.

    The state-dict part of `read_torch_checkpoint` (see there for the accepted layouts, including
    arcface_torch's ``checkpoint_gpu_<rank>.pt``).

    Args:
        path: a ``.pth``/``.pt`` file.

    Returns:
        ``dict`` name -> NumPy array (float32 for float16/bfloat16 tensors).

    Raises:
        WeightsFileError: not a torch zip file, or no state dict in it.
        pickle.UnpicklingError: the pickle references anything besides tensors and dicts (never
            executed), or a tensor's size/stride/offset reaches outside its storage (names the file).

    Example::

        sd = read_torch_state_dict("ms1mv3_arcface_r50/backbone.pth")
        sd["conv1.weight"].shape       # (64, 3, 3, 3)
    """
    return read_torch_checkpoint(path)[0]


class _Persistent:
    def __init__(self, pid):
        self.pid = pid


class _FloatStorageRef:  # pickled as the global torch.FloatStorage
    pass


_TORCH_GLOBALS = ((_rebuild_tensor_v2, "torch._utils", "_rebuild_tensor_v2"),
                  (_FloatStorageRef, "torch", "FloatStorage"))


class _TorchPickler(pickle._Pickler):
    """Pure-Python pickler writing torch's global names for our stand-ins (no torch needed)."""

    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, _Persistent) else None

    def save_global(self, obj, name=None):
        for target, module, qualname in _TORCH_GLOBALS:
            if obj is target:
                self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode())
                self.memoize(obj)
                return
        super().save_global(obj, name)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[type(_rebuild_tensor_v2)] = save_global  # functions bypass self.save_global otherwise


class _TensorRef:
    def __init__(self, key, shape):
        self.key, self.shape = key, shape

    def __reduce__(self):
        stride = tuple(int(np.prod(self.shape[i + 1:])) for i in range(len(self.shape)))
        pid = ("storage", _FloatStorageRef, self.key, "cpu", int(np.prod(self.shape)))
        return (_rebuild_tensor_v2, (_Persistent(pid), 0, self.shape, stride, False, collections.OrderedDict()))


def write_torch_state_dict(state_dict, path):
    """Write `{name: array}` as float32 tensors in ``torch.save``'s zip format, without torch.

    ``torch.load(path, weights_only=True)`` reads the file; used for test fixtures.

    Example::

        write_torch_state_dict({"fc.weight": np.zeros((4, 8), "float32")}, "tiny.pth")
    """
    import io

    payload, arrays = collections.OrderedDict(), {}
    for i, (name, value) in enumerate(state_dict.items()):
        arr = np.array(value, dtype="<f4", order="C")
        arrays[str(i)] = arr
        payload[name] = _TensorRef(str(i), tuple(int(s) for s in arr.shape))
    buf = io.BytesIO()
    _TorchPickler(buf, protocol=2).dump(payload)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/byteorder", "little")
        for key, arr in arrays.items():
            z.writestr(f"archive/data/{key}", arr.tobytes())
        z.writestr("archive/version", "3\n")
    return str(path)


# ----------------------------------------------------------------------------- ONNX route
_TRANSPARENT = {"Identity", "Dropout"}  # value-preserving in an inference graph
_FLOAT_TYPES = {1, 10, 11, 16}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16: the Keras model computes in float32
_SHAPE_OPS = {"Shape", "Size"}
_MAX_FOLDED = 1 << 26  # elements of a constant made by folding (far above any weight of these nets)


def _onnx_location(tensor):
    return {e.key: e.value for e in tensor.external_data}


def _model_tensors(model):
    """Every TensorProto of the main graph that can hold weights (initializers, Constant values)."""
    out = list(model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            out += [a.t for a in node.attribute if a.name == "value" and a.HasField("t")]
    return out


def _read_external_data(model, path):
    """Fill the external tensors of `model` from files inside `path`'s folder (validated first)."""
    from onnx import TensorProto, helper

    base = path.parent.resolve()
    for tensor in _model_tensors(model):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        loc = _onnx_location(tensor)
        where = loc.get("location", "")
        rel = Path(where)
        target = (base / rel).resolve()
        if not where or rel.is_absolute() or ".." in rel.parts or base not in (target, *target.parents):
            raise ExternalDataError(f"{path}: tensor {tensor.name!r} points to external data {where!r}, outside "
                                    f"the model's folder {base}; refused.", str(path))
        if not target.is_file():
            raise ExternalDataError(f"{path}: external data file {where!r} of tensor {tensor.name!r} not found "
                                    f"in {base}.", str(path))
        try:
            offset, length = int(loc.get("offset", 0)), loc.get("length")
            length = None if length is None else int(length)
        except ValueError:
            raise ExternalDataError(f"{path}: tensor {tensor.name!r} has a non-integer external offset/length "
                                    f"{loc}.", str(path)) from None
        itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        need = int(np.prod(list(tensor.dims), dtype=np.int64)) * itemsize
        size = target.stat().st_size
        if offset < 0 or (length is not None and length != need) or offset + need > size:
            raise ExternalDataError(f"{path}: tensor {tensor.name!r} {tuple(tensor.dims)} needs {need} bytes at "
                                    f"offset {offset} of {where!r} (length {length}, file size {size}).", str(path))
        with open(target, "rb") as f:
            f.seek(offset)
            tensor.raw_data = f.read(need)
        tensor.data_location = TensorProto.DEFAULT
        del tensor.external_data[:]


def _load_onnx(model, allow_external_data):
    import onnx

    if isinstance(model, onnx.ModelProto):
        source, path = "<onnx.ModelProto>", None
    else:
        path = Path(model)
        source = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {source}")
        try:
            model = onnx.load(source, load_external_data=False)  # never read relative to the cwd
        except Exception as err:  # DecodeError, ValidationError, ...
            raise WeightsFileError(f"{source}: not a readable ONNX model ({type(err).__name__}: {err}).",
                                   source) from None
    external = sorted({_onnx_location(t).get("location", "?") for t in _model_tensors(model)
                       if t.data_location == onnx.TensorProto.EXTERNAL})
    if external:
        if path is None:
            raise ExternalDataError(f"{source}: weights are in external file(s) {external}; pass the model's path "
                                    "(with allow_external_data=True) so they are read from its folder.", source)
        if not allow_external_data:
            raise ExternalDataError(
                f"{source}: weights are stored in external file(s) {external} next to the model; external data "
                f"is not read unless allowed: pass allow_external_data=True (tools: --allow-external-data) to "
                f"read them from {path.parent.resolve()}.", source)
        model = onnx.ModelProto.FromString(model.SerializeToString())  # do not modify the caller's proto
        _read_external_data(model, path)
    if model.functions:
        import onnx.inliner

        model = onnx.inliner.inline_local_functions(model)
    return model, source


class _Node:
    __slots__ = ("op_type", "name", "domain", "inputs", "outputs", "attrs", "index")

    def __init__(self, proto, inputs, index):
        from onnx import helper

        self.op_type, self.domain, self.index = proto.op_type, proto.domain, index
        self.name = proto.name or (f"{proto.op_type}->{proto.output[0]}" if proto.output else proto.op_type)
        self.inputs, self.outputs = inputs, list(proto.output)
        self.attrs = {a.name: helper.get_attribute_value(a) for a in proto.attribute}

    def attr(self, name, default=None):
        value = self.attrs.get(name, default)
        return value.decode() if isinstance(value, bytes) else value

    def __repr__(self):
        return f"{self.op_type} node {self.name!r}"


def _fold(node, args):
    """NumPy value of a node whose inputs are all constants, or None when it is not folded."""
    op = node.op_type
    x = args[0] if args else None
    if op == "Cast":
        from onnx import helper

        return x.astype(helper.tensor_dtype_to_np_dtype(node.attr("to")))
    if op in ("Unsqueeze", "Squeeze"):
        axes = node.attr("axes") if len(args) < 2 else [int(a) for a in np.asarray(args[1]).reshape(-1)]
        if op == "Squeeze":
            return np.squeeze(x, axis=None if axes is None else tuple(axes))
        out = x
        for a in sorted(a % (x.ndim + len(axes)) for a in axes):
            out = np.expand_dims(out, a)
        return out
    if op == "Reshape":
        shape = [int(s) for s in np.asarray(args[1]).reshape(-1)]
        shape = [x.shape[i] if s == 0 and not node.attr("allowzero", 0) else s for i, s in enumerate(shape)]
        return x.reshape(shape)
    if op == "Flatten":
        axis = node.attr("axis", 1) % max(x.ndim, 1)
        return x.reshape(int(np.prod(x.shape[:axis])), -1)
    if op == "Transpose":
        return np.transpose(x, node.attr("perm"))
    if op in ("Add", "Sub", "Mul", "Div") and len(args) == 2:
        return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op](*args)
    if op in ("Sqrt", "Reciprocal", "Neg"):
        return {"Sqrt": np.sqrt, "Reciprocal": np.reciprocal, "Neg": np.negative}[op](x)
    if op == "Concat":
        return np.concatenate(args, axis=node.attr("axis"))
    if op == "Shape":
        return np.array(x.shape[node.attr("start", 0):node.attr("end", None)], np.int64)
    if op == "Size":
        return np.array(x.size, np.int64)
    if op == "Expand":
        shape = tuple(int(s) for s in np.asarray(args[1]).reshape(-1))
        if np.prod(np.broadcast_shapes(x.shape, shape), dtype=np.float64) > _MAX_FOLDED:
            return None  # not a weight of these networks: left to fail as an unexpected node
        return np.broadcast_to(x, np.broadcast_shapes(x.shape, shape)).copy()
    if op == "Gather":
        return np.take(x, np.asarray(args[1]).astype(np.int64), axis=node.attr("axis", 0))
    return None


class _OnnxGraph:
    """An ONNX graph as data flow: constants folded, Identity/Dropout/float Casts removed, Shape
    computations set aside, and for every tensor the nodes that consume it."""

    def __init__(self, model, source):
        from onnx import numpy_helper

        self.source = source
        graph = model.graph
        self.consts = {}
        for t in graph.initializer:
            self.consts[t.name] = numpy_helper.to_array(t)
        self.alias, self.shape_tensors, self.nodes = {}, set(), []
        protos = self._toposort(graph)
        for index, proto in enumerate(protos):
            inputs = [self.alias.get(i, i) for i in proto.input]
            node = _Node(proto, inputs, index)
            if not proto.output:
                raise self.error(f"{node} has no output.", node)
            if proto.op_type == "Constant":
                self.consts[proto.output[0]] = self._constant(node, proto)
                continue
            if proto.op_type == "CastLike" and len(inputs) == 2 and inputs[0] in self.consts:
                value = np.asarray(self.consts[inputs[0]])  # cast to the data's (float) type: folded
                self.consts[proto.output[0]] = value.astype(np.float32) if value.dtype.kind == "f" else value
                continue
            data = [i for i in inputs if i and i not in self.consts]
            if not data and inputs and proto.domain in ("", "ai.onnx"):
                value = _fold(node, [self.consts[i] if i else None for i in inputs])
                if value is not None:
                    self.consts[proto.output[0]] = np.asarray(value)
                    continue
            if proto.op_type in _SHAPE_OPS or (data and all(i in self.shape_tensors for i in data)):
                self.shape_tensors.update(proto.output)  # shape arithmetic (dynamic batch size)
                continue
            if (proto.op_type in _TRANSPARENT or (proto.op_type == "Cast" and node.attr("to") in _FLOAT_TYPES)
                    or proto.op_type == "CastLike") and inputs and inputs[0]:
                if inputs[0] in self.consts:
                    self.consts[proto.output[0]] = self.consts[inputs[0]]
                else:
                    self.alias[proto.output[0]] = inputs[0]
                continue
            self.nodes.append(node)
        self.users = collections.defaultdict(list)
        for node in self.nodes:
            for i in dict.fromkeys(node.inputs):
                if i and i not in self.consts:
                    self.users[i].append(node)
        inits = {t.name for t in graph.initializer}
        data_inputs = [i for i in graph.input if i.name not in inits]
        if len(data_inputs) != 1:
            raise self.error(f"expected one image input, found {[i.name for i in data_inputs]}.")
        self.input = data_inputs[0]
        self.outputs = [self.alias.get(o.name, o.name) for o in graph.output]
        self.visited = set()

    def error(self, message, node=None):
        return WeightsFileError(f"{self.source}: {message}", self.source, None if node is None else node.name)

    def _toposort(self, graph):
        available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
        pending, order = list(graph.node), []
        while pending:
            rest = []
            for proto in pending:
                if all(i in available for i in proto.input):
                    order.append(proto)
                    available.update(proto.output)
                else:
                    rest.append(proto)
            if len(rest) == len(pending):
                proto = rest[0]
                missing = [i for i in proto.input if i not in available]
                raise self.error(f"{proto.op_type} node {proto.name!r} reads {missing}, which no node produces "
                                 "(or the graph has a cycle).")
            pending = rest
        return order

    def _constant(self, node, proto):
        from onnx import numpy_helper

        for a in proto.attribute:
            if a.name == "value":
                return numpy_helper.to_array(a.t)
            if a.name == "value_float":
                return np.array(a.f, np.float32)
            if a.name == "value_floats":
                return np.array(list(a.floats), np.float32)
            if a.name == "value_int":
                return np.array(a.i, np.int64)
            if a.name == "value_ints":
                return np.array(list(a.ints), np.int64)
        raise self.error(f"{node} has no value attribute this reader understands.", node)

    def const(self, node, index, what):
        """The constant input `index` of `node` as float32 (error naming the node otherwise)."""
        name = node.inputs[index] if index < len(node.inputs) else ""
        if not name:
            raise self.error(f"{node} has no {what} input.", node)
        if name not in self.consts:
            raise self.error(f"the {what} of {node} ({name!r}) is not a constant.", node)
        value = np.asarray(self.consts[name])
        if value.dtype.kind != "f":
            raise self.error(f"the {what} of {node} ({name!r}) is {value.dtype}, not floating point.", node)
        return value.astype(np.float32)

    def origin(self, tensor):
        if tensor == self.input.name:
            return "the image input"
        producer = next((n for n in self.nodes if tensor in n.outputs), None)
        return f"output of {producer}" if producer else repr(tensor)

    def consumers(self, tensor, exclude=()):
        return [n for n in self.users.get(tensor, []) if n not in exclude]

    def next_node(self, tensor, what, exclude=()):
        """The single consumer of `tensor` (minus `exclude`), which must read it as its first input
        (or either input of an Add)."""
        users = self.consumers(tensor, exclude)
        if len(users) != 1:
            found = ", ".join(map(str, users)) or "nothing"
            raise self.error(f"{tensor!r} ({self.origin(tensor)}) feeds {found}; expected {what}.",
                             users[0] if users else None)
        node = users[0]
        if node.op_type != "Add" and node.inputs[0] != tensor:
            raise self.error(f"{node} reads {tensor!r} ({self.origin(tensor)}) as a parameter, not as its data "
                             f"input; expected {what}.", node)
        return node

    def take(self, node, ops, what):
        if node.op_type not in ops or node.domain not in ("", "ai.onnx"):
            op = f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
            hint = (" (an onnxruntime graph saved at ORT_ENABLE_ALL, with its NCHWc layout? save it at "
                    "ORT_ENABLE_BASIC or ORT_ENABLE_EXTENDED)" if node.domain.startswith("com.microsoft") else "")
            raise self.error(f"expected {what} ({'/'.join(ops)}), found {op} node {node.name!r}{hint}.", node)
        for extra in node.outputs[1:]:
            if extra and self.users.get(extra):
                raise self.error(f"{node}: its secondary output {extra!r} is used; an inference graph does not.",
                                 node)
        self.visited.add(node)
        return node

    def unvisited(self):
        return [n for n in self.nodes if n not in self.visited]


def _per_channel(g, node, value, channels, rank, what):
    """A constant that broadcasts per channel over an NCHW (rank 4) or NC (rank 2) tensor -> (C,)."""
    shape = tuple(value.shape)
    if value.size == 1:
        return np.full(channels, float(value.reshape(-1)[0]), np.float32)
    ok = ({(channels, 1, 1), (1, channels, 1, 1)} if rank == 4 else {(channels,), (1, channels)})
    if shape not in ok:
        raise g.error(f"the {what} of {node} has shape {shape}; expected one value per channel "
                      f"({' or '.join(map(str, sorted(ok)))}) for {channels} channels.", node)
    return value.reshape(channels).astype(np.float32)


class _Parser:
    """Walks an `_OnnxGraph` along the data flow, writing an insightface state dict."""

    def __init__(self, graph):
        self.g, self.sd, self.fused = graph, {}, 0

    # --- primitives --------------------------------------------------------------------------
    def conv(self, node, module, kernel, stride, pad, group=1, depthwise=False):
        g = self.g
        g.take(node, ("Conv",), f"the Conv of {module!r}")
        w = g.const(node, 1, "weight")
        if w.ndim != 4:
            raise g.error(f"{node} ({module}): weight of shape {w.shape}, expected 4-D.", node)
        attrs = {"kernel": tuple(int(k) for k in w.shape[2:]),
                 "strides": tuple(node.attr("strides", [1, 1])),
                 "pads": tuple(node.attr("pads", [0, 0, 0, 0])),
                 "dilations": tuple(node.attr("dilations", [1, 1])),
                 "group": int(node.attr("group", 1))}
        want = {"kernel": (kernel, kernel) if isinstance(kernel, int) else tuple(kernel),
                "strides": (stride, stride), "pads": (pad,) * 4, "dilations": (1, 1),
                "group": int(w.shape[0]) if depthwise else group}
        if node.attr("auto_pad", "NOTSET") not in ("NOTSET", ""):
            raise g.error(f"{node} ({module}): auto_pad={node.attr('auto_pad')!r}; expected explicit pads.", node)
        if depthwise and w.shape[1] != 1:
            raise g.error(f"{node} ({module}): weight {w.shape} is not depthwise (C, 1, k, k).", node)
        bad = {k: v for k, v in attrs.items() if v != want[k]}
        if bad:
            expected = {k: want[k] for k in bad}
            raise g.error(f"{node} ({module}): {bad}, expected {expected}.", node)
        self.sd[f"{module}.weight"] = w
        bias = g.const(node, 2, "bias") if len(node.inputs) > 2 and node.inputs[2] else None
        if bias is not None and bias.shape != (w.shape[0],):
            raise g.error(f"{node} ({module}): bias of shape {bias.shape}, expected ({w.shape[0]},).", node)
        return node.outputs[0], bias, int(w.shape[0])

    def affine(self, tensor, module, channels, rank, bias=None, exclude=()):
        """The BatchNormalization after `tensor` (or what an exporter left of it: a Mul/Add pair, an
        Add, or nothing), written as ``module``'s BN. `bias`: the preceding conv/fc bias, folded in."""
        g = self.g
        users = g.consumers(tensor, exclude)
        node = users[0] if len(users) == 1 else None
        eps = BN_EPSILON
        if node is not None and node.op_type == "BatchNormalization" and node.inputs[0] == tensor:
            g.take(node, ("BatchNormalization",), f"the BatchNormalization of {module!r}")
            if node.attr("training_mode", 0):
                raise g.error(f"{node} ({module}) is in training mode; export the model in eval mode.", node)
            gamma, beta, mean, var = (g.const(node, i, w) for i, w in
                                      ((1, "scale"), (2, "bias"), (3, "mean"), (4, "variance")))
            for value, what in ((gamma, "scale"), (beta, "bias"), (mean, "mean"), (var, "variance")):
                if value.shape != (channels,):
                    raise g.error(f"{node} ({module}): {what} of shape {value.shape}, expected ({channels},).", node)
            eps = float(node.attr("epsilon", 1e-5))
            if not eps > 0 or np.any(var + eps <= 0):
                raise g.error(f"{node} ({module}): epsilon {eps} / variance give a non-positive denominator.", node)
            if bias is not None:
                mean = mean - bias
            self._bn(module, gamma, beta, mean, var + eps - BN_EPSILON)
            return node.outputs[0]
        # No BatchNormalization node: the exporter folded it (or dropped an identity one).
        scale, shift, out = np.ones(channels, np.float32), np.zeros(channels, np.float32), tensor
        if node is not None and node.op_type == "Mul" and self._const_operand(node, out) is not None:
            g.take(node, ("Mul",), f"the scale of {module!r}")
            scale = _per_channel(g, node, self._const_operand(node, out), channels, rank, "scale")
            out = node.outputs[0]
            users = g.consumers(out)
            node = users[0] if len(users) == 1 else None
        if node is not None and node.op_type in ("Add", "Sub") and self._const_operand(node, out) is not None \
                and node.inputs[0] == out:
            g.take(node, (node.op_type,), f"the shift of {module!r}")
            shift = _per_channel(g, node, self._const_operand(node, out), channels, rank, "shift")
            shift = -shift if node.op_type == "Sub" else shift
            out = node.outputs[0]
        if bias is not None:
            shift = shift + scale * bias
        self.fused += 1
        self._bn(module, scale, shift, np.zeros(channels, np.float32),
                 np.full(channels, 1.0 - BN_EPSILON, np.float32))
        return out

    def _const_operand(self, node, tensor):
        others = [i for i in node.inputs if i != tensor]
        if len(node.inputs) == 2 and len(others) == 1 and others[0] in self.g.consts:
            return np.asarray(self.g.consts[others[0]], np.float32)
        return None

    def _bn(self, module, gamma, beta, mean, var):
        self.sd.update({f"{module}.weight": gamma.astype(np.float32), f"{module}.bias": beta.astype(np.float32),
                        f"{module}.running_mean": mean.astype(np.float32),
                        f"{module}.running_var": var.astype(np.float32)})

    def prelu(self, tensor, module, channels):
        g = self.g
        node = g.take(g.next_node(tensor, f"the PRelu of {module!r}"), ("PRelu",), f"the PRelu of {module!r}")
        self.sd[f"{module}.weight"] = _per_channel(g, node, g.const(node, 1, "slope"), channels, 4, "slope")
        return node.outputs[0]

    def conv_bn(self, node, conv, bn, kernel, stride, pad, group=1, depthwise=False):
        out, bias, c = self.conv(node, conv, kernel, stride, pad, group, depthwise)
        return self.affine(out, bn, c, 4, bias), c

    def input_scaling(self):
        """Scalar Sub/Add/Mul/Div nodes right after the image input -> {"mean", "std"} or None."""
        g = self.g
        x, mean, std, seen = g.input.name, 0.0, 1.0, False
        while True:
            users = g.consumers(x)
            node = users[0] if len(users) == 1 else None
            k = self._const_operand(node, x) if node is not None and node.op_type in ("Sub", "Add", "Mul", "Div") \
                else None
            if k is None:
                break
            if k.size != 1 or node.inputs[0] != x:
                raise g.error(f"{node} scales the image input by a constant of shape {k.shape}; only a scalar "
                              "(x - mean) / std input normalisation is converted.", node)
            k = float(k.reshape(-1)[0])
            g.take(node, (node.op_type,), "the input normalisation")
            if node.op_type == "Sub":
                mean += k * std
            elif node.op_type == "Add":
                mean -= k * std
            elif node.op_type == "Mul":
                std /= k
            else:
                std *= k
            x, seen = node.outputs[0], True
        return x, ({"mean": float(mean), "std": float(std)} if seen else None)

    def flatten_fc(self, tensor, module, channels):
        """Flatten/Reshape -> Gemm or MatMul (+ Add bias) of the embedding layer: (output, bias)."""
        g = self.g
        flat = g.take(g.next_node(tensor, "the Flatten before the fc layer"), ("Flatten", "Reshape"),
                      "the Flatten before the fc layer")
        if flat.op_type == "Flatten" and flat.attr("axis", 1) != 1:
            raise g.error(f"{flat} flattens from axis {flat.attr('axis')}; expected 1.", flat)
        if flat.op_type == "Reshape" and flat.inputs[1] in g.consts and np.asarray(g.consts[flat.inputs[1]]).size != 2:
            raise g.error(f"{flat} reshapes to {np.asarray(g.consts[flat.inputs[1]]).tolist()}; expected (N, -1).",
                          flat)
        fc = g.take(g.next_node(flat.outputs[0], f"the Gemm/MatMul of {module!r}"), ("Gemm", "MatMul"),
                    f"the Gemm/MatMul of {module!r}")
        if fc.op_type == "Gemm":
            if fc.attr("transA", 0):
                raise g.error(f"{fc} ({module}) has transA=1.", fc)
            w = g.const(fc, 1, "weight")
            w = w if fc.attr("transB", 0) else w.T
            w = w * float(fc.attr("alpha", 1.0))
            bias = g.const(fc, 2, "bias") * float(fc.attr("beta", 1.0)) if len(fc.inputs) > 2 and fc.inputs[2] \
                else None
            out = fc.outputs[0]
        else:
            w = g.const(fc, 1, "weight").T
            out, bias = fc.outputs[0], None
            users = g.consumers(out)
            if len(users) == 1 and users[0].op_type == "Add" and self._const_operand(users[0], out) is not None:
                add = g.take(users[0], ("Add",), f"the bias of {module!r}")
                bias, out = self._const_operand(add, out), add.outputs[0]
        if w.ndim != 2:
            raise g.error(f"{fc} ({module}): weight of shape {w.shape}, expected 2-D.", fc)
        if bias is not None:
            bias = np.broadcast_to(bias.reshape(-1) if bias.size != 1 else bias.reshape(()), (w.shape[0],))
        self.sd[f"{module}.weight"] = np.ascontiguousarray(w, np.float32)
        return out, (None if bias is None else np.array(bias, np.float32)), int(w.shape[0])

    def finish(self, out, what):
        g = self.g
        if out not in g.outputs or g.consumers(out):
            found = ", ".join(map(str, g.consumers(out))) or "nothing"
            raise g.error(f"the {what} ({out!r}) should be the graph output {g.outputs}; it feeds {found}.")
        if len(g.outputs) != 1:
            raise g.error(f"expected one output (the embedding), found {g.outputs}.")
        left = g.unvisited()
        if left:
            raise g.error(f"{left[0]} is not part of the network ({len(left)} node(s) left over).", left[0])

    # --- IResNet -----------------------------------------------------------------------------
    def iresnet(self, x, stem):
        g = self.g
        x, c = self.conv_bn(stem, "conv1", "bn1", 3, 1, 1)
        x = self.prelu(x, "prelu", c)
        blocks, stage, b = [], 0, -1
        while len(g.consumers(x)) > 1:
            users = g.consumers(x)
            ds = [u for u in users if u.op_type == "Conv" and u.inputs[0] == x and len(u.inputs) > 1
                  and u.inputs[1] in g.consts
                  and np.asarray(g.consts[u.inputs[1]]).shape[2:] == (1, 1)]
            adds = [u for u in users if u.op_type == "Add"]
            if len(users) != 2 or len(ds) + len(adds) != 1:
                raise g.error(f"{x!r} ({g.origin(x)}) feeds {', '.join(map(str, users))}; an IResNet block input "
                              "feeds its bn1 and either its 1x1 downsample Conv or the residual Add.", users[0])
            if ds:
                stage, b = stage + 1, 0
                blocks.append(0)
                if stage > 4:
                    raise g.error(f"{ds[0]} starts a 5th stage; an IResNet has 4.", ds[0])
            elif stage == 0:
                raise g.error(f"the first block after the stem has no 1x1 downsample Conv ({adds[0]} reads its "
                              "input).", adds[0])
            else:
                b += 1
            blocks[-1] += 1
            p, side = f"layer{stage}.{b}", (ds or adds)[0]
            y = self.affine(x, f"{p}.bn1", c, 4, exclude=(side,))
            conv1 = g.next_node(y, f"the conv1 of {p!r}", exclude=(side,) if y == x else ())
            y, planes = self.conv_bn(conv1, f"{p}.conv1", f"{p}.bn2", 3, 1, 1)
            y = self.prelu(y, f"{p}.prelu", planes)
            y, _ = self.conv_bn(g.next_node(y, f"the conv2 of {p!r}"), f"{p}.conv2", f"{p}.bn3", 3,
                                2 if ds else 1, 1)
            s = self.conv_bn(ds[0], f"{p}.downsample.0", f"{p}.downsample.1", 1, 2, 0)[0] if ds else x
            add = g.take(g.next_node(y, f"the residual Add of {p!r}"), ("Add",), f"the residual Add of {p!r}")
            if sorted(add.inputs) != sorted([y, s]):
                raise g.error(f"{add} ({p}) adds {add.inputs}; expected the block output {y!r} and the shortcut "
                              f"{s!r}.", add)
            x, c = add.outputs[0], planes
        if stage != 4:
            raise g.error(f"found {stage} IResNet stages (blocks {blocks}) before the head; expected 4.")
        y = self.affine(x, "bn2", c, 4)
        y, bias, d = self.flatten_fc(y, "fc", c)
        self.sd["fc.bias"] = bias if bias is not None else np.zeros(d, np.float32)
        y = self.affine(y, "features", d, 2)
        self.finish(y, "'features' embedding")
        return {"arch": "iresnet", "stage_blocks": tuple(blocks)}

    # --- MobileFaceNet -----------------------------------------------------------------------
    def mbf_conv_block(self, node, prefix, kernel, stride, pad, group=1, depthwise=False, act=True):
        y, c = self.conv_bn(node, f"{prefix}.layers.0", f"{prefix}.layers.1", kernel, stride, pad, group, depthwise)
        return (self.prelu(y, f"{prefix}.layers.2", c) if act else y), c

    def mbf_depthwise(self, x, prefix, stride, residual):
        g = self.g
        add = [u for u in g.consumers(x) if u.op_type == "Add"] if residual else []
        n = g.next_node(x, f"the expand Conv of {prefix!r}", exclude=add)
        y, e = self.mbf_conv_block(n, f"{prefix}.layers.0", 1, 1, 0)
        y, _ = self.mbf_conv_block(g.next_node(y, f"the depthwise Conv of {prefix!r}"), f"{prefix}.layers.1",
                                   3, stride, 1, depthwise=True)
        y, c = self.mbf_conv_block(g.next_node(y, f"the project Conv of {prefix!r}"), f"{prefix}.layers.2",
                                   1, 1, 0, act=False)
        if residual:
            node = g.take(g.next_node(y, f"the residual Add of {prefix!r}"), ("Add",), f"the residual Add of {prefix!r}")
            if sorted(node.inputs) != sorted([x, y]):
                raise g.error(f"{node} ({prefix}) adds {node.inputs}; expected {x!r} and {y!r}.", node)
            y = node.outputs[0]
        return y, c

    def _residuals(self, x, prefix):
        g, n = self.g, 0
        while len(g.consumers(x)) == 2 and any(u.op_type == "Add" for u in g.consumers(x)):
            x, _ = self.mbf_depthwise(x, f"{prefix}.layers.{n}", 1, True)
            n += 1
        return x, n

    def mobilefacenet(self, x, stem):
        g = self.g
        x, c1 = self.mbf_conv_block(stem, "layers.0", 3, 2, 1)
        users = g.consumers(x)
        blocks = []
        if len(users) == 1:  # blocks[0] == 1: one grouped ConvBlock
            node = users[0]
            if node.op_type != "Conv" or node.attr("group", 1) == 1:
                raise g.error(f"after the MobileFaceNet stem, expected the grouped 3x3 Conv of 'layers.1' or "
                              f"residual blocks; found {node}.", node)
            x, _ = self.mbf_conv_block(node, "layers.1", 3, 1, 1, group=64)
            blocks.append(1)
        else:
            x, n = self._residuals(x, "layers.1")
            if n == 0:
                raise g.error(f"{x!r} after the MobileFaceNet stem feeds {', '.join(map(str, users))}; expected a "
                              "grouped Conv or residual blocks.", users[0])
            blocks.append(n)
        for k in (2, 4, 6):
            x, c = self.mbf_depthwise(x, f"layers.{k}", 2, False)
            x, n = self._residuals(x, f"layers.{k + 1}")
            blocks.append(n)
        x, c = self.mbf_conv_block(g.next_node(x, "the conv_sep Conv"), "conv_sep", 1, 1, 0)
        gdc = g.next_node(x, "the GDC depthwise Conv")
        weight = g.consts.get(gdc.inputs[1]) if len(gdc.inputs) > 1 else None
        kernel = tuple(np.asarray(weight).shape[2:4]) if weight is not None and np.ndim(weight) == 4 else (7, 7)
        x, c = self.mbf_conv_block(gdc, "features.layers.0", kernel, 1, 0, depthwise=True, act=False)
        y, bias, d = self.flatten_fc(x, "features.layers.2", c)
        y = self.affine(y, "features.layers.3", d, 2, bias=bias)
        self.finish(y, "'features' embedding")
        scale = c1 // 64
        return {"arch": "mobilefacenet", "blocks": tuple(blocks), "scale": scale, "gdc_kernel": kernel}


def onnx_to_state_dict(model, allow_external_data=False):
    """Turn an insightface IResNet or MobileFaceNet ONNX graph into an insightface-named state dict.

    The graph is read by data flow (module docstring): TorchScript or dynamo exports at opsets 11
    to 18, BN folded or not, onnxsim / onnxruntime (``ORT_ENABLE_BASIC``) optimised.

    Args:
        model: path of an ``.onnx`` file or an ``onnx.ModelProto`` (NCHW, exported from
            insightface's PyTorch ``iresnet.py`` / ``mobilefacenet.py``).
        allow_external_data: read weights stored in external files (``model.onnx.data``), from the
            model file's folder only; refused by default.

    Returns:
        ``(state_dict, info)``; ``info`` has ``arch`` (``"iresnet"`` / ``"mobilefacenet"``),
        ``stage_blocks`` (IResNet) or ``blocks``/``scale`` (MobileFaceNet), ``image_size`` (from the
        graph input when static), ``fused_bn`` (BNs not present as BatchNormalization nodes),
        ``normalization`` (``{"mean", "std"}`` when the graph scales its input itself, else None)
        and ``opset``.

    Raises:
        FileNotFoundError: no such file.
        ExternalDataError: external weights and ``allow_external_data=False``, or an unsafe location.
        WeightsFileError: unreadable file, or a graph that is not one of these networks (names the
            first node that does not fit).

    Example::

        sd, info = onnx_to_state_dict("w600k_r50.onnx")
        info["arch"], info["stage_blocks"]                  # ('iresnet', (3, 4, 14, 3))
    """
    model, source = _load_onnx(model, allow_external_data)
    try:
        return _parse_onnx(model, source)
    except WeightsFileError:
        raise
    except (IndexError, KeyError, TypeError, AttributeError, ValueError, ArithmeticError) as err:
        raise WeightsFileError(f"{source}: malformed ONNX graph ({type(err).__name__}: {err}).", source) from None


def _parse_onnx(model, source):
    g = _OnnxGraph(model, source)
    parser = _Parser(g)
    x, normalization = parser.input_scaling()
    stem = g.next_node(x, "the stem Conv")
    if stem.op_type != "Conv":
        raise g.error(f"the image input feeds {stem}; expected the stem Conv of an IResNet or a MobileFaceNet.",
                      stem)
    stride = tuple(stem.attr("strides", [1, 1]))
    if stride == (1, 1):
        info = parser.iresnet(x, stem)
    elif stride == (2, 2):
        info = parser.mobilefacenet(x, stem)
    else:
        raise g.error(f"stem {stem} has strides {stride}: neither an IResNet (1) nor a MobileFaceNet (2).", stem)
    for key, value in parser.sd.items():
        if not np.all(np.isfinite(value)):
            raise WeightsFileError(f"{source}: {key} holds NaN or infinite values.", source)
    image_size = None
    dims = g.input.type.tensor_type.shape.dim
    if len(dims) == 4 and dims[2].dim_value and dims[3].dim_value:
        image_size = (int(dims[2].dim_value), int(dims[3].dim_value))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    info.update(image_size=image_size, fused_bn=parser.fused, normalization=normalization, opset=opset)
    return parser.sd, info


# ----------------------------------------------------------------------------- state dict -> Keras
def state_dict_architecture(state_dict):
    """``"iresnet"`` or ``"mobilefacenet"`` for an insightface state dict.

    Raises:
        WeightsFileError: neither layout (lists the first keys).

    Example::

        state_dict_architecture(read_torch_state_dict("w600k_mbf.pth"))    # 'mobilefacenet'
    """
    if "conv1.weight" in state_dict and "fc.weight" in state_dict and "layer1.0.conv1.weight" in state_dict:
        return "iresnet"
    if "layers.0.layers.0.weight" in state_dict and "features.layers.2.weight" in state_dict:
        return "mobilefacenet"
    keys = sorted(state_dict)[:6]
    raise WeightsFileError(
        "Not an insightface IResNet (conv1/layer*/fc) or MobileFaceNet (layers.*/conv_sep/features.layers.*) "
        f"state dict; {len(state_dict)} tensors, first keys: {keys}.")


def keras_layer_name(module):
    """insightface IResNet module path -> Keras layer name (``layer2.0.downsample.0`` ->
    ``stage2_block0_downsample_conv``)."""
    fixed = {"conv1": "stem_conv", "bn1": "stem_bn", "prelu": "stem_prelu",
             "bn2": "head_bn", "fc": "head_fc", "features": "head_features"}
    if module in fixed:
        return fixed[module]
    m = re.fullmatch(r"layer(\d+)\.(\d+)\.(.+)", module)
    if m is None:
        raise ValueError(f"Not an insightface IResNet module name: {module!r}.")
    rest = {"downsample.0": "downsample_conv", "downsample.1": "downsample_bn"}.get(m.group(3), m.group(3))
    return f"stage{m.group(1)}_block{m.group(2)}_{rest}"


_MBF_UNITS = ("expand", "dw", "project")
_MBF_KINDS = ("conv", "bn", "prelu")


def mobilefacenet_keras_layer_name(module):
    """insightface MobileFaceNet module path -> Keras layer name (``layers.3.layers.1.layers.1.layers.0``
    -> ``stage2_block1_dw_conv``; the table is in ``backbones/mobilefacenet.py``)."""
    def kind(m):
        return _MBF_KINDS[int(m)]

    fixed = {"features.layers.0.layers.0": "head_gdc_conv", "features.layers.0.layers.1": "head_gdc_bn",
             "features.layers.2": "head_fc", "features.layers.3": "head_features"}
    if module in fixed:
        return fixed[module]
    if m := re.fullmatch(r"layers\.([01])\.layers\.([012])", module):
        return f"{'stem' if m.group(1) == '0' else 'stage1'}_{kind(m.group(2))}"
    if m := re.fullmatch(r"conv_sep\.layers\.([012])", module):
        return f"sep_{kind(m.group(1))}"
    if m := re.fullmatch(r"layers\.([246])\.layers\.([012])\.layers\.([012])", module):
        return f"stage{int(m.group(1)) // 2 + 1}_downsample_{_MBF_UNITS[int(m.group(2))]}_{kind(m.group(3))}"
    if m := re.fullmatch(r"layers\.([1357])\.layers\.(\d+)\.layers\.([012])\.layers\.([012])", module):
        return (f"stage{(int(m.group(1)) + 1) // 2}_block{m.group(2)}_{_MBF_UNITS[int(m.group(3))]}_"
                f"{kind(m.group(4))}")
    raise ValueError(f"Not an insightface MobileFaceNet module name: {module!r}.")


def iresnet_config_from_state_dict(state_dict, image_size=None):
    """IResNet constructor arguments inferred from an insightface state dict.

    Args:
        state_dict: ``{name: array}`` with insightface names.
        image_size: `(H, W)`; default: inferred from ``fc.weight`` (16x the final map side).

    Returns:
        kwargs for `keras_facemargin.backbones.IResNet`.

    Example::

        IResNet(**iresnet_config_from_state_dict(sd))
    """
    from keras_facemargin.backbones.iresnet import IRESNET_STAGE_BLOCKS

    if "conv1.weight" not in state_dict or "fc.weight" not in state_dict:
        mbf = any(k.startswith(("layers.0.layers.", "conv_sep.", "features.layers.")) for k in state_dict)
        hint = (" It looks like a MobileFaceNet state dict: use mobilefacenet_from_state_dict or "
                "convert_insightface." if mbf else "")
        raise WeightsFileError("Not an insightface IResNet state dict (no conv1.weight / fc.weight); "
                               f"first keys: {sorted(state_dict)[:6]}.{hint}")
    blocks = []
    for s in range(1, 5):
        ids = {int(m.group(1)) for k in state_dict if (m := re.match(rf"layer{s}\.(\d+)\.", k))}
        if not ids:
            raise WeightsFileError(f"IResNet state dict has no layer{s}.* weights.")
        blocks.append(max(ids) + 1)
    filters = tuple(int(state_dict[f"layer{s}.0.conv1.weight"].shape[0]) for s in range(1, 5))
    emb, fc_in = state_dict["fc.weight"].shape
    if image_size is None:
        side = int(round(np.sqrt(fc_in / filters[-1])))
        if side * side * filters[-1] != fc_in:
            raise WeightsFileError(f"fc.weight has {fc_in} inputs, not a square map of {filters[-1]} channels; "
                                   "pass image_size.")
        image_size = (16 * side, 16 * side)
    depth = next((d for d, b in IRESNET_STAGE_BLOCKS.items() if tuple(b) == tuple(blocks)), None)
    return {"depth": depth or 50, "stage_blocks": None if depth else tuple(blocks),
            "stage_filters": filters, "embedding_dim": int(emb),
            "image_shape": (int(image_size[0]), int(image_size[1]), 3),
            **({} if depth else {"name": "iresnet_custom"})}


def mobilefacenet_config_from_state_dict(state_dict, image_size=None):
    """MobileFaceNet constructor arguments inferred from an insightface state dict.

    insightface's ``get_mbf`` (``scale=2, blocks=(1, 4, 6, 2)``), ``get_mbf_large``
    (``scale=4, blocks=(2, 8, 12, 4)``) and any other ``scale``/``blocks``/``num_features``.

    Args:
        state_dict: ``{name: array}`` with insightface names.
        image_size: `(H, W)`; default: 16x the GDC kernel (112x112 for insightface's 7x7).

    Returns:
        kwargs for `keras_facemargin.backbones.MobileFaceNet`.

    Example::

        MobileFaceNet(**mobilefacenet_config_from_state_dict(sd))   # {'blocks': (1, 4, 6, 2), 'scale': 2, ...}
    """
    for key in ("layers.0.layers.0.weight", "features.layers.0.layers.0.weight", "features.layers.2.weight"):
        if key not in state_dict:
            raise WeightsFileError(f"Not an insightface MobileFaceNet state dict: no {key!r}; first keys: "
                                   f"{sorted(state_dict)[:6]}.")
    c1 = int(state_dict["layers.0.layers.0.weight"].shape[0])
    if c1 % 64:
        raise WeightsFileError(f"layers.0.layers.0.weight has {c1} filters, not 64 * scale.")

    def count(layer):
        return len({int(m.group(1)) for k in state_dict if (m := re.match(rf"layers\.{layer}\.layers\.(\d+)\.layers\.", k))})

    blocks = (1 if "layers.1.layers.0.weight" in state_dict else count(1), count(3), count(5), count(7))
    if 0 in blocks:
        raise WeightsFileError(f"MobileFaceNet state dict with an empty stage: blocks {blocks}.")
    kh, kw = state_dict["features.layers.0.layers.0.weight"].shape[2:]
    if image_size is None:
        image_size = (16 * int(kh), 16 * int(kw))
    return {"blocks": blocks, "scale": c1 // 64,
            "embedding_dim": int(state_dict["features.layers.2.weight"].shape[0]),
            "image_shape": (int(image_size[0]), int(image_size[1]), 3)}


def _load_state_dict(model, state_dict, layer_name):
    import keras

    from keras_facemargin.backbones.mobilefacenet import GroupedConv2D

    sd = {k: np.asarray(v) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    modules = sorted({k.rsplit(".", 1)[0] for k in sd})
    used, assigned = set(), set()
    h, w = model.get_layer("head_flatten").input.shape[1:3]
    for module in modules:
        try:
            name = layer_name(module)
            layer = model.get_layer(name)
        except ValueError:
            raise WeightsFileError(f"State dict module {module!r} has no Keras layer in {model.name}.") from None

        def take(suffix):
            key = f"{module}.{suffix}"
            if key not in sd:
                raise WeightsFileError(f"State dict is missing {key!r} (for Keras layer {name!r}).")
            used.add(key)
            return sd[key]

        def put(var, value, key):
            if tuple(var.shape) != tuple(value.shape):
                raise WeightsFileError(f"{key}: shape {value.shape} after conversion does not fit Keras "
                                       f"{var.path} {tuple(var.shape)}.")
            var.assign(value.astype(var.dtype))

        if isinstance(layer, keras.layers.DepthwiseConv2D):
            put(layer.kernel, take("weight").transpose(2, 3, 0, 1), f"{module}.weight")
        elif isinstance(layer, (keras.layers.Conv2D, GroupedConv2D)):
            put(layer.kernel, take("weight").transpose(2, 3, 1, 0), f"{module}.weight")
        elif isinstance(layer, keras.layers.PReLU):
            put(layer.alpha, take("weight").reshape(1, 1, -1), f"{module}.weight")
        elif isinstance(layer, keras.layers.Dense):
            wt = take("weight")
            d, n = wt.shape
            c = n // (h * w)
            if c * h * w != n:
                raise WeightsFileError(f"{module}.weight has {n} inputs; the Keras head flattens {h}x{w}x? maps.")
            put(layer.kernel, wt.reshape(d, c, h, w).transpose(2, 3, 1, 0).reshape(n, d), f"{module}.weight")
            if layer.use_bias:
                put(layer.bias, take("bias"), f"{module}.bias")
            elif f"{module}.bias" in sd:
                raise WeightsFileError(f"{module}.bias: Keras {name!r} has no bias.")
        elif isinstance(layer, keras.layers.BatchNormalization):
            gamma = sd.get(f"{module}.weight")
            used.add(f"{module}.weight")
            beta, mean, var = take("bias"), take("running_mean"), take("running_var")
            if layer.scale:
                put(layer.gamma, gamma if gamma is not None else np.ones_like(beta), f"{module}.weight")
            elif gamma is not None and not np.allclose(gamma, 1.0):
                if np.any(gamma <= 0):
                    raise WeightsFileError(f"{module}.weight has non-positive values; Keras {name!r} has no gamma.")
                var = (var + BN_EPSILON) / gamma.astype(np.float64) ** 2 - BN_EPSILON  # exact fold
            put(layer.beta, beta, f"{module}.bias")
            put(layer.moving_mean, mean, f"{module}.running_mean")
            put(layer.moving_variance, np.asarray(var), f"{module}.running_var")
        else:
            raise WeightsFileError(f"Unexpected Keras layer type {type(layer).__name__} for {module!r}.")
        assigned.add(name)
    unused = sorted(set(sd) - used)
    missing = sorted(l.name for l in model.layers if l.weights and l.name not in assigned)
    if unused or missing:
        raise WeightsFileError(f"State dict does not match {model.name}: unused entries {unused[:5]}, "
                               f"Keras layers without weights {missing[:5]}.")
    return len(assigned)


def load_iresnet_state_dict(model, state_dict):
    """Assign an insightface state dict to a Keras `IResNet` (one tensor group per layer).

    Every weighted Keras layer must receive weights and every state-dict entry must be used
    (``num_batches_tracked`` is ignored), otherwise a `WeightsFileError` names the missing/unused ones.

    Returns:
        The number of Keras layers assigned.

    Example::

        load_iresnet_state_dict(IResNet(depth=50), read_torch_state_dict("backbone.pth"))
    """
    return _load_state_dict(model, state_dict, keras_layer_name)


def load_mobilefacenet_state_dict(model, state_dict):
    """Assign an insightface MobileFaceNet state dict to a Keras `MobileFaceNet` (same checks as
    `load_iresnet_state_dict`).

    Returns:
        The number of Keras layers assigned.

    Example::

        load_mobilefacenet_state_dict(MobileFaceNet(), read_torch_state_dict("w600k_mbf.pth"))
    """
    return _load_state_dict(model, state_dict, mobilefacenet_keras_layer_name)


def iresnet_from_state_dict(state_dict, image_size=None):
    """Build a Keras `IResNet` matching an insightface state dict and load it.

    Example::

        backbone = iresnet_from_state_dict(read_torch_state_dict("backbone.pth"))
    """
    from keras_facemargin.backbones.iresnet import IResNet

    model = IResNet(**iresnet_config_from_state_dict(state_dict, image_size))
    load_iresnet_state_dict(model, state_dict)
    return model


def mobilefacenet_from_state_dict(state_dict, image_size=None):
    """Build a Keras `MobileFaceNet` matching an insightface state dict and load it.

    Example::

        backbone = mobilefacenet_from_state_dict(read_torch_state_dict("w600k_mbf.pth"))
    """
    from keras_facemargin.backbones.mobilefacenet import MobileFaceNet

    model = MobileFaceNet(**mobilefacenet_config_from_state_dict(state_dict, image_size))
    load_mobilefacenet_state_dict(model, state_dict)
    return model


def backbone_from_state_dict(state_dict, image_size=None):
    """A Keras `IResNet` or `MobileFaceNet` for an insightface state dict of either (detected).

    Example::

        backbone = backbone_from_state_dict(read_torch_state_dict("model.pt"))
    """
    if state_dict_architecture(state_dict) == "mobilefacenet":
        return mobilefacenet_from_state_dict(state_dict, image_size)
    return iresnet_from_state_dict(state_dict, image_size)


def convert_insightface(path, image_size=None, allow_external_data=False, return_info=False):
    """Convert an insightface IResNet / MobileFaceNet ``.onnx`` or ``.pth`` file to a Keras backbone.

    Args:
        path: ``.onnx`` (e.g. ``w600k_r50.onnx``, ``w600k_mbf.onnx``) or ``.pth``/``.pt``
            (``backbone.pth``, ``model.pt``, arcface_torch's ``checkpoint_gpu_0.pt``).
        image_size: `(H, W)` override (default: from the ONNX input or the weights' shapes).
        allow_external_data: read an ONNX model's external weights (``.onnx.data``) from the model
            file's folder; refused by default (`ExternalDataError`).
        return_info: also return a dict: ``arch``, ``source`` (``"onnx"``/``"pth"``),
            ``normalization`` (``{"mean", "std"}`` the model expects: the graph's own input scaling
            when it has one, else arcface_torch's ``INSIGHTFACE_NORMALIZATION``; which one is in
            ``normalization_source``: ``"graph"`` / ``"insightface default"``), ``notes`` (e.g.
            the ignored PartialFC weights of a training checkpoint) and the reader's details.

    Returns:
        A Keras `IResNet` or `MobileFaceNet` (raw embeddings; wrap with
        `keras_facemargin.export.as_embedder` for L2-normalised ones) taking NHWC float images,
        or ``(backbone, info)`` with ``return_info=True``.

    Raises:
        FileNotFoundError: no such file.
        WeightsFileError (a ValueError): the file is not a convertible insightface model (names the
            file and the node or tensor that does not fit); `ExternalDataError` for external data.

    Example::

        backbone, info = convert_insightface("w600k_mbf.onnx", return_info=True)
        x = (images - info["normalization"]["mean"]) / info["normalization"]["std"]
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"insightface weights not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        sd, info = onnx_to_state_dict(path, allow_external_data=allow_external_data)
        image_size = image_size or info["image_size"]
        info = dict(info, source="onnx", notes=[])
    elif suffix in (".pth", ".pt"):
        sd, read = read_torch_checkpoint(path)
        info = {"arch": state_dict_architecture(sd), "source": "pth", "normalization": None,
                "notes": read["notes"], "checkpoint_key": read["key"]}
    else:
        raise WeightsFileError(f"Expected an insightface .onnx or .pth file, got {path}.", str(path))
    info["normalization_source"] = "graph" if info["normalization"] is not None else "insightface default"
    if info["normalization"] is None:
        info["normalization"] = dict(INSIGHTFACE_NORMALIZATION)
    try:
        backbone = (mobilefacenet_from_state_dict if info["arch"] == "mobilefacenet"
                    else iresnet_from_state_dict)(sd, image_size)
    except WeightsFileError as err:
        raise WeightsFileError(f"{path}: {err}", str(path)) from None
    return (backbone, info) if return_info else backbone
