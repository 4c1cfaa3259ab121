"""What a user needs to run an exported model, recorded beside it: the export metadata.

Every export writes a JSON *sidecar* (atomically: unique temporary name, fsync, ``os.replace``):

=================  ============================================
export             sidecar
=================  ============================================
``m.tflite``       ``m.tflite.json``
``m.onnx``         ``m.onnx.json`` (also inside the file: ONNX ``metadata_props["keras_facemargin"]``)
``saved_dir/``     ``saved_dir/keras_facemargin.json``
=================  ============================================

The record (``"format": "keras_facemargin.export"``, ``"version": 1``) holds the input size and
normalisation the runtime expects (``(x - mean) / std``, NHWC float32), the crop geometry
(``kind``, ``size``, 5 ``template`` points, optional point ``weights``), the embedding size, the
flip-sum setting, the source model and its calibrated ``thresholds`` (a zoo model's), the
package version, the quantisation, and the sha256 of the exported file (of a SavedModel
directory: sha256 over ``relative path NUL file sha256 LF`` of its files, sorted, the sidecar
excluded). The sha256 ties the record to its file against mix-ups; it is not a signature: whoever
can write the file can write its record too.

`read_metadata` bounds what it reads (`MAX_SIDECAR_BYTES`, `MAX_DEPTH`) and checks every field's
type and range; any problem is an :class:`~keras_facemargin.errors.ExportMetadataError` naming the
file (``metadata_missing``, ``metadata_invalid``, ``metadata_mismatch``).

Example::

    from keras_facemargin.export.metadata import read_metadata
    meta = read_metadata("m.tflite")           # reads and checks m.tflite.json
    meta["input"]["normalization"], meta["crop"]["size"], meta["thresholds"]
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path

from keras_facemargin.errors import ExportMetadataError

__all__ = ["METADATA_FORMAT", "METADATA_VERSION", "MAX_SIDECAR_BYTES", "MAX_DEPTH", "SAVEDMODEL_SIDECAR",
           "ONNX_METADATA_KEY", "sidecar_path", "exported_format", "model_digest", "build_metadata",
           "write_metadata", "read_metadata", "validate_metadata", "default_crop", "embed_onnx_metadata"]

METADATA_FORMAT = "keras_facemargin.export"
METADATA_VERSION = 1
#: A sidecar larger than this is refused before it is parsed.
MAX_SIDECAR_BYTES = 256 * 1024
#: Deepest nesting of JSON objects / arrays accepted (the record needs 4).
MAX_DEPTH = 8
SAVEDMODEL_SIDECAR = "keras_facemargin.json"
ONNX_METADATA_KEY = "keras_facemargin"
_FORMATS = ("savedmodel", "tflite", "onnx")
_QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")


# ------------------------------------------------------------------------- paths and digests
def exported_format(path):
    """``"tflite"``, ``"onnx"`` or ``"savedmodel"`` for an export path (by suffix / ``saved_model.pb``), else None.

    Example::

        exported_format("m.tflite")   # "tflite"
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".tflite":
        return "tflite"
    if suffix == ".onnx":
        return "onnx"
    if p.is_dir() and (p / "saved_model.pb").is_file():
        return "savedmodel"
    return None


def sidecar_path(path):
    """The metadata file of an export: ``m.tflite.json``, ``m.onnx.json``, ``dir/keras_facemargin.json``.

    Example::

        sidecar_path("exported/r50")   # Path("exported/r50/keras_facemargin.json")
    """
    p = Path(path)
    if p.is_dir():
        return p / SAVEDMODEL_SIDECAR
    return p.with_name(p.name + ".json")


def _file_sha256(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def model_digest(path):
    """sha256 of an exported file, or of a SavedModel directory (its files but the sidecar, by sorted path).

    Example::

        model_digest("m.onnx")   # "3f2a..."
    """
    p = Path(path)
    if not p.is_dir():
        return _file_sha256(p)
    digest = hashlib.sha256()
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.relative_to(p).as_posix() != SAVEDMODEL_SIDECAR)
    for f in files:
        digest.update(f"{f.relative_to(p).as_posix()}\0{_file_sha256(f)}\n".encode())
    return digest.hexdigest()


def default_crop():
    """The ArcFace 112x112 crop (``FaceVerifier``'s default geometry) as a metadata ``crop`` record."""
    from keras_facemargin.data.align import ARCFACE_TEMPLATE_112

    return {"kind": "arcface", "size": 112, "template": [[float(v) for v in p] for p in ARCFACE_TEMPLATE_112],
            "weights": None}


