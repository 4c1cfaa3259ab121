"""Export a zoo model by name, with everything `FaceVerifier` needs to run the exported file.

`export_pretrained` loads a zoo model (``keras_facemargin.load``), puts its input normalisation in
front when it is not the package's (exported models take ``(x - 127.5) / 128``), calibrates full
int8 on CelebA *training* identities (`calibration_images`; never LFW, the test set), exports it
with :func:`keras_facemargin.export.export_model` and records the registry entry's crop geometry
and calibrated thresholds in the export's metadata, so that ``FaceVerifier("m.tflite")`` gives the
zoo model's verdicts.

Example::

    from keras_facemargin.inference.zoo_export import export_pretrained
    path, report = export_pretrained("arcface_celeba_mbf", "tflite", "mbf.tflite")
    kfm.FaceVerifier(path).verify("a.jpg", "b.jpg")
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["calibration_images", "export_pretrained", "registry_metadata"]


def calibration_images(data_dir, crop, image_size, count=200, seed=0):
    """uint8 face crops of CelebA *training* identities in a model's crop geometry: int8 calibration images.

    The ArcFace-aligned 112x112 images of ``celeba_identities/color_arcface112`` (identities neither
    held out for threshold calibration nor LFW-overlap candidates,
    :func:`keras_facemargin.inference.calibrate.training_sample`), re-cropped to `crop` as
    `FaceVerifier` crops photos, and resized to `image_size`.

    Args:
        data_dir: the folder holding ``celeba_identities/`` (``$KFM_DATA_DIR``).
        crop: the crop geometry (a registry entry's ``crop``).
        image_size: ``(H, W)`` of the model input.
        count, seed: how many images, and the draw.

    Raises:
        FileNotFoundError: no ``celeba_identities/color_arcface112`` under `data_dir`.

    Example::

        calib = calibration_images("../shared/data", kfm.model_info("dlib_resnet_v1")["crop"], (150, 150))
    """
    from keras_facemargin.inference.calibrate import crop_from_arcface112, training_sample
    from keras_facemargin.utils.images import resize_image

    images = training_sample(data_dir, 112, count=count, seed=seed)
    h, w = int(image_size[0]), int(image_size[1])
    out = []
    for im in images:
        c = crop_from_arcface112(im, crop)
        out.append(c if c.shape[:2] == (h, w) else resize_image(c, (h, w)))
    return np.stack(out)


def registry_metadata(name):
    """The export-metadata fields of zoo model `name`: source, crop, thresholds (normalisation: the package's).

    Example::

        registry_metadata("arcface_celeba_mbf")["thresholds"]["accuracy"]
    """
    from keras_facemargin.pretrained.registry import get_model_info

    info = get_model_info(name)
    extra = {"source_sha256": info.get("sha256") or (info.get("source") or {}).get("sha256")}
    if info.get("thresholds"):
        extra["thresholds_calibration"] = ((info.get("calibration") or {}).get("set")
                                           or "held-out CelebA identities (keras_facemargin.inference.calibrate)")
    return {"source_model": name.lower(), "crop": info.get("crop"), "thresholds": info.get("thresholds") or None,
            "thresholds_source": f"registry:{name.lower()}" if info.get("thresholds") else None, "extra": extra}


def _celeba_present(data_dir):
    return (Path(data_dir) / "celeba_identities" / "color_arcface112").is_dir()


def export_pretrained(name, format, output, quantize="float32", weights=None, representative=None, data_dir=None,
                      check=True, num_images=64, latency_repeats=20):
    """Export zoo model `name` to SavedModel / TFLite / ONNX with its metadata (see the module docstring).

    Args:
        name: a name of ``keras_facemargin.list_models()``.
        format: ``"savedmodel"``, ``"tflite"`` or ``"onnx"``.
        output: output file (``.tflite`` / ``.onnx``) or directory (SavedModel).
        quantize: TFLite only: ``"float32"``, ``"float16"``, ``"dynamic"`` or ``"int8"``.
        weights: a local weights file (``keras_facemargin.load(name, weights=)``).
        representative: int8 calibration images (uint8 array or folder); default
            `calibration_images` from ``data_dir`` (CelebA training identities), or ``SyntheticFaces``
            without ``celeba_identities/``.
        data_dir: ``$KFM_DATA_DIR`` (default as :func:`keras_facemargin.export.parity.default_data_dir`).
        check, num_images, latency_repeats: the parity report (see ``export_model``).

    Returns:
        ``(path, report)`` as :func:`keras_facemargin.export.export_model`.

    Example::

        export_pretrained("dlib_resnet_v1", "tflite", "dlib_int8.tflite", quantize="int8")
    """
    from keras_facemargin import export
    from keras_facemargin.export.parity import default_data_dir
    from keras_facemargin.pretrained.loader import load, with_package_normalization
    from keras_facemargin.pretrained.registry import get_model_info

    info = get_model_info(name)
    model = load(name, weights=weights)
    embedder = with_package_normalization(model, getattr(model, "normalization", None) or info.get("normalization"))
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    fields = registry_metadata(name)
    if quantize == "int8" and representative is None and _celeba_present(data_dir):
        h, w = embedder.input_shape[1:3]
        representative = calibration_images(data_dir, info["crop"], (h, w))
        fields["extra"]["calibration_images"] = (f"{len(representative)} crops of CelebA training identities "
                                                 "(keras_facemargin.inference.zoo_export.calibration_images)")
    return export.export_model(embedder, format, output, quantize=quantize, representative=representative,
                               check=check, data_dir=data_dir, num_images=num_images,
                               latency_repeats=latency_repeats, metadata=fields)
