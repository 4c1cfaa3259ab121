"""`keras_facemargin.load(name)` and `list_models()`: named pretrained embedders.

Where the weights of ``load(name)`` come from, in order:

1. ``weights=PATH``: a backbone ``.weights.h5``, a ``.keras`` model, or an insightface IResNet /
   MobileFaceNet ``.onnx`` / ``.pth`` / ``checkpoint_gpu_0.pt`` (converted on the fly with
   `keras_facemargin.convert.insightface`);
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

A model with a ``source`` (``dlib_resnet_v1``) is converted from that file instead: the ``.dat`` of
the ``face_recognition_models`` package (a dependency, so it is there offline after ``pip install``)
or ``weights=PATH``; its sha256 is checked against the registry before it is read, and the
converted weights are cached as ``$KFM_CACHE_DIR/<name>-<sha256[:16]>.weights.h5`` (default
``~/.cache/keras_facemargin``; written atomically), so the conversion runs once.

Input normalisation follows the model. The embedder `load` returns takes images normalised the
way *that model* was trained, ``(x - mean) / std`` with ``embedder.normalization`` (a dict
``{"mean", "std"}``), taken from, in order: the ``normalization=`` argument; what the weights file
records (a file written by ``kfm convert``, see `write_normalization`, or the input
scaling baked into an ONNX graph); the registry entry. arcface_torch models use
``(x - 127.5) / 127.5``, this package ``(x - 127.5) / 128`` (`PACKAGE_NORMALIZATION`, what
``keras_facemargin.data.normalize_images``, the evaluation and the exporters feed).
`with_package_normalization` wraps a model so that it takes the package's inputs (exactly: one
``Rescaling`` layer), which is how the tools evaluate and export a model of another normalisation.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from keras_facemargin.pretrained.registry import MODELS, get_model_info
from keras_facemargin.errors import ModelFileError, PretrainedWeightsError  # noqa: F401  (re-exported)

__all__ = ["load", "list_models", "expected_weights_path", "packaged_weights_path", "sha256_of", "cache_dir",
           "source_path",
           "PretrainedWeightsError",
           "PACKAGE_NORMALIZATION", "parse_normalization", "read_normalization", "write_normalization",
           "with_package_normalization"]

#: ``keras_facemargin.data.normalize_images``: ``(x - 127.5) / 128`` (what evaluation and export feed).
PACKAGE_NORMALIZATION = {"mean": 127.5, "std": 128.0}
#: Weights shipped inside the package (package data, see setup.py).
PACKAGED_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
_METADATA_MEMBER = "keras_facemargin.json"  # in a .keras zip
_METADATA_ATTR = "keras_facemargin"  # root attribute of a .weights.h5


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


# ----------------------------------------------------------------------------- normalisation
def parse_normalization(value):
    """``{"mean": float, "std": float}`` from a dict, a number or a string (``None`` stays ``None``).

    A number or string gives the std with ``mean=127.5``: ``127.5`` is arcface_torch's
    ``(x - 127.5) / 127.5``, ``128`` this package's ``(x - 127.5) / 128`` (the CLI ``--normalize``).

    Raises:
        ValueError: not a finite mean and a finite positive std.

    Example::

        parse_normalization("127.5")              # {'mean': 127.5, 'std': 127.5}
        parse_normalization({"mean": 0, "std": 1})
    """
    if value is None:
        return None
    if isinstance(value, dict):
        if set(value) != {"mean", "std"}:
            raise ValueError(f"normalization must have exactly the keys 'mean' and 'std', got {sorted(value)}.")
        mean, std = value["mean"], value["std"]
    elif isinstance(value, (int, float, str)) and not isinstance(value, bool):
        mean, std = 127.5, value
    else:
        raise ValueError(f"normalization must be a dict {{'mean', 'std'}}, a number or None, got {value!r}.")
    try:
        mean, std = float(mean), float(std)
    except (TypeError, ValueError):
        raise ValueError(f"normalization {value!r}: mean and std must be numbers.") from None
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ValueError(f"normalization {value!r}: needs a finite mean and a finite std > 0.")
    return {"mean": mean, "std": std}


def write_normalization(path, normalization):
    """Record the input normalisation a model expects inside its ``.keras`` or ``.weights.h5`` file.

    Keras ignores the record (a ``keras_facemargin.json`` zip member of a ``.keras`` file, a
    ``keras_facemargin`` root attribute of a ``.weights.h5``); `read_normalization`, `load` and the
    tools read it.

    Example::

        backbone.save("w600k_r50.keras")
        write_normalization("w600k_r50.keras", {"mean": 127.5, "std": 127.5})
    """
    from keras_facemargin.utils.atomic import atomic_path

    norm = parse_normalization(normalization)
    path = Path(path)
    record = json.dumps({"normalization": norm})
    if path.name.endswith(".weights.h5"):
        import h5py

        with atomic_path(path, suffix=".weights.h5") as tmp:  # a copy is changed, then replaces the file
            shutil.copyfile(path, tmp)
            with h5py.File(tmp, "a") as f:
                f.attrs[_METADATA_ATTR] = record
    elif path.suffix == ".keras":
        with zipfile.ZipFile(path) as z:
            if _METADATA_MEMBER in z.namelist():
                raise ValueError(f"{path} already records its normalization; save the model again to change it.")
        with atomic_path(path, suffix=".keras") as tmp:
            shutil.copyfile(path, tmp)
            with zipfile.ZipFile(tmp, "a") as z:
                z.writestr(_METADATA_MEMBER, record)
    else:
        raise ValueError(f"{path}: the normalization is recorded in .keras or .weights.h5 files only.")
    return norm


def read_normalization(path):
    """The normalisation recorded by `write_normalization` in a ``.keras`` / ``.weights.h5`` file,
    or ``None`` (no record, another file type, or a file that is not a readable zip / HDF5 file).

    A record that is there but not valid -- over `MAX_RECORD_BYTES`, nested deeper than
    `MAX_JSON_DEPTH`, not JSON, or not ``{"normalization": {"mean", "std"}}`` -- raises
    :class:`~keras_facemargin.errors.ModelFileError` naming the file (a model must not run with a
    normalisation other than its own).

    Example::

        read_normalization("w600k_r50.keras")      # {'mean': 127.5, 'std': 127.5}
    """
    from keras_facemargin.utils.model_files import MAX_RECORD_BYTES, loads_bounded

    path = Path(path)
    record = None
    where = _METADATA_MEMBER
    try:
        if path.name.endswith(".weights.h5"):
            import h5py

            where = f"attribute {_METADATA_ATTR!r}"
            with h5py.File(path, "r") as f:
                if _METADATA_ATTR in f.attrs:
                    attr = f.attrs.get_id(_METADATA_ATTR)
                    if attr.get_storage_size() > MAX_RECORD_BYTES:
                        raise ModelFileError(path, f"{attr.get_storage_size():,} bytes; at most "
                                                   f"{MAX_RECORD_BYTES:,}", where)
                    record = f.attrs[_METADATA_ATTR]
        elif path.suffix == ".keras" and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                if _METADATA_MEMBER in z.namelist():
                    size = z.getinfo(_METADATA_MEMBER).file_size
                    if size > MAX_RECORD_BYTES:
                        raise ModelFileError(path, f"{size:,} bytes; at most {MAX_RECORD_BYTES:,}", where)
                    record = z.read(_METADATA_MEMBER)
    except (OSError, zipfile.BadZipFile):
        return None
    if record is None:
        return None
    if not isinstance(record, (str, bytes)):
        raise ModelFileError(path, f"the normalisation record must be JSON text, got {type(record).__name__}", where)
    value = loads_bounded(record, path, where)
    try:
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
        return parse_normalization(value["normalization"])
    except (KeyError, ValueError) as err:
        raise ModelFileError(path, f"the normalisation record must be {{\"normalization\": {{\"mean\", \"std\"}}}} "
                                   f"({str(err)[:200]})", where) from None


def with_package_normalization(model, normalization):
    """`model` (expecting ``(x - mean) / std`` inputs) as a model taking this package's
    ``(x - 127.5) / 128`` inputs, i.e. what the evaluation and export functions feed.

    One ``Rescaling(128 / std, offset=(127.5 - mean) / std)`` layer named ``input_normalization``
    is put in front; `model` itself is returned when the normalisations are equal. A
    ``FaceRecognizer``'s ``.embedder`` is wrapped.

    Args:
        model: a Keras model with one image input.
        normalization: what `model` expects (dict, number or string, see `parse_normalization`).

    Example::

        embedder = keras_facemargin.load("arcface_r50", weights="backbone.pth")
        evaluate_verification_sets(with_package_normalization(embedder, embedder.normalization), "faces_emore")
    """
    import keras

    norm = parse_normalization(normalization)
    target = getattr(model, "embedder", None)
    target = target if isinstance(target, keras.Model) else model
    if norm is None or norm == PACKAGE_NORMALIZATION:
        return target
    mean, std = norm["mean"], norm["std"]
    inputs = keras.Input(shape=target.input_shape[1:], name="images")
    x = keras.layers.Rescaling(PACKAGE_NORMALIZATION["std"] / std, offset=(PACKAGE_NORMALIZATION["mean"] - mean) / std,
                               name="input_normalization")(inputs)
    wrapped = keras.Model(inputs, target(x), name=f"{target.name}_package_input")
    wrapped.normalization = dict(PACKAGE_NORMALIZATION)
    return wrapped


def _how_to(name, info):
    home = os.environ.get("KERAS_FACEMARGIN_HOME")
    where = f"$KERAS_FACEMARGIN_HOME ({home})" if home else "$KERAS_FACEMARGIN_HOME"
    return (f"expected file: {expected_weights_path(name)} (or {where}/{info['weights_file']}); "
            f"expected sha256: {info['sha256'] or 'none published'}. Supply a local file with "
            f"keras_facemargin.load({name!r}, weights=PATH) or place it in $KERAS_FACEMARGIN_HOME. "
            f"To produce it: {info['conversion']}.")


def _check_hash(path, name, info):
    """`path` itself without a registry sha256; else a private copy of the bytes that were hashed.

    The file is read once: those bytes are hashed and, when they match, written to a temporary
    file that is what gets loaded, so a file swapped after the check is never loaded.
    """
    expected = info["sha256"]
    if expected is None:
        return path
    with open(path, "rb") as f:
        data = f.read()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected.lower():
        raise PretrainedWeightsError(
            f"Weights for {name!r} at {path} fail the hash check: sha256 {actual}, expected {expected} "
            "(corrupt or wrong file; not loaded). Delete it and retry, or pass the right file with weights=PATH.")
    tmp = Path(tempfile.mkdtemp(prefix="kfm_verified_")) / Path(path).name
    tmp.write_bytes(data)
    return tmp


def packaged_weights_path(name):
    """Where the weights shipped inside the package would be (``keras_facemargin/pretrained/weights/``).

    Example::

        packaged_weights_path("arcface_celeba_mbf").is_file()   # True for the shipped model
    """
    return PACKAGED_WEIGHTS_DIR / get_model_info(name)["weights_file"]


def _file_type(filename):
    filename = filename.lower()
    return ".weights.h5" if filename.endswith(".weights.h5") else Path(filename).suffix


def _resolve(name, info, weights):
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights={str(weights)!r} for {name!r}: file not found.")
        if path.name == info["weights_file"] or _file_type(path.name) == _file_type(info["weights_file"]):
            return _check_hash(path, name, info)  # the registry's file (or one of its type): verified
        return path
    home = os.environ.get("KERAS_FACEMARGIN_HOME")
    candidates = [Path(home).expanduser() / info["weights_file"]] if home else []
    candidates += [expected_weights_path(name), PACKAGED_WEIGHTS_DIR / info["weights_file"]]
    for candidate in candidates:
        if candidate.is_file():
            return _check_hash(candidate, name, info)
    if info["weights_url"] is None:
        raise PretrainedWeightsError(f"No weights for {name!r}: {info['status']} {_how_to(name, info)}")
    if not info["sha256"]:
        raise PretrainedWeightsError(f"Refusing to download the weights of {name!r} from {info['weights_url']}: "
                                     f"the registry gives no sha256 to check them against. {_how_to(name, info)}")
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
    return _check_hash(Path(path), name, info)


def load(name, include_head=False, weights=None, normalization=None, allow_external_data=False):
    """Build the named pretrained model and load its weights.

    Args:
        name: one of `list_models()` (case-insensitive).
        include_head: `False` (default) returns the embedder (backbone + L2 normalisation).
            `True` needs a `.keras` file of a whole `FaceRecognizer` passed as `weights` (margin
            heads of released checkpoints are not distributed) and returns it.
        weights: optional local file: the backbone's `.weights.h5`, a `.keras` model, or an
            insightface IResNet / MobileFaceNet `.onnx` / `.pth` (converted on the fly). Verified
            against the registry's sha256 when there is one and the file is the registry's
            `weights_file` or of its type; another type is the user's own file and is not hash-checked.
        normalization: the input normalisation the weights expect, overriding what the file records
            and the registry (`parse_normalization`: ``127.5``, ``128`` or ``{"mean", "std"}``).
        allow_external_data: for an `.onnx` with weights in an external `.onnx.data` file (read
            from the model's folder only); refused by default.

    Returns:
        A `keras.Model`: float images `(batch, H, W, 3)` normalised as ``embedder.normalization``
        says -> unit-norm embeddings. `with_package_normalization(embedder, embedder.normalization)`
        takes ``(x - 127.5) / 128`` images instead (what the package's evaluation feeds).

    Raises:
        ValueError: unknown name (lists the known ones), bad `normalization`.
        PretrainedWeightsError: no weights available / download failed / hash mismatch; the
            message names the model, the expected path and the expected sha256.
        keras_facemargin.errors.WeightsConversionError: an `.onnx` / `.pth` that does not
            convert (names the file and node).
        keras_facemargin.errors.ModelFileError: a `.keras` / `.weights.h5` file that fails the checks
            of `keras_facemargin.utils.model_files` (nesting, declared sizes, shape bombs, an invalid
            normalisation record), before anything is built; `UnsafeModelError` (a subclass) for a
            `.keras` config naming code outside the package and Keras.

    Example::

        embedder = keras_facemargin.load("arcface_r50", weights="arcface_r50_ms1mv3.weights.h5")
        norm = embedder.normalization                  # {'mean': 127.5, 'std': 127.5}
        emb = embedder.predict((images - norm["mean"]) / norm["std"])
    """
    info = get_model_info(name)
    name = name.lower()
    override = parse_normalization(normalization)
    if (info.get("source") or {}).get("format") == "dlib":
        if include_head:
            raise ValueError(f"include_head=True: {name!r} is dlib's network; dlib distributes no margin head.")
        return _with_normalization(_load_dlib(name, info, weights), override or info["normalization"])
    path = _resolve(name, info, weights)
    try:
        return _build_and_load(name, info, path, override, include_head, allow_external_data)
    finally:
        if path.parent.name.startswith("kfm_verified_") and path.parent.parent == Path(tempfile.gettempdir()):
            shutil.rmtree(path.parent, ignore_errors=True)


def _build_and_load(name, info, path, override, include_head, allow_external_data):
    from keras_facemargin.backbones.presets import get_backbone
    from keras_facemargin.export.savedmodel import as_embedder
    from keras_facemargin.utils.model_files import check_weights_h5, load_keras_model

    suffix = path.suffix.lower()
    if path.name.endswith(".weights.h5"):
        check_weights_h5(path)  # before the record is read and the backbone built
    norm = override or read_normalization(path) or parse_normalization(info.get("normalization")) \
        or dict(PACKAGE_NORMALIZATION)
    if suffix == ".keras":
        import keras_facemargin.models  # noqa: F401  (registers serializable classes)

        model = load_keras_model(path)
        if include_head:
            if not hasattr(model, "head"):
                raise ValueError(f"include_head=True needs a FaceRecognizer .keras file; {path} holds "
                                 f"a {type(model).__name__}.")
            model.normalization = norm
            return model
        return _with_normalization(as_embedder(model), norm)
    if include_head:
        raise ValueError(f"include_head=True for {name!r} needs weights=<FaceRecognizer .keras file>; "
                         f"{path} holds backbone weights only (no margin head).")
    if suffix in (".onnx", ".pth", ".pt"):
        from keras_facemargin.convert.insightface import convert_insightface

        backbone, conv = convert_insightface(path, image_size=info["input_size"],
                                             allow_external_data=allow_external_data, return_info=True)
        if backbone.output_shape[-1] != info["embedding_dim"]:
            raise ValueError(f"{path} gives {backbone.output_shape[-1]}-d embeddings; {name!r} is "
                             f"{info['embedding_dim']}-d.")
        if override is None and conv.get("normalization_source") == "graph":
            norm = conv["normalization"]  # the graph scaled its input itself
        return _with_normalization(as_embedder(backbone), norm)
    if not path.name.endswith(".weights.h5"):
        raise ValueError(f"weights file {path} for {name!r}: expected .weights.h5, .keras, .onnx or .pth.")
    backbone = get_backbone(info["backbone"], embedding_dim=info["embedding_dim"],
                            image_size=tuple(info["input_size"]), **info.get("backbone_kwargs", {}))
    try:
        backbone.load_weights(path)
    except Exception as err:
        raise PretrainedWeightsError(
            f"Could not load {path} into the {info['backbone']} backbone of {name!r} "
            f"({type(err).__name__}: {err}). {_how_to(name, info)}") from err
    return _with_normalization(as_embedder(backbone), norm)


def _with_normalization(model, normalization):
    model.normalization = dict(normalization)
    return model


def cache_dir():
    """Where converted weights are cached: ``$KFM_CACHE_DIR``, default ``~/.cache/keras_facemargin``.

    Example::

        cache_dir() / "dlib_resnet_v1-55533b28a95800a5.weights.h5"
    """
    from keras_facemargin.data.lfw import default_cache_dir

    return default_cache_dir()  # the one KFM_CACHE_DIR rule (the LFW crop cache uses it too)


def source_path(name):
    """The source file a ``source`` model converts from, found without importing its package.

    Raises:
        PretrainedWeightsError: the package that ships it is not installed (the message says what to
            install).

    Example::

        source_path("dlib_resnet_v1")   # .../site-packages/face_recognition_models/models/dlib_...v1.dat
    """
    import importlib.util

    src = get_model_info(name)["source"]
    # face_recognition_models' __init__ imports pkg_resources (gone from recent setuptools): locate
    # the package's folder without importing it.
    spec = importlib.util.find_spec(src["package"])
    if spec is None or not spec.submodule_search_locations:
        raise PretrainedWeightsError(
            f"{name!r} converts {src['file']} of the {src['package']!r} package, which is not installed. "
            f"Install it with `pip install {src['package']}` (a dependency of keras_facemargin), or pass "
            f"weights=PATH to that file.")
    return Path(list(spec.submodule_search_locations)[0]) / src["file"]


def _load_dlib(name, info, weights):
    from keras_facemargin.backbones.dlib_resnet import DlibResNet
    from keras_facemargin.convert.dlib import convert_dlib
    from keras_facemargin.export.savedmodel import as_embedder

    src = info["source"]
    path = Path(weights).expanduser() if weights is not None else source_path(name)
    if not path.is_file():
        raise PretrainedWeightsError(f"{name!r}: source file {path} not found (expected {src['file']} of the "
                                     f"{src['package']!r} package, sha256 {src['sha256']}).")
    digest = sha256_of(path)
    if digest != src["sha256"]:
        raise PretrainedWeightsError(
            f"{name!r}: {path} fails the hash check: sha256 {digest}, expected {src['sha256']} "
            f"({src['file']} of {src['package']!r}); not converted. Reinstall the package or pass the right file.")
    cached = cache_dir() / f"{name}-{digest[:16]}.weights.h5"
    if cached.is_file():
        model = DlibResNet(image_size=tuple(info["input_size"]))
        try:
            model.load_weights(cached)
            return as_embedder(model)
        except Exception as err:  # a damaged cache file: convert again
            import warnings

            warnings.warn(f"{cached}: unreadable cached conversion ({type(err).__name__}: {err}); converting "
                          "again.", RuntimeWarning, stacklevel=3)
    model = convert_dlib(path)
    try:
        from keras_facemargin.utils.atomic import atomic_path

        cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cached, suffix=".weights.h5") as tmp:  # unique name, fsync, os.replace
            model.save_weights(tmp)
    except OSError as err:  # a read-only cache: the model is still usable
        import warnings

        warnings.warn(f"could not cache the converted {name!r} in {cached.parent} ({err}); set KFM_CACHE_DIR.",
                      RuntimeWarning, stacklevel=3)
    return as_embedder(model)
