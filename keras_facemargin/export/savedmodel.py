"""SavedModel export of the embedding model (no margin head).

The exported directory has two signatures:

* ``serving_default``: ``images`` uint8 ``(batch, H, W, 3)`` RGB in ``[0, 255]``; normalised
  inside the graph with ``(x - 127.5) / 128`` (:func:`keras_facemargin.data.normalize_images`).
* ``serving_float``: ``images`` float32 ``(batch, H, W, 3)`` already normalised.

Both return ``{"embeddings": float32 (batch, d)}``, L2-normalised. The batch dimension is dynamic.
TFLite and ONNX exports are converted from ``serving_float``.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras

from keras_facemargin.utils.images import PIXEL_MEAN, PIXEL_STD

NORM_MEAN = PIXEL_MEAN  # the package normalisation (utils.images)
NORM_STD = PIXEL_STD

__all__ = ["as_embedder", "load_embedder", "export_savedmodel", "SavedModelEmbedder"]


def _is_l2_normalized(model):
    last = model.layers[-1] if getattr(model, "layers", None) else None
    return isinstance(last, keras.layers.UnitNormalization)


def as_embedder(model):
    """Return the L2-normalised embedding model of `model`.

    Args:
        model: a `FaceRecognizer` (its `.embedder` is used), an embedder (a model whose last layer
            is `UnitNormalization`, returned as is) or a backbone (wrapped with `UnitNormalization`).

    Returns:
        A `keras.Model` mapping normalised float images `(batch, H, W, 3)` to unit-norm embeddings.

    Example::

        embedder = as_embedder(kfm.backbones.IResNet(depth=50))
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model, got {type(model).__name__}.")
    embedder = getattr(model, "embedder", None)
    if isinstance(embedder, keras.Model):
        return embedder
    if _is_l2_normalized(model):
        return model
    shape = model.input_shape
    if isinstance(shape, list):
        raise ValueError(f"Expected a single-input image model, got inputs {shape}.")
    inputs = keras.Input(shape=shape[1:], name="images")
    outputs = keras.layers.UnitNormalization(name="l2_normalize")(model(inputs))
    return keras.Model(inputs, outputs, name=f"{model.name}_embedder")


def load_embedder(path):
    """Load a `.keras` file (FaceRecognizer, embedder or backbone) and return its embedder.

    The file goes through the safe loader (`keras_facemargin.utils.model_files.load_keras_model`):
    nesting, names, declared sizes and the weights archive are checked before anything is built.

    Args:
        path: path of a `.keras` file.

    Raises:
        FileNotFoundError: no such file. ValueError: not a `.keras` path.
        keras_facemargin.errors.ModelFileError: a file the checks refuse or Keras cannot rebuild;
            `UnsafeModelError` (a subclass) for a config naming code outside the package and Keras.

    Example::

        embedder = load_embedder("runs/demo/model.keras")
    """
    import keras_facemargin.models  # noqa: F401  (registers the package's serializable classes)
    from keras_facemargin.utils.model_files import load_keras_model

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Model file not found: {path}")
    if path.suffix != ".keras":
        raise ValueError(f"Expected a `.keras` model file, got {path} (use the backbone's "
                         "`.weights.h5` with `keras_facemargin.load(name, weights=...)`).")
    return as_embedder(load_keras_model(path))


def _image_shape(embedder):
    shape = tuple(embedder.input_shape[1:])
    if len(shape) != 3 or None in shape:
        raise ValueError(f"The embedder needs a fixed (H, W, C) input shape, got {shape}.")
    return shape


def export_savedmodel(model, path):
    """Export the embedding model of `model` as a SavedModel directory.

    Args:
        model: a `FaceRecognizer`, embedder or backbone (see `as_embedder`).
        path: output directory (created; must not be an existing file).

    Returns:
        The output directory as a `str`.

    Example::

        export_savedmodel(model, "exported/r50")
        loaded = tf.saved_model.load("exported/r50")
        emb = loaded.signatures["serving_default"](images=tf.constant(uint8_batch))["embeddings"]
    """
    import tensorflow as tf

    embedder = as_embedder(model)
    shape = _image_shape(embedder)
    path = str(path)
    if os.path.isfile(path):
        raise ValueError(f"SavedModel output must be a directory, but {path} is a file.")

    def serve_uint8(images):
        x = (tf.cast(images, tf.float32) - NORM_MEAN) / NORM_STD
        return {"embeddings": tf.cast(embedder(x, training=False), tf.float32)}

    def serve_float(images):
        return {"embeddings": tf.cast(embedder(images, training=False), tf.float32)}

    archive = keras.export.ExportArchive()
    archive.track(embedder)
    archive.add_endpoint("serving_default", serve_uint8,
                         input_signature=[tf.TensorSpec((None,) + shape, tf.uint8, name="images")])
    archive.add_endpoint("serving_float", serve_float,
                         input_signature=[tf.TensorSpec((None,) + shape, tf.float32, name="images")])
    archive.write_out(path, verbose=False)
    return path


class SavedModelEmbedder:
    """Callable running an exported SavedModel: normalised float32 batch -> embeddings (NumPy).

    Args:
        path: a directory written by `export_savedmodel`.
        signature: `"serving_float"` (default; float input) or `"serving_default"` (uint8 input).

    Example::

        run = SavedModelEmbedder("exported/r50")
        emb = run(normalize_images(uint8_batch))
    """

    def __init__(self, path, signature="serving_float"):
        import tensorflow as tf

        self._tf = tf
        self.path = str(path)
        if not os.path.isdir(self.path):
            raise FileNotFoundError(f"SavedModel directory not found: {self.path}")
        self._loaded = tf.saved_model.load(self.path)
        if signature not in self._loaded.signatures:
            raise ValueError(f"{self.path} has no signature {signature!r}; "
                             f"it has {sorted(self._loaded.signatures)}.")
        self._fn = self._loaded.signatures[signature]
        self.dtype = tf.uint8 if signature == "serving_default" else tf.float32

    def __call__(self, images):
        out = self._fn(images=self._tf.constant(images, dtype=self.dtype))
        return out["embeddings"].numpy()

    def shapes(self):
        """``(input shape, output shape)`` of the signature; ``None`` for dynamic dimensions."""
        return (self._fn.structured_input_signature[1]["images"].shape.as_list(),
                self._fn.structured_outputs["embeddings"].shape.as_list())
