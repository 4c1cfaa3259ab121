"""Read (and write) ``torch.save`` ``.pth`` files without torch: the state dict as NumPy arrays.

`read_torch_checkpoint` reads a ``torch.save`` zip file *without torch*: a ``backbone.pth`` state
dict, a DistributedDataParallel (``module.``) one, or arcface_torch's resume checkpoint
``checkpoint_gpu_<rank>.pt`` (its ``state_dict_backbone``; the PartialFC class centres, optimizer
and scheduler states are ignored, with a note). The restricted unpickler of
:mod:`keras_facemargin.utils.safe_pickle` admits only ``collections.OrderedDict``,
``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter`` and the ``torch.*Storage`` type
markers, each resolved to a validating stand-in (`PTH_PICKLE_ALLOWLIST`, documented in
`read_torch_checkpoint`); nothing else in the pickle can run, a tensor whose size/stride/offset
would reach outside its storage or that is stride-0 / overlapping is refused, zip entries are
size- and ratio-capped before they are inflated, and only the tensors of the state dict that is
used are read from the archive.

The file is untrusted: whatever the bytes, the reader raises only ``OSError`` (missing /
unreadable file) or a :class:`~keras_facemargin.errors.WeightsConversionError` (an
``UntrustedFileError`` and a ``ValueError``; `UnsafeWeightsError` for a refused pickle) naming
the file, within caps that are keyword arguments (``max_entry_bytes``, ``max_ratio``,
``max_total_bytes``).

`write_torch_state_dict` writes float32 state dicts in the same format (test fixtures; torch
reads them).

Example::

    sd, info = read_torch_checkpoint("work_dirs/ms1mv3_r50/checkpoint_gpu_0.pt")
    sd["conv1.weight"].shape        # (64, 3, 3, 3)
    write_torch_state_dict(sd, "backbone.pth")
"""

from __future__ import annotations

import collections
import os
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from keras_facemargin.errors import UnsafeWeightsError, WeightsConversionError
from keras_facemargin.utils.safe_pickle import PicklePolicy, RestrictedUnpickler, scan_pickle
from keras_facemargin.utils.untrusted import plain_text as _plain
from keras_facemargin.utils.untrusted import positive_cap as _positive
from keras_facemargin.utils.untrusted import short_repr as _short

__all__ = ["PTH_MAX_RATIO", "PTH_PICKLE_ALLOWLIST", "read_torch_checkpoint", "read_torch_state_dict",
           "write_torch_state_dict"]

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
    """Raised inside the .pth reader; re-raised as UnsafeWeightsError / WeightsConversionError naming the file."""

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
            raise WeightsConversionError(f"{source}: corrupt zip archive ({type(err).__name__}: {err}).",
                                         source) from None
        infos = self.zip.infolist()
        self.infos = {}
        for info in infos:
            name = info.filename
            if name in self.infos:
                raise WeightsConversionError(f"{source}: archive entry {_short(name)} appears twice.", source,
                                             where=name)
            self.infos[name] = info
            if info.flag_bits & 0x1:
                raise WeightsConversionError(f"{source}: archive entry {_short(name)} is encrypted (torch.save never "
                                             "encrypts).", source, where=name)
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise WeightsConversionError(f"{source}: archive entry {_short(name)} uses compression method "
                                             f"{info.compress_type}; only stored (0) and deflate (8) entries are read.",
                                             source, where=name)
        end = min(getattr(self.zip, "start_dir", file_size), file_size)
        order = sorted(infos, key=lambda i: i.header_offset)
        for a, b in zip(order, order[1:] + [None]):
            stop = a.header_offset + 30 + a.compress_size  # local header (without its name) + data
            limit = end if b is None else b.header_offset
            if a.header_offset < 0 or stop > limit:
                other = "the central directory" if b is None else f"entry {_short(b.filename)}"
                raise WeightsConversionError(f"{source}: archive entry {_short(a.filename)} (offset {a.header_offset}, "
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


def _pickle_error(source, refusal):
    """The error for a refusal of the restricted unpickler (`UnsafeWeightsError`: not admitted)."""
    if refusal.kind == "opcode":
        message = (f"pickle opcode {refusal.value} at byte {refusal.pos} is not admitted (a torch state dict holds "
                   "only dicts, lists, tuples, numbers, strings and tensors).")
    elif refusal.kind == "global":
        module, name = refusal.value
        message = (f"refusing to load {_plain(module)}.{_plain(name)}; only plain tensor state dicts (OrderedDict of "
                   "tensors) are read without torch.")
    elif refusal.kind == "int":
        message = f"pickle integer {_short(refusal.value)} at byte {refusal.pos} is above 2**64."
    elif refusal.kind == "unreadable":
        message = (f"data.pkl is not a readable pickle ({type(refusal.value).__name__}: "
                   f"{_short(str(refusal.value))}).")
    else:
        message = refusal.detail
    cls = UnsafeWeightsError if refusal.unsafe else WeightsConversionError
    return cls(f"{source}: {message}", source, where="data.pkl")


#: The pickle globals a ``.pth`` may name, each resolved to a stand-in (see `read_torch_checkpoint`).
_PTH_GLOBALS = {("collections", "OrderedDict"): _ordered_dict,
                ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
                ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
                **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES}}
