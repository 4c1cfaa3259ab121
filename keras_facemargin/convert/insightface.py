"""insightface IResNet / MobileFaceNet weights -> Keras backbones (`convert_insightface`).

Both routes first produce an insightface *state dict* (``{"conv1.weight": array, ...}``, PyTorch
names and layouts): `keras_facemargin.convert.insightface_onnx.onnx_to_state_dict` from an ONNX
graph, `keras_facemargin.convert.pth.read_torch_checkpoint` from a ``torch.save`` file (both
without torch, both treating the file as untrusted). Then `load_iresnet_state_dict` /
`load_mobilefacenet_state_dict` fill `keras_facemargin.backbones.IResNet` / `MobileFaceNet`
one-to-one (names in ``backbones/iresnet.py`` and ``backbones/mobilefacenet.py``):

* conv ``(O, I/groups, kh, kw)`` -> Keras HWIO ``(kh, kw, I/groups, O)``; depthwise
  ``(C, 1, kh, kw)`` -> ``(kh, kw, C, 1)``;
* BatchNorm weight/bias/running_mean/running_var -> gamma/beta/moving_mean/moving_variance
  (IResNet's ``features`` has a fixed gamma of 1 in insightface; Keras ``head_features`` has no
  gamma there, so a gamma != 1, e.g. folded by an exporter, is folded exactly into the variance);
* PReLU ``(C,)`` -> ``(1, 1, C)``;
* ``fc.weight`` ``(D, C*H*W)``: PyTorch flattens C, H, W and Keras H, W, C, so the rows are
  permuted: ``w.reshape(D, C, H, W).transpose(2, 3, 1, 0).reshape(H*W*C, D)`` (MobileFaceNet's
  GDC leaves a 1x1 map: a plain transpose).

`read_insightface` also validates the architecture the file describes (stage and block counts,
shapes, image size) before `convert_insightface` builds it, so a crafted file is refused before
a Keras model of its choosing is built. Errors are ``OSError`` or a
:class:`~keras_facemargin.errors.WeightsConversionError` naming the file (`ExternalDataError`,
`UnsafeWeightsError`: see the readers).

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

import re
from pathlib import Path

import numpy as np

from keras_facemargin.backbones.embedding_head import BN_EPSILON
from keras_facemargin.convert.insightface_onnx import onnx_to_state_dict
from keras_facemargin.convert.pth import read_torch_checkpoint
from keras_facemargin.errors import WeightsConversionError

__all__ = ["INSIGHTFACE_NORMALIZATION", "state_dict_architecture", "keras_layer_name", "mobilefacenet_keras_layer_name",
           "iresnet_config_from_state_dict", "load_iresnet_state_dict", "iresnet_from_state_dict",
           "mobilefacenet_config_from_state_dict", "load_mobilefacenet_state_dict", "mobilefacenet_from_state_dict",
           "backbone_from_state_dict", "read_insightface", "convert_insightface"]

#: arcface_torch's input normalisation, ``(x - 127.5) / 127.5`` (``Normalize(mean=0.5, std=0.5)``).
INSIGHTFACE_NORMALIZATION = {"mean": 127.5, "std": 127.5}


def state_dict_architecture(state_dict):
    """``"iresnet"`` or ``"mobilefacenet"`` for an insightface state dict.

    Raises:
        WeightsConversionError: neither layout (lists the first keys).

    Example::

        state_dict_architecture(read_torch_state_dict("w600k_mbf.pth"))    # 'mobilefacenet'
    """
    if "conv1.weight" in state_dict and "fc.weight" in state_dict and "layer1.0.conv1.weight" in state_dict:
        return "iresnet"
    if "layers.0.layers.0.weight" in state_dict and "features.layers.2.weight" in state_dict:
        return "mobilefacenet"
    keys = sorted(state_dict)[:6]
    raise WeightsConversionError(
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
        raise WeightsConversionError(f"State dict is missing {key!r}.")
    shape = tuple(int(n) for n in np.shape(state_dict[key]))
    if len(shape) != ndim or 0 in shape:
        raise WeightsConversionError(f"{key} has shape {shape}; expected {ndim} non-empty dimensions.")
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
        raise WeightsConversionError("Not an insightface IResNet state dict (no conv1.weight / fc.weight); "
                                     f"first keys: {sorted(state_dict)[:6]}.{hint}")
    blocks = []
    for s in range(1, 5):
        ids = {int(m.group(1)) for k in state_dict if (m := re.match(rf"layer{s}\.(\d{{1,9}})\.", str(k)))}
        if not ids:
            raise WeightsConversionError(f"IResNet state dict has no layer{s}.* weights.")
        if ids != set(range(len(ids))):
            raise WeightsConversionError(f"IResNet state dict: the blocks of layer{s} are numbered {sorted(ids)[:6]}"
                                         f"{'...' if len(ids) > 6 else ''}, not 0 to {len(ids) - 1}.")
        blocks.append(len(ids))
    filters = tuple(int(_weight_shape(state_dict, f"layer{s}.0.conv1.weight", 4)[0]) for s in range(1, 5))
    emb, fc_in = (int(n) for n in _weight_shape(state_dict, "fc.weight", 2))
    if image_size is None:
        side = int(round(np.sqrt(fc_in / filters[-1])))
        if side * side * filters[-1] != fc_in:
            raise WeightsConversionError(f"fc.weight has {fc_in} inputs, not a square map of {filters[-1]} channels; "
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
            raise WeightsConversionError(f"Not an insightface MobileFaceNet state dict: no {key!r}; first keys: "
                                         f"{sorted(state_dict)[:6]}.")
    c1 = int(_weight_shape(state_dict, "layers.0.layers.0.weight", 4)[0])
    if c1 % 64:
        raise WeightsConversionError(f"layers.0.layers.0.weight has {c1} filters, not 64 * scale.")

    def count(layer):
        pattern = rf"layers\.{layer}\.layers\.(\d{{1,9}})\.layers\."
        return len({int(m.group(1)) for k in state_dict if (m := re.match(pattern, str(k)))})

    blocks = (1 if "layers.1.layers.0.weight" in state_dict else count(1), count(3), count(5), count(7))
    if 0 in blocks:
        raise WeightsConversionError(f"MobileFaceNet state dict with an empty stage: blocks {blocks}.")
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
            raise WeightsConversionError(f"State dict module {module!r} has no Keras layer in {model.name}.") from None

        def take(suffix):
            key = f"{module}.{suffix}"
            if key not in sd:
                raise WeightsConversionError(f"State dict is missing {key!r} (for Keras layer {name!r}).")
            used.add(key)
            return sd[key]

        def put(var, value, key):
            if tuple(var.shape) != tuple(value.shape):
                raise WeightsConversionError(f"{key}: shape {value.shape} after conversion does not fit Keras "
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
                raise WeightsConversionError(f"{module}.weight has {n} inputs; the Keras head flattens {h}x{w}x? maps.")
            put(layer.kernel, wt.reshape(d, c, h, w).transpose(2, 3, 1, 0).reshape(n, d), f"{module}.weight")
            if layer.use_bias:
                put(layer.bias, take("bias"), f"{module}.bias")
            elif f"{module}.bias" in sd:
                raise WeightsConversionError(f"{module}.bias: Keras {name!r} has no bias.")
        elif isinstance(layer, keras.layers.BatchNormalization):
            gamma = sd.get(f"{module}.weight")
            used.add(f"{module}.weight")
            beta, mean, var = take("bias"), take("running_mean"), take("running_var")
            if layer.scale:
                put(layer.gamma, gamma if gamma is not None else np.ones_like(beta), f"{module}.weight")
            elif gamma is not None and not np.allclose(gamma, 1.0):
                if np.any(gamma <= 0):
                    raise WeightsConversionError(f"{module}.weight has non-positive values; Keras {name!r} has no "
                                                 "gamma.")
                var = (var + BN_EPSILON) / gamma.astype(np.float64) ** 2 - BN_EPSILON  # exact fold
            put(layer.beta, beta, f"{module}.bias")
            put(layer.moving_mean, mean, f"{module}.running_mean")
            put(layer.moving_variance, np.asarray(var), f"{module}.running_var")
        else:
            raise WeightsConversionError(f"Unexpected Keras layer type {type(layer).__name__} for {module!r}.")
        assigned.add(name)
    unused = sorted(set(sd) - used)
    missing = sorted(l.name for l in model.layers if l.weights and l.name not in assigned)
    if unused or missing:
        raise WeightsConversionError(f"State dict does not match {model.name}: unused entries {unused[:5]}, "
                                     f"Keras layers without weights {missing[:5]}.")
    return len(assigned)


def load_iresnet_state_dict(model, state_dict):
    """Assign an insightface state dict to a Keras `IResNet` (one tensor group per layer).

    Every weighted Keras layer must receive weights and every state-dict entry must be used
    (``num_batches_tracked`` is ignored), otherwise a `WeightsConversionError` names the missing/unused ones.

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
        WeightsConversionError: the file is not a convertible insightface model (names the file).

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
        raise WeightsConversionError(f"Expected an insightface .onnx or .pth file, got {path}.", str(path))
    info["normalization_source"] = "graph" if info["normalization"] is not None else "insightface default"
    if info["normalization"] is None:
        info["normalization"] = dict(INSIGHTFACE_NORMALIZATION)
    try:
        info["arch"] = info["arch"] or state_dict_architecture(sd)
        info["config"] = (mobilefacenet_config_from_state_dict if info["arch"] == "mobilefacenet"
                          else iresnet_config_from_state_dict)(sd, image_size)
    except WeightsConversionError as err:
        raise WeightsConversionError(f"{path}: {err}", str(path)) from None
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
        WeightsConversionError (a ValueError and a `keras_facemargin.errors.UntrustedFileError`): the
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
    except WeightsConversionError as err:
        raise WeightsConversionError(f"{path}: {err}", str(path)) from None
    return (backbone, info) if return_info else backbone
