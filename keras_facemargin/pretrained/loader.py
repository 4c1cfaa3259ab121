"""`keras_facemargin.load(name)` and `list_models()`: named pretrained embedders.

Where the weights of ``load(name)`` come from, in order:

1. ``weights=PATH``: a backbone ``.weights.h5``, a ``.keras`` model, or an insightface IResNet
   ``.onnx`` / ``.pth`` (converted on the fly with `keras_facemargin.pretrained.convert`);
2. ``$KERAS_FACEMARGIN_HOME/<weights_file>``;
3. the Keras cache ``$KERAS_HOME/keras_facemargin/<weights_file>`` (default ``~/.keras``);
4. a download of ``weights_url`` with ``keras.utils.get_file(..., file_hash=sha256,
   cache_subdir="keras_facemargin")``.

What is hash-checked: when the registry has a sha256 for the model, it is verified before loading
for every file found in 2., 3. or downloaded in 4., and for a ``weights=PATH`` file that is the
registry's file (named ``weights_file``, any extension) or of the same type (same extension,
``.weights.h5`` counting as one); a file whose hash differs is never loaded. A ``weights=PATH``
file of another type (e.g. a ``.onnx`` / ``.pth`` / ``.keras`` of the user's own when the registry
ships ``.weights.h5``) is the user's file and is *not* hash-checked. Without a registry sha256
(the case of every model today) nothing is hash-checked, and the registry never lists a
``weights_url`` without a sha256. Every failure names the model, the expected path and the
expected sha256.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from keras_facemargin.pretrained.registry import MODELS, get_model_info

__all__ = ["load", "list_models", "expected_weights_path", "sha256_of", "PretrainedWeightsError"]


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights are unavailable, unreachable or fail their hash check."""


def list_models():
    """Names accepted by `load`, sorted.

    Example::

        kfm.list_models()   # ['arcface_mobilefacenet', 'arcface_r100', ...]
    """
    return sorted(MODELS)


def _keras_home():
    return Path(os.environ.get("KERAS_HOME", Path("~/.keras").expanduser())).expanduser()


def expected_weights_path(name):
    """Where `load(name)` looks for the weights in the Keras cache.

    Example::

        expected_weights_path("arcface_r50")  # ~/.keras/keras_facemargin/arcface_r50_ms1mv3.weights.h5
    """
    return _keras_home() / "keras_facemargin" / get_model_info(name)["weights_file"]


def sha256_of(path, chunk=1 << 20):
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _how_to(name, info):
    home = os.environ.get("KERAS_FACEMARGIN_HOME")
    where = f"$KERAS_FACEMARGIN_HOME ({home})" if home else "$KERAS_FACEMARGIN_HOME"
    return (f"expected file: {expected_weights_path(name)} (or {where}/{info['weights_file']}); "
            f"expected sha256: {info['sha256'] or 'none published'}. Supply a local file with "
            f"keras_facemargin.load({name!r}, weights=PATH) or place it in $KERAS_FACEMARGIN_HOME. "
            f"To produce it: {info['conversion']}.")


def _check_hash(path, name, info):
    expected = info["sha256"]
    if expected is None:
        return
    actual = sha256_of(path)
    if actual != expected.lower():
        raise PretrainedWeightsError(
            f"Weights for {name!r} at {path} fail the hash check: sha256 {actual}, expected {expected} "
            "(corrupt or wrong file; not loaded). Delete it and retry, or pass the right file with weights=PATH.")


def _file_type(filename):
    filename = filename.lower()
    return ".weights.h5" if filename.endswith(".weights.h5") else Path(filename).suffix


