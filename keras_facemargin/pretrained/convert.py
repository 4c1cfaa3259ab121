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
``torch.*Storage`` type markers, each resolved to a validating stand-in (`PTH_PICKLE_ALLOWLIST`,
documented in `read_torch_checkpoint`); nothing else in the pickle can run, a tensor whose
size/stride/offset would reach outside its storage or that is stride-0 / overlapping is refused,
zip entries are size- and ratio-capped before they are inflated, and only the tensors of the
state dict that is used are read from the archive.

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

Both readers treat their file as untrusted: whatever the bytes, they raise only ``OSError``
(missing / unreadable file) or a `WeightsFileError` (a
:class:`keras_facemargin.errors.WeightsFileError`, so an ``UntrustedFileError`` and a
``ValueError``) naming the file, within caps that are keyword arguments (`read_torch_checkpoint`:
``max_entry_bytes``, ``max_ratio``, ``max_total_bytes``; `onnx_to_state_dict`: ``max_nodes``,
``max_folded_bytes``). `read_insightface` also validates the architecture the file describes
before `convert_insightface` builds it.

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
import io
import os
import pickle
import re
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from keras_facemargin import errors as _errors
from keras_facemargin.backbones.embedding_head import BN_EPSILON

__all__ = ["WeightsFileError", "ExternalDataError", "UnsafeWeightsError", "PTH_PICKLE_ALLOWLIST",
           "INSIGHTFACE_NORMALIZATION", "ONNX_MAX_NODES", "PTH_MAX_RATIO", "read_torch_state_dict",
           "read_torch_checkpoint", "write_torch_state_dict", "onnx_to_state_dict", "state_dict_architecture",
           "iresnet_config_from_state_dict", "load_iresnet_state_dict", "iresnet_from_state_dict",
           "mobilefacenet_config_from_state_dict", "load_mobilefacenet_state_dict", "mobilefacenet_from_state_dict",
           "backbone_from_state_dict", "read_insightface", "convert_insightface", "keras_layer_name",
           "mobilefacenet_keras_layer_name"]

#: arcface_torch's input normalisation, ``(x - 127.5) / 127.5`` (``Normalize(mean=0.5, std=0.5)``).
INSIGHTFACE_NORMALIZATION = {"mean": 127.5, "std": 127.5}


class WeightsFileError(_errors.WeightsFileError):
    """A weights file (``.pth``/``.onnx``) that cannot be converted, or is malformed or over a limit.

    A :class:`keras_facemargin.errors.WeightsFileError` (so an
    :class:`~keras_facemargin.errors.UntrustedFileError` and a ``ValueError``). The message names
    the file and, for ONNX graphs, the node that does not fit; ``.source`` / ``.file`` hold the
    file (``"<state dict>"`` for an in-memory state dict), ``.node`` the ONNX node name (or None)
    and ``.where`` the node, archive entry or tensor.

    Args:
        message: the full message (starting with the file name when there is one).
        source: the file (or ``"<onnx.ModelProto>"``).
        node: the ONNX node's name.
        where: archive entry / tensor name (defaults to ``node 'name'``).
    """

    def __init__(self, message, source=None, node=None, where=None):
        message = str(message)
        self.source = None if source is None else str(source)
        self.node = node
        file = self.source if self.source is not None else "<state dict>"
        detail = message[len(file) + 2:] if message.startswith(file + ": ") else message
        if where is None and node is not None:
            where = f"node {node!r}"
        _errors.WeightsFileError.__init__(self, file, detail, where)
        self.args = (message,)


class ExternalDataError(WeightsFileError):
    """An ONNX model keeps weights in external files and the caller did not allow reading them, or
    an external location is unsafe (outside the model's folder, missing, or too short)."""


class UnsafeWeightsError(WeightsFileError, pickle.UnpicklingError):
    """The pickle of a ``.pth`` names a global or opcode the restricted reader does not admit, or a
    tensor view that is out of its storage's bounds, stride-0 or overlapping (never executed or
    allocated). A :class:`WeightsFileError` and a ``pickle.UnpicklingError``."""


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

#: Default caps of `read_torch_checkpoint` (see there): compression ratio of a deflated entry, and
#: the multiples of the file size allowed for one entry and for all bytes read / returned.
PTH_MAX_RATIO = 16.0
_ENTRY_FILE_MULTIPLE, _TOTAL_FILE_MULTIPLE = 2, 4
_MIN_ENTRY_BYTES, _MIN_TOTAL_BYTES = 1 << 20, 4 << 20
_RATIO_FREE_BYTES = 1 << 20  # entries up to this size are not ratio-checked (they cannot bomb)
_MAX_TENSOR_NDIM = 16
_MAX_INDEX = 1 << 62  # sizes, strides, offsets and element counts must be below this
_MAX_PICKLE_INT = 1 << 64
_CHUNK = 1 << 20

# Opcodes a torch.save pickle never needs: class instantiation, the extension registry,
# out-of-band buffers, sets, and text persistent ids (torch writes BINPERSID).
_PTH_REFUSED_OPCODES = frozenset(["INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4", "NEXT_BUFFER",
                                  "READONLY_BUFFER", "EMPTY_SET", "ADDITEMS", "FROZENSET", "PERSID"])


class _Refused(Exception):
    """Raised inside the .pth reader; re-raised as UnsafeWeightsError / WeightsFileError naming the file."""

    def __init__(self, message, unsafe=True, where=None):
        super().__init__(message)
        self.unsafe, self.where = unsafe, where


class _StorageType:
    """Marker for ``torch.<X>Storage`` in a persistent id (never called)."""

    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"torch.{self.name}"


def _short(value, limit=120):
    """A bounded, never-failing repr of a value from the file (huge ints, deep nesting, long strings)."""
    import reprlib

    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<int of {value.bit_length()} bits>"
    try:
        r = reprlib.Repr()
        r.maxlevel, r.maxstring, r.maxother, r.maxlong = 3, limit, limit, 40
        text = r.repr(value)
    except Exception:  # noqa: BLE001 - a repr must not fail the error message
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


def _plain(value, limit=80):
    """A string from the file, unquoted, with control characters escaped and its length bounded."""
    if not isinstance(value, str):
        return _short(value, limit)
    text = repr(value[:limit])[1:-1]
    return text + ("..." if len(value) > limit else "")


def _as_index_tuple(values, what):
    if not isinstance(values, (tuple, list)):
        raise _Refused(f"tensor {what} is a {type(values).__name__}, not a tuple.")
    if len(values) > _MAX_TENSOR_NDIM:
        raise _Refused(f"tensor {what} has {len(values)} dimensions (at most {_MAX_TENSOR_NDIM} are read).")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise _Refused(f"tensor {what} {_short(tuple(values))} holds a non-integer {_short(v)}.")
        if v < 0:
            raise _Refused(f"tensor {what} {_short(tuple(values))} is negative.")
        if v >= _MAX_INDEX:
            raise _Refused(f"tensor {what} {_short(tuple(values))} holds {_short(v)}, above 2**62.")
        out.append(int(v))
    return tuple(out)


