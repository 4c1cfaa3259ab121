"""Convert released insightface IResNet weights (ONNX graphs, PyTorch state dicts) to Keras.

Both routes first produce an insightface *state dict* (``{"conv1.weight": array, ...}``, PyTorch
names and layouts), then `load_iresnet_state_dict` fills `keras_facemargin.backbones.IResNet`
with the one-to-one mapping documented in ``backbones/iresnet.py``:

* conv ``(O, I, kh, kw)`` -> Keras HWIO ``(kh, kw, I, O)``;
* BatchNorm weight/bias/running_mean/running_var -> gamma/beta/moving_mean/moving_variance
  (``features`` has a fixed gamma of 1 in insightface; Keras ``head_features`` has no gamma,
  so a gamma != 1, e.g. folded by an exporter, is folded exactly into the variance);
* PReLU ``(C,)`` -> ``(1, 1, C)``;
* ``fc.weight`` ``(D, C*H*W)``: PyTorch flattens C, H, W and Keras H, W, C, so the rows are
  permuted: ``w.reshape(D, C, H, W).transpose(2, 3, 1, 0).reshape(H*W*C, D)``.

`read_torch_state_dict` reads a ``torch.save`` zip file (``backbone.pth``) *without torch*: a
restricted unpickler admits only ``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``
/ ``_rebuild_parameter`` and the ``torch.*Storage`` type markers, and maps storages to NumPy
arrays from the zip's data files. Nothing else in the pickle can run, and a tensor whose
size/stride/offset would reach outside its storage is refused.

`onnx_to_state_dict` reads an IResNet ONNX graph exported from PyTorch (e.g. insightface's
``w600k_r50.onnx``): it walks the weighted nodes (Conv, BatchNormalization, PRelu, Gemm/MatMul)
in graph order and matches them to the module sequence of IResNet's forward pass. Initializer
names do not matter; a Conv with a bias followed by no BatchNormalization is a conv+BN pair the
exporter fused, and becomes the conv plus an identity BN carrying the bias.

Inputs of converted insightface models: arcface_torch trains with ``(x - 127.5) / 127.5``
(``Normalize(0.5, 0.5)``), not this package's ``/ 128``; see the registry's ``normalization``.

Example::

    backbone = convert_insightface("w600k_r50.onnx")            # keras IResNet, 112x112, 512-d
    backbone.save_weights("w600k_r50.weights.h5")
"""

from __future__ import annotations

import collections
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np

from keras_facemargin.backbones.embedding_head import BN_EPSILON

__all__ = ["read_torch_state_dict", "write_torch_state_dict", "onnx_to_state_dict",
           "iresnet_config_from_state_dict", "load_iresnet_state_dict", "iresnet_from_state_dict",
           "convert_insightface", "keras_layer_name"]

# ----------------------------------------------------------------------------- torch-free .pth
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


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


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    """Tensor view of a storage, refusing any view that would reach outside the storage.

    ``size``/``stride``/``storage_offset`` come from the (untrusted) pickle and go to
    ``as_strided``, which does no bounds checking: they are validated first.
    """
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise pickle.UnpicklingError(f"tensor storage is a {type(storage).__name__}, not a storage.")
    if isinstance(storage_offset, bool) or not isinstance(storage_offset, (int, np.integer)) or storage_offset < 0:
        raise pickle.UnpicklingError(f"tensor storage offset {storage_offset!r} is not an integer >= 0.")
    storage_offset = int(storage_offset)
    size, stride = _as_index_tuple(size, "size"), _as_index_tuple(stride, "stride")
    if len(size) != len(stride):
        raise pickle.UnpicklingError(f"tensor size {size} and stride {stride} differ in length.")
    if all(n > 0 for n in size):  # a non-empty view: its last element must lie in the storage
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.size:
            raise pickle.UnpicklingError(
                f"tensor of size {size}, stride {stride}, offset {storage_offset} reaches element {last} "
                f"of a storage of {storage.size} elements (corrupt or crafted file).")
    if not size:
        return np.array(storage[storage_offset])
    view = np.lib.stride_tricks.as_strided(storage[storage_offset:], shape=size,
                                           strides=[s * storage.itemsize for s in stride])
    return np.array(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *state):
    return data


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

    def _rebuild_tensor_v2(self, *args, **kwargs):
        try:
            return _rebuild_tensor_v2(*args, **kwargs)
        except pickle.UnpicklingError as e:
            raise pickle.UnpicklingError(f"{self._source}: {e}") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"{self._source}: unexpected persistent id {pid!r}.")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"{self._source}: unsupported storage type {storage_type!r}.")
        key = str(key)
        if key not in self._storages:
            raw = self._archive.read(f"{self._prefix}data/{key}")
            dtype = _STORAGE_DTYPES[storage_type.name]
            if dtype == "bfloat16":
                arr = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
            else:
                arr = np.frombuffer(raw, np.dtype(dtype).newbyteorder("<"))
            if arr.size < int(numel):
                raise pickle.UnpicklingError(f"{self._source}: storage {key} has {arr.size} elements, "
                                             f"expected {numel} (truncated file?).")
            self._storages[key] = arr
        return self._storages[key]


