"""An untrusted ONNX model read as a data-flow graph (`load_onnx`, `OnnxGraph`).

`load_onnx` parses the protobuf with ``load_external_data=False`` and checks it before anything
is converted: node counts (main graph, subgraphs, local functions, and the main graph once local
functions are inlined: ``max_nodes``, refusing recursive functions), and external data, refused
unless allowed, then read only for initializers and Constant values of the main graph, only from
the model's own folder (never relative to the current directory), each range checked against its
file. `OnnxGraph.build` then checks every tensor's type, dims and data length before converting
it, orders the nodes in O(n log n) (Kahn's algorithm), folds constant subgraphs within a byte
budget, removes value-preserving nodes (Identity, Dropout, float Casts), sets shape arithmetic
aside and indexes each tensor's consumers, so that a reader (`keras_facemargin.convert.
insightface_onnx`) can follow the data flow from the image input.

Whatever the bytes, errors are ``OSError`` (a missing or unreadable file) or a
:class:`~keras_facemargin.errors.WeightsConversionError` naming the file and, with ``.node``,
the node (`ExternalDataError` for external data).

Example::

    model, source, model_bytes = load_onnx("w600k_r50.onnx", allow_external_data=False, max_nodes=ONNX_MAX_NODES)
    g = OnnxGraph(source).build(model, default_max_folded_bytes(model_bytes))
    g.next_node(g.input.name, "the stem Conv")          # Conv node 'Conv_0'
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np

from keras_facemargin.errors import ExternalDataError, WeightsConversionError
from keras_facemargin.utils.untrusted import short_repr as _short

__all__ = ["ONNX_MAX_NODES", "OnnxGraph", "default_max_folded_bytes", "load_onnx"]

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


def default_max_folded_bytes(model_bytes):
    """The default budget of `OnnxGraph.build` for a model of `model_bytes` (file plus external
    data): 4x its size + 64 MiB."""
    return max(_MIN_FOLDED_BYTES, _FOLDED_FILE_MULTIPLE * model_bytes + _MIN_FOLDED_BYTES)


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
        raise WeightsConversionError(f"{source}: {what} has data type {tensor.data_type}; weights and shape constants "
                                     f"are one of {sorted(_ONNX_DTYPES)}.", source)
    dims = [int(d) for d in tensor.dims]
    if len(dims) > _ONNX_MAX_DIMS or any(d < 0 for d in dims):
        raise WeightsConversionError(f"{source}: {what} has dims {_short(dims)}; expected at most {_ONNX_MAX_DIMS} "
                                     "sizes >= 0.", source)
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
                    raise WeightsConversionError(f"{source}: local function {_short(k[1])} calls itself (a cycle).",
                                                 source)
                size[k] = sum(size[key(n)] if key(n) in funcs else 1 for n in funcs[k].node)
                if size[k] > max_nodes:
                    raise WeightsConversionError(f"{source}: local function {_short(k[1])} expands to {size[k]:,} "
                                                 f"nodes, above max_nodes={max_nodes:,}.", source)
                stack.pop()
                continue
            state[k] = "open"
            for n in funcs[k].node:
                c = key(n)
                if c in funcs and c not in size:
                    if state.get(c) == "open":
                        raise WeightsConversionError(f"{source}: local function {_short(c[1])} calls itself (a cycle).",
                                                     source)
                    stack.append(c)
    return sum(size.get(key(n), 1) for n in model.graph.node)


def load_onnx(model, allow_external_data, max_nodes):
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
            raise WeightsConversionError(f"{source}: not a readable ONNX model ({type(err).__name__}: "
                                         f"{_short(str(err), 300)}).", source) from None
    nodes = _graph_nodes(model)
    if len(nodes) > max_nodes:
        raise WeightsConversionError(f"{source}: {len(nodes):,} nodes, above max_nodes={max_nodes:,} (IResNet / "
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


class OnnxGraph:
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
                raise WeightsConversionError(f"{source}: {proto.op_type} node {_short(proto.name, 100)} is malformed "
                                             f"({type(err).__name__}: {_short(str(err))}).", source,
                                             proto.name) from None
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
        return WeightsConversionError(f"{self.source}: {message}", self.source, None if node is None else node.name)

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
        except WeightsConversionError as err:
            raise WeightsConversionError(str(err), self.source, None if node is None else node.name) from None
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
            raise WeightsConversionError(f"{self.source}: {proto.op_type} node {_short(proto.name, 100)} reads "
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