def _check_view(numel, storage_offset, size, stride):
    """Validated ``(offset, size, stride)`` of a tensor view on a storage of `numel` elements.

    Refused: a view reaching outside the storage, and a view with more elements than the storage
    span it covers (stride 0 or overlapping: a few storage bytes would expand to any size).
    """
    if isinstance(storage_offset, bool) or not isinstance(storage_offset, (int, np.integer)) or storage_offset < 0 \
            or storage_offset >= _MAX_INDEX:
        raise _Refused(f"tensor storage offset {_short(storage_offset)} is not an integer >= 0.")
    storage_offset = int(storage_offset)
    size, stride = _as_index_tuple(size, "size"), _as_index_tuple(stride, "stride")
    if len(size) != len(stride):
        raise _Refused(f"tensor size {size} and stride {stride} differ in length.")
    if all(n > 0 for n in size):  # a non-empty view: its last element must lie in the storage
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= numel:
            raise _Refused(
                f"tensor of size {size}, stride {stride}, offset {storage_offset} reaches element {last} "
                f"of a storage of {numel} elements (corrupt or crafted file).")
        count, span = 1, last - storage_offset + 1
        for n in size:
            count *= n
        if count > span:
            raise _Refused(
                f"tensor of size {size}, stride {stride} has {count} elements over a span of {span} storage "
                "elements: a stride-0 or overlapping view (expanded or crafted), refused before allocating.")
    elif storage_offset > numel:
        raise _Refused(f"empty tensor at offset {storage_offset} of a storage of {numel} elements.")
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
    ``as_strided``, which does no bounds checking: they are validated first. (Also the global
    `write_torch_state_dict` pickles as ``torch._utils._rebuild_tensor_v2``.)
    """
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise pickle.UnpicklingError(f"tensor storage is a {type(storage).__name__}, not a storage.")
    try:
        storage_offset, size, stride = _check_view(storage.size, storage_offset, size, stride)
    except _Refused as e:
        raise pickle.UnpicklingError(str(e)) from None
    return _view(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *state):
    if not isinstance(data, (_LazyTensor, np.ndarray)):
        raise _Refused(f"torch._utils._rebuild_parameter of a {type(data).__name__}, not a tensor.")
    return data


def _ordered_dict(*args, **kwargs):
    """Stand-in for ``collections.OrderedDict``: only ``OrderedDict()`` (items come by SETITEMS,
    whose keys are checked; an OrderedDict built from an argument would hash arbitrary keys)."""
    if args or kwargs:
        raise _Refused("collections.OrderedDict called with arguments (torch.save pickles OrderedDict()).")
    return collections.OrderedDict()


class _PthArchive:
    """The zip archive of a ``torch.save`` file, with every entry checked and every read capped."""

    def __init__(self, fileobj, source, file_size, max_entry_bytes, max_ratio, max_total_bytes):
        self.source, self.max_entry_bytes, self.max_ratio = source, max_entry_bytes, max_ratio
        self.max_total_bytes, self.read_total = max_total_bytes, 0
        try:
            self.zip = zipfile.ZipFile(fileobj)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, OverflowError,
                NotImplementedError, UnicodeDecodeError, struct.error) as err:
            raise WeightsFileError(f"{source}: corrupt zip archive ({type(err).__name__}: {err}).", source) from None
        infos = self.zip.infolist()
        self.infos = {}
        for info in infos:
            name = info.filename
            if name in self.infos:
                raise WeightsFileError(f"{source}: archive entry {_short(name)} appears twice.", source, where=name)
            self.infos[name] = info
            if info.flag_bits & 0x1:
                raise WeightsFileError(f"{source}: archive entry {_short(name)} is encrypted (torch.save never "
                                       "encrypts).", source, where=name)
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise WeightsFileError(f"{source}: archive entry {_short(name)} uses compression method "
                                       f"{info.compress_type}; only stored (0) and deflate (8) entries are read.",
                                       source, where=name)
        end = min(getattr(self.zip, "start_dir", file_size), file_size)
        order = sorted(infos, key=lambda i: i.header_offset)
        for a, b in zip(order, order[1:] + [None]):
            stop = a.header_offset + 30 + a.compress_size  # local header (without its name) + data
            limit = end if b is None else b.header_offset
            if a.header_offset < 0 or stop > limit:
                other = "the central directory" if b is None else f"entry {_short(b.filename)}"
                raise WeightsFileError(f"{source}: archive entry {_short(a.filename)} (offset {a.header_offset}, "
                                       f"{a.compress_size} bytes) overlaps {other} (overlapping entries: a zip "
                                       "bomb or a corrupt archive).", source, where=a.filename)

    def names(self):
        return list(self.infos)

    def read(self, name, what, limit=None):
        """The bytes of entry `name` (a bytearray), within the caps (`limit`: a smaller one)."""
        info = self.infos.get(name)
        if info is None:
            raise _Refused(f"{what} {_short(name)} is missing from the archive (truncated file?).", False, name)
        if limit is not None and info.file_size > limit:
            raise _Refused(f"{what} {_short(name)} holds {info.file_size:,} bytes, expected at most {limit}.", False,
                           name)
        if info.file_size > self.max_entry_bytes:
            raise _Refused(f"{what} {_short(name)} holds {info.file_size:,} bytes, above "
                           f"max_entry_bytes={self.max_entry_bytes:,} (pass a larger one to read it).", False, name)
        if info.compress_type == zipfile.ZIP_DEFLATED and info.file_size > _RATIO_FREE_BYTES \
                and info.file_size > self.max_ratio * max(info.compress_size, 1):
            raise _Refused(f"{what} {_short(name)} inflates {info.compress_size:,} bytes to {info.file_size:,}, a "
                           f"ratio above max_ratio={self.max_ratio:g} (a deflate bomb?).", False, name)
        if self.read_total + info.file_size > self.max_total_bytes:
            raise _Refused(f"reading {what} {_short(name)} ({info.file_size:,} bytes) would take the bytes read "
                           f"from the archive above max_total_bytes={self.max_total_bytes:,}.", False, name)
        buf = bytearray(info.file_size)
        got = 0
        try:
            with self.zip.open(info) as f:
                while got < info.file_size:
                    chunk = f.read(min(_CHUNK, info.file_size - got))
                    if not chunk:
                        break
                    buf[got:got + len(chunk)] = chunk
                    got += len(chunk)
                if got == info.file_size and f.read(1):  # reaches EOF (CRC check); never more than declared
                    raise _Refused(f"{what} {_short(name)} holds more data than its declared size.", False, name)
        except _Refused:
            raise
        except (zipfile.BadZipFile, EOFError, OSError, zlib.error, RuntimeError, NotImplementedError, ValueError,
                OverflowError, struct.error) as err:
            raise _Refused(f"{what} {_short(name)} cannot be read ({type(err).__name__}: {err}).", False,
                           name) from None
        if got != info.file_size:
            raise _Refused(f"{what} {_short(name)} is truncated ({got:,} of {info.file_size:,} bytes).", False, name)
        self.read_total += got
        return buf


class _LazyStorage:
    """A storage of the archive, read only when a tensor of the used state dict needs it."""

    __slots__ = ("archive", "member", "dtype_name", "numel", "_array")

    def __init__(self, archive, member, dtype_name, numel):
        self.archive, self.member, self.dtype_name, self.numel = archive, member, dtype_name, numel
        self._array = None

    def array(self):
        if self._array is None:
            need = self.numel * _STORAGE_ITEMSIZE[self.dtype_name]
            info = self.archive.infos.get(self.member)
            if info is not None and info.file_size < need:
                raise _Refused(f"storage {_short(self.member)} has {info.file_size} bytes, expected {need} "
                               "(truncated file?).", False, self.member)
            raw = self.archive.read(self.member, "storage")
            dtype = _STORAGE_DTYPES[self.dtype_name]
            if dtype == "bfloat16":
                arr = (np.frombuffer(raw, "<u2", count=self.numel).astype(np.uint32) << 16).view(np.float32)
            else:
                arr = np.frombuffer(raw, np.dtype(dtype).newbyteorder("<"), count=self.numel)
                if dtype is np.bool_ and arr.size and arr.view(np.uint8).max() > 1:
                    raise _Refused(f"bool storage {_short(self.member)} holds bytes other than 0 and 1.", False,
                                   self.member)
            self._array = arr
        return self._array


class _LazyTensor:
    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    @property
    def numel(self):
        n = 1
        for s in self.size:
            n *= s
        return n

    @property
    def nbytes(self):
        """Bytes of the array returned for it (float16 / bfloat16 are widened to float32)."""
        item = _STORAGE_ITEMSIZE[self.storage.dtype_name]
        if self.storage.dtype_name in ("HalfStorage", "BFloat16Storage"):
            item = 4
        return self.numel * item

    def materialize(self):
        return _view(self.storage.array(), self.offset, self.size, self.stride)


def _prescan_pth_pickle(data, source):
    """Walk the opcodes before unpickling: refuse opcodes torch.save never writes, globals outside
    the allowlist and ints above 2**64 (all bounded by the pickle's size)."""
    import pickletools

    try:
        for op, arg, pos in pickletools.genops(data):
            name = op.name
            if name in _PTH_REFUSED_OPCODES:
                raise UnsafeWeightsError(f"{source}: pickle opcode {name} at byte {pos} is not admitted (a torch "
                                         "state dict holds only dicts, lists, tuples, numbers, strings and "
                                         "tensors).", source, where="data.pkl")
            if name == "GLOBAL":
                module, _, qualname = str(arg).partition(" ")
                if (module, qualname) not in _PTH_GLOBALS:
                    raise UnsafeWeightsError(
                        f"{source}: refusing to load {_plain(module)}.{_plain(qualname)}; only plain tensor "
                        "state dicts (OrderedDict of tensors) are read without torch.", source, where="data.pkl")
            elif isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) >= _MAX_PICKLE_INT:
                raise WeightsFileError(f"{source}: pickle integer {_short(arg)} at byte {pos} is above 2**64.",
                                       source, where="data.pkl")
            if name == "STOP":
                break
    except WeightsFileError:
        raise
    except Exception as e:  # noqa: BLE001 - pickletools raises ValueError and friends on junk
        raise WeightsFileError(f"{source}: data.pkl is not a readable pickle ({type(e).__name__}: {_short(str(e))}).",
                               source, where="data.pkl") from None


