"""Data: training sets, their on-disk formats, ``tf.data`` pipelines, face alignment and loaders.

* :mod:`~keras_facemargin.data.formats`: the on-disk formats (RecordIO, TFRecord, image folders);
* :mod:`~keras_facemargin.data.sources` / :mod:`~keras_facemargin.data.training_set`: data roots
  scanned and combined into one label space and pipeline;
* :mod:`~keras_facemargin.data.pipeline`: the ``tf.data`` element contract;
* :mod:`~keras_facemargin.data.synthetic`, :mod:`~keras_facemargin.data.identity_folders`,
  :mod:`~keras_facemargin.data.lfw`, :mod:`~keras_facemargin.data.align`.

``data`` imports nothing from :mod:`keras_facemargin.evaluation`; LFW 10-fold verification is
:func:`keras_facemargin.evaluation.lfw_verification`.
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
from keras_facemargin.data.formats.folders import make_folder_dataset, scan_image_folder  # noqa: E402,F401
from keras_facemargin.data.formats.recordio import (  # noqa: E402,F401
    RecordIOReader,
    make_dataset,
    make_recordio_dataset,
    write_recordio,
)
from keras_facemargin.data.formats.tfrecord import make_tfrecord_dataset, write_tfrecords  # noqa: E402,F401

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
from keras_facemargin.data.sources import DataSourceError  # noqa: E402,F401
from keras_facemargin.data.training_set import load_training_set, read_identity_list  # noqa: E402,F401
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
    "load_lfw_images",
    "load_lfw_pairs",
]

