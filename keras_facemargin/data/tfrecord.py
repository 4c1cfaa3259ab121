"""TFRecord training sets: schema, sharded writer and ``tf.data`` reader.

Schema: one ``tf.train.Example`` per image with features

==================  =========  =====================================================
``image/encoded``   bytes      encoded image (JPEG as in insightface sets; PNG ok)
``image/label``     int64      class id in ``[0, num_classes)``
``image/index``     int64      training sample index (unique, ``0..N-1``; KappaFace slot)
==================  =========  =====================================================

Files are named ``<prefix>-00000-of-00008.tfrecord``; :func:`write_tfrecords`
assigns images to shards round-robin so each shard mixes classes.

Reading (:func:`make_tfrecord_dataset`): files are shuffled and interleaved,
records shuffled in a buffer, then decoded with the shared OpenCV chunk decoder
of :mod:`keras_facemargin.data.recordio` (same contract, same bad-record
handling). Before building the pipeline a header-only pass over each file
follows the record framing (``uint64 length, uint32 crc, data, uint32 crc``)
without reading the data: a truncated file is reported (file and offset) and,
with ``on_error="skip"``, only its complete records are read.

What ``on_error="skip"`` covers: truncated files (their complete records are
read), undecodable/empty images and labels outside ``[0, num_classes)`` (each
reported with the file it came from and its ``image/index``). What it does
*not* cover: record CRCs are not checked up front, so a CRC-corrupt record in
the middle of a file (bit rot in a complete record) makes TensorFlow's reader
raise ``tf.errors.DataLossError`` while iterating, whatever ``on_error`` is.
Its message gives the byte offset (``corrupted record at 12``) but *not* the
file; to find it, read each file alone (``for f in ds.files:
list(tf.data.TFRecordDataset(f))``).

Example::

    write_tfrecords("out/train", ((i, lab, jpg) for i, (lab, jpg) in enumerate(items)), num_shards=4)
    ds = make_tfrecord_dataset("out/train-*.tfrecord", batch_size=128)
"""

from __future__ import annotations

import os
import struct

import numpy as np
import tensorflow as tf

from keras_facemargin.data.errors import BadRecordError, BadRecordReport, check_on_error
from keras_facemargin.data.pipeline import _check_common
from keras_facemargin.data.recordio import (
    _check_pipeline_args,
    build_decoded_pipeline,
    decode_image_into,
    resolve_shard,
)

__all__ = ["FEATURES", "encode_example", "decode_example", "write_tfrecords", "scan_tfrecord_file",
           "index_tfrecord_file", "make_tfrecord_dataset"]

FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/label": tf.io.FixedLenFeature([], tf.int64),
    "image/index": tf.io.FixedLenFeature([], tf.int64),
}


def encode_example(index: int, label: int, encoded: bytes) -> bytes:
    """Serialise one image as a ``tf.train.Example`` of the schema above."""
    feat = tf.train.Feature
    return tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": feat(bytes_list=tf.train.BytesList(value=[bytes(encoded)])),
        "image/label": feat(int64_list=tf.train.Int64List(value=[int(label)])),
        "image/index": feat(int64_list=tf.train.Int64List(value=[int(index)])),
    })).SerializeToString()


def decode_example(serialized: bytes):
    """Parse one serialised ``tf.train.Example`` of the schema above (in Python, no graph).

    Returns:
        ``(index, label, encoded_bytes)``.

    Raises:
        ValueError: not a ``tf.train.Example``, or a feature of the schema is missing.

    Example::

        index, label, jpg = decode_example(encode_example(7, 3, jpg))   # -> 7, 3, jpg
    """
    from google.protobuf.message import DecodeError

    try:
        feature = tf.train.Example.FromString(bytes(serialized)).features.feature
    except DecodeError as e:
        raise ValueError(f"not a serialised tf.train.Example ({e})") from None
    try:
        return (int(feature["image/index"].int64_list.value[0]),
                int(feature["image/label"].int64_list.value[0]),
                bytes(feature["image/encoded"].bytes_list.value[0]))
    except (KeyError, IndexError):
        missing = [k for k in FEATURES if k not in feature]
        raise ValueError(f"tf.train.Example lacks feature(s) {missing or list(FEATURES)} "
                         "(expected image/encoded, image/label, image/index)") from None


