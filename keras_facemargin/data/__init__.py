"""Data: procedural synthetic faces and ``tf.data`` pipelines.

See :mod:`keras_facemargin.data.synthetic` and :mod:`keras_facemargin.data.pipeline`.
"""

from keras_facemargin.data.pipeline import (  # noqa: F401
    make_synthetic_training_dataset,
    make_training_dataset,
    normalize_images,
)
from keras_facemargin.data.synthetic import SyntheticFaces, VerificationPairs  # noqa: F401

__all__ = [
    "SyntheticFaces",
    "VerificationPairs",
    "make_synthetic_training_dataset",
    "make_training_dataset",
    "normalize_images",
]

# File-backed training sets (RecordIO, image folders, TFRecord) and bad-record reporting.
from keras_facemargin.data.errors import BadRecordError, BadRecordReport  # noqa: E402,F401
from keras_facemargin.data.folders import make_folder_dataset, scan_image_folder  # noqa: E402,F401
from keras_facemargin.data.recordio import (  # noqa: E402,F401
    RecordIOReader,
    make_dataset,
    make_recordio_dataset,
    write_recordio,
)
from keras_facemargin.data.tfrecord import make_tfrecord_dataset, write_tfrecords  # noqa: E402,F401

__all__ += [
    "BadRecordError",
    "BadRecordReport",
    "RecordIOReader",
    "make_dataset",
    "make_recordio_dataset",
    "write_recordio",
    "make_folder_dataset",
    "scan_image_folder",
    "make_tfrecord_dataset",
    "write_tfrecords",
]

# Face alignment and real-data loaders (LFW pairs, identity folders such as CelebA).
from keras_facemargin.data.align import (  # noqa: E402,F401
    ARCFACE_TEMPLATE_112,
    MTCNNDetector,
    align_face,
    align_folder,
    estimate_transform,
    parse_landmarks_file,
    reference_landmarks,
)
from keras_facemargin.data.identity_folders import (  # noqa: E402,F401
    CELEBA_ARCFACE_CROP_BOX,
    CombinedIdentityData,
    IdentityFolderData,
    load_identity_folder,
    load_identity_folders,
)
from keras_facemargin.data.sources import DataSourceError, load_training_set, read_identity_list  # noqa: E402,F401
from keras_facemargin.data.augment import FaceAugmentation  # noqa: E402,F401
from keras_facemargin.data.lfw import (  # noqa: E402,F401
    LFW_CENTER_CROP_BOX,
    LFWPairs,
    load_lfw_images,
    load_lfw_pairs,
)

__all__ += [
    "ARCFACE_TEMPLATE_112",
    "MTCNNDetector",
    "align_face",
    "align_folder",
    "estimate_transform",
    "parse_landmarks_file",
    "reference_landmarks",
    "CELEBA_ARCFACE_CROP_BOX",
    "IdentityFolderData",
    "CombinedIdentityData",
    "load_identity_folder",
    "load_identity_folders",
    "read_identity_list",
    "DataSourceError",
    "load_training_set",
    "FaceAugmentation",
    "LFW_CENTER_CROP_BOX",
    "LFWPairs",
    "lfw_verification",
    "load_lfw_images",
    "load_lfw_pairs",
]


def __getattr__(name):
    # lfw_verification is keras_facemargin.evaluation.pairs_sets.lfw_verification, re-exported
    # lazily (data must not import evaluation at module level).
    if name == "lfw_verification":
        from keras_facemargin.evaluation.pairs_sets import lfw_verification

        return lfw_verification
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