# ------------------------------------------------------------------------------ build / write
def build_metadata(model_format, quantization, image_size, embedding_dim, source_model=None, normalization=None,
                   crop=None, thresholds=None, thresholds_source=None, flip=True, parity=None, extra=None):
    """The metadata record of an export (without ``sha256`` / ``file``: `write_metadata` adds them).

    Args:
        model_format: ``"tflite"``, ``"onnx"`` or ``"savedmodel"``.
        quantization: ``"float32"``, ``"float16"``, ``"dynamic"`` or ``"int8"``.
        image_size: ``(H, W)`` of the input.
        embedding_dim: output size.
        source_model: the zoo name or file the export was made from.
        normalization: ``{"mean", "std"}`` the exported input expects (default the package's
            ``(x - 127.5) / 128``).
        crop: the crop geometry (default the ArcFace 112 template, `default_crop`).
        thresholds: calibrated cosine thresholds ``{"accuracy"|far_key: t}`` or None.
        thresholds_source: where they come from (e.g. ``"registry:arcface_celeba_mbf"``).
        flip: whether embeddings are summed with those of the horizontal flip (``FaceVerifier`` does).
        parity: optional ``{"min_cosine", "mean_cosine", ...}`` against the Keras model.
        extra: other JSON fields to record (``source_sha256``, ...).

    Raises:
        ExportMetadataError: a field out of range (``metadata_invalid``).

    Example::

        meta = build_metadata("tflite", "float32", (112, 112), 512, source_model="arcface_r50")
    """
    from keras_facemargin import __version__
    from keras_facemargin.utils.images import PIXEL_MEAN, PIXEL_STD

    record = {
        "format": METADATA_FORMAT, "version": METADATA_VERSION, "package_version": __version__,
        "model_format": model_format, "quantization": quantization or "float32",
        "source_model": None if source_model is None else str(source_model),
        "input": {"size": [int(image_size[0]), int(image_size[1])], "channels": 3, "layout": "NHWC",
                  "dtype": "float32",
                  "normalization": dict(normalization) if normalization else {"mean": float(PIXEL_MEAN),
                                                                               "std": float(PIXEL_STD)}},
        "embedding_dim": int(embedding_dim), "l2_normalized": True, "flip": bool(flip),
        "crop": dict(crop) if crop else default_crop(),
        "thresholds": None if thresholds is None else {str(k): float(v) for k, v in thresholds.items()},
        "thresholds_source": thresholds_source, "parity": parity,
    }
    record["crop"].setdefault("weights", None)
    for key, value in (extra or {}).items():
        record.setdefault(key, value)
    return validate_metadata(json.loads(json.dumps(record)), "<metadata>", check_digest=False)


