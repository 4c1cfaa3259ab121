"""Class-sharded model parallelism on JAX: the class centres split over devices (`keras.distribution`).

`class_sharded_distribution(heads)` returns a `keras.distribution.ModelParallel` on a 1-D
mesh of N devices. Every margin head's (d, C) class-centre kernel is split along its class
axis, so each device holds C/N centres (and their optimizer slots, which Keras lays out like
the variable they belong to). Per-class state (KappaFace `kappa`, `psi`, `class_counts`, the
`feature_sums` / `feature_counts` accumulators; a softmax `bias`; Center loss `centers`) is
split the same way, and the KappaFace memory buffer along its sample rows: each head says which
of its variables have a class (or sample) axis (`FaceHead.variable_axes`, the head protocol of
`keras_facemargin.layers.base`). Everything else
(the backbone) is replicated, and each batch is split over the same N devices (data parallel),
so the backbone runs data-parallel and the head model-parallel, as insightface's Partial FC
does with hand-written collectives; here XLA's GSPMD partitioner inserts them from the
layouts.

Example (JAX backend; build the model under the distribution, then fit as usual):
    >>> head = ArcMarginDense(num_classes=85742)
    >>> distribution = class_sharded_distribution(head)       # all of jax.devices()
    >>> with distribution.scope():
    ...     model = FaceRecognizer(backbone_fn(), head)
    ...     model.compile(optimizer="sgd", loss=SparseCategoricalCrossentropy(from_logits=True))
    ...     model.fit(dataset, epochs=24)

From the command line: `python examples/train_ms1mv2.py --backend jax --shard-classes`.
"""

import re
import warnings
from keras_facemargin.errors import ClassShardingError  # noqa: F401  (re-exported)

DEFAULT_AXIS = "devices"


def class_heads(model_or_heads):
    """The layers that own a class-centre kernel in a model, a head, or a sequence of them.

    Every `keras_facemargin.layers.base.FaceHead` found contributes its `centre_layer()` (the
    head itself, or the head a `SubFaceDense` wraps); other layers (`PartialFC`,
    `FaceRecognizer`, models) are searched through their `head` and `layers`.
    """
    from keras_facemargin.layers.base import FaceHead

    roots = list(model_or_heads) if isinstance(model_or_heads, (list, tuple)) else [model_or_heads]
    found, stack, seen = [], roots[::-1], set()
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, FaceHead):
            owner = layer.centre_layer()
            if id(owner) not in {id(h) for h in found}:
                found.append(owner)
            continue
        child = getattr(layer, "head", None)
        if child is not None:
            stack.append(child)
        stack.extend(reversed(getattr(layer, "layers", None) or []))
    return found


def _layout(roles, axis):
    """A layout tuple from `FaceHead.variable_axes` roles: the mesh axis where the role is sharded."""
    from keras_facemargin.layers.base import CLASSES, SAMPLES

    return tuple(axis if role in (CLASSES, SAMPLES) else None for role in roles)


def class_sharded_layout_map(model_or_heads, device_mesh, axis_name=None):
    """The `keras.distribution.LayoutMap` of `class_sharded_distribution` (see there).

    Keys are regexes matched (`re.fullmatch`) against `variable.path`, one per sharded variable of
    each head, anchored on the head's name (`(.*/)?<head name>/<variable name>`), so a head built
    inside a model (path `face_recognizer/<head>/kernel`) or alone (`<head>/kernel`) matches and no
    backbone variable does. Unmatched variables are replicated.

    Raises:
        ClassShardingError: no head found, a head's `num_classes` is not divisible by the mesh
            size along `axis_name`, or a head is already built (its variables exist unsharded).
    """
    import keras

    from keras_facemargin.layers.base import SAMPLES

    axis = axis_name or device_mesh.axis_names[0]
    n = int(device_mesh.shape[list(device_mesh.axis_names).index(axis)])
    heads = class_heads(model_or_heads)
    if not heads:
        raise ClassShardingError(
            "No margin head (a keras_facemargin.layers.base.FaceHead, e.g. ArcMarginDense) found in "
            f"{type(model_or_heads).__name__}: nothing to shard along the class axis."
        )
    layout_map = keras.distribution.LayoutMap(device_mesh)
    for head in heads:
        if head.built:
            raise ClassShardingError(
                f"Head {head.name!r} is already built: its variables were created unsharded. Pass the heads "
                "before their first call and build the model inside `distribution.scope()` (or after "
                "`keras.distribution.set_distribution(distribution)`)."
            )
        if head.num_classes % n:
            raise ClassShardingError(
                f"Cannot shard head {head.name!r} along the class axis: num_classes={head.num_classes} is not "
                f"divisible by the device count {n} ({head.num_classes} % {n} = {head.num_classes % n}). "
                "Use a device count that divides num_classes, or train without class sharding."
            )
        prefix = r"(?:.*/)?" + re.escape(head.name) + "/"
        axes = head.variable_axes()
        by_samples = sorted(name for name, roles in axes.items() if SAMPLES in roles)
        num_samples = getattr(head, "num_samples", None)
        if by_samples and num_samples and num_samples % n:
            warnings.warn(
                f"Head {head.name!r}: the memory buffer's num_samples={num_samples} is not divisible by the "
                f"device count {n}, so the buffer ({num_samples} x embedding_dim) is replicated on every "
                "device instead of split by rows. Drop a few training samples to make it divisible, or use "
                "estimator='momentum_encoder' (no buffer).",
                stacklevel=3,
            )
        for name, roles in axes.items():
            if name in by_samples and (not num_samples or num_samples % n):
                continue  # replicated
            layout_map[prefix + name] = _layout(roles, axis)
    return layout_map


