"""The on-disk training-set formats, each with its reader, writer and ``tf.data`` pipeline.

* :mod:`~keras_facemargin.data.formats.recordio`: insightface / MXNet RecordIO (``train.rec``,
  ``train.idx``, ``property``), read and written without MXNet;
* :mod:`~keras_facemargin.data.formats.tfrecord`: TFRecord files of ``tf.train.Example`` s
  (``image/encoded``, ``image/label``, ``image/index``);
* :mod:`~keras_facemargin.data.formats.folders`: image-folder trees ``root/<identity>/<image>``
  (the package's one scanner and one multi-root merge rule).

Every pipeline yields the package contract ``({"images", "labels", "index"}, labels)`` through
the shared tail :func:`keras_facemargin.data.pipeline.build_decoded_pipeline`, with the same
bad-record handling (:mod:`keras_facemargin.data.errors`). Modules here import only
``keras_facemargin.data.errors``, ``data.pipeline``, ``errors`` and ``utils``.

Example::

    from keras_facemargin.data.formats import make_folder_dataset, make_recordio_dataset
    ds = make_recordio_dataset("faces_emore", batch_size=128)
"""

from keras_facemargin.data.formats.folders import (  # noqa: F401
    IMAGE_EXTENSIONS,
    list_identity_folder,
    make_folder_dataset,
    merge_identity_roots,
    scan_image_folder,
)
from keras_facemargin.data.formats.recordio import (  # noqa: F401
    RecordIOReader,
    make_recordio_dataset,
    write_recordio,
)
from keras_facemargin.data.formats.tfrecord import make_tfrecord_dataset, write_tfrecords  # noqa: F401

__all__ = [
    "IMAGE_EXTENSIONS",
    "list_identity_folder",
    "make_folder_dataset",
    "merge_identity_roots",
    "scan_image_folder",
    "RecordIOReader",
    "make_recordio_dataset",
    "write_recordio",
    "make_tfrecord_dataset",
    "write_tfrecords",
]
