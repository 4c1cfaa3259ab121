"""insightface / MXNet RecordIO training sets, read and written without MXNet.

Layout (``faces_emore`` = MS1MV2, MS1MV3, Glint360K, CASIA ``faces_webface``)::

    <dir>/train.rec   concatenated records
    <dir>/train.idx   text, one line per record: "<key>\\t<byte offset in train.rec>"
    <dir>/property    text "num_classes,height,width" (optional for reading)

The record framing and payload are described in
:mod:`keras_facemargin.data.formats.recordio.records`. Keys in ``faces_emore``:

* key 0, the header record: ``flag = 2``, ``labels = (S, E)``. Image records
  are keys ``1 .. S-1``; identity records are keys ``S .. E-1``.
* image record: ``flag = 0``, ``label`` = class id (a float holding an integer);
  ``id`` = its key. (Some sets store ``flag >= 1`` labels; the class is
  ``labels[0]``, as in insightface's ``MXFaceDataset``.)
* identity record ``S + c``: ``flag = 2``, ``labels = (a, b)``: the images of
  class ``c`` are keys ``a .. b-1``.

Without a header record (``flag == 0`` at key 0, or no key 0) every key of
the ``.idx`` is an image record, in file order.

Modules: :mod:`.records` (framing, ``IRHeader``), :mod:`.writer` (:func:`write_recordio`),
:mod:`.reader` (:class:`RecordIOReader`: validation, header scan), :mod:`.dataset`
(:func:`make_dataset`, the ``tf.data`` pipeline).

Example::

    reader = RecordIOReader("faces_emore")
    reader.num_images, reader.num_classes, reader.class_counts()[:5]
    ds = make_dataset("faces_emore", batch_size=128, seed=0)
    inputs, labels = next(iter(ds))   # {"images", "labels", "index"}, labels
"""

from keras_facemargin.data.formats.recordio.records import MAGIC, IRHeader, pack_record  # noqa: F401
from keras_facemargin.data.formats.recordio.writer import write_recordio  # noqa: F401
from keras_facemargin.data.formats.recordio.reader import (  # noqa: F401
    DEFAULT_MIN_MAX_CLASSES,
    RecordIOError,
    RecordIOReader,
    RecordIORecordError,
)
from keras_facemargin.data.formats.recordio.dataset import make_dataset, make_recordio_dataset  # noqa: F401

__all__ = [
    "IRHeader",
    "RecordIOReader",
    "make_dataset",
    "make_recordio_dataset",
    "write_recordio",
    "pack_record",
    "MAGIC",
    "RecordIOError",
    "RecordIORecordError",
    "DEFAULT_MIN_MAX_CLASSES",
]
