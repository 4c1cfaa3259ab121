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
