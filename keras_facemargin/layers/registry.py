"""Margin heads by name: the one head table and the one `build_head`.

Each entry maps a loss name to its layer class and the published defaults
(the class defaults are the papers'); `build_head` fills in what the head
needs from the training set (class counts, number of samples) and wraps it in
`PartialFC` when asked to sample the classes. The entries are written in
:mod:`keras_facemargin.layers.zoo` (one `register_head` line per head), which
`keras_facemargin.layers` imports; this module imports no head, so a head that
builds another one by name (``SubFaceDense``) can use `build_head`.

Example:
    >>> head = build_head("kappaface", num_classes=10, class_counts=counts, num_samples=123)
    >>> head = build_head("arcface", num_classes=10, margin=0.4)
    >>> head = build_head("cosface", num_classes=360232, sample_rate=0.1)   # PartialFC(CosMarginDense)
"""

import inspect

from keras_facemargin.layers.partial_fc import PartialFC

__all__ = ["HEADS", "build_head", "head_names", "register_head"]

# name -> (layer class, keyword overrides of the class defaults)
HEADS = {}


def register_head(name, layer_class, **defaults):
    """Add (or replace) a named head; `defaults` override the class defaults.

    Args:
        name: the name `build_head` (and `TrainConfig.loss`, `--loss`) accepts.
        layer_class: a `keras_facemargin.layers.base.FaceHead` subclass taking `num_classes` first.
        **defaults: constructor arguments of this entry (e.g. `target="cos"`).

    Example:
        >>> register_head("arcface_m04", ArcMarginDense, margin=0.4)
    """
    HEADS[name] = (layer_class, dict(defaults))


def head_names():
    """Sorted names accepted by `build_head` (the live table: later registrations included)."""
    return sorted(HEADS)


def build_head(name, num_classes, class_counts=None, num_samples=None, run_options=None, sample_rate=None,
               sample_seed=0, **overrides):
    """Build the head registered as `name` (wrapped in `PartialFC` when `sample_rate` < 1).

    Args:
        name: a name from `head_names()`.
        num_classes: number of identities.
        class_counts: images per class (passed to heads that take it, e.g. KappaFace).
        num_samples: training-set size (passed to heads that take it).
        run_options: run-wide settings (e.g. `{"scale": 32}`) passed only to heads
            whose constructor takes them; `None` values are ignored.
        sample_rate: Partial FC sampling rate in (0, 1]; below 1 the head is returned
            wrapped in `PartialFC(head, sample_rate, seed=sample_seed)`. `None` = no wrapper.
        sample_seed: seed of the Partial FC sampling.
        **overrides: layer arguments for this head; `None` values are ignored and an
            argument the head does not take is a `ValueError` naming it.

    Returns:
        The head layer (a `PartialFC` around it when sampling).

    Example:
        >>> head = build_head("arcface", 85742, run_options={"scale": 32.0})
    """
    if name not in HEADS:
        raise ValueError(f"Unknown loss/head name {name!r}. Known: {', '.join(head_names())}.")
    layer_class, defaults = HEADS[name]
    params = inspect.signature(layer_class.__init__).parameters
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    kwargs = dict(defaults)
    kwargs.update({k: v for k, v in (run_options or {}).items() if v is not None and k in params})
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in params and not (takes_kwargs and key in ("name", "dtype", "trainable")):
            accepted = sorted(k for k in params if k not in ("self", "kwargs", "num_classes"))
            raise ValueError(f"Head {name!r} takes no argument `{key}`; it takes {accepted}.")
        kwargs[key] = value
    if "class_counts" in params:
        if class_counts is None:
            raise ValueError(f"Head {name!r} needs `class_counts` (images per class).")
        kwargs["class_counts"] = class_counts
    if "num_samples" in params and num_samples is not None:
        kwargs.setdefault("num_samples", num_samples)
    head = layer_class(num_classes, **kwargs)
    if sample_rate is None:
        return head
    pfc = PartialFC(head, sample_rate=sample_rate, seed=sample_seed)
    return pfc if pfc.sampled else head