def _dict_key_ok(key):
    # str keys hash with a per-process secret; ints below 2**64 collide at most a few at a time.
    # Tuples, floats, frozensets... could be crafted to collide and make building the dict quadratic.
    return type(key) is str or (type(key) in (int, bool) and -_MAX_PICKLE_INT < key < _MAX_PICKLE_INT)


class _RestrictedUnpickler(pickle._Unpickler):
    """Pure-Python unpickler (its memo is a dict: no memo-index bombs) over the pre-scanned bytes,
    with the allowlisted globals resolved to stand-ins and dict keys, BUILD and REDUCE checked."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, data, archive, prefix, source):
        super().__init__(io.BytesIO(data))
        self._archive, self._prefix, self._source = archive, prefix, source
        self._storages = {}

    def find_class(self, module, name):
        if not isinstance(module, str) or not isinstance(name, str) or (module, name) not in _PTH_GLOBALS:
            raise _Refused(f"refusing to load {_plain(module)}.{_plain(name)}; only plain tensor state "
                           "dicts (OrderedDict of tensors) are read without torch.")
        target = _PTH_GLOBALS[(module, name)]
        return self._rebuild_tensor if target is _rebuild_tensor_v2 else target

    def _rebuild_tensor(self, storage, storage_offset, size, stride, *args, **kwargs):
        if not isinstance(storage, _LazyStorage):
            raise _Refused(f"tensor storage is a {type(storage).__name__}, not a storage.")
        offset, size, stride = _check_view(storage.numel, storage_offset, size, stride)
        return _LazyTensor(storage, offset, size, stride)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _Refused(f"unexpected persistent id {_short(pid)}.")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise _Refused(f"unsupported storage type {_short(storage_type)}.")
        if isinstance(numel, bool) or not isinstance(numel, int) or not 0 <= numel < _MAX_INDEX:
            raise _Refused(f"storage size {_short(numel)} is not an integer in [0, 2**62).")
        if not isinstance(key, str) or not key or len(key) > 256:
            raise _Refused(f"storage key {_short(key)} is not a short string.")
        if key not in self._storages:
            self._storages[key] = _LazyStorage(self._archive, f"{self._prefix}data/{key}", storage_type.name, numel)
        storage = self._storages[key]
        if storage.dtype_name != storage_type.name or storage.numel != numel:
            raise _Refused(f"storage {_short(key)} is declared twice, differently.")
        return storage

    def _set(self, target, key, value):
        if not isinstance(target, dict):
            raise _Refused(f"SETITEM on a {type(target).__name__}, not a dict.")
        if not _dict_key_ok(key):
            raise _Refused(f"dict key {_short(key)} of type {type(key).__name__}; a torch checkpoint's keys are "
                           "strings or integers.")
        target[key] = value

    def load_setitem(self):
        value = self.stack.pop()
        key = self.stack.pop()
        self._set(self.stack[-1], key, value)

    def load_setitems(self):
        items = self.pop_mark()
        target = self.stack[-1]
        for i in range(0, len(items) - 1, 2):
            self._set(target, items[i], items[i + 1])
        if len(items) % 2:
            raise _Refused("SETITEMS with an odd number of items.")

    def load_dict(self):
        items = self.pop_mark()
        out = {}
        for i in range(0, len(items) - 1, 2):
            self._set(out, items[i], items[i + 1])
        self.append(out)

    def load_build(self):
        state = self.stack.pop()
        if type(self.stack[-1]) is not collections.OrderedDict:  # its `_metadata` attribute: ignored
            raise _Refused(f"BUILD (setting the state) of a {type(self.stack[-1]).__name__}; only a state dict's "
                           f"OrderedDict carries a state, {_short(state)}.")

    def load_reduce(self):
        args = self.stack.pop()
        func = self.stack[-1]
        if not (func in _PTH_CALLABLES or func == self._rebuild_tensor) or type(args) is not tuple:
            raise _Refused(f"REDUCE of {_short(func)} with {type(args).__name__} arguments.")
        self.stack[-1] = func(*args)

    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.DICT[0]] = load_dict
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.REDUCE[0]] = load_reduce


#: The pickle globals a ``.pth`` may name, each resolved to a stand-in (see `read_torch_checkpoint`).
_PTH_GLOBALS = {("collections", "OrderedDict"): _ordered_dict,
                ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
                ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
                **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES}}
_PTH_CALLABLES = (_ordered_dict, _rebuild_parameter)
PTH_PICKLE_ALLOWLIST = tuple(sorted(f"{m}.{n}" for m, n in _PTH_GLOBALS))


def _tensor_dicts(obj):
    """Names of the entries of a checkpoint dict that are dicts holding tensors."""
    return [k for k, v in obj.items() if isinstance(v, dict) and any(isinstance(t, _LazyTensor) for t in v.values())]


def _describe(value):
    if isinstance(value, dict):
        tensors = [v for v in value.values() if isinstance(v, _LazyTensor)]
        shapes = ", ".join(f"{_plain(k, 60)} {tuple(v.size)}" for k, v in list(value.items())[:2]
                           if isinstance(v, _LazyTensor))
        return f"{len(tensors)} tensors ({shapes}{', ...' if len(tensors) > 2 else ''})" if tensors else "no tensors"
    return type(value).__name__


def _positive(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}.")
    return value


def read_torch_checkpoint(path, *, max_entry_bytes=None, max_ratio=PTH_MAX_RATIO, max_total_bytes=None):
    """Read the backbone state dict of a ``torch.save`` zip file into NumPy, without torch.

    Args:
        path: a ``.pth``/``.pt`` file holding a dict of tensors (``model.state_dict()``, e.g.
            arcface_torch's ``backbone.pth``/``model.pt``), or a checkpoint dict with a
            ``"state_dict_backbone"`` (arcface_torch's ``checkpoint_gpu_<rank>.pt``),
            ``"state_dict"``, ``"model_state_dict"``, ``"model"`` or ``"backbone"`` entry. A
            ``"module."`` (DistributedDataParallel) prefix is removed.
        max_entry_bytes: largest uncompressed size of one archive entry (the pickle, one
            storage). Default: twice the file's size, at least 1 MiB (``torch.save`` stores its
            entries uncompressed, so none is larger than the file).
        max_ratio: largest uncompressed / compressed size of a deflated entry above 1 MiB
            (default 16; float weights deflate by about 1.1).
        max_total_bytes: cap on the bytes read from the archive, and separately on the bytes of
            the returned arrays. Default: 4x the file's size, at least 4 MiB (float16 / bfloat16
            tensors are returned as float32, twice their size).

    Returns:
        ``(state_dict, info)``: ``dict`` name -> NumPy array (float32 for float16/bfloat16
        tensors) and ``{"key": checkpoint entry used or None, "ignored": [other entries],
        "notes": [str]}``. The tensors of ignored entries (PartialFC class centres, optimizer
        momentum) are never read from the archive.

    Raises:
        FileNotFoundError: no such file (``OSError``: unreadable).
        WeightsFileError: for any other problem, whatever the bytes (a
            :class:`keras_facemargin.errors.UntrustedFileError`, a ``ValueError``), naming the
            file and the entry / tensor: not a torch zip file (e.g. the legacy pre-1.6 format), a
            corrupt, encrypted or overlapping archive, a compression method other than stored /
            deflate, an entry over ``max_entry_bytes`` / ``max_ratio`` / ``max_total_bytes``, a
            truncated storage, a malformed pickle, duplicate tensor names, NaN / inf values, no
            state dict. `UnsafeWeightsError` (also a ``pickle.UnpicklingError``): the pickle
            names a global outside the allowlist or an opcode torch.save never writes (nothing is
            executed), or a tensor view reaching outside its storage, stride-0 or overlapping
            (refused before anything is allocated).

    **Pickle allowlist** (`PTH_PICKLE_ALLOWLIST`). ``data.pkl`` is first walked opcode by opcode
    (``pickletools``: refused are INST / OBJ / NEWOBJ / NEWOBJ_EX class instantiation, the EXT1-4
    extension registry, out-of-band buffers, sets and text persistent ids, and integers above
    2**64), then unpickled by the pure-Python unpickler (its memo is a dict, so a huge memo index
    allocates nothing). Every global resolves to a stand-in of this module, never to torch:

    * ``collections.OrderedDict``: ``Module.state_dict()`` is an OrderedDict, pickled as
      ``OrderedDict()`` plus SETITEMS (and a BUILD of its ``_metadata`` attribute, which is
      ignored; BUILD of anything else is refused). The stand-in takes no arguments: items come
      only by SETITEMS, whose keys must be strings or integers (crafted colliding keys, e.g.
      tuples of -1 / -2, would make building the dict quadratic).
    * ``torch._utils._rebuild_tensor_v2``: every tensor, ``(storage, offset, size, stride,
      requires_grad, backward_hooks[, metadata])``: a lazy view whose offset / size / stride are
      checked against the storage's declared element count (in bounds; no more elements than the
      storage span it covers) before anything is read.
    * ``torch._utils._rebuild_parameter``: an ``nn.Parameter`` (``state_dict(keep_vars=True)`` or
      parameters saved directly): returns its tensor.
    * ``torch.FloatStorage``, ``DoubleStorage``, ``HalfStorage``, ``BFloat16Storage``,
      ``LongStorage``, ``IntStorage``, ``ShortStorage``, ``CharStorage``, ``ByteStorage``,
      ``BoolStorage``: markers inside the persistent id ``("storage", type, key, location,
      numel)`` that give the dtype of the little-endian bytes in ``data/<key>``; never called.

    REDUCE may call only the stand-ins above; nothing else in the pickle can run.

    Example::

        sd, info = read_torch_checkpoint("work_dirs/ms1mv3_r50/checkpoint_gpu_0.pt")
        info["notes"]   # ["... 'state_dict_softmax_fc' (PartialFC class centres ...) ignored ..."]
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise FileNotFoundError(f"PyTorch weights not found: {path}")
    max_ratio = _positive(max_ratio, "max_ratio")
    with open(path, "rb") as f:  # OSError: unreadable
        file_size = os.fstat(f.fileno()).st_size
        entry_cap = _positive(max_entry_bytes, "max_entry_bytes") if max_entry_bytes is not None else \
            max(_MIN_ENTRY_BYTES, _ENTRY_FILE_MULTIPLE * file_size)
        total_cap = _positive(max_total_bytes, "max_total_bytes") if max_total_bytes is not None else \
            max(_MIN_TOTAL_BYTES, _TOTAL_FILE_MULTIPLE * file_size)
        try:
            if not zipfile.is_zipfile(f):
                raise WeightsFileError(f"{path} is not a torch zip archive (torch >= 1.6 `torch.save`); the legacy "
                                       "format is not read without torch: re-save it with torch >= 1.6.", source)
            f.seek(0)
            archive = _PthArchive(f, source, file_size, entry_cap, max_ratio, total_cap)
            return _read_torch_checkpoint(archive, path, total_cap)
        except WeightsFileError:
            raise
        except _Refused as err:
            cls = UnsafeWeightsError if err.unsafe else WeightsFileError
            raise cls(f"{source}: {err}", source, where=err.where) from None
        except (MemoryError, RecursionError) as err:
            raise WeightsFileError(f"{source}: reading the archive ran out of {type(err).__name__[:-5].lower()} "
                                   f"({_short(str(err))}).", source) from None
        except Exception as err:  # noqa: BLE001 - whatever the bytes, the error is typed and names the file
            raise WeightsFileError(f"{source}: corrupt or unsupported torch archive ({type(err).__name__}: "
                                   f"{_short(str(err), 300)}).", source) from None


