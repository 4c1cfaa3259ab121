"""insightface IResNet / MobileFaceNet ONNX graphs -> insightface state dicts (`onnx_to_state_dict`).

The graph (loaded and checked by :mod:`keras_facemargin.convert.onnx_graph`) is read by following
its *data flow*: from the image input, each tensor's consumers decide what comes next (a block
input feeding a BN and a 1x1 conv is a downsampling block, the residual Add joins the two
branches, ...), so node order, initializer names and exporter do not matter. Accepted:
TorchScript (``dynamo=False``) and dynamo exports at opsets 11 to 18, conv+BN and Gemm+BN folded
or not (a folded BN becomes an identity BN carrying the bias; a BN an optimiser removed as
identity is restored as one), BNs written as ``Mul``/``Add`` pairs, onnxsim- and
onnxruntime-optimised (``ORT_ENABLE_BASIC``) graphs, and an input scaling baked into the graph
(``Sub``/``Mul``/``Div`` by scalars: it becomes the converted model's ``normalization``). Weights
in an external ``.onnx.data`` file are read only with ``allow_external_data=True``, from the
model file's own folder. Anything else raises
:class:`~keras_facemargin.errors.WeightsConversionError` naming the file and the node that does
not fit.

The state dict has PyTorch names and layouts (``{"conv1.weight": array, ...}``); turn it into a
Keras model with :mod:`keras_facemargin.convert.insightface`.

Example::

    sd, info = onnx_to_state_dict("w600k_r50.onnx")
    info["arch"], info["stage_blocks"]                  # ('iresnet', (3, 4, 14, 3))
"""

from __future__ import annotations

import numpy as np

from keras_facemargin.backbones.embedding_head import BN_EPSILON
from keras_facemargin.convert.onnx_graph import ONNX_MAX_NODES, OnnxGraph, default_max_folded_bytes, load_onnx
from keras_facemargin.errors import WeightsConversionError
from keras_facemargin.utils.untrusted import positive_cap as _positive
from keras_facemargin.utils.untrusted import short_repr as _short

__all__ = ["ONNX_MAX_NODES", "onnx_to_state_dict"]

_MAX_IMAGE_SIDE = 4096


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
    """Walks an `OnnxGraph` along the data flow, writing an insightface state dict."""

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
        WeightsConversionError: for anything else, whatever the bytes (a
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
        model, source, model_bytes = load_onnx(model, allow_external_data, max_nodes)
        if max_folded_bytes is None:
            max_folded_bytes = default_max_folded_bytes(model_bytes)
        g = OnnxGraph(source)
        return _parse_onnx(model, g, max_folded_bytes)
    except (WeightsConversionError, OSError):
        raise
    except Exception as err:  # noqa: BLE001 - whatever the bytes, the error is typed and names the file
        node = None if g is None else g.current
        where = "" if node is None else f" at {node}"
        kind = "ran out of memory" if isinstance(err, MemoryError) else "malformed ONNX graph"
        raise WeightsConversionError(f"{source}: {kind}{where} ({type(err).__name__}: {_short(str(err), 300)}).",
                                     source, None if node is None else node.name) from None


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
            raise WeightsConversionError(f"{source}: {key} holds NaN or infinite values"
                                         + (f" (from {node})." if node is not None else "."), source,
                                         None if node is None else node.name)
    g.current = None
    image_size = _input_size(g, info, parser.sd)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    info.update(image_size=image_size, fused_bn=parser.fused, normalization=normalization, opset=opset)
    return dict(parser.sd), info

