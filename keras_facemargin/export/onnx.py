"""ONNX export with `tf2onnx` (opset 17, dynamic batch) and an `onnxruntime` runner.

The ONNX graph takes normalised float32 NHWC images ``(x - 127.5) / 128`` named ``images`` with a
symbolic ``batch`` dimension and returns ``embeddings`` (float32, L2-normalised).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

__all__ = ["export_onnx", "ONNXEmbedder"]


@contextlib.contextmanager
def _ungrouped_convolutions():
    """Trace grouped convolutions as split -> conv -> concat.

    Keras' TensorFlow backend runs grouped convolutions (MobileFaceNet's `groups=64`) inside a
    `tf.function(jit_compile=True)`, which tf2onnx cannot inline (`StatefulPartitionedCall`).
    """
    import tensorflow as tf

    from keras_facemargin.utils.keras_compat import tensorflow_conv_replaced

    def make_conv(original):
        def conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
            groups = inputs.shape[-1] // kernel.shape[-2] if inputs.shape[-1] else 1
            if data_format not in (None, "channels_last") or len(inputs.shape) != 4 or groups <= 1:
                return original(inputs, kernel, strides, padding, data_format, dilation_rate)
            xs = tf.split(inputs, groups, axis=-1)
            ks = tf.split(kernel, groups, axis=-1)
            outs = [tf.nn.convolution(x, k, strides, padding.upper(), dilations=dilation_rate)
                    for x, k in zip(xs, ks)]
            return tf.concat(outs, axis=-1)

        return conv

    with tensorflow_conv_replaced(make_conv):
        yield


def export_onnx(model, path, opset=17):
    """Convert the embedding model of `model` to ONNX with `tf2onnx.convert.from_function`.

    Args:
        model: a `FaceRecognizer`, embedder or backbone (see `as_embedder`).
        path: output `.onnx` file.
        opset: ONNX opset (default 17).

    Returns:
        The output path as a `str`.

    Example::

        export_onnx(model, "r50.onnx")
    """
    import tensorflow as tf

    try:
        import onnx
        import tf2onnx
    except ImportError as err:  # pragma: no cover - depends on the extra
        raise ImportError("ONNX export needs `tf2onnx` and `onnx` "
                          "(pip install 'keras_facemargin[onnx]').") from err

    from keras_facemargin.export.savedmodel import _image_shape, as_embedder

    embedder = as_embedder(model)
    spec = [tf.TensorSpec((None,) + _image_shape(embedder), tf.float32, name="images")]

    @tf.function(input_signature=spec)
    def serve(images):
        return {"embeddings": tf.cast(embedder(images, training=False), tf.float32)}

    with _ungrouped_convolutions():
        proto, _ = tf2onnx.convert.from_function(serve, input_signature=spec, opset=int(opset))
    for value in list(proto.graph.input) + list(proto.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_value")
        dim.dim_param = "batch"
    onnx.checker.check_model(proto)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return str(path)


class ONNXEmbedder:
    """Callable running an ONNX embedding model with `onnxruntime` (CPU).

    Args:
        path: an `.onnx` file (from `export_onnx`, or any single-input NHWC float model).
        num_threads: intra-op threads (default: the runtime's choice).

    Example::

        run = ONNXEmbedder("r50.onnx")
        emb = run(normalize_images(uint8_batch))
    """

    def __init__(self, path, num_threads=None):
        try:
            import onnxruntime as ort
        except ImportError as err:  # pragma: no cover - depends on the extra
            raise ImportError("Running ONNX models needs `onnxruntime` "
                              "(pip install 'keras_facemargin[onnx]').") from err
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"ONNX file not found: {self.path}")
        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
        self._session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def __call__(self, images):
        return self._session.run(None, {self._input: np.asarray(images, np.float32)})[0]

    def shapes(self):
        """``(input shape, output shape)``; symbolic dimensions are strings (``"batch"``)."""
        return list(self._session.get_inputs()[0].shape), list(self._session.get_outputs()[0].shape)
