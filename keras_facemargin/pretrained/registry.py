"""Named pretrained face models (plain data). See ``pretrained/README.md`` for provenance.

Every entry of `MODELS` is a JSON-friendly dict::

    {
        "backbone": "iresnet100",          # key of keras_facemargin.backbones.BACKBONE_PRESETS
        "backbone_kwargs": {},             # extra constructor arguments for get_backbone
        "embedding_dim": 512,
        "input_size": (112, 112),
        "normalization": {"mean": 127.5, "std": 127.5},   # (x - mean) / std, RGB
        "head": "arcface",                 # margin head used in training
        "training_set": "MS1MV3 ...",
        "reported": {"IJB-C TAR@FAR=1e-4": 96.85, ...} or None,
        "reported_source": "citation of the table the numbers come from",
        "license": "...",
        "weights_url": None or "https://...",
        "weights_file": "arcface_r100_ms1mv3.weights.h5",   # name in the keras cache
        "sha256": None or "<64 hex>",      # hash of a file that exists; None until published
        "status": "why there is no URL / hash yet",
        "conversion": "how to produce the weights file locally",
    }

``DEFAULT_MODEL`` (``dlib_resnet_v1``) is converted on first use from the file its ``source`` names
(the ``face_recognition_models`` dependency, sha256-checked); ``arcface_celeba_mbf`` and
``mbf_dlib_distill`` ship their weights inside the package (with their sha256). Every entry has a
``crop`` (the geometry its crops are cut with), and calibrated entries ``thresholds`` from held-out
CelebA identities (never LFW). The others have no hosted weights (``weights_url`` and ``sha256`` are
``None``) and `keras_facemargin.load` explains how to supply a local file. The insightface numbers are
those reported for *their* PyTorch checkpoints (the model zoo is for non-commercial research
only); a converted checkpoint reproduces them only with its own normalisation and alignment.
"""

import copy

INSIGHTFACE_ZOO_SOURCE = (
    "insightface arcface_torch README, 'Model Zoo' > 'Performance on IJB-C and ICCV2021-MFR' > "
    "'1. Training on Single-Host GPU' (github.com/deepinsight/insightface/blob/"
    "0159b24d44cbc91abbd07b7a6fab0ba923a7fddf/recognition/arcface_torch/README.md)"
)
INSIGHTFACE_ZOO_LICENSE = (
    "insightface model zoo: 'available for non-commercial research purposes only' (code: MIT)"
)
KAPPAFACE_SOURCE = (
    "Oinar, Le & Woo, 'KappaFace: Adaptive Additive Angular Margin Loss for Deep Face "
    "Recognition', IEEE Access 2023, arXiv:2201.07394 (no public checkpoint; numbers not "
    "transcribed here until checked against the paper's tables)"
)
NO_HOSTED_WEIGHTS = (
    "No weights are hosted by keras_facemargin yet. Convert an insightface checkpoint with "
    "kfm convert or train one, then pass weights=PATH or place the file in "
    "$KERAS_FACEMARGIN_HOME."
)
_ARCFACE_NORM = {"mean": 127.5, "std": 127.5}  # arcface_torch: Normalize(mean=0.5, std=0.5)
_PACKAGE_NORM = {"mean": 127.5, "std": 128.0}  # keras_facemargin.data.normalize_images


#: Crop geometry of insightface-style models: a 5-point similarity to the ArcFace 112x112 template.
ARCFACE_CROP = {"kind": "arcface", "size": 112,
                "template": [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]]}
#: dlib's face chip (``dlib.get_face_chip(img, shape, size=150, padding=0.25)``) expressed as a 5-point
#: template for MTCNN's landmarks (eyes, nose tip, mouth corners): the mean of MTCNN's landmarks mapped
#: into dlib's chip over 1,738 CelebA photos (LFW-overlap identities excluded), fitted with weights
#: (eyes 1, nose 0.25, mouths 0) because dlib's chip follows the eyes and MTCNN's nose and mouth points
#: scatter by 4-6 px: on 300 other CelebA photos the descriptor of this crop is at Euclidean distance
#: 0.119 from the descriptor of dlib's own chip (0.157 with equal weights; a 1-px shift of dlib's chip
#: is 0.07-0.08). See docs/results.md.
DLIB_CHIP_CROP = {"kind": "dlib_chip", "size": 150, "padding": 0.25,
                  "template": [[47.337, 44.893], [100.081, 44.654], [73.112, 77.702], [50.06, 100.718],
                               [97.604, 100.418]],
                  "weights": [1.0, 1.0, 0.25, 0.0, 0.0]}