def read_torch_state_dict(path):
    """Read a PyTorch state dict saved with ``torch.save`` (zip format) into NumPy, without torch.

    Args:
        path: a ``.pth``/``.pt`` file holding a dict of tensors (``model.state_dict()``), or a
            checkpoint dict with a ``"state_dict"``/``"model"``/``"backbone"`` entry. A
            ``"module."`` (DistributedDataParallel) prefix is removed.

    Returns:
        ``dict`` name -> NumPy array (float32 for float16/bfloat16 tensors).

    Raises:
        ValueError: not a torch zip file (e.g. the legacy pre-1.6 format).
        pickle.UnpicklingError: the pickle references anything besides tensors and dicts (never
            executed), or a tensor's size/stride/offset reaches outside its storage (names the file).

    Example::

        sd = read_torch_state_dict("ms1mv3_arcface_r50/backbone.pth")
        sd["conv1.weight"].shape       # (64, 3, 3, 3)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PyTorch weights not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a torch zip archive (torch >= 1.6 `torch.save`); the legacy "
                         "format is not read without torch: re-save it with torch >= 1.6.")
    with zipfile.ZipFile(path) as archive:
        pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise ValueError(f"{path}: expected one */data.pkl in the archive, found {pkl}.")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = f"{prefix}byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise ValueError(f"{path}: big-endian archives are not supported.")
        with archive.open(pkl[0]) as f:
            obj = _RestrictedUnpickler(f, archive, prefix, str(path)).load()
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "backbone"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict.")
    out = {}
    for name, value in obj.items():
        if not isinstance(value, np.ndarray):
            continue
        name = name[len("module."):] if name.startswith("module.") else name
        out[name] = value.astype(np.float32) if value.dtype.kind == "f" else value
    return out


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
def _iresnet_modules(stage_blocks):
    """insightface IResNet modules in forward order: (name, kind)."""
    seq = [("conv1", "conv"), ("bn1", "bn"), ("prelu", "prelu")]
    for s, n in enumerate(stage_blocks, start=1):
        for b in range(n):
            p = f"layer{s}.{b}"
            seq += [(f"{p}.bn1", "bn"), (f"{p}.conv1", "conv"), (f"{p}.bn2", "bn"), (f"{p}.prelu", "prelu"),
                    (f"{p}.conv2", "conv"), (f"{p}.bn3", "bn")]
            if b == 0:
                seq += [(f"{p}.downsample.0", "conv"), (f"{p}.downsample.1", "bn")]
    seq += [("bn2", "bn"), ("fc", "fc"), ("features", "bn")]
    return seq


def _identity_bn(bias):
    c = bias.shape[0]
    return {"weight": np.ones(c, np.float32), "bias": bias.astype(np.float32),
            "running_mean": np.zeros(c, np.float32),
            "running_var": np.full(c, 1.0 - BN_EPSILON, np.float32)}


def onnx_to_state_dict(model):
    """Turn an insightface IResNet ONNX graph into an insightface-named state dict.

    Args:
        model: path of an ``.onnx`` file or an ``onnx.ModelProto`` (NCHW, exported from
            insightface's PyTorch IResNet; BN fused into convs or not).

    Returns:
        ``(state_dict, info)``; ``info`` has ``stage_blocks``, ``image_size`` (from the graph input
        when static) and ``fused_bn`` (how many BNs were fused into convs).

    Raises:
        ValueError: the graph is not an IResNet in insightface's layout (names the first
            mismatching node).

    Example::

        sd, info = onnx_to_state_dict("w600k_r50.onnx")
    """
    import onnx
    from onnx import numpy_helper

    source = "<onnx.ModelProto>"
    if not isinstance(model, onnx.ModelProto):
        source = str(model)
        if not Path(source).is_file():
            raise FileNotFoundError(f"ONNX model not found: {source}")
        model = onnx.load(source, load_external_data=False)  # IResNets are < 2 GB
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in graph.initializer}
    for node in graph.node:  # Constant nodes holding weights
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    inits[node.output[0]] = numpy_helper.to_array(attr.t).astype(np.float32)
    producers = {o: n for n in graph.node for o in n.output}

    def weight(name, what, node):
        if name in inits:
            return inits[name]
        prev = producers.get(name)  # e.g. an Unsqueeze/Reshape of an initializer
        if prev is not None and prev.input and prev.input[0] in inits:
            return inits[prev.input[0]]
        raise ValueError(f"{source}: {what} of node {node.name or node.op_type} ({name}) is not a constant.")

    weighted = [n for n in graph.node if n.op_type in ("Conv", "BatchNormalization", "PRelu", "Gemm", "MatMul")]
    # Stage structure: a 1x1 conv is a downsample (first block of a stage); Adds count blocks.
    adds = [n for n in graph.node if n.op_type == "Add" and not any(i in inits for i in n.input)]
    convs = [n for n in weighted if n.op_type == "Conv"]
    ds = [i for i, n in enumerate(convs) if weight(n.input[1], "weight", n).shape[-1] == 1]
    if len(ds) != 4:
        raise ValueError(f"{source}: expected 4 downsample (1x1) convolutions of an IResNet, found {len(ds)}.")
    # Forward order: stem conv, then per block conv1, conv2 (+ the 1x1 downsample in block 0).
    blocks = []
    for s in range(4):
        start = ds[s] - 2
        end = ds[s + 1] - 2 if s < 3 else len(convs)
        blocks.append((end - start - 1) // 2)
    if sum(blocks) != len(adds):
        raise ValueError(f"{source}: {sum(blocks)} residual blocks from the convolutions but {len(adds)} Add nodes.")
    sd, fused, i = {}, 0, 0
    seq = _iresnet_modules(blocks)
    for j, (name, kind) in enumerate(seq):
        if i >= len(weighted):
            raise ValueError(f"{source}: graph ended before module {name!r} ({kind}).")
        node = weighted[i]
        if kind == "conv":
            if node.op_type != "Conv":
                raise ValueError(f"{source}: expected a Conv for {name!r}, found {node.op_type} {node.name!r}.")
            sd[f"{name}.weight"] = weight(node.input[1], "weight", node)
            i += 1
            if len(node.input) > 2 and node.input[2]:
                # Conv bias: the following BN was fused into this conv by the exporter.
                bn_name, bn_kind = seq[j + 1]
                if bn_kind != "bn":
                    raise ValueError(f"{source}: Conv {node.name!r} ({name}) has a bias but no BN follows it.")
                for key, value in _identity_bn(weight(node.input[2], "bias", node)).items():
                    sd[f"{bn_name}.{key}"] = value
                fused += 1
        elif kind == "bn":
            if f"{name}.bias" in sd:  # fused into the previous conv
                continue
            if node.op_type != "BatchNormalization":
                raise ValueError(f"{source}: expected BatchNormalization for {name!r}, found "
                                 f"{node.op_type} {node.name!r}.")
            eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
            gamma, beta, mean, var = (weight(node.input[t], "BN parameter", node) for t in range(1, 5))
            sd[f"{name}.weight"], sd[f"{name}.bias"], sd[f"{name}.running_mean"] = gamma, beta, mean
            # Keep the same denominator with Keras' epsilon.
            sd[f"{name}.running_var"] = (var + eps - BN_EPSILON).astype(np.float32)
            i += 1
        elif kind == "prelu":
            if node.op_type != "PRelu":
                raise ValueError(f"{source}: expected PRelu for {name!r}, found {node.op_type} {node.name!r}.")
            sd[f"{name}.weight"] = weight(node.input[1], "slope", node).reshape(-1)
            i += 1
        else:  # fc
            if node.op_type == "Gemm":
                attrs = {a.name: a for a in node.attribute}
                w = weight(node.input[1], "weight", node)
                if "transB" not in attrs or attrs["transB"].i == 0:
                    w = w.T
                alpha = attrs["alpha"].f if "alpha" in attrs else 1.0
                beta_ = attrs["beta"].f if "beta" in attrs else 1.0
                b = weight(node.input[2], "bias", node) if len(node.input) > 2 else np.zeros(w.shape[0], np.float32)
                sd["fc.weight"], sd["fc.bias"] = (alpha * w).astype(np.float32), (beta_ * b).astype(np.float32)
            elif node.op_type == "MatMul":
                w = weight(node.input[1], "weight", node).T
                consumers = [n for n in graph.node if node.output[0] in n.input and n.op_type == "Add"]
                b = next((inits[x] for n in consumers for x in n.input if x in inits), None)
                sd["fc.weight"] = w
                sd["fc.bias"] = b if b is not None else np.zeros(w.shape[0], np.float32)
            else:
                raise ValueError(f"{source}: expected Gemm/MatMul for 'fc', found {node.op_type} {node.name!r}.")
            i += 1
            if i >= len(weighted):  # `features` BN folded into the fc by the exporter
                for key, value in _identity_bn(sd["fc.bias"]).items():
                    sd[f"features.{key}"] = value
                sd["fc.bias"] = np.zeros_like(sd["fc.bias"])
    if i != len(weighted):
        extra = weighted[i]
        raise ValueError(f"{source}: unexpected weighted node after the IResNet: {extra.op_type} {extra.name!r}.")
    image_size = None
    dims = graph.input[0].type.tensor_type.shape.dim if graph.input else []
    if len(dims) == 4 and dims[2].dim_value and dims[3].dim_value:
        image_size = (int(dims[2].dim_value), int(dims[3].dim_value))
    return sd, {"stage_blocks": tuple(blocks), "image_size": image_size, "fused_bn": fused}


# ----------------------------------------------------------------------------- state dict -> Keras
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
        keys = sorted(state_dict)[:6]
        raise ValueError("Not an insightface IResNet state dict (no conv1.weight / fc.weight); "
                         f"first keys: {keys}. MobileFaceNet state dicts are not converted yet.")
    blocks = []
    for s in range(1, 5):
        ids = {int(m.group(1)) for k in state_dict if (m := re.match(rf"layer{s}\.(\d+)\.", k))}
        if not ids:
            raise ValueError(f"IResNet state dict has no layer{s}.* weights.")
        blocks.append(max(ids) + 1)
    filters = tuple(int(state_dict[f"layer{s}.0.conv1.weight"].shape[0]) for s in range(1, 5))
    emb, fc_in = state_dict["fc.weight"].shape
    if image_size is None:
        side = int(round(np.sqrt(fc_in / filters[-1])))
        if side * side * filters[-1] != fc_in:
            raise ValueError(f"fc.weight has {fc_in} inputs, not a square map of {filters[-1]} channels; "
                             "pass image_size.")
        image_size = (16 * side, 16 * side)
    depth = next((d for d, b in IRESNET_STAGE_BLOCKS.items() if tuple(b) == tuple(blocks)), None)
    return {"depth": depth or 50, "stage_blocks": None if depth else tuple(blocks),
            "stage_filters": filters, "embedding_dim": int(emb),
            "image_shape": (int(image_size[0]), int(image_size[1]), 3),
            **({} if depth else {"name": "iresnet_custom"})}


def load_iresnet_state_dict(model, state_dict):
    """Assign an insightface state dict to a Keras `IResNet` (one tensor group per layer).

    Every weighted Keras layer must receive weights and every state-dict entry must be used
    (``num_batches_tracked`` is ignored), otherwise a `ValueError` names the missing/unused ones.

    Returns:
        The number of Keras layers assigned.

    Example::

        load_iresnet_state_dict(IResNet(depth=50), read_torch_state_dict("backbone.pth"))
    """
    import keras

    sd = {k: np.asarray(v) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    modules = sorted({k.rsplit(".", 1)[0] for k in sd})
    used, assigned = set(), set()
    fc = model.get_layer("head_fc")
    h, w = model.get_layer("head_flatten").input.shape[1:3]
    for module in modules:
        name = keras_layer_name(module)
        try:
            layer = model.get_layer(name)
        except ValueError:
            raise ValueError(f"State dict module {module!r} has no Keras layer {name!r} in {model.name}.") from None

        def take(suffix, shape=None):
            key = f"{module}.{suffix}"
            if key not in sd:
                raise ValueError(f"State dict is missing {key!r} (for Keras layer {name!r}).")
            used.add(key)
            return sd[key]

        def put(var, value, key):
            if tuple(var.shape) != tuple(value.shape):
                raise ValueError(f"{key}: shape {value.shape} after conversion does not fit Keras "
                                 f"{var.path} {tuple(var.shape)}.")
            var.assign(value.astype(var.dtype))

        if isinstance(layer, keras.layers.Conv2D):
            put(layer.kernel, take("weight").transpose(2, 3, 1, 0), f"{module}.weight")
        elif isinstance(layer, keras.layers.PReLU):
            put(layer.alpha, take("weight").reshape(1, 1, -1), f"{module}.weight")
        elif layer is fc:
            wt = take("weight")
            d, n = wt.shape
            c = n // (h * w)
            if c * h * w != n:
                raise ValueError(f"fc.weight has {n} inputs; the Keras head flattens {h}x{w}x? maps.")
            put(layer.kernel, wt.reshape(d, c, h, w).transpose(2, 3, 1, 0).reshape(n, d), "fc.weight")
            put(layer.bias, take("bias"), "fc.bias")
        elif isinstance(layer, keras.layers.BatchNormalization):
            gamma = sd.get(f"{module}.weight")
            used.add(f"{module}.weight")
            beta, mean, var = take("bias"), take("running_mean"), take("running_var")
            if layer.scale:
                put(layer.gamma, gamma if gamma is not None else np.ones_like(beta), f"{module}.weight")
            elif gamma is not None and not np.allclose(gamma, 1.0):
                if np.any(gamma <= 0):
                    raise ValueError(f"{module}.weight has non-positive values; Keras {name!r} has no gamma.")
                var = (var + BN_EPSILON) / gamma.astype(np.float64) ** 2 - BN_EPSILON  # exact fold
            put(layer.beta, beta, f"{module}.bias")
            put(layer.moving_mean, mean, f"{module}.running_mean")
            put(layer.moving_variance, np.asarray(var), f"{module}.running_var")
        else:
            raise ValueError(f"Unexpected Keras layer type {type(layer).__name__} for {module!r}.")
        assigned.add(name)
    unused = sorted(set(sd) - used)
    missing = sorted(l.name for l in model.layers if l.weights and l.name not in assigned)
    if unused or missing:
        raise ValueError(f"State dict does not match {model.name}: unused entries {unused[:5]}, "
                         f"Keras layers without weights {missing[:5]}.")
    return len(assigned)


def iresnet_from_state_dict(state_dict, image_size=None):
    """Build a Keras `IResNet` matching an insightface state dict and load it.

    Example::

        backbone = iresnet_from_state_dict(read_torch_state_dict("backbone.pth"))
    """
    from keras_facemargin.backbones.iresnet import IResNet

    model = IResNet(**iresnet_config_from_state_dict(state_dict, image_size))
    load_iresnet_state_dict(model, state_dict)
    return model


def convert_insightface(path, image_size=None):
    """Convert an insightface IResNet ``.onnx`` or ``.pth`` file to a Keras `IResNet` backbone.

    Args:
        path: ``.onnx`` (e.g. ``w600k_r50.onnx``) or ``.pth``/``.pt`` (``backbone.pth``).
        image_size: `(H, W)` override (default: from the ONNX input or the fc shape).

    Returns:
        A Keras `IResNet` (raw embeddings; wrap with `keras_facemargin.export.as_embedder` for
        L2-normalised ones) taking NHWC float images.

    Example::

        backbone = convert_insightface("w600k_r50.onnx")
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"insightface weights not found: {path}")
    if path.suffix.lower() == ".onnx":
        sd, info = onnx_to_state_dict(path)
        image_size = image_size or info["image_size"]
    elif path.suffix.lower() in (".pth", ".pt"):
        sd = read_torch_state_dict(path)
    else:
        raise ValueError(f"Expected an insightface .onnx or .pth file, got {path}.")
    return iresnet_from_state_dict(sd, image_size)
