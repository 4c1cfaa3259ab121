"""The training ``tf.data`` pipeline over an insightface RecordIO set.

Reading in ``tf.data`` (:func:`make_dataset`): the file is memory-mapped and a
vectorised NumPy scan of all record headers (no image decode) validates every
record up front and yields each image's byte offset and length. Sample
indices are sharded, shuffled and cut into chunks of ``chunk_size``; one
``tf.numpy_function`` call per chunk slices the images out of the map and
decodes them with OpenCV (which releases the GIL, so the parallel ``map``
uses every core), writing into one preallocated uint8 array; one Python call
per chunk rather than per image keeps GIL-bound overhead small. OpenCV is used rather than
TensorFlow's ``decode_jpeg`` op because (a) a failed decode is *counted* and skipped
(TF decode errors can only be dropped uncounted with ``ignore_errors`` or
abort the epoch), (b) it decodes with the accurate integer IDCT, bit-identical
to TF's ``decode_jpeg(dct_method="INTEGER_ACCURATE")`` and to the
OpenCV-based decoding of insightface's own ``MXFaceDataset``, and was faster
than that TF mode here (single core, 112x112: ~9k vs ~6.6k images/s); TF's
default fast IDCT differs by up to ~12 grey levels. On 2 shared CPU cores the
whole pipeline ran at ~0.8x a bare ``list_files -> decode_jpeg`` folder
pipeline given the same flip + normalise work
(``benchmarks/pipeline_throughput.py``).
Decoded images are unbatched, failures filtered out, rebatched (so batches
stay full), flipped and normalised in TF.

Example::

    report = BadRecordReport()
    ds = make_dataset("faces_emore", 128, seed=0, report=report)
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_facemargin.data.errors import BadRecordError, BadRecordReport, check_on_error
from keras_facemargin.data.formats.recordio.reader import RecordIOReader
from keras_facemargin.data.pipeline import (
    _check_common,
    _check_pipeline_args,
    build_decoded_pipeline,
    decode_image_into,
    resolve_shard,
)
from keras_facemargin.errors import RecordIOError, RecordIORecordError
from keras_facemargin.utils.images import check_max_pixels, decode_image

__all__ = ["make_dataset", "make_recordio_dataset"]


def make_dataset(path, batch_size: int, shuffle: bool = True, seed: int = 0,
                 augment_flip: bool = True, drop_remainder: bool = True, repeat: bool = False,
                 num_parallel_calls=tf.data.AUTOTUNE, on_error: str = "skip", shard="auto",
                 image_size=None, report: BadRecordReport | None = None,
                 chunk_size: int = 32, max_image_pixels=None) -> tf.data.Dataset:
    """Training ``tf.data`` pipeline over an insightface RecordIO set.

    Yields the package contract ``({"images", "labels", "index"}, labels)``
    (see :mod:`keras_facemargin.data.pipeline`); ``index`` is the position in
    :attr:`RecordIOReader.keys`.

    Args:
        path: folder with ``train.rec``/``train.idx``/``property``, a ``.rec``
            path, or a :class:`RecordIOReader`.
        batch_size: images per batch (per worker when sharded).
        shuffle: reshuffle sample indices every epoch (seeded).
        seed: seed for shuffling and flips.
        augment_flip: random horizontal flip with probability 0.5.
        drop_remainder: drop the last incomplete batch.
        repeat: repeat indefinitely.
        num_parallel_calls: parallelism of the decode ``map``.
        on_error: ``"skip"`` bad records (counted in ``report``, logged) or
            ``"raise"`` a :class:`BadRecordError` naming the file and offset:
            at construction for records the header scan rejects, during
            iteration (wrapped in a ``tf.errors`` exception carrying the same
            message) for images that fail to decode.
        shard: ``"auto"``, ``None``, ``(num_shards, index)`` or a
            ``tf.distribute.InputContext`` (see :func:`resolve_shard`); shards
            are disjoint sets of sample indices.
        image_size: ``(height, width)`` to resize to; default: the ``property``
            size (images of another size are bad records), else the first image's.
        report: a :class:`BadRecordReport` to count into (default: a new one,
            also attached to the returned dataset as ``.bad_records``).
        chunk_size: images decoded per ``numpy_function`` call.
        max_image_pixels: largest ``height * width`` decoded (read from each image's header
            first); default: the reader's ``max_image_pixels``.

    Returns:
        ``tf.data.Dataset``.

    Raises:
        OSError: missing / unreadable files. ValueError: bad arguments. RecordIOError: a
        malformed set (see :class:`RecordIOReader`). RecordIORecordError (a
        :class:`BadRecordError`) with ``on_error="raise"``.

    Example::

        report = BadRecordReport()
        ds = make_dataset("faces_emore", 128, seed=0, report=report)
        model.fit(ds, epochs=20)
        print(report.summary())
    """
    check_on_error(on_error)
    reader = path if isinstance(path, RecordIOReader) else RecordIOReader(path)
    hw = _check_pipeline_args(chunk_size, num_parallel_calls, image_size)
    resize = hw is not None
    cap = reader.max_image_pixels if max_image_pixels is None else check_max_pixels(max_image_pixels)
    report = BadRecordReport() if report is None else report
    sc = reader.scan()
    if sc["bad"]:
        if on_error == "raise":
            first = sc["bad"][0]
            raise RecordIORecordError(first.file, first.offset, first.reason,
                                 f"{first.detail}; {len(sc['bad'])} bad record(s) in total")
        for pos, err in zip(sc["bad_positions"], sc["bad"]):
            report.add_error(err, key=int(reader.keys[pos]), log=False)
        report.log_summary()
    positions = np.flatnonzero(sc["valid"]).astype(np.int64)
    if positions.size == 0:
        raise RecordIOError(reader.rec_path, "no valid image records")
    if hw is None:
        hw = reader.image_size
    if hw is None:
        probe, why = decode_image(reader._image_view(int(positions[0])), cap)
        if probe is None:
            raise RecordIORecordError(reader.rec_path, int(reader._image_offsets[positions[0]]),
                                      "bad_image", f"{why} (the first image is used to infer the image size)")
        hw = probe.shape[:2]
    shard_spec = resolve_shard(shard)
    if shard_spec:
        positions = positions[shard_spec[1]::shard_spec[0]]
    _check_common(positions.size, batch_size, drop_remainder, seed)
    rec_path = str(reader.rec_path)
    img_offsets = reader._image_offsets
    keys = reader.keys

    def load_chunk(idx):
        out = np.empty((idx.size, hw[0], hw[1], 3), np.uint8)
        ok = np.ones(idx.size, bool)
        for k, i in enumerate(idx):
            try:
                why = decode_image_into(reader._image_view(int(i)), out[k], resize, cap)
            except BadRecordError as e:
                why = e.detail or e.reason
            if why is not None:
                err = RecordIORecordError(rec_path, int(img_offsets[i]), "bad_image", why)
                if on_error == "raise":
                    raise err
                report.add_error(err, key=int(keys[i]))
                ok[k] = False
        return out, ok

    source = tf.data.Dataset.from_tensor_slices(
        (positions, sc["labels"][positions].astype(np.int32)))
    ds = build_decoded_pipeline(source, load_chunk, hw, batch_size, shuffle, seed, augment_flip,
                                drop_remainder, repeat, num_parallel_calls, chunk_size, shard_spec)
    ds.bad_records = report
    ds.reader = reader
    return ds


make_recordio_dataset = make_dataset
"""Alias of :func:`make_dataset` (unambiguous when imported from :mod:`keras_facemargin.data`)."""
