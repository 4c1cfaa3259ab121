"""The head table and `build_head`, without the heads that register themselves in it.

A separate module so that a head which builds another head by name (``SubFaceDense``)
can import `build_head` while :mod:`keras_facemargin.layers.registry`, which fills the
table with every head, imports that head: the dependency is one-way. Use the public
names from :mod:`keras_facemargin.layers.registry` (the same objects).
"""

import inspect

from keras_facemargin.layers.arcface import ArcMarginDense
from keras_facemargin.layers.combined import CombinedMarginDense
from keras_facemargin.layers.cosface import CosMarginDense
from keras_facemargin.layers.cosine_dense import CosineDense
from keras_facemargin.layers.kappaface import KappaMarginDense

# name -> (layer class, keyword overrides of the class defaults)
HEADS = {
    "kappaface": (KappaMarginDense, {}),
    "arcface": (ArcMarginDense, {}),
    "cosface": (CosMarginDense, {}),
    "combined": (CombinedMarginDense, {}),
    "normsoftmax": (CosineDense, {}),
}


def register_head(name, layer_class, **defaults):
    """Add (or replace) a named head; `defaults` override the class defaults."""
    HEADS[name] = (layer_class, dict(defaults))


def head_names():
    """Sorted names accepted by `build_head`."""
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
    from keras_facemargin.layers.partial_fc import PartialFC

    pfc = PartialFC(head, sample_rate=sample_rate, seed=sample_seed)
    return pfc if pfc.sampled else head
