"""`kfm`: the package's command line (``kfm`` after ``pip install .``, or ``python -m keras_facemargin``).

Subcommands (``kfm SUBCOMMAND --help`` for each)::

    verify A B                          are two photos the same person?
    identify GALLERY PHOTO...           who is in each photo? (GALLERY: a .npz or <identity>/ folders)
    embed PHOTO_OR_DIR... --output F    face embeddings of photos, to an .npz
    gallery add|remove|list GALLERY     keep a gallery of identities
    models [NAME]                       the model zoo, and what each model needs
    calibrate NAME                      decision thresholds of a zoo model (held-out CelebA pairs)
    export NAME_OR_PATH --format F      SavedModel / TFLite / ONNX, with a parity report
    convert CHECKPOINT --output F       insightface .onnx / .pth to Keras weights
    align --input RAW --output DIR      5-point alignment of a folder of photos
    evaluate verification|ijb|megaface  benchmarks
    train [--data PATH ...]             train a model (flags from TrainConfig's fields)
    data folder2rec|rec2tfrecord        convert training sets
    package MODEL --name N              package a trained run as a zoo model (maintainers)
    demo                                train and verify on generated faces (no data needed)

``--json`` prints one JSON object per result on stdout; exit codes are listed in
:mod:`keras_facemargin.cli._common` (0 decision, 1 failed check, 2 configuration / usage, 3 no face,
4 several faces, 5 unreadable image, 6 gallery). TensorFlow's logs are quiet unless ``--verbose``.

Example::

    kfm verify a.jpg b.jpg --json
    from keras_facemargin.cli import main
    status = main(["models", "--json"])
"""

from __future__ import annotations

import argparse
import sys

from keras_facemargin.cli import (_common, align, calibrate, convert, data, demo, embed, evaluate, export,
                                  gallery, models, package, train, verify)

__all__ = ["main", "build_parser"]

_MODULES = (verify, embed, gallery, models, calibrate, export, convert, align, evaluate, train, data, package, demo)


def build_parser(command=None) -> argparse.ArgumentParser:
    """The ``kfm`` parser: one sub-parser per subcommand, added by each module's ``register(sub)``.

    Args:
        command: the subcommand about to run; ``train``'s many flags are built only for it.
    """
    from keras_facemargin import __version__

    parser = argparse.ArgumentParser(
        prog="kfm", epilog=_common.EXIT_EPILOG + " `kfm SUBCOMMAND --help` for each; --json prints one JSON object "
        "per result; TensorFlow's logs are quiet unless --verbose.",
        description="keras_facemargin's command line: face verification and identification, galleries, "
                    "embeddings, the model zoo, export, conversion, training and benchmarks.")
    parser.add_argument("--version", action="version", version=f"keras_facemargin {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    for module in _MODULES:
        if module is train:
            train.register(sub, full=command in (None, "train"))
        else:
            module.register(sub)
    return parser


def main(argv=None) -> int:
    """Run ``kfm`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    ``--help`` and usage errors raise ``SystemExit`` (0 / 2), as argparse does.

    Example::

        main(["verify", "a.jpg", "b.jpg", "--json"])   # 0, and one JSON line on stdout
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    _common.configure_logging(verbose="--verbose" in argv)
    if argv and argv[0] in demo.PASSTHROUGH:  # a subcommand with its own parser
        return demo.PASSTHROUGH[argv[0]](argv[1:])
    parser = build_parser(argv[0] if argv and not argv[0].startswith("-") else "")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return _common.EXIT_USAGE
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("kfm: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001  (user errors become exit codes; others are re-raised)
        return _common.error_to_exit(error, args)
