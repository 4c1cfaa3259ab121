"""`kfm demo`: train a small face model on generated faces, then verify (no data needed).

The embedded default of :mod:`keras_facemargin.demo` (also ``python -m keras_facemargin.demo`` and
``keras-facemargin-demo``): long-tailed synthetic identities, a small IResNet with the chosen margin
head, and the 10-fold pair-verification accuracy on identities it never saw, next to the same
network before training. About 5 minutes on 2 CPU cores. Its options are the demo's own
(``kfm demo --help``).

Example::

    kfm demo --loss arcface --epochs 4 --output runs/demo
"""

from __future__ import annotations

import contextlib
import sys

from keras_facemargin.cli import _common

__all__ = ["register", "run_demo", "PASSTHROUGH"]


def register(sub) -> None:
    """Add ``demo`` to the ``kfm`` sub-parsers (listed only: ``kfm demo ...`` goes to `run_demo`)."""
    _common.add_parser(sub, "demo", __doc__, [], add_help=False)


@contextlib.contextmanager
def _program_name(name):
    """``sys.argv[0] = name`` for the demo's own parser (its usage line then reads ``kfm demo``)."""
    saved = sys.argv[0] if sys.argv else None
    if sys.argv:
        sys.argv[0] = name
    try:
        yield
    finally:
        if saved is not None:
            sys.argv[0] = saved


def run_demo(argv) -> int:
    """Run the demo with its own options ``argv``; 0 on success."""
    from keras_facemargin import demo

    with _program_name("kfm demo"):
        return int(demo.cli(argv))


#: Subcommands that parse their own options: ``kfm NAME ARGS...`` calls ``PASSTHROUGH[NAME](ARGS)``.
PASSTHROUGH = {"demo": run_demo}
