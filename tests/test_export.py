"""Export routes (SavedModel, TFLite x4, ONNX) of a tiny IResNet, with parity against Keras."""

import subprocess
import sys

import numpy as np
import pytest

import keras
import keras_facemargin as kfm
from keras_facemargin import export
from keras_facemargin.data import normalize_images

SIZE = 32


@pytest.fixture(scope="module")
def model():
    """A tiny FaceRecognizer whose BN statistics come from real-looking (synthetic) images."""
    backbone = kfm.backbones.IResNet(stage_blocks=(1, 1, 1, 1), stage_filters=(8, 8, 16, 16),
                                     image_size=SIZE, embedding_dim=32)
    recognizer = kfm.FaceRecognizer(backbone, kfm.layers.ArcMarginDense(5))
    x = normalize_images(export.parity_images(SIZE, 64, data_dir="/nonexistent", seed=7)[0])
    for _ in range(20):  # settle BN moving statistics (as after training)
        backbone(x, training=True)
    recognizer([x[:2], np.array([0, 1], "int32")])  # build the head too, so .keras saves everything
    return recognizer


@pytest.fixture(scope="module")
def images():
    return export.parity_images(SIZE, 24, data_dir="/nonexistent")[0]


def _reference(model, images):
    e = np.asarray(model.backbone(normalize_images(images), training=False), np.float64)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def _min_cos(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return ((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min()


def test_as_embedder_variants(model):
    assert export.as_embedder(model) is model.embedder
    wrapped = export.as_embedder(model.backbone)
    assert isinstance(wrapped.layers[-1], keras.layers.UnitNormalization)
    assert export.as_embedder(wrapped) is wrapped
    with pytest.raises(TypeError, match="keras.Model"):
        export.as_embedder("model.keras")


def test_savedmodel_uint8_and_float_signatures(model, images, tmp_path):
    import tensorflow as tf

    path = export.export_savedmodel(model, tmp_path / "sm")
    loaded = tf.saved_model.load(path)
    assert set(loaded.signatures) == {"serving_default", "serving_float"}
    ref = _reference(model, images)
    out8 = loaded.signatures["serving_default"](images=tf.constant(images))["embeddings"].numpy()
    outf = loaded.signatures["serving_float"](images=tf.constant(normalize_images(images)))["embeddings"].numpy()
    assert _min_cos(out8, ref) >= 0.9999 and _min_cos(outf, ref) >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(out8, axis=1), 1.0, atol=1e-5)
    with pytest.raises(Exception):
        loaded.signatures["serving_default"](images=tf.constant(normalize_images(images)))  # float into uint8


@pytest.mark.parametrize("quantize", ["float32", "float16", "dynamic", "int8"])
def test_tflite_routes(model, images, tmp_path, quantize):
    path = export.export_tflite(model, tmp_path / f"m_{quantize}.tflite", quantize=quantize)
    run = export.TFLiteEmbedder(path)
    got = run(normalize_images(images))
    ref = _reference(model, images)
    assert got.shape == ref.shape
    threshold = export.THRESHOLDS[quantize]
    assert _min_cos(got, ref) >= threshold
    if quantize == "float32":
        np.testing.assert_allclose(got, ref, atol=1e-4)
    else:  # quantisation changes the numbers (the test would pass an unquantised model otherwise)
        assert np.abs(got - ref).max() > 1e-6


def test_onnx_route_dynamic_batch(model, images, tmp_path):
    import onnx

    path = export.export_onnx(model, tmp_path / "m.onnx")
    proto = onnx.load(path)
    assert proto.opset_import[0].version == 17
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    run = export.ONNXEmbedder(path)
    ref = _reference(model, images)
    for n in (1, 7):
        assert _min_cos(run(normalize_images(images[:n])), ref[:n]) >= 0.9999


def test_parity_report_fails_loudly(model, images, tmp_path):
    embedder = export.as_embedder(model)
    good = export.parity_report(embedder, lambda x: embedder.predict_on_batch(x), "onnx", tmp_path, images,
                                latency_repeats=1)
    assert good.passed and good.min_cosine > 0.99999 and good.latency_ms > 0
    rng = np.random.default_rng(0)
    noisy = export.parity_report(embedder, lambda x: embedder.predict_on_batch(x) + rng.normal(0, 0.05, (len(x), 32)),
                                 "float16", tmp_path, images, latency_repeats=0)
    assert not noisy.passed
    with pytest.raises(export.ParityError, match="FAILED for float16.*< required 0.9999"):
        noisy.raise_if_failed()


@pytest.mark.slow
def test_export_tool_end_to_end(model, tmp_path, data_dir):
    """tools/export.py on a .keras file with the LFW parity report and pair-accuracy change."""
    path = tmp_path / "tiny.keras"
    model.save(path)
    out = subprocess.run([sys.executable, "tools/export.py", "--model", str(path), "--format", "tflite",
                          "--quantize", "int8", "--num-images", "16", "--data-dir", str(data_dir)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "LFW centre crops" in out.stdout and "LFW 600 pairs" in out.stdout and "PASS" in out.stdout
    bad = subprocess.run([sys.executable, "tools/export.py", "--model", str(path), "--format", "onnx",
                          "--quantize", "int8"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "applies to --format tflite only" in bad.stderr


def test_onnx_grouped_convolution_mobilefacenet(images, tmp_path):
    """MobileFaceNet's grouped conv (XLA-compiled in Keras' TF backend) exports to ONNX."""
    backbone = kfm.backbones.MobileFaceNet(image_size=SIZE, width_multiplier=0.125,
                                           blocks=(1, 1, 1, 1), embedding_dim=16)
    run = export.ONNXEmbedder(export.export_onnx(backbone, tmp_path / "mbf.onnx"))
    e = np.asarray(backbone(normalize_images(images), training=False), np.float64)
    assert _min_cos(run(normalize_images(images)), e / np.linalg.norm(e, axis=1, keepdims=True)) >= 0.9999
