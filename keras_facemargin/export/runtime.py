"""Run an exported model by its path: the runtime chosen by the path, checked against its metadata.

``.tflite`` runs with `TFLiteEmbedder` (ai_edge_litert), ``.onnx`` with `ONNXEmbedder`
(onnxruntime), a SavedModel directory with `SavedModelEmbedder` (its ``serving_float``
signature). Each takes normalised float32 NHWC batches and returns embeddings.

Example::

    from keras_facemargin.export.runtime import open_exported
    run, meta = open_exported("m.tflite")      # reads and checks m.tflite.json first
    emb = run(normalised_batch)
"""

from __future__ import annotations

from pathlib import Path

from keras_facemargin.errors import ExportMetadataError
from keras_facemargin.export.metadata import exported_format, read_metadata

__all__ = ["open_exported", "runtime_shapes"]


def runtime_shapes(embedder):
    """``((H, W) or None, embedding size or None)`` the runtime reports for its input / output."""
    shapes = getattr(embedder, "shapes", None)
    if not callable(shapes):
        return None, None
    inp, out = shapes()

    def known(v):
        if v is None or isinstance(v, str):
            return None
        return int(v) if int(v) > 0 else None

    size = (known(inp[1]), known(inp[2])) if inp is not None and len(inp) == 4 else None
    dim = known(out[-1]) if out is not None and len(out) >= 1 else None
    return size, dim


def open_exported(path, num_threads=None):
    """The runtime of an exported model and its checked metadata.

    Args:
        path: a ``.tflite`` / ``.onnx`` file or a SavedModel directory written by ``export_model``
            (or ``kfm export``), with its metadata file beside it.
        num_threads: runtime threads (TFLite / ONNX; default: the runtime's choice).

    Returns:
        ``(embedder, metadata)``: a callable on normalised float32 ``(n, H, W, 3)`` batches, and the
        record of :func:`keras_facemargin.export.metadata.read_metadata`.

    Raises:
        ExportMetadataError: no / bad metadata, or metadata that does not describe the file
            (sha256, input size or embedding size).

    Example::

        run, meta = open_exported("exported/r50")
    """
    from keras_facemargin.export.onnx import ONNXEmbedder
    from keras_facemargin.export.savedmodel import SavedModelEmbedder
    from keras_facemargin.export.tflite import TFLiteEmbedder

    meta = read_metadata(path)
    fmt = exported_format(path)
    if fmt == "tflite":
        embedder = TFLiteEmbedder(path, num_threads=num_threads)
    elif fmt == "onnx":
        embedder = ONNXEmbedder(path, num_threads=num_threads)
    else:
        embedder = SavedModelEmbedder(path)
    size, dim = runtime_shapes(embedder)
    want_size, want_dim = tuple(meta["input"]["size"]), meta["embedding_dim"]
    if (size is not None and None not in size and size != want_size) or (dim is not None and dim != want_dim):
        raise ExportMetadataError("metadata_mismatch", f"records input {list(want_size)} and embedding size {want_dim}, "
                                  f"but {Path(path).name} takes {list(size) if size else '?'} and returns {dim}",
                                  str(path))
    return embedder, meta