def class_sharded_distribution(model_or_heads, devices=None, axis_name=DEFAULT_AXIS):
    """A `keras.distribution.ModelParallel` that splits the class centres over `devices` (JAX).

    A 1-D `DeviceMesh` of the N devices, with one axis `axis_name` used twice: each head's
    class-centre kernel (d, C) is laid out `(None, axis)` (C/N columns per device; `(axis, None)`
    for the class-major kernel of a `PartialFC`-wrapped head), per-class state `(axis, ...)`, the
    KappaFace memory buffer `(axis, None)` by sample rows (replicated, with a warning, when |D| is
    not divisible by N), and the batch is split along `axis` (the `batch_dim_name`): the global
    batch size must be divisible by N. The other variables are replicated.

    Set it before the model's variables exist: pass the (unbuilt) heads, then build the model inside
    `distribution.scope()` or after `keras.distribution.set_distribution(distribution)`; `fit`,
    `KappaUpdater` and saving work unchanged. Results equal the unsharded run's up to float
    summation order (tests/test_jax_class_sharding.py, 2 host devices).

    Args:
        model_or_heads: an unbuilt head, a sequence of heads, or a model holding them (`FaceRecognizer`
            whose head is not built yet).
        devices: the devices (default: `keras.distribution.list_devices()`, every JAX device).
        axis_name: the mesh axis name.

    Returns:
        A `keras.distribution.ModelParallel`.

    Raises:
        NotImplementedError: the Keras backend is not JAX.
        ClassShardingError (a `ValueError`): `num_classes` not divisible by the device count, no head,
            or a head already built.

    Example:
        >>> # XLA_FLAGS=--xla_force_host_platform_device_count=2 KERAS_BACKEND=jax
        >>> distribution = class_sharded_distribution(KappaMarginDense(8, counts, num_samples=64))
        >>> keras.distribution.set_distribution(distribution)   # then build and fit the model
    """
    import keras

    if keras.backend.backend() != "jax":
        raise NotImplementedError(
            f"class_sharded_distribution needs the JAX backend (keras.distribution's ModelParallel); the "
            f"backend is {keras.backend.backend()!r}. Set KERAS_BACKEND=jax before importing keras, or on "
            "TensorFlow use MirroredStrategy with Partial FC (sample_rate < 1) for many identities."
        )
    devices = list(devices) if devices is not None else keras.distribution.list_devices()
    if not devices:
        raise ValueError("`devices` must hold at least one device.")
    mesh = keras.distribution.DeviceMesh(shape=(len(devices),), axis_names=(axis_name,), devices=devices)
    layout_map = class_sharded_layout_map(model_or_heads, mesh, axis_name)
    return keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name=axis_name)


def shard_shapes(variable):
    """The shapes of a variable's addressable shards, e.g. `[(16, 4), (16, 4)]` for a (16, 8) kernel on 2 devices."""
    value = getattr(variable, "value", variable)
    return [tuple(s.data.shape) for s in value.addressable_shards]