def _resolve(name, info, weights):
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights={str(weights)!r} for {name!r}: file not found.")
        if path.name == info["weights_file"] or _file_type(path.name) == _file_type(info["weights_file"]):
            _check_hash(path, name, info)  # the registry's file (or one of its type): verified
        return path
    home = os.environ.get("KERAS_FACEMARGIN_HOME")
    for candidate in ([Path(home).expanduser() / info["weights_file"]] if home else []) + [expected_weights_path(name)]:
        if candidate.is_file():
            _check_hash(candidate, name, info)
            return candidate
    if info["weights_url"] is None:
        raise PretrainedWeightsError(f"No weights for {name!r}: {info['status']} {_how_to(name, info)}")
    import keras

    cache_dir = _keras_home()
    try:
        # get_file silently falls back to /tmp/.keras when the cache dir does not exist yet.
        (cache_dir / "keras_facemargin").mkdir(parents=True, exist_ok=True)
        path = keras.utils.get_file(fname=info["weights_file"], origin=info["weights_url"],
                                    file_hash=info["sha256"], hash_algorithm="sha256",
                                    cache_dir=str(cache_dir), cache_subdir="keras_facemargin")
    except Exception as err:  # network errors, HTTP errors, hash mismatch of the download
        raise PretrainedWeightsError(
            f"Could not download the weights of {name!r} from {info['weights_url']} "
            f"({type(err).__name__}: {err}). {_how_to(name, info)}") from err
    path = Path(path)
    _check_hash(path, name, info)
    return path


def load(name, include_head=False, weights=None):
    """Build the named pretrained model and load its weights.

    Args:
        name: one of `list_models()` (case-insensitive).
        include_head: `False` (default) returns the embedder (backbone + L2 normalisation).
            `True` needs a `.keras` file of a whole `FaceRecognizer` passed as `weights` (margin
            heads of released checkpoints are not distributed) and returns it.
        weights: optional local file: the backbone's `.weights.h5`, a `.keras` model, or an
            insightface IResNet `.onnx` / `.pth` (converted on the fly). Verified against the
            registry's sha256 when there is one and the file is the registry's `weights_file` or
            of its type; another type is the user's own file and is not hash-checked.

    Returns:
        A `keras.Model`: normalised float images `(batch, 112, 112, 3)` -> unit-norm embeddings
        (see the registry's `normalization` for the model's expected input scaling).

    Raises:
        ValueError: unknown name (lists the known ones).
        PretrainedWeightsError: no weights available / download failed / hash mismatch; the
            message names the model, the expected path and the expected sha256.

    Example::

        embedder = keras_facemargin.load("arcface_r50", weights="arcface_r50_ms1mv3.weights.h5")
        emb = embedder.predict((images - 127.5) / 127.5)
    """
    import keras

    from keras_facemargin.backbones.presets import get_backbone
    from keras_facemargin.export.savedmodel import as_embedder

    info = get_model_info(name)
    name = name.lower()
    path = _resolve(name, info, weights)
    suffix = path.suffix.lower()
    if suffix == ".keras":
        import keras_facemargin  # noqa: F401  (registers serializable classes)

        model = keras.saving.load_model(path, compile=False)
        if include_head:
            if not hasattr(model, "head"):
                raise ValueError(f"include_head=True needs a FaceRecognizer .keras file; {path} holds "
                                 f"a {type(model).__name__}.")
            return model
        return as_embedder(model)
    if include_head:
        raise ValueError(f"include_head=True for {name!r} needs weights=<FaceRecognizer .keras file>; "
                         f"{path} holds backbone weights only (no margin head).")
    if suffix in (".onnx", ".pth", ".pt"):
        from keras_facemargin.pretrained.convert import convert_insightface

        backbone = convert_insightface(path, image_size=info["input_size"])
        if backbone.output_shape[-1] != info["embedding_dim"]:
            raise ValueError(f"{path} gives {backbone.output_shape[-1]}-d embeddings; {name!r} is "
                             f"{info['embedding_dim']}-d.")
        return as_embedder(backbone)
    if not path.name.endswith(".weights.h5"):
        raise ValueError(f"weights file {path} for {name!r}: expected .weights.h5, .keras, .onnx or .pth.")
    backbone = get_backbone(info["backbone"], embedding_dim=info["embedding_dim"],
                            image_shape=tuple(info["input_size"]) + (3,), **info.get("backbone_kwargs", {}))
    try:
        backbone.load_weights(path)
    except Exception as err:
        raise PretrainedWeightsError(
            f"Could not load {path} into the {info['backbone']} backbone of {name!r} "
            f"({type(err).__name__}: {err}). {_how_to(name, info)}") from err
    return as_embedder(backbone)