def _read_torch_checkpoint(archive, path, total_cap):
    source = str(path)
    info = {"key": None, "ignored": [], "notes": []}
    pkl = [n for n in archive.names() if n.endswith("data.pkl")]
    if len(pkl) != 1:
        raise WeightsFileError(f"{path}: expected one */data.pkl in the archive, found {_short(pkl)}.", source)
    prefix = pkl[0][: -len("data.pkl")]
    byteorder = f"{prefix}byteorder"
    if byteorder in archive.infos and bytes(archive.read(byteorder, "entry", limit=64)).strip() != b"little":
        raise WeightsFileError(f"{path}: big-endian archives are not supported.", source, where=byteorder)
    data = bytes(archive.read(pkl[0], "pickle"))
    _prescan_pth_pickle(data, source)
    obj = _RestrictedUnpickler(data, archive, prefix, source).load()
    del data
    if isinstance(obj, dict) and not any(isinstance(v, _LazyTensor) for v in obj.values()):
        key = next((k for k in _STATE_DICT_KEYS if isinstance(obj.get(k), dict)), None)
        if key is None:
            candidates = _tensor_dicts(obj)
            raise WeightsFileError(
                f"{path}: a checkpoint dict without a backbone state dict (looked for {list(_STATE_DICT_KEYS)}); "
                f"entries holding tensors: {_short(candidates) if candidates else 'none'}; all entries: "
                f"{_short(sorted(map(str, obj))[:12], 400)}.", source)
        info["key"] = key
        info["ignored"] = [str(k) for k in obj if k != key]
        for k in obj:
            if k in _PARTIAL_FC_KEYS:
                info["notes"].append(
                    f"{path.name}: {k!r} ({_describe(obj[k])}: the PartialFC / margin-head class centres) "
                    "ignored: only the backbone is converted.")
        others = [str(k) for k in obj if k != key and k not in _PARTIAL_FC_KEYS]
        if others:
            info["notes"].append(f"{path.name}: backbone weights from {key!r}; also ignored: {_short(others, 400)}.")
        obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsFileError(f"{path} holds a {type(obj).__name__}, not a state dict.", source)
    tensors = {}
    for name, value in obj.items():
        if not isinstance(value, _LazyTensor):
            continue
        name = str(name)
        name = name[len("module."):] if name.startswith("module.") else name
        if name in tensors:
            raise WeightsFileError(f"{path}: tensor {_short(name)} appears twice (with and without 'module.'?).",
                                   source, where=name)
        tensors[name] = value
    need = sum(t.nbytes for t in tensors.values())
    if need > total_cap:
        raise WeightsFileError(f"{path}: the state dict's {len(tensors)} tensors take {need:,} bytes, above "
                               f"max_total_bytes={total_cap:,} (a crafted file, or pass a larger cap).", source)
    out = {}
    for name, value in tensors.items():
        try:
            arr = value.materialize()
        except _Refused as err:
            raise WeightsFileError(f"{path}: tensor {_short(name)}: {err}", source, where=err.where or name) from None
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float32, copy=False)
            if not np.isfinite(arr).all():
                raise WeightsFileError(f"{path}: tensor {_short(name)} holds NaN or infinite values.", source,
                                       where=name)
        out[name] = arr
    return out, info


def read_torch_state_dict(path, **limits):
    """Read a PyTorch state dict saved with ``torch.save`` (zip format) into NumPy, without torch.

    The state-dict part of `read_torch_checkpoint` (see there for the accepted layouts, including
    arcface_torch's ``checkpoint_gpu_<rank>.pt``, the caps and the pickle allowlist).

    Args:
        path: a ``.pth``/``.pt`` file.
        **limits: ``max_entry_bytes``, ``max_ratio``, ``max_total_bytes`` of `read_torch_checkpoint`.

    Returns:
        ``dict`` name -> NumPy array (float32 for float16/bfloat16 tensors).

    Raises:
        FileNotFoundError: no such file.
        WeightsFileError: anything else (see `read_torch_checkpoint`); `UnsafeWeightsError` (also a
            ``pickle.UnpicklingError``) for a refused global / opcode or an out-of-bounds,
            stride-0 or overlapping tensor view.

    Example::

        sd = read_torch_state_dict("ms1mv3_arcface_r50/backbone.pth")
        sd["conv1.weight"].shape       # (64, 3, 3, 3)
    """
    return read_torch_checkpoint(path, **limits)[0]


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
# TensorProto data types a weight or shape constant may have (no strings, complex, float8, int4).
_ONNX_DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
                9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64, 16: "bfloat16"}
