"""TFLite export (float32, float16, dynamic-range int8, full int8) and an `ai_edge_litert` runner.

Conversion always goes through a SavedModel (`tf.lite.TFLiteConverter.from_saved_model` on the
``serving_float`` signature of `export_savedmodel`): converting concrete functions with
``trackable_obj`` silently produces NaNs with TF 2.21. The TFLite model takes normalised float32
images ``(x - 127.5) / 128`` and returns float32 L2-normalised embeddings for every quantisation
(full int8 keeps float32 input/output and quantises everything in between).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from keras_facemargin.utils.images import read_photo, resize_image
from keras_facemargin.utils.tf_logs import quiet_native_logs

QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")

__all__ = ["QUANTIZATIONS", "export_tflite", "representative_images", "TFLiteEmbedder"]


def representative_images(image_size, directory=None, num_images=128, seed=0):
    """uint8 calibration images for full int8: from `directory` (recursively) or `SyntheticFaces`.

    Args:
        image_size: `(H, W)` of the model input.
        directory: optional folder of face crops (jpg/png/bmp); images are resized to `image_size`.
        num_images: how many images (a sorted, seeded random subset of the folder).
        seed: subset / generator seed.

    Returns:
        uint8 `(n, H, W, 3)` RGB.

    Example::

        calib = representative_images((112, 112), "data/lfw/images", 200)
    """
    h, w = int(image_size[0]), int(image_size[1])
    if directory is None:
        from keras_facemargin.data.synthetic import SyntheticFaces

        if h != w:
            raise ValueError(f"Synthetic calibration images are square; the model takes {h}x{w}. "
                             "Pass a folder of real images with `directory`.")
        ids = max(1, (num_images + 3) // 4)
        faces = SyntheticFaces(num_identities=ids, image_size=max(h, 32), min_images=4, max_images=4,
                               seed=seed)
        images = faces.to_arrays()[0][:num_images]
        if h < 32:
            images = np.stack([resize_image(im, (h, w)) for im in images])
        return images
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"--representative folder not found: {directory}")
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))
    if not files:
        raise ValueError(f"No .jpg/.png/.bmp images under the representative folder {directory}.")
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(files), size=min(num_images, len(files)), replace=False))
    out = []
    for i in pick:
        img, problem = read_photo(files[i])
        if problem is not None:
            raise ValueError(f"{files[i]}: representative image refused ({problem[0]}: {problem[1]}).")
        out.append(resize_image(img, (h, w)))
    return np.stack(out)


def export_tflite(model_or_savedmodel, path, quantize="float32", representative=None):
    """Convert the embedding model to a `.tflite` file.

    Args:
        model_or_savedmodel: a Keras model (FaceRecognizer / embedder / backbone; exported to a
            temporary SavedModel first) or a directory written by `export_savedmodel`.
        path: output `.tflite` file.
        quantize: `"float32"`, `"float16"` (float16 weights), `"dynamic"` (int8 weights, float
            activations) or `"int8"` (int8 weights and activations; needs calibration images).
        representative: for `"int8"`: uint8 `(n, H, W, 3)` images, or a folder of images, or
            `None` to generate `SyntheticFaces` (see `representative_images`).

    Returns:
        The output path as a `str`.

    Example::

        export_tflite(model, "r50_int8.tflite", quantize="int8", representative="data/lfw/images")
    """
    import tensorflow as tf

    from keras_facemargin.utils.images import normalize_images
    from keras_facemargin.export.savedmodel import export_savedmodel

    if quantize not in QUANTIZATIONS:
        raise ValueError(f"`quantize` must be one of {QUANTIZATIONS}, got {quantize!r}.")
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(model_or_savedmodel, (str, os.PathLike)):
            saved = str(model_or_savedmodel)
            if not os.path.isdir(saved):
                raise FileNotFoundError(f"SavedModel directory not found: {saved}")
        else:
            saved = export_savedmodel(model_or_savedmodel, os.path.join(tmp, "savedmodel"))
        converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=["serving_float"])
        if quantize != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        elif quantize == "int8":
            spec = tf.saved_model.load(saved).signatures["serving_float"].structured_input_signature
            shape = spec[1]["images"].shape
            if representative is None or isinstance(representative, (str, os.PathLike)):
                calib = representative_images((shape[1], shape[2]), representative)
            else:
                calib = np.asarray(representative)
                if calib.ndim != 4 or tuple(calib.shape[1:]) != tuple(shape[1:]):
                    raise ValueError(f"`representative` images must have shape (n, {shape[1]}, "
                                     f"{shape[2]}, {shape[3]}), got {calib.shape}.")
            calib = normalize_images(calib) if calib.dtype == np.uint8 else calib.astype(np.float32)

            def gen():
                for i in range(len(calib)):
                    yield [calib[i:i + 1]]

            converter.representative_dataset = gen
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        with quiet_native_logs():  # the converter's absl INFO lines, whatever TF_CPP_MIN_LOG_LEVEL says
            content = converter.convert()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return str(path)


class TFLiteEmbedder:
    """Callable running a `.tflite` embedding model with `ai_edge_litert`.

    Args:
        path: a `.tflite` file written by `export_tflite`.
        num_threads: interpreter threads (default: the runtime's choice).

    Example::

        run = TFLiteEmbedder("r50_int8.tflite")
        emb = run(normalize_images(uint8_batch))     # float32 (n, d)
    """

    def __init__(self, path, num_threads=None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as err:  # pragma: no cover - depends on the extra
            raise ImportError("Running TFLite models needs `ai-edge-litert` "
                              "(pip install 'keras_facemargin[tflite]').") from err
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"TFLite file not found: {self.path}")
        self._interpreter = Interpreter(model_path=self.path, num_threads=num_threads)
        signatures = self._interpreter.get_signature_list()
        key = "serving_float" if "serving_float" in signatures else next(iter(signatures))
        self._runner = self._interpreter.get_signature_runner(key)
        self._input = signatures[key]["inputs"][0]
        self._output = signatures[key]["outputs"][0]
        self._first_call = True

    def __call__(self, images):
        if self._first_call:  # the delegate is applied, and announced on stderr, at the first invoke
            with quiet_native_logs():
                out = self._runner(**{self._input: np.asarray(images, np.float32)})
            self._first_call = False
        else:
            out = self._runner(**{self._input: np.asarray(images, np.float32)})
        return np.asarray(out[self._output])

    def shapes(self):
        """``(input shape, output shape)`` with -1 for dynamic dimensions (the signature's)."""
        inp = self._runner.get_input_details()[self._input]["shape_signature"]
        out = self._runner.get_output_details()[self._output]["shape_signature"]
        return [int(v) for v in inp], [int(v) for v in out]