def write_tfrecords(output_prefix, items, num_shards: int = 1, progress=None) -> list[str]:
    """Write ``(index, label, encoded_image)`` items to sharded TFRecord files.

    Args:
        output_prefix: path prefix, e.g. ``"out/train"`` (folder created).
        items: iterable of ``(index, label, encoded_bytes)``.
        num_shards: number of output files; item ``j`` goes to shard ``j % num_shards``.
        progress: optional callable ``progress(n)`` called after each item.

    Returns:
        The written file paths.

    Example::

        files = write_tfrecords("out/train", [(0, 3, jpg0), (1, 5, jpg1)], num_shards=2)
    """
    if isinstance(num_shards, bool) or not isinstance(num_shards, (int, np.integer)) or num_shards < 1:
        raise ValueError(f"`num_shards` must be a positive integer, got {num_shards!r}.")
    prefix = str(output_prefix)
    parent = os.path.dirname(prefix)
    if parent:
        tf.io.gfile.makedirs(parent)
    paths = [f"{prefix}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]
    writers = [tf.io.TFRecordWriter(p) for p in paths]
    try:
        for j, (index, label, data) in enumerate(items):
            if int(label) < 0 or int(index) < 0:
                raise ValueError(f"Item {j}: label and index must be >= 0, got {label}, {index}.")
            writers[j % num_shards].write(encode_example(index, label, data))
            if progress is not None:
                progress(1)
    finally:
        for w in writers:
            w.close()
    return paths


def scan_tfrecord_file(path):
    """Follow the record framing of one TFRecord file without reading record data.

    Returns:
        ``(num_complete_records, error)`` where ``error`` is ``None`` or a
        :class:`BadRecordError` for a truncated tail (naming the file and offset).
    """
    size = tf.io.gfile.stat(path).length
    n, pos = 0, 0
    with tf.io.gfile.GFile(path, "rb") as f:
        while pos < size:
            if pos + 12 > size:
                return n, BadRecordError(path, pos, "truncated",
                                         f"record header needs 12 bytes, {size - pos} left")
            f.seek(pos)
            (length,) = struct.unpack("<Q", f.read(8))
            end = pos + 12 + length + 4
            if end > size:
                return n, BadRecordError(path, pos, "truncated",
                                         f"record of {length} bytes ends past the {size}-byte file")
            n += 1
            pos = end
    return n, None


def index_tfrecord_file(path):
    """Byte offset and length of every record's data in a local TFRecord file (framing only).

    Follows the framing (``uint64 length, uint32 crc, data, uint32 crc``) without reading
    the data, like :func:`scan_tfrecord_file`, and keeps where each record's data lies so
    that records can be read at random (``data = file[offset:offset + length]``).

    Returns:
        ``(offsets, lengths, error)``: int64 arrays over the complete records, and ``None``
        or a :class:`BadRecordError` for a truncated tail (naming the file and offset).

    Example::

        offsets, lengths, err = index_tfrecord_file("out/train-00000-of-00001.tfrecord")
    """
    import mmap

    path = str(path)
    size = os.path.getsize(path)
    offsets, lengths, err = [], [], None
    if size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), None
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        pos = 0
        unpack = struct.Struct("<Q").unpack_from
        while pos < size:
            if pos + 12 > size:
                err = BadRecordError(path, pos, "truncated", f"record header needs 12 bytes, {size - pos} left")
                break
            (length,) = unpack(mm, pos)
            end = pos + 12 + length + 4
            if end > size:
                err = BadRecordError(path, pos, "truncated",
                                     f"record of {length} bytes ends past the {size}-byte file")
                break
            offsets.append(pos + 12)
            lengths.append(length)
            pos = end
    return np.asarray(offsets, np.int64), np.asarray(lengths, np.int64), err