def _atomic_write_text(path, text):
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def embed_onnx_metadata(path, metadata):
    """Record `metadata` inside an ``.onnx`` file (``metadata_props["keras_facemargin"]``), rewritten atomically.

    Example::

        embed_onnx_metadata("m.onnx", meta)
    """
    import onnx

    path = Path(path)
    proto = onnx.load(str(path))
    props = [p for p in proto.metadata_props if p.key != ONNX_METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(props)
    inside = {k: v for k, v in metadata.items() if k not in ("sha256", "file")}
    proto.metadata_props.add(key=ONNX_METADATA_KEY, value=json.dumps(inside, sort_keys=True))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        onnx.save(proto, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_metadata(path, metadata):
    """Add ``file`` and ``sha256`` to `metadata` and write the sidecar of `path` atomically.

    For ``.onnx`` the record is first embedded in the file (`embed_onnx_metadata`), so the sha256 is
    that of the final file.

    Returns:
        The sidecar path.

    Example::

        write_metadata("m.tflite", build_metadata("tflite", "float32", (112, 112), 512))
    """
    path = Path(path)
    record = dict(metadata)
    if exported_format(path) == "onnx":
        embed_onnx_metadata(path, record)
    record["file"] = path.name
    record["sha256"] = model_digest(path)
    validate_metadata(record, "<metadata>", check_digest=False)
    side = sidecar_path(path)
    _atomic_write_text(side, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return side


# --------------------------------------------------------------------------------- validation
def _invalid(file, detail):
    return ExportMetadataError("metadata_invalid", detail, file)


def _depth(value, file, level=1):
    if level > MAX_DEPTH:
        raise _invalid(file, f"nested deeper than {MAX_DEPTH} levels")
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for child in children:
        _depth(child, file, level + 1)


def _number(value, file, field, low=-math.inf, high=math.inf):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise _invalid(file, f"field {field!r} must be a finite number in [{low}, {high}], got {value!r}")
    return float(value)


def _integer(value, file, field, low, high):
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _invalid(file, f"field {field!r} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def _string(value, file, field, allowed=None, optional=False, max_len=1024):
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > max_len or (allowed is not None and value not in allowed):
        want = f"one of {list(allowed)}" if allowed is not None else f"a string of at most {max_len} characters"
        raise _invalid(file, f"field {field!r} must be {want}, got {str(value)[:80]!r}")
    return value


def _dict(value, file, field, required=()):
    if not isinstance(value, dict):
        raise _invalid(file, f"field {field!r} must be a JSON object, got {type(value).__name__}")
    missing = [k for k in required if k not in value]
    if missing:
        raise _invalid(file, f"field {field!r} lacks {missing}")
    return value


def _channel_values(value, file, field, nonzero=False):
    values = value if isinstance(value, list) else [value]
    if len(values) not in (1, 3):
        raise _invalid(file, f"field {field!r} must be a number or 3 numbers, got {value!r}")
    out = [_number(v, file, field) for v in values]
    if nonzero and any(v == 0 for v in out):
        raise _invalid(file, f"field {field!r} must be non-zero, got {value!r}")
    return out[0] if not isinstance(value, list) else out


def _check_crop(crop, file):
    crop = _dict(crop, file, "crop", ("kind", "size", "template"))
    _string(crop["kind"], file, "crop.kind", max_len=64)
    size = _integer(crop["size"], file, "crop.size", 16, 1024)
    template = crop["template"]
    if not isinstance(template, list) or len(template) != 5 or \
            not all(isinstance(p, list) and len(p) == 2 for p in template):
        raise _invalid(file, f"field 'crop.template' must be 5 [x, y] points, got {str(template)[:80]}")
    for p in template:
        for v in p:
            _number(v, file, "crop.template", 0.0, float(size))
    weights = crop.get("weights")
    if weights is not None:
        if not isinstance(weights, list) or len(weights) != 5:
            raise _invalid(file, f"field 'crop.weights' must be 5 numbers or null, got {str(weights)[:80]}")
        w = [_number(v, file, "crop.weights", 0.0) for v in weights]
        if sum(v > 0 for v in w) < 2:
            raise _invalid(file, "field 'crop.weights' needs at least 2 positive weights")


def _check_thresholds(thresholds, file):
    if thresholds is None:
        return
    _dict(thresholds, file, "thresholds")
    if not thresholds or len(thresholds) > 32:
        raise _invalid(file, "field 'thresholds' must hold 1 to 32 operating points or be null")
    for key, value in thresholds.items():
        if key != "accuracy":
            try:
                far = float(key)
            except ValueError:
                far = math.nan
            if not 0.0 < far <= 1.0:
                raise _invalid(file, f"field 'thresholds' keys must be 'accuracy' or a FAR in (0, 1], got {key[:40]!r}")
        _number(value, file, f"thresholds[{key[:40]!r}]", -1.0, 1.0)


def validate_metadata(record, file, check_digest=True, model_path=None):
    """Check a parsed record field by field; return it. ``metadata_invalid`` / ``metadata_mismatch`` otherwise.

    Args:
        record: the parsed JSON.
        file: the metadata file, for messages.
        check_digest: compare ``sha256`` with `model_digest` of `model_path`.
        model_path: the exported file / directory.

    Example::

        validate_metadata(json.load(open("m.tflite.json")), "m.tflite.json", model_path="m.tflite")
    """
    file = str(file)
    _depth(record, file)
    _dict(record, file, "<top level>", ("format", "version", "model_format", "input", "embedding_dim", "crop"))
    if record["format"] != METADATA_FORMAT:
        raise _invalid(file, f"field 'format' must be {METADATA_FORMAT!r}, got {str(record['format'])[:80]!r}")
    version = _integer(record["version"], file, "version", 1, 10**6)
    if version > METADATA_VERSION:
        raise _invalid(file, f"metadata version {version} was written by a newer keras_facemargin "
                             f"(this one reads version {METADATA_VERSION}); upgrade the package")
    _string(record["model_format"], file, "model_format", _FORMATS)
    _string(record.get("quantization", "float32"), file, "quantization", _QUANTIZATIONS)
    for key in ("source_model", "package_version", "thresholds_source", "file"):
        _string(record.get(key), file, key, optional=True)
    inp = _dict(record["input"], file, "input", ("size", "normalization"))
    size = inp["size"]
    if not isinstance(size, list) or len(size) != 2:
        raise _invalid(file, f"field 'input.size' must be [H, W], got {str(size)[:80]}")
    for v in size:
        _integer(v, file, "input.size", 1, 4096)
    norm = _dict(inp["normalization"], file, "input.normalization", ("mean", "std"))
    _channel_values(norm["mean"], file, "input.normalization.mean")
    _channel_values(norm["std"], file, "input.normalization.std", nonzero=True)
    _integer(record["embedding_dim"], file, "embedding_dim", 1, 65536)
    if not isinstance(record.get("flip", True), bool):
        raise _invalid(file, f"field 'flip' must be true or false, got {record.get('flip')!r}")
    _check_crop(record["crop"], file)
    _check_thresholds(record.get("thresholds"), file)
    if check_digest:
        sha = record.get("sha256")
        if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise _invalid(file, f"field 'sha256' must be 64 lowercase hex digits, got {str(sha)[:80]!r}")
        actual = model_digest(model_path)
        if actual != sha:
            raise ExportMetadataError(
                "metadata_mismatch", f"records sha256 {sha[:16]}... but {model_path} has sha256 {actual[:16]}...: the "
                "metadata describes another file (re-export it, or keep each export with its own metadata file)", file)
    return record


def _parse(text, file):
    def no_constants(name):
        raise ValueError(f"{name} is not a JSON number")

    try:
        return json.loads(text, parse_constant=no_constants)
    except RecursionError:
        raise _invalid(file, f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:
        raise _invalid(file, f"not valid JSON ({str(e)[:120]})") from None


def _onnx_embedded(path):
    """The record inside an ``.onnx`` file's ``metadata_props``, or None."""
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - depends on the extra
        return None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.get_modelmeta().custom_metadata_map.get(ONNX_METADATA_KEY)


def read_metadata(path):
    """Read and check the metadata of an exported model (its sidecar; for ``.onnx`` without one, the record inside).

    Args:
        path: the exported ``.tflite`` / ``.onnx`` file or SavedModel directory.

    Returns:
        The record (a dict, see the module docstring).

    Raises:
        ExportMetadataError: ``metadata_missing`` (no sidecar, and for ONNX no record inside),
            ``metadata_invalid`` (over `MAX_SIDECAR_BYTES` / `MAX_DEPTH`, not JSON, a field of the
            wrong type or range, another format), ``metadata_mismatch`` (sha256 or model format not
            the file's); each names the file.

    Example::

        meta = read_metadata("m.onnx")
    """
    path = Path(path)
    fmt = exported_format(path)
    if fmt is None or not path.exists():
        raise ExportMetadataError("metadata_missing", "not an exported model (a .tflite or .onnx file or a SavedModel "
                                  "directory holding saved_model.pb)" + ("" if path.exists() else ": not found"), path)
    side = sidecar_path(path)
    if side.is_file():
        size = side.stat().st_size
        if size > MAX_SIDECAR_BYTES:
            raise _invalid(side, f"{size} bytes, over the {MAX_SIDECAR_BYTES}-byte limit of export metadata")
        with open(side, "rb") as f:
            raw = f.read(MAX_SIDECAR_BYTES + 1)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _invalid(side, "not UTF-8 text") from None
        record, where, check = _parse(text, side), side, True
    elif fmt == "onnx" and (text := _onnx_embedded(path)) is not None:
        if len(text) > MAX_SIDECAR_BYTES:
            raise _invalid(path, f"metadata_props[{ONNX_METADATA_KEY!r}] is over {MAX_SIDECAR_BYTES} bytes")
        where, check = f"{path} (metadata_props {ONNX_METADATA_KEY!r})", False
        record = _parse(text, where)
    else:
        raise ExportMetadataError(
            "metadata_missing", f"no metadata for the exported model {path.name}: its preprocessing, crop and "
            "thresholds are unknown. Keep the metadata file written by `kfm export` beside the model, or export "
            "again with `kfm export NAME_OR_PATH --format ... --output ...`", side)
    record = validate_metadata(record, where, check_digest=check, model_path=path)
    if record["model_format"] != fmt:
        raise ExportMetadataError("metadata_mismatch", f"describes a {record['model_format']} export, but "
                                  f"{path.name} is {fmt}", where)
    return record