def _entry(backbone, head, training_set, reported, source, license, weights_file, conversion,
           normalization):
    return {
        "backbone": backbone,
        "backbone_kwargs": {},
        "embedding_dim": 512,
        "input_size": (112, 112),
        "crop": dict(ARCFACE_CROP),
        "normalization": dict(normalization),
        "head": head,
        "training_set": training_set,
        "reported": reported,
        "reported_source": source,
        "license": license,
        "weights_url": None,
        "weights_file": weights_file,
        "sha256": None,
        "status": NO_HOSTED_WEIGHTS,
        "conversion": conversion,
    }


CELEBA_LICENSE = (
    "trained on CelebA (Liu et al., ICCV 2015): non-commercial research use only, as the CelebA agreement "
    "requires of works derived from it (code: Apache-2.0)"
)

MODELS = {
    # Shipped inside the package: trained here with examples/celeba_lfw.py and packaged with
    # kfm package (numbers: pretrained/arcface_celeba_mbf.json, docs/results.md).
    "arcface_celeba_mbf": {
        "backbone": "mobilefacenet",
        "backbone_kwargs": {"width_multiplier": 0.5, "blocks": (1, 1, 1, 1), "dropout": 0.0},
        "embedding_dim": 256,
        "input_size": (48, 48),
        "crop": dict(ARCFACE_CROP),  # aligned at 112, resized to 48
        "normalization": dict(_PACKAGE_NORM),
        "head": "arcface (s=32, m=0.5)",
        "training_set": (
            "CelebA identities (celeba_identities color_arcface112 + gray_arcface112): 584 identities, "
            "15,241 ArcFace-aligned images, the 156 LFW-overlap candidates and 50 selection identities removed"),
        "reported": {"LFW (centre crop)": 81.87, "LFW (MTCNN-aligned)": 84.12,
                     "LFW TAR@FAR=1e-3 (MTCNN-aligned)": 25.33},
        "reported_source": (
            "measured by this project: LFW View 2, 6,000 pairs, 10 folds, flip-sum "
            "(kfm package runs/real_faces/head_arcface_s0_d8d9db/model.keras "
            "--name arcface_celeba_mbf)"),
        "license": CELEBA_LICENSE,
        "weights_url": None,
        "weights_file": "arcface_celeba_mbf.weights.h5",
        "sha256": "59fd3437a3b7e43cfe1e152c3b334e711ca85e7c16bee392ebe0c9fd788ffe89",
        "status": "shipped inside the package (keras_facemargin/pretrained/weights/)",
        "conversion": "python examples/celeba_lfw.py --loss arcface (then kfm package)",
        # Cosine thresholds (same iff score > t) on every pair of the 50 held-out CelebA identities, which
        # this model's training also held out (keras_facemargin.inference.calibrate; never LFW).
        "thresholds": {"0.01": 0.5337, "0.001": 0.6466, "0.0001": 0.7182, "accuracy": 0.2864},
        "calibration": {"set": "every pair of 1404 images of 50 held-out CelebA identities (celeba_identities/color_arcface112, inference.calibrate.heldout_identities), re-cropped from the ArcFace template to the model's crop, flip-sum", "num_genuine": 19251, "num_impostor": 965655, "tar": {"0.01": 0.3734, "0.001": 0.1678, "0.0001": 0.0811, "accuracy": 0.8226}, "far": {"0.01": 0.009999, "0.001": 0.000999, "0.0001": 9.9e-05, "accuracy": 0.169826}, "command": "kfm calibrate arcface_celeba_mbf"},
    },
    # Trained here: MobileFaceNet distilled from dlib_resnet_v1 (centred embeddings) with an ArcFace head on
    # the CelebA labels (examples/distill_dlib.py; numbers in docs/results.md).
    "mbf_dlib_distill": {
        "backbone": "mobilefacenet",
        "backbone_kwargs": {"blocks": (1, 4, 6, 2), "outer_width_factor": 1},
        "embedding_dim": 128,
        "input_size": (112, 112),
        "crop": dict(ARCFACE_CROP),
        "normalization": dict(_PACKAGE_NORM),
        "head": "arcface (s=32, m=0.5) + 8 x (1 - cos) to dlib_resnet_v1's centred embeddings",
        "training_set": (
            "CelebA identities (celeba_identities color_arcface112 + gray_arcface112): 584 identities, "
            "15,241 ArcFace-aligned images, the 156 LFW-overlap candidates and 50 held-out identities removed; "
            "teacher dlib_resnet_v1 (CC0)"),
        "reported": {"LFW (FaceVerifier, MTCNN)": 84.05, "LFW TAR@FAR=1e-3": 28.57, "LFW default verdict": 82.37, "LFW TFLite int8": 83.93, "held-out CelebA pairs": 85.40},
        "reported_source": "measured by this project: python benchmarks/zoo_lfw.py --models mbf_dlib_distill --no-peer --tflite-int8",
        "license": CELEBA_LICENSE,
        "weights_url": None,
        "weights_file": "mbf_dlib_distill.weights.h5",
        "sha256": "add2b61dfd184e52643026689b7abc71ccfed943e023dd91233c77bf5830e6ce",
        "status": "shipped inside the package (keras_facemargin/pretrained/weights/)",
        "conversion": "python examples/distill_dlib.py --mode distill_arcface --epochs 3 --output runs/distill/distill_arcface_centred",
        "thresholds": {"0.01": 0.6596, "0.001": 0.7675, "0.0001": 0.831, "accuracy": 0.3555},
        "calibration": {"set": "every pair of 1404 images of 50 held-out CelebA identities (celeba_identities/color_arcface112, inference.calibrate.heldout_identities), re-cropped from the ArcFace template to the model's crop, flip-sum", "num_genuine": 19251, "num_impostor": 965655, "tar": {"0.01": 0.3686, "0.001": 0.1503, "0.0001": 0.0601, "accuracy": 0.8447}, "far": {"0.01": 0.009999, "0.001": 0.000999, "0.0001": 9.9e-05, "accuracy": 0.168842}, "command": "kfm calibrate mbf_dlib_distill"},
    },
    # dlib's face ResNet, converted on first use from the .dat file of the face_recognition_models
    # package (a dependency of this package) and cached under $KFM_CACHE_DIR.
    "dlib_resnet_v1": {
        "backbone": "dlib_resnet_v1",
        "backbone_kwargs": {},
        "embedding_dim": 128,
        "input_size": (150, 150),
        # The network normalises itself ((x - mean_rgb) / 256, dlib's input_rgb_image): raw RGB pixels.
        "normalization": {"mean": 0.0, "std": 1.0},
        "crop": dict(DLIB_CHIP_CROP),
        "head": "dlib loss_metric (pairwise hinge on Euclidean distances: margin 0.04, threshold 0.6)",
        "training_set": (
            "about 3 million faces of about 7,485 identities (FaceScrub, VGG-Face and faces collected by "
            "dlib's author), as dlib's model README states"),
        "reported": {"LFW (dlib's own pipeline)": 99.38},
        "reported_source": "dlib-models README, dlib_face_recognition_resnet_model_v1.dat (github.com/davisking/dlib-models)",
        "license": "CC0 1.0 (public domain), as the face_recognition_models package releases dlib's model files",
        "source": {"package": "face_recognition_models", "file": "models/dlib_face_recognition_resnet_model_v1.dat",
                   "sha256": "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
                   "format": "dlib"},
        "weights_url": None,
        "weights_file": "dlib_resnet_v1.weights.h5",
        "sha256": None,
        "status": ("converted on first use from face_recognition_models' dlib_face_recognition_resnet_model_v1.dat "
                   "(sha256-checked) and cached in $KFM_CACHE_DIR"),
        "conversion": "automatic: keras_facemargin.load('dlib_resnet_v1') (keras_facemargin.convert.dlib.convert_dlib)",
        # Cosine thresholds (same iff score > t) on every pair of the 50 held-out CelebA identities
        # (keras_facemargin.inference.calibrate; never LFW). "accuracy": best balanced accuracy.
        "thresholds": {"0.01": 0.9145, "0.001": 0.9299, "0.0001": 0.941, "accuracy": 0.9131},
        "calibration": {"set": "every pair of 1404 images of 50 held-out CelebA identities (celeba_identities/color_arcface112, inference.calibrate.heldout_identities), re-cropped from the ArcFace template to the model's crop, flip-sum", "num_genuine": 19251, "num_impostor": 965655, "tar": {"0.01": 0.9653, "0.001": 0.9187, "0.0001": 0.826, "accuracy": 0.968}, "far": {"0.01": 0.009999, "0.001": 0.000999, "0.0001": 9.9e-05, "accuracy": 0.011822}, "command": "kfm calibrate dlib_resnet_v1"},
    },
    "arcface_r100": _entry(
        "iresnet100", "arcface (s=64, m=0.5)", "MS1MV3 (ms1m-retinaface-t1, 93k identities, 5.2M images)",
        {"MFR-ALL": 81.97, "IJB-C TAR@FAR=1e-4": 96.85, "IJB-C TAR@FAR=1e-5": 95.02},
        INSIGHTFACE_ZOO_SOURCE, INSIGHTFACE_ZOO_LICENSE, "arcface_r100_ms1mv3.weights.h5",
        "kfm convert ms1mv3_arcface_r100_fp16/backbone.pth "
        "--output arcface_r100_ms1mv3.weights.h5 (checkpoint from the insightface model zoo)",
        _ARCFACE_NORM),
    "arcface_r50": _entry(
        "iresnet50", "arcface (s=64, m=0.5)", "MS1MV3 (ms1m-retinaface-t1, 93k identities, 5.2M images)",
        {"MFR-ALL": 79.14, "IJB-C TAR@FAR=1e-4": 96.37, "IJB-C TAR@FAR=1e-5": 94.47},
        INSIGHTFACE_ZOO_SOURCE, INSIGHTFACE_ZOO_LICENSE, "arcface_r50_ms1mv3.weights.h5",
        "kfm convert ms1mv3_arcface_r50_fp16/backbone.pth "
        "--output arcface_r50_ms1mv3.weights.h5 (checkpoint from the insightface model zoo)",
        _ARCFACE_NORM),
    "arcface_mobilefacenet": _entry(
        "mobilefacenet", "arcface (s=64, m=0.5)", "MS1MV3 (ms1m-retinaface-t1, 93k identities, 5.2M images)",
        {"MFR-ALL": 63.78, "IJB-C TAR@FAR=1e-4": 94.23, "IJB-C TAR@FAR=1e-5": 91.33},
        INSIGHTFACE_ZOO_SOURCE + " (row 'mobilefacenet-0.45G')", INSIGHTFACE_ZOO_LICENSE,
        "arcface_mobilefacenet_ms1mv3.weights.h5",
        "kfm convert ms1mv3_arcface_mbf/backbone.pth "
        "--output arcface_mobilefacenet_ms1mv3.weights.h5 (checkpoint from the insightface model zoo)",
        _ARCFACE_NORM),
    "kappaface_r100": _entry(
        "iresnet100", "kappaface (s=64, m0=0.8, T=0.4, gamma=0.7)", "MS1MV2 (ms1m-refine-v2, 85k identities, 5.8M images)",
        None, KAPPAFACE_SOURCE, "to be decided with the first published checkpoint (code: Apache-2.0)",
        "kappaface_r100_ms1mv2.weights.h5",
        "No public checkpoint exists: train with keras_facemargin (KappaMarginDense, backbone "
        "'iresnet100') and save model.backbone.save_weights('kappaface_r100_ms1mv2.weights.h5')",
        _PACKAGE_NORM),
    "kappaface_r50": _entry(
        "iresnet50", "kappaface (s=64, m0=0.8, T=0.4, gamma=0.7)", "MS1MV2 (ms1m-refine-v2, 85k identities, 5.8M images)",
        None, KAPPAFACE_SOURCE, "to be decided with the first published checkpoint (code: Apache-2.0)",
        "kappaface_r50_ms1mv2.weights.h5",
        "No public checkpoint exists: train with keras_facemargin (KappaMarginDense, backbone "
        "'iresnet50') and save model.backbone.save_weights('kappaface_r50_ms1mv2.weights.h5')",
        _PACKAGE_NORM),
}


def get_model_info(name):
    """A deep copy of the registry entry `name`; `ValueError` listing the known names otherwise.

    Also ``keras_facemargin.model_info(name)``. Every entry has ``backbone``, ``head``,
    ``input_size``, ``crop`` (geometry: ``kind``, ``size``, 5 ``template`` points), ``normalization``,
    ``embedding_dim``, ``reported`` results, ``license``, ``sha256`` / ``source``, and, where
    calibrated, ``thresholds`` (FAR ``"0.01"``, ``"0.001"``, ``"0.0001"`` and ``"accuracy"``).

    Example::

        get_model_info("arcface_r50")["reported"]
    """
    if not isinstance(name, str) or name.lower() not in MODELS:
        raise ValueError(f"Unknown pretrained model {name!r}. Known models: {sorted(MODELS)}.")
    return copy.deepcopy(MODELS[name.lower()])


#: The model that `FaceVerifier` and the photo tools use when none is given: the most accurate one
#: that works offline after ``pip install .`` (dlib's ResNet, converted from the
#: ``face_recognition_models`` dependency on first use; LFW 98.85% through `FaceVerifier`).
DEFAULT_MODEL = "dlib_resnet_v1"