def make_tfrecord_dataset(pattern, batch_size: int, image_size=None, shuffle: bool = True,
                          seed: int = 0, augment_flip: bool = True, drop_remainder: bool = True,
                          repeat: bool = False, num_parallel_calls=tf.data.AUTOTUNE,
                          on_error: str = "skip", shard="auto", report: BadRecordReport | None = None,
                          num_classes: int | None = None, shuffle_buffer: int = 10000,
                          chunk_size: int = 32) -> tf.data.Dataset:
    """Training ``tf.data`` pipeline over TFRecord files of the schema above.

    Args:
        pattern: glob pattern (or list of patterns/paths) of the TFRecord files.
        batch_size: images per batch (per worker when sharded).
        image_size: int or ``(height, width)`` to resize to; default: the first
            image's size (other sizes are bad records).
        num_classes: when given, records with labels outside ``[0, num_classes)``
            are bad records.
        shuffle_buffer: record shuffle buffer (files are shuffled too).
        on_error: ``"skip"`` drops and reports truncated file tails, undecodable images and
            bad labels (each naming its file); ``"raise"`` raises :class:`BadRecordError`
            naming the file. Either way a CRC-corrupt record inside a file raises TensorFlow's
            ``tf.errors.DataLossError`` while iterating (CRCs are not checked up front; its
            message has the offset but not the file, see the module docstring).
        shuffle, seed, augment_flip, drop_remainder, repeat, num_parallel_calls,
            shard, report, chunk_size: as in
            :func:`keras_facemargin.data.recordio.make_dataset`. Shards are whole
            files when there are at least as many files as shards, else records.

    Returns:
        ``tf.data.Dataset`` of ``({"images", "labels", "index"}, labels)``.

    Example::

        ds = make_tfrecord_dataset("data/train-*.tfrecord", 128, num_classes=85742)
    """
    check_on_error(on_error)
    hw = _check_pipeline_args(chunk_size, num_parallel_calls, image_size)
    resize = hw is not None
    report = BadRecordReport() if report is None else report
    patterns = [pattern] if isinstance(pattern, (str, bytes)) or hasattr(pattern, "__fspath__") else list(pattern)
    files = sorted({f for p in patterns for f in tf.io.gfile.glob(str(p))})
    if not files:
        raise FileNotFoundError(f"No TFRecord files match {pattern!r}.")
    counts = []
    for f in files:
        n, err = scan_tfrecord_file(f)
        if err is not None:
            if on_error == "raise":
                raise err
            report.add_error(err, log=False)
        counts.append(n)
    report.log_summary()
    if sum(counts) == 0:
        raise ValueError(f"The TFRecord files matching {pattern!r} hold no complete records.")
    shard_spec = resolve_shard(shard)
    by_file = shard_spec is not None and len(files) >= shard_spec[0]
    if by_file:
        sel = list(range(shard_spec[1], len(files), shard_spec[0]))
        files, counts = [files[i] for i in sel], [counts[i] for i in sel]
    total = sum(counts) if (shard_spec is None or by_file) else None
    if total is not None:
        _check_common(total, batch_size, drop_remainder, seed)
    if hw is None:
        first_file = files[int(np.argmax(counts))]
        first = next(iter(tf.data.TFRecordDataset(first_file).take(1)))
        ex = tf.io.parse_single_example(first, FEATURES)
        import cv2

        img = cv2.imdecode(np.frombuffer(ex["image/encoded"].numpy(), np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"Cannot infer `image_size` from the first record of {first_file}; "
                             "pass image_size=.")
        hw = img.shape[:2]

    file_ds = tf.data.Dataset.from_tensor_slices((files, tf.constant(counts, tf.int64),
                                                  tf.range(len(files), dtype=tf.int32)))
    if shuffle:
        file_ds = file_ds.shuffle(len(files), seed=int(seed), reshuffle_each_iteration=True)

    @tf.autograph.experimental.do_not_convert
    def _read(f, n, file_id):  # each record carries the position of its file in `files`
        return tf.data.Dataset.zip((tf.data.TFRecordDataset(f).take(n),
                                    tf.data.Dataset.from_tensors(file_id).repeat()))

    if len(files) > 1:
        records = file_ds.interleave(_read, cycle_length=min(len(files), 8), block_length=1,
                                     num_parallel_calls=min(len(files), 8), deterministic=True)
    else:
        records = file_ds.flat_map(_read)
    if shard_spec is not None and not by_file:
        records = records.shard(*shard_spec)

    @tf.autograph.experimental.do_not_convert
    def _parse(serialized, file_id):
        ex = tf.io.parse_single_example(serialized, FEATURES)
        lab = tf.cast(ex["image/label"], tf.int32)
        return ex["image/index"], lab, ex["image/encoded"], ex["image/label"], file_id

    source = records.map(_parse, num_parallel_calls=num_parallel_calls, deterministic=True)
    label_limit = None if num_classes is None else int(num_classes)

    def load_chunk(idx, data, label, file_id):
        out = np.empty((idx.size, hw[0], hw[1], 3), np.uint8)
        ok = np.ones(idx.size, bool)
        for k in range(idx.size):
            why = None
            if label[k] < 0 or (label_limit is not None and label[k] >= label_limit):
                why, reason = f"label {label[k]} outside [0, {label_limit})", "bad_label"
            else:
                why, reason = decode_image_into(data[k], out[k], resize), "bad_image"
            if why is not None:
                err = BadRecordError(f"{files[int(file_id[k])]} (image/index {int(idx[k])})", None,
                                     reason, why)
                if on_error == "raise":
                    raise err
                report.add_error(err, key=int(idx[k]))
                ok[k] = False
        return out, ok

    ds = build_decoded_pipeline(source, load_chunk, hw, batch_size, shuffle, seed, augment_flip,
                                drop_remainder, repeat, num_parallel_calls, chunk_size, shard_spec,
                                shuffle_buffer=shuffle_buffer)
    ds.bad_records = report
    ds.files = files
    return ds
