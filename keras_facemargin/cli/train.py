"""`kfm train`: train a face recognizer (the trainer of ``keras_facemargin.training.run``).

Every field of :class:`keras_facemargin.training.TrainConfig` is a flag, generated from the
dataclass (name, type and the help of its docstring): ``--batch-size 256``, ``--lr-steps 10,18,22``,
``--backbone-kwargs '{"stage_blocks": [1, 1, 1, 1]}'``, ``--mixed-precision`` /
``--no-mixed-precision``, ... A flag left out keeps the value of ``--experiment`` (default
``ms1mv2`` with ``--data``, ``synthetic`` without: generated faces, a few minutes on a CPU).
``--data`` is repeatable (several roots form one label space); ``--exclude-identities FILE``
reads the names from a file; TrainConfig's ``verbose`` is ``--keras-verbose`` (``--verbose``
shows TensorFlow's logs). Outputs go to ``<--output>/<name>/``; re-running the same command
resumes from the newest checkpoint, ``--resume RUN_DIR`` resumes a run with its saved config.

Example::

    kfm train                                              # synthetic default
    kfm train --data /data/faces_emore --loss arcface --batch-size 256 --mixed-precision
    kfm train --experiment glint360k --data /data/glint360k
    kfm train --resume runs/ms1mv2_kappaface_iresnet100

The backend is the one Keras runs on (``KERAS_BACKEND``, set before Python starts: ``KERAS_BACKEND=jax
kfm train --backend jax``).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import typing

from keras_facemargin.cli import _common

__all__ = ["register", "run_train", "config_from_args", "field_help"]

#: TrainConfig fields whose flag is not ``--<field-name>`` (``--verbose`` is every subcommand's log switch).
_FLAG_NAMES = {"verbose": "--keras-verbose"}
_DESTS = {"verbose": "keras_verbose"}
#: Enumerated fields: the config module's constant that lists the choices.
_CHOICES = {"estimator": "ESTIMATORS", "buffer_dtype": "BUFFER_DTYPES", "backend": "BACKENDS",
            "merge_identities": "MERGE_MODES"}


def field_help(cls) -> dict:
    """``{field: help}`` from the ``Args:`` section of a dataclass docstring (``a, b: text`` gives both)."""
    doc = inspect.getdoc(cls) or ""
    body = doc.split("Args:", 1)[1] if "Args:" in doc else ""
    helps, current = {}, []
    for line in body.splitlines():
        match = re.match(r"^ {4}(\w+(?:, \w+)*): (.*)$", line)
        if match:
            current = match.group(1).split(", ")
            helps.update({name: match.group(2) for name in current})
        elif line.startswith(" " * 8) and current:
            helps.update({name: helps[name] + " " + line.strip() for name in current})
        elif line.strip():
            break  # the next section
    return {name: text.replace("%", "%%") for name, text in helps.items()}


def _unwrap_optional(tp):
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return tp


def _json_dict(text):
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _int_list(text):
    try:
        return tuple(int(e) for e in text.split(",") if e.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _names(field_name) -> str:
    """`` (one of: ...)`` for the fields whose choices are registries that may grow (heads, backbones)."""
    if field_name == "loss":
        from keras_facemargin.layers import head_names

        return " (one of: " + ", ".join(head_names()) + ")"
    if field_name == "backbone":
        from keras_facemargin.backbones import BACKBONE_PRESETS

        return " (one of: " + ", ".join(sorted(BACKBONE_PRESETS)) + ")"
    return ""


def _add_field(group, field, tp, help_text, config) -> None:
    flag = _FLAG_NAMES.get(field.name, "--" + field.name.replace("_", "-"))
    default = field.default if field.default is not dataclasses.MISSING else (
        field.default_factory() if field.default_factory is not dataclasses.MISSING else None)
    if isinstance(default, tuple):
        default = ",".join(map(str, default)) or None
    elif isinstance(default, dict):
        default = json.dumps(default)
    shown = f" (TrainConfig default: {default})" if default is not None and field.name != "experiment" else ""
    shown += _names(field.name)
    kwargs = {"dest": _DESTS.get(field.name, field.name), "default": None, "help": help_text + shown}
    if field.name == "data":
        group.add_argument(flag, action="append", metavar="PATH", **kwargs)
    elif field.name == "exclude_identities":
        group.add_argument(flag, metavar="FILE", **{**kwargs, "help": "file of identity names to leave out "
                                                   "(one per line, or a .tsv whose first column is the name)"})
    elif field.name == "experiment":
        group.add_argument(flag, choices=sorted(config.EXPERIMENTS), **kwargs)
    elif tp is bool:
        group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
    elif tp is dict:
        group.add_argument(flag, type=_json_dict, metavar="JSON", **kwargs)
    elif tp is tuple:
        group.add_argument(flag, type=_int_list, metavar="N,N,...", **kwargs)
    elif field.name == "verbose":
        group.add_argument(flag, type=int, choices=(0, 1, 2), **kwargs)
    else:
        choices = getattr(config, _CHOICES.get(field.name, ""), None)
        group.add_argument(flag, type=tp if tp in (int, float, str) else str, choices=choices, **kwargs)


def register(sub, full: bool = True) -> None:
    """Add ``train`` to the ``kfm`` sub-parsers, one flag per TrainConfig field.

    Args:
        full: ``False`` adds the name and summary only (``kfm --help`` then does not import the trainer).
    """
    p = _common.add_parser(sub, "train", __doc__, [_common.common_options()])
    if not full:
        return
    from keras_facemargin.training import config

    helps = field_help(config.TrainConfig)
    hints = typing.get_type_hints(config.TrainConfig)
    group = p.add_argument_group("TrainConfig fields")
    for field in dataclasses.fields(config.TrainConfig):
        _add_field(group, field, _unwrap_optional(hints.get(field.name, str)), helps.get(field.name, ""), config)
    p.add_argument("--no-flip", dest="augment_flip", action="store_false", default=None,
                   help="no random horizontal flips (the same as --no-augment-flip)")
    p.add_argument("--resume", metavar="RUN_DIR", help="resume the run in RUN_DIR with its config.json")
    p.set_defaults(func=run_train)


def config_from_args(args):
    """The `TrainConfig` the flags describe (or the saved config of ``--resume``).

    Raises:
        ValueError: a bad value (the message names the field), or other flags with ``--resume``.
    """
    from pathlib import Path

    from keras_facemargin.training import config

    names = [f.name for f in dataclasses.fields(config.TrainConfig)]
    given = {k: getattr(args, _DESTS.get(k, k)) for k in names if getattr(args, _DESTS.get(k, k), None) is not None}
    if args.resume:
        others = sorted(_FLAG_NAMES.get(k, "--" + k.replace("_", "-")) for k in given if k != "experiment")
        if others:
            raise ValueError(f"--resume {args.resume} continues the run with its saved config.json; drop the "
                             f"other flags ({', '.join(others)}) or start a new run with --name.")
        path = Path(args.resume) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"--resume {args.resume}: no config.json there.")
        cfg = config.TrainConfig.from_json(path)
        if cfg.run_dir.resolve() != Path(args.resume).resolve():  # moved folder: follow it
            cfg = cfg.replace(output=str(Path(args.resume).parent), name=Path(args.resume).name)
        return cfg
    if "exclude_identities" in given:
        from keras_facemargin.data import read_identity_list

        given["exclude_identities"] = read_identity_list(given["exclude_identities"])
    if args.no_progress and "verbose" not in given:
        given["verbose"] = 2  # one line per epoch instead of the progress bar
    experiment = given.pop("experiment", None) or ("ms1mv2" if given.get("data") else "synthetic")
    return config.get_experiment(experiment, **given)


def run_train(args) -> int:
    """Train; 0 when the run finished."""
    import os

    import keras

    from keras_facemargin.errors import ConfigurationError

    cfg = config_from_args(args)
    if keras.backend.backend() != cfg.backend:
        raise ConfigurationError(
            "backend", f"The run's backend is {cfg.backend!r} (--backend, default tensorflow), but Keras runs on "
            f"{keras.backend.backend()!r} (KERAS_BACKEND={os.environ.get('KERAS_BACKEND')!r}). Start it as "
            f"`KERAS_BACKEND={cfg.backend} kfm train ...`.")
    if cfg.synthetic:
        print("No --data given: training the embedded SYNTHETIC default (generated faces, small IResNet).")
    from keras_facemargin.training import run

    return _common.EXIT_OK if run(cfg) is not None else _common.EXIT_CHECK_FAILED