_ONNX_MAX_DIMS = 8
#: Default caps of `onnx_to_state_dict`: nodes (after inlining local functions) and bytes of the
#: constants made by folding (a multiple of the model's size plus a fixed slack).
ONNX_MAX_NODES = 100_000
_FOLDED_FILE_MULTIPLE, _MIN_FOLDED_BYTES = 4, 64 << 20
_MAX_IMAGE_SIDE = 4096


def _onnx_location(tensor):
    return {e.key: e.value for e in tensor.external_data}


def _model_tensors(model):
    """Every TensorProto of the main graph that can hold weights (initializers, Constant values)."""
    out = list(model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            out += [a.t for a in node.attribute if a.name == "value" and a.HasField("t")]
    return out


def _graph_nodes(model):
    """Every NodeProto of the model: main graph, subgraphs of attributes, local functions (iterative)."""
    graphs, out = [model.graph], []
    for f in model.functions:
        out.extend(f.node)
        graphs += [a.g for n in f.node for a in n.attribute if a.HasField("g")]
        graphs += [g for n in f.node for a in n.attribute for g in a.graphs]
    while graphs:
        g = graphs.pop()
        for n in g.node:
            out.append(n)
            for a in n.attribute:
                if a.HasField("g"):
                    graphs.append(a.g)
                graphs.extend(a.graphs)
    return out


def _all_tensors(model):
    """``(tensor, in_main)`` for every TensorProto anywhere in the model: initializers, sparse
    ones, attributes of every node of every (sub)graph and local function. ``in_main``: an
    initializer or a Constant value of the main graph (the tensors external data may fill)."""
    out = []
    graphs = [(model.graph, True)]
    nodes = [(n, False) for f in model.functions for n in f.node]
    while graphs or nodes:
        if graphs:
            g, main = graphs.pop()
            out += [(t, main) for t in g.initializer]
            for s in g.sparse_initializer:
                out += [(s.values, False), (s.indices, False)]
            nodes += [(n, main) for n in g.node]
            continue
        n, main = nodes.pop()
        for a in n.attribute:
            if a.HasField("t"):
                out.append((a.t, main and n.op_type == "Constant" and a.name == "value"))
            out += [(t, False) for t in a.tensors]
            if a.HasField("sparse_tensor"):
                out += [(a.sparse_tensor.values, False), (a.sparse_tensor.indices, False)]
            for s in a.sparse_tensors:
                out += [(s.values, False), (s.indices, False)]
            if a.HasField("g"):
                graphs.append((a.g, False))
            graphs += [(g, False) for g in a.graphs]
    return out


def _dims_bytes(tensor, what, source):
    """``(dims, element count, bytes)`` of a TensorProto, validated (no data is looked at)."""
    dtype = _ONNX_DTYPES.get(tensor.data_type)
    if dtype is None:
        raise WeightsFileError(f"{source}: {what} has data type {tensor.data_type}; weights and shape constants "
                               f"are one of {sorted(_ONNX_DTYPES)}.", source)
    dims = [int(d) for d in tensor.dims]
    if len(dims) > _ONNX_MAX_DIMS or any(d < 0 for d in dims):
        raise WeightsFileError(f"{source}: {what} has dims {_short(dims)}; expected at most {_ONNX_MAX_DIMS} sizes "
                               ">= 0.", source)
    n = 1
    for d in dims:
        n *= d
    return dims, n, n * (2 if dtype == "bfloat16" else np.dtype(dtype).itemsize)


def _read_external_data(model, path):
    """Fill the external tensors of `model` from files inside `path`'s folder (validated first).

    Returns:
        the number of bytes read.
    """
    from onnx import TensorProto

    base = path.parent.resolve()
    source = str(path)
    plan, sizes = [], {}
    for tensor in _model_tensors(model):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        loc = _onnx_location(tensor)
        where = loc.get("location", "")
        name = _short(tensor.name, 80)
        rel = Path(where)
        if not where or "\0" in where or rel.is_absolute() or ".." in rel.parts:
            target = None
        else:
            target = (base / rel).resolve()
        if target is None or base not in (target, *target.parents):
            raise ExternalDataError(f"{path}: tensor {name} points to external data {_short(where)}, outside "
                                    f"the model's folder {base}; refused.", source)
        if not target.is_file():
            raise ExternalDataError(f"{path}: external data file {_short(where)} of tensor {name} not found "
                                    f"in {base}.", source)
        try:
            offset, length = int(loc.get("offset", 0)), loc.get("length")
            length = None if length is None else int(length)
        except ValueError:
            raise ExternalDataError(f"{path}: tensor {name} has a non-integer external offset/length "
                                    f"{_short(loc)}.", source) from None
        dims, _, need = _dims_bytes(tensor, f"tensor {name}", source)
        size = sizes.setdefault(target, target.stat().st_size)
        if offset < 0 or (length is not None and length != need) or offset + need > size:
            raise ExternalDataError(f"{path}: tensor {name} {tuple(dims)} needs {need} bytes at "
                                    f"offset {offset} of {_short(where)} (length {length}, file size {size}).",
                                    source)
        plan.append((tensor, target, offset, need))
    total, budget = sum(p[3] for p in plan), sum(sizes.values())
    if total > budget:  # tensors sharing bytes: onnx.save never writes overlapping ranges
        raise ExternalDataError(f"{path}: external tensors take {total:,} bytes from data files of {budget:,} bytes "
                                "(overlapping ranges: corrupt or crafted).", source)
    for tensor, target, offset, need in plan:
        with open(target, "rb") as f:
            f.seek(offset)
            tensor.raw_data = f.read(need)
        tensor.data_location = TensorProto.DEFAULT
        del tensor.external_data[:]
    return total


def _function_expansion(model, source, max_nodes):
    """Node count of the main graph once its local functions are inlined (refusing cycles and
    counts above `max_nodes` before the inliner runs)."""
    funcs = {(f.domain, f.name, getattr(f, "overload", "")): f for f in model.functions}
    size, state = {}, {}

    def key(n):
        return (n.domain, n.op_type, getattr(n, "overload", ""))

    for root in funcs:
        stack = [root]
        while stack:
            k = stack[-1]
            if k in size:
                stack.pop()
                continue
            if state.get(k) == "open":
                callees = [key(n) for n in funcs[k].node if key(n) in funcs]
                pending = [c for c in callees if c not in size]
                if pending:
                    raise WeightsFileError(f"{source}: local function {_short(k[1])} calls itself (a cycle).",
                                           source)
                size[k] = sum(size[key(n)] if key(n) in funcs else 1 for n in funcs[k].node)
                if size[k] > max_nodes:
                    raise WeightsFileError(f"{source}: local function {_short(k[1])} expands to {size[k]:,} nodes, "
                                           f"above max_nodes={max_nodes:,}.", source)
                stack.pop()
                continue
            state[k] = "open"
            for n in funcs[k].node:
                c = key(n)
                if c in funcs and c not in size:
                    if state.get(c) == "open":
                        raise WeightsFileError(f"{source}: local function {_short(c[1])} calls itself (a cycle).",
                                               source)
                    stack.append(c)
    return sum(size.get(key(n), 1) for n in model.graph.node)


def _load_onnx(model, allow_external_data, max_nodes):
    """``(model, source, model_bytes)``; the model's external data read only when allowed."""
    import onnx

    if isinstance(model, onnx.ModelProto):
        source, path = "<onnx.ModelProto>", None
        model_bytes = model.ByteSize()
    else:
        path = Path(model)
        source = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {source}")
        model_bytes = path.stat().st_size
        try:
            model = onnx.load(source, load_external_data=False)  # never read relative to the cwd
        except OSError:
            raise
        except Exception as err:  # DecodeError, ValidationError, ...
            raise WeightsFileError(f"{source}: not a readable ONNX model ({type(err).__name__}: "
                                   f"{_short(str(err), 300)}).", source) from None
    nodes = _graph_nodes(model)
    if len(nodes) > max_nodes:
        raise WeightsFileError(f"{source}: {len(nodes):,} nodes, above max_nodes={max_nodes:,} (IResNet / "
                               "MobileFaceNet graphs have a few thousand).", source)
    if model.functions:
        import onnx.inliner

        _function_expansion(model, source, max_nodes)
        model = onnx.inliner.inline_local_functions(model)
    external = [(t, main) for t, main in _all_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        locations = sorted({_onnx_location(t).get("location", "") for t, _ in external})
        names = _short(locations, 300)
        unsafe = [w for w in locations if not w or "\0" in w or Path(w).is_absolute() or ".." in Path(w).parts]
        if unsafe:
            raise ExternalDataError(f"{source}: tensors point to external data {_short(unsafe, 300)}, outside the "
                                    "model's folder; refused.", source)
        if path is None:
            raise ExternalDataError(f"{source}: weights are in external file(s) {names}; pass the model's path "
                                    "(with allow_external_data=True) so they are read from its folder.", source)
        if not allow_external_data:
            raise ExternalDataError(
                f"{source}: weights are stored in external file(s) {names} next to the model; external data "
                f"is not read unless allowed: pass allow_external_data=True (tools: --allow-external-data) to "
                f"read them from {path.parent.resolve()}.", source)
        inner = [t for t, main in external if not main]
        if inner:
            raise ExternalDataError(f"{source}: tensor {_short(inner[0].name, 80)} of a subgraph, function or "
                                    "non-Constant attribute keeps its data in an external file; only initializers "
                                    "and Constant values of the main graph are read from external data.", source)
        model = onnx.ModelProto.FromString(model.SerializeToString())  # do not modify the caller's proto
        model_bytes += _read_external_data(model, path)
    return model, source, model_bytes


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
        return f"{self.op_type} node {_short(self.name, 100)}"


def _fold_elements(op, node, args):
    """Upper bound of the element count `_fold` would produce (computed without allocating)."""
    x = args[0] if args else None
    if op in ("Add", "Sub", "Mul", "Div") and len(args) == 2:
        shape = np.broadcast_shapes(np.shape(args[0]), np.shape(args[1]))
    elif op == "Expand":
        shape = np.broadcast_shapes(np.shape(x), tuple(int(s) for s in np.asarray(args[1]).reshape(-1)))
    elif op == "Concat":
        return sum(int(np.size(a)) for a in args if a is not None)
    elif op == "Gather":
        axis = int(node.attr("axis", 0))
        side = np.shape(x)[axis] if np.ndim(x) else 1
        return int(np.size(args[1])) * (int(np.size(x)) // side if side else 0)
    else:
        return int(np.size(x)) if x is not None else 0
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _fold(node, args):
    """NumPy value of a node whose inputs are all constants, or None when it is not folded."""
    op = node.op_type
    x = args[0] if args else None
    if op == "Cast":
        dtype = _ONNX_DTYPES.get(node.attr("to"))
        if dtype is None:
            return None
        return x.astype(np.float32 if dtype == "bfloat16" else dtype)
    if op in ("Unsqueeze", "Squeeze"):
        axes = node.attr("axes") if len(args) < 2 else [int(a) for a in np.asarray(args[1]).reshape(-1)]
        if op == "Squeeze":
            return np.squeeze(x, axis=None if axes is None else tuple(axes))
        if axes is None or len(axes) + x.ndim > 32:
            return None
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
        return np.broadcast_to(x, np.broadcast_shapes(x.shape, shape)).copy()
    if op == "Gather":
        return np.take(x, np.asarray(args[1]).astype(np.int64), axis=node.attr("axis", 0))
    return None


class _OnnxGraph:
    """An ONNX graph as data flow: constants folded, Identity/Dropout/float Casts removed, Shape
    computations set aside, and for every tensor the nodes that consume it."""

    def __init__(self, source):
        self.source = source
        self.current = None  # the node being read (named by errors that escape the parser)

    def build(self, model, max_folded_bytes=_MIN_FOLDED_BYTES):
        source = self.source
        graph = model.graph
        self.consts = {}
        for t in graph.initializer:
            self.consts[t.name] = self._tensor_array(t, f"initializer {_short(t.name, 80)}")
        self.fold_left = int(max_folded_bytes)
        self.alias, self.shape_tensors, self.nodes = {}, set(), []
        protos = self._toposort(graph)
        for index, proto in enumerate(protos):
            try:
                inputs = [self.alias.get(i, i) for i in proto.input]
                node = _Node(proto, inputs, index)
            except Exception as err:  # noqa: BLE001 - e.g. an attribute of an unknown type
                raise WeightsFileError(f"{source}: {proto.op_type} node {_short(proto.name, 100)} is malformed "
                                       f"({type(err).__name__}: {_short(str(err))}).", source, proto.name) from None
            self.current = node
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
                value = self._fold(node, [self.consts[i] if i else None for i in inputs])
                if value is not None:
                    self.consts[proto.output[0]] = value
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
        self.current = None
        self.users = collections.defaultdict(list)
        for node in self.nodes:
            for i in dict.fromkeys(node.inputs):
                if i and i not in self.consts:
                    self.users[i].append(node)
        inits = {t.name for t in graph.initializer}
        data_inputs = [i for i in graph.input if i.name not in inits]
        if len(data_inputs) != 1:
            raise self.error(f"expected one image input, found {_short([i.name for i in data_inputs])}.")
        self.input = data_inputs[0]
        self.outputs = [self.alias.get(o.name, o.name) for o in graph.output]
        self.visited = set()
        return self

    def error(self, message, node=None):
        return WeightsFileError(f"{self.source}: {message}", self.source, None if node is None else node.name)

    def _tensor_array(self, tensor, what, node=None):
        """NumPy value of a TensorProto, after checking its type, dims and data length (no external
        data: it was read into the proto or refused before)."""
        from onnx import TensorProto, numpy_helper

        if tensor.data_location == TensorProto.EXTERNAL:
            raise ExternalDataError(f"{self.source}: {what} keeps its data in an external file, not read.",
                                    self.source, None if node is None else node.name)
        if tensor.HasField("segment"):
            raise self.error(f"{what} is a segment of a tensor; segments are not read.", node)
        try:
            dims, n, nbytes = _dims_bytes(tensor, what, self.source)
        except WeightsFileError as err:
            raise WeightsFileError(str(err), self.source, None if node is None else node.name) from None
        if tensor.HasField("raw_data"):
            if len(tensor.raw_data) != nbytes:
                raise self.error(f"{what} of dims {_short(dims)} needs {nbytes:,} bytes of raw data, holds "
                                 f"{len(tensor.raw_data):,}.", node)
        else:
            have = (len(tensor.float_data) + len(tensor.int32_data) + len(tensor.int64_data)
                    + len(tensor.double_data) + len(tensor.uint64_data))
            if have != n:
                raise self.error(f"{what} of dims {_short(dims)} needs {n:,} values, holds {have:,}.", node)
        try:
            return np.asarray(numpy_helper.to_array(tensor))
        except Exception as err:  # noqa: BLE001 - values in the wrong field for the data type, ...
            raise self.error(f"{what} cannot be read ({type(err).__name__}: {_short(str(err))}).", node) from None

    def _fold(self, node, args):
        """`_fold` within the folding budget (None: left unfolded, then refused as an unexpected node)."""
        try:
            with np.errstate(all="ignore"):
                if _fold_elements(node.op_type, node, args) * 8 > self.fold_left:
                    return None
                value = _fold(node, args)
        except Exception as err:  # noqa: BLE001 - bad shapes, axes, indices of a crafted graph
            raise self.error(f"{node} cannot be computed from its constant inputs ({type(err).__name__}: "
                             f"{_short(str(err))}).", node) from None
        if value is None:
            return None
        value = np.asarray(value)
        if value.dtype.kind not in "biuf":
            return None
        self.fold_left -= value.nbytes
        return value

    def _toposort(self, graph):
        """Nodes in an order where each comes after the producers of its inputs (Kahn's algorithm,
        the file's order among ready nodes: O(n log n))."""
        import heapq

        available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
        protos = list(graph.node)
        missing, waiting, ready = [], collections.defaultdict(list), []
        for idx, proto in enumerate(protos):
            need = {i for i in proto.input if i not in available}
            missing.append(len(need))
            for name in need:
                waiting[name].append(idx)
            if not need:
                ready.append(idx)
        heapq.heapify(ready)
        order = []
        while ready:
            idx = heapq.heappop(ready)
            order.append(protos[idx])
            for out in protos[idx].output:
                if out in available:
                    continue
                available.add(out)
                for j in waiting.pop(out, ()):
                    missing[j] -= 1
                    if missing[j] == 0:
                        heapq.heappush(ready, j)
        if len(order) != len(protos):
            idx = next(i for i, m in enumerate(missing) if m > 0)
            proto = protos[idx]
            lost = [i for i in proto.input if i not in available]
            raise WeightsFileError(f"{self.source}: {proto.op_type} node {_short(proto.name, 100)} reads "
                                   f"{_short(lost)}, which no node produces (or the graph has a cycle).",
                                   self.source, proto.name)
        return order

    def _constant(self, node, proto):
        for a in proto.attribute:
            if a.name == "value" and a.HasField("t"):
                return self._tensor_array(a.t, f"the value of {node}", node)
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
        self.current = node
        name = node.inputs[index] if index < len(node.inputs) else ""
        if not name:
            raise self.error(f"{node} has no {what} input.", node)
        if name not in self.consts:
            raise self.error(f"the {what} of {node} ({_short(name, 80)}) is not a constant.", node)
        value = np.asarray(self.consts[name])
        if value.dtype.kind != "f":
            raise self.error(f"the {what} of {node} ({_short(name, 80)}) is {value.dtype}, not floating point.", node)
        value = value.astype(np.float32)
        if not np.isfinite(value).all():
            raise self.error(f"the {what} of {node} ({_short(name, 80)}) holds NaN or infinite values.", node)
        return value

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
        self.current = node
        if node.op_type != "Add" and node.inputs[0] != tensor:
            raise self.error(f"{node} reads {tensor!r} ({self.origin(tensor)}) as a parameter, not as its data "
                             f"input; expected {what}.", node)
        return node

    def take(self, node, ops, what):
        self.current = node
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
        self.g, self.sd, self.fused = graph, _RecordedDict(graph), 0

    # --- primitives --------------------------------------------------------------------------
    def conv(self, node, module, kernel, stride, pad, group=1, depthwise=False):
        g = self.g
        g.take(node, ("Conv",), f"the Conv of {module!r}")
        w = g.const(node, 1, "weight")
        if w.ndim != 4 or 0 in w.shape:
            raise g.error(f"{node} ({module}): weight of shape {w.shape}, expected 4-D and not empty.", node)
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
            if not (eps > 0 and np.isfinite(eps)) or np.any(var + eps <= 0):
                raise g.error(f"{node} ({module}): epsilon {eps} / variance give a non-positive denominator.", node)
            if np.any(var < 0):
                raise g.error(f"{node} ({module}): negative variance {float(var.min()):g}.", node)
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
            value = np.asarray(self.g.consts[others[0]], np.float32)
            if not np.isfinite(value).all():
                raise self.g.error(f"the constant operand of {node} ({_short(others[0], 80)}) holds NaN or infinite "
                                   "values.", node)
            return value
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
            if k == 0 and node.op_type in ("Mul", "Div"):
                raise g.error(f"{node} scales the image input by 0.", node)
            if node.op_type == "Sub":
                mean += k * std
            elif node.op_type == "Add":
                mean -= k * std
            elif node.op_type == "Mul":
                std /= k
            else:
                std *= k
            x, seen = node.outputs[0], True
            if not (np.isfinite(mean) and np.isfinite(std) and std != 0):
                raise g.error(f"the input normalisation up to {node} gives mean {mean:g}, std {std:g}; expected "
                              "finite values and std != 0.", node)
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
        if bias is not None and bias.size not in (1, w.shape[0]):
            raise g.error(f"{fc} ({module}): bias of shape {bias.shape} for {w.shape[0]} outputs.", fc)
        if w.shape[0] == 0 or w.shape[1] == 0:
            raise g.error(f"{fc} ({module}): empty weight of shape {w.shape}.", fc)
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


def onnx_to_state_dict(model, allow_external_data=False, *, max_nodes=ONNX_MAX_NODES, max_folded_bytes=None):
    """Turn an insightface IResNet or MobileFaceNet ONNX graph into an insightface-named state dict.

    The graph is read by data flow (module docstring): TorchScript or dynamo exports at opsets 11
    to 18, BN folded or not, onnxsim / onnxruntime (``ORT_ENABLE_BASIC``) optimised.

    Untrusted files: the protobuf is parsed with ``load_external_data=False``; tensors anywhere in
    the model (subgraphs, functions, attributes) that name external data are refused unless
    `allow_external_data` (and then only initializers and Constant values of the main graph are
    read, from the model's own folder, never relative to the current directory). Every tensor's
    type, dims and data length are checked before it is converted; constant folding has a byte
    budget; node order is resolved in O(n log n). NaN / inf weights, a negative or non-finite
    BatchNormalization epsilon, negative variances, a zero or non-finite input scale and a graph
    input size that does not fit the weights are refused.

    Args:
        model: path of an ``.onnx`` file or an ``onnx.ModelProto`` (NCHW, exported from
            insightface's PyTorch ``iresnet.py`` / ``mobilefacenet.py``).
        allow_external_data: read weights stored in external files (``model.onnx.data``), from the
            model file's folder only; refused by default.
        max_nodes: most nodes read (main graph, subgraphs and functions, and the main graph once
            local functions are inlined); default 100,000 (these networks have a few thousand).
        max_folded_bytes: most bytes of constants computed by folding (``Mul`` of weights,
            ``Reshape``, ``Concat``, ...); default 4x the model's size (file plus external data)
            + 64 MiB. A node over the budget is left unfolded (and refused as unexpected).

    Returns:
        ``(state_dict, info)``; ``info`` has ``arch`` (``"iresnet"`` / ``"mobilefacenet"``),
        ``stage_blocks`` (IResNet) or ``blocks``/``scale`` (MobileFaceNet), ``image_size`` (from the
        graph input when static), ``fused_bn`` (BNs not present as BatchNormalization nodes),
        ``normalization`` (``{"mean", "std"}`` when the graph scales its input itself, else None)
        and ``opset``.

    Raises:
        FileNotFoundError: no such file (``OSError``: unreadable, also for external data files).
        ExternalDataError: external weights and ``allow_external_data=False``, or an unsafe location.
        WeightsFileError: for anything else, whatever the bytes (a
            :class:`keras_facemargin.errors.UntrustedFileError`, a ``ValueError``): an unreadable
            protobuf (DecodeError), a malformed tensor or node, a limit exceeded, invalid values,
            or a graph that is not one of these networks (names the file and, with ``.node``,
            the first node that does not fit).

    Example::

        sd, info = onnx_to_state_dict("w600k_r50.onnx")
        info["arch"], info["stage_blocks"]                  # ('iresnet', (3, 4, 14, 3))
    """
    import onnx

    source = "<onnx.ModelProto>" if isinstance(model, onnx.ModelProto) else str(model)
    max_nodes = int(_positive(max_nodes, "max_nodes"))
    if max_folded_bytes is not None:
        _positive(max_folded_bytes, "max_folded_bytes")
    g = None
    try:
        model, source, model_bytes = _load_onnx(model, allow_external_data, max_nodes)
        if max_folded_bytes is None:
            max_folded_bytes = max(_MIN_FOLDED_BYTES, _FOLDED_FILE_MULTIPLE * model_bytes + _MIN_FOLDED_BYTES)
        g = _OnnxGraph(source)
        return _parse_onnx(model, g, max_folded_bytes)
    except (WeightsFileError, OSError):
        raise
    except Exception as err:  # noqa: BLE001 - whatever the bytes, the error is typed and names the file
        node = None if g is None else g.current
        where = "" if node is None else f" at {node}"
        kind = "ran out of memory" if isinstance(err, MemoryError) else "malformed ONNX graph"
        raise WeightsFileError(f"{source}: {kind}{where} ({type(err).__name__}: {_short(str(err), 300)}).", source,
                               None if node is None else node.name) from None


class _RecordedDict(dict):
    """The parser's state dict, remembering the node each entry came from (for error messages)."""

    def __init__(self, graph):
        super().__init__()
        self.graph, self.nodes = graph, {}

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self.nodes[key] = self.graph.current

    def update(self, other):
        for key, value in other.items():
            self[key] = value


def _input_size(g, info, sd):
    """The graph input's static ``(H, W)`` (or None), checked against the weights."""
    dims = g.input.type.tensor_type.shape.dim
    name = _short(g.input.name, 80)
    if not g.input.type.tensor_type.HasField("shape"):
        return None
    if len(dims) != 4:
        raise g.error(f"the image input {name} has rank {len(dims)}; expected NCHW (rank 4).")
    if dims[1].HasField("dim_value") and dims[1].dim_value != 3:
        raise g.error(f"the image input {name} has {dims[1].dim_value} channels; expected 3 (NCHW).")
    if not (dims[2].HasField("dim_value") and dims[3].HasField("dim_value")):
        return None
    h, w = int(dims[2].dim_value), int(dims[3].dim_value)
    if not (0 < h <= _MAX_IMAGE_SIDE and 0 < w <= _MAX_IMAGE_SIDE):
        raise g.error(f"the image input {name} declares {h}x{w} images; expected sides in [1, {_MAX_IMAGE_SIDE}].")
    side_h, side_w = -(-h // 16), -(-w // 16)  # four stride-2 reductions, rounding up
    if info["arch"] == "iresnet":
        c = int(sd["bn2.running_mean"].shape[0])
        fc_in = int(sd["fc.weight"].shape[1])
        ok, want = side_h * side_w * c == fc_in, f"fc.weight's {fc_in} inputs ({c} channels x final map)"
    else:
        ok, want = (side_h, side_w) == tuple(info["gdc_kernel"]), f"the GDC kernel {tuple(info['gdc_kernel'])}"
    if not ok:
        raise g.error(f"the image input {name} declares {h}x{w} images ({side_h}x{side_w} final map), which does "
                      f"not fit {want}.")
    return h, w


def _parse_onnx(model, g, max_folded_bytes):
    g.build(model, max_folded_bytes)
    source = g.source
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
            node = parser.sd.nodes.get(key)
            raise WeightsFileError(f"{source}: {key} holds NaN or infinite values"
                                   + (f" (from {node})." if node is not None else "."), source,
                                   None if node is None else node.name)
    g.current = None
    image_size = _input_size(g, info, parser.sd)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    info.update(image_size=image_size, fused_bn=parser.fused, normalization=normalization, opset=opset)
    return dict(parser.sd), info


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


def _weight_shape(state_dict, key, ndim):
    """Shape of ``state_dict[key]``, which must exist, have `ndim` dimensions and no empty one."""
    if key not in state_dict:
        raise WeightsFileError(f"State dict is missing {key!r}.")
    shape = tuple(int(n) for n in np.shape(state_dict[key]))
    if len(shape) != ndim or 0 in shape:
        raise WeightsFileError(f"{key} has shape {shape}; expected {ndim} non-empty dimensions.")
    return shape


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
        ids = {int(m.group(1)) for k in state_dict if (m := re.match(rf"layer{s}\.(\d{{1,9}})\.", str(k)))}
        if not ids:
            raise WeightsFileError(f"IResNet state dict has no layer{s}.* weights.")
        if ids != set(range(len(ids))):
            raise WeightsFileError(f"IResNet state dict: the blocks of layer{s} are numbered {sorted(ids)[:6]}"
                                   f"{'...' if len(ids) > 6 else ''}, not 0 to {len(ids) - 1}.")
        blocks.append(len(ids))
    filters = tuple(int(_weight_shape(state_dict, f"layer{s}.0.conv1.weight", 4)[0]) for s in range(1, 5))
    emb, fc_in = (int(n) for n in _weight_shape(state_dict, "fc.weight", 2))
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
    c1 = int(_weight_shape(state_dict, "layers.0.layers.0.weight", 4)[0])
    if c1 % 64:
        raise WeightsFileError(f"layers.0.layers.0.weight has {c1} filters, not 64 * scale.")

    def count(layer):
        pattern = rf"layers\.{layer}\.layers\.(\d{{1,9}})\.layers\."
        return len({int(m.group(1)) for k in state_dict if (m := re.match(pattern, str(k)))})

    blocks = (1 if "layers.1.layers.0.weight" in state_dict else count(1), count(3), count(5), count(7))
    if 0 in blocks:
        raise WeightsFileError(f"MobileFaceNet state dict with an empty stage: blocks {blocks}.")
    kh, kw = _weight_shape(state_dict, "features.layers.0.layers.0.weight", 4)[2:]
    if image_size is None:
        image_size = (16 * int(kh), 16 * int(kw))
    return {"blocks": blocks, "scale": c1 // 64,
            "embedding_dim": int(_weight_shape(state_dict, "features.layers.2.weight", 2)[0]),
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


def read_insightface(path, image_size=None, allow_external_data=False, **limits):
    """Read an insightface ``.onnx`` / ``.pth`` file and the Keras backbone it describes, without
    building it: what `convert_insightface` does before it creates the Keras model.

    Everything that comes from the file is validated here (the readers' checks, then the
    architecture and constructor arguments: stage and block counts, shapes, image size), so a
    crafted file is refused before a Keras model of its choosing is built.

    Args:
        path: ``.onnx`` or ``.pth``/``.pt`` file.
        image_size: `(H, W)` override (default: from the ONNX input or the weights' shapes).
        allow_external_data: for an ONNX model with an external ``.onnx.data`` file.
        **limits: caps of the reader: ``max_entry_bytes``, ``max_ratio``, ``max_total_bytes``
            (`read_torch_checkpoint`) or ``max_nodes``, ``max_folded_bytes`` (`onnx_to_state_dict`).

    Returns:
        ``(state_dict, info)``; ``info`` as `convert_insightface`'s (``arch``, ``source``,
        ``normalization``, ``normalization_source``, ``notes``, ...) plus ``config``: the
        `IResNet` / `MobileFaceNet` constructor arguments.

    Raises:
        FileNotFoundError: no such file.
        WeightsFileError: the file is not a convertible insightface model (names the file).

    Example::

        sd, info = read_insightface("backbone.pth")
        info["arch"], info["config"]["stage_filters"]       # ('iresnet', (64, 128, 256, 512))
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"insightface weights not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        sd, info = onnx_to_state_dict(path, allow_external_data=allow_external_data, **limits)
        image_size = image_size or info["image_size"]
        info = dict(info, source="onnx", notes=[])
    elif suffix in (".pth", ".pt"):
        sd, read = read_torch_checkpoint(path, **limits)
        info = {"arch": None, "source": "pth", "normalization": None,
                "notes": read["notes"], "checkpoint_key": read["key"]}
    else:
        raise WeightsFileError(f"Expected an insightface .onnx or .pth file, got {path}.", str(path))
    info["normalization_source"] = "graph" if info["normalization"] is not None else "insightface default"
    if info["normalization"] is None:
        info["normalization"] = dict(INSIGHTFACE_NORMALIZATION)
    try:
        info["arch"] = info["arch"] or state_dict_architecture(sd)
        info["config"] = (mobilefacenet_config_from_state_dict if info["arch"] == "mobilefacenet"
                          else iresnet_config_from_state_dict)(sd, image_size)
    except WeightsFileError as err:
        raise WeightsFileError(f"{path}: {err}", str(path)) from None
    return sd, info


def convert_insightface(path, image_size=None, allow_external_data=False, return_info=False, **limits):
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
            the ignored PartialFC weights of a training checkpoint), ``config`` (the Keras
            constructor arguments) and the reader's details.
        **limits: the reader's caps (see `read_insightface`).

    Returns:
        A Keras `IResNet` or `MobileFaceNet` (raw embeddings; wrap with
        `keras_facemargin.export.as_embedder` for L2-normalised ones) taking NHWC float images,
        or ``(backbone, info)`` with ``return_info=True``.

    Raises:
        FileNotFoundError: no such file.
        WeightsFileError (a ValueError and a `keras_facemargin.errors.UntrustedFileError`): the
            file is not a convertible insightface model (names the file and the node or tensor
            that does not fit); `ExternalDataError` for external data; `UnsafeWeightsError` for a
            refused pickle.

    Example::

        backbone, info = convert_insightface("w600k_mbf.onnx", return_info=True)
        x = (images - info["normalization"]["mean"]) / info["normalization"]["std"]
    """
    from keras_facemargin.backbones.iresnet import IResNet
    from keras_facemargin.backbones.mobilefacenet import MobileFaceNet

    path = Path(path)
    sd, info = read_insightface(path, image_size, allow_external_data, **limits)
    mbf = info["arch"] == "mobilefacenet"
    try:
        backbone = (MobileFaceNet if mbf else IResNet)(**info["config"])
        (load_mobilefacenet_state_dict if mbf else load_iresnet_state_dict)(backbone, sd)
    except WeightsFileError as err:
        raise WeightsFileError(f"{path}: {err}", str(path)) from None
    return (backbone, info) if return_info else backbone