_PTH_CALLABLES = (_ordered_dict, _rebuild_parameter)
PTH_PICKLE_ALLOWLIST = tuple(sorted(f"{m}.{n}" for m, n in _PTH_GLOBALS))
# Integers above 2**64; BUILD only of a state dict's OrderedDict (its `_metadata` attribute: ignored).
_PTH_PICKLE = PicklePolicy(admitted=_PTH_GLOBALS, error=_pickle_error, refused_opcodes=_PTH_REFUSED_OPCODES,
                           max_int=_MAX_PICKLE_INT, callables=_PTH_CALLABLES,
                           build_types=(collections.OrderedDict,))


class _PthUnpickler(RestrictedUnpickler):
    """The restricted unpickler (`keras_facemargin.utils.safe_pickle`) with the ``.pth`` policy,
    resolving storages (persistent ids) to lazy archive entries and tensors to checked views."""

    def __init__(self, data, archive, prefix, source):
        super().__init__(data, _PTH_PICKLE, source)
        self._archive, self._prefix = archive, prefix
        self._storages = {}

    def resolve(self, target):
        return self._rebuild_tensor if target is _rebuild_tensor_v2 else target

    def admits_call(self, func):
        return super().admits_call(func) or func == self._rebuild_tensor

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
        WeightsConversionError: for any other problem, whatever the bytes (a
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
                raise WeightsConversionError(f"{path} is not a torch zip archive (torch >= 1.6 `torch.save`); the "
                                             "legacy format is not read without torch: re-save it with torch >= 1.6.",
                                             source)
            f.seek(0)
            archive = _PthArchive(f, source, file_size, entry_cap, max_ratio, total_cap)
            return _read_torch_checkpoint(archive, path, total_cap)
        except WeightsConversionError:
            raise
        except _Refused as err:
            cls = UnsafeWeightsError if err.unsafe else WeightsConversionError
            raise cls(f"{source}: {err}", source, where=err.where) from None
        except (MemoryError, RecursionError) as err:
            raise WeightsConversionError(f"{source}: reading the archive ran out of {type(err).__name__[:-5].lower()} "
                                         f"({_short(str(err))}).", source) from None
        except Exception as err:  # noqa: BLE001 - whatever the bytes, the error is typed and names the file
            raise WeightsConversionError(f"{source}: corrupt or unsupported torch archive ({type(err).__name__}: "
                                         f"{_short(str(err), 300)}).", source) from None


def _read_torch_checkpoint(archive, path, total_cap):
    source = str(path)
    info = {"key": None, "ignored": [], "notes": []}
    pkl = [n for n in archive.names() if n.endswith("data.pkl")]
    if len(pkl) != 1:
        raise WeightsConversionError(f"{path}: expected one */data.pkl in the archive, found {_short(pkl)}.", source)
    prefix = pkl[0][: -len("data.pkl")]
    byteorder = f"{prefix}byteorder"
    if byteorder in archive.infos and bytes(archive.read(byteorder, "entry", limit=64)).strip() != b"little":
        raise WeightsConversionError(f"{path}: big-endian archives are not supported.", source, where=byteorder)
    data = bytes(archive.read(pkl[0], "pickle"))
    scan_pickle(data, _PTH_PICKLE, source)
    obj = _PthUnpickler(data, archive, prefix, source).load()
    del data
    if isinstance(obj, dict) and not any(isinstance(v, _LazyTensor) for v in obj.values()):
        key = next((k for k in _STATE_DICT_KEYS if isinstance(obj.get(k), dict)), None)
        if key is None:
            candidates = _tensor_dicts(obj)
            raise WeightsConversionError(
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
        raise WeightsConversionError(f"{path} holds a {type(obj).__name__}, not a state dict.", source)
    tensors = {}
    for name, value in obj.items():
        if not isinstance(value, _LazyTensor):
            continue
        name = str(name)
        name = name[len("module."):] if name.startswith("module.") else name
        if name in tensors:
            raise WeightsConversionError(f"{path}: tensor {_short(name)} appears twice (with and without 'module.'?).",
                                         source, where=name)
        tensors[name] = value
    need = sum(t.nbytes for t in tensors.values())
    if need > total_cap:
        raise WeightsConversionError(f"{path}: the state dict's {len(tensors)} tensors take {need:,} bytes, above "
                                     f"max_total_bytes={total_cap:,} (a crafted file, or pass a larger cap).", source)
    out = {}
    for name, value in tensors.items():
        try:
            arr = value.materialize()
        except _Refused as err:
            raise WeightsConversionError(f"{path}: tensor {_short(name)}: {err}", source,
                                         where=err.where or name) from None
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float32, copy=False)
            if not np.isfinite(arr).all():
                raise WeightsConversionError(f"{path}: tensor {_short(name)} holds NaN or infinite values.", source,
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
        WeightsConversionError: anything else (see `read_torch_checkpoint`); `UnsafeWeightsError` (also a
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
