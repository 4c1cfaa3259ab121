"""TFRecord training sets: schema, sharded writer and ``tf.data`` reader.

Schema: one ``tf.train.Example`` per image with features

==================  =========  =====================================================
``image/encoded``   bytes      encoded image (JPEG as in insightface sets; PNG ok)
``image/label``     int64      class id in ``[0, num_classes)``
``image/index``     int64      training sample index (unique, ``0..N-1``; KappaFace slot)
==================  =========  =====================================================

Files are named ``<prefix>-00000-of-00008.tfrecord``; :func:`write_tfrecords`
assigns images to shards round-robin so each shard mixes classes.

Reading (:func:`make_tfrecord_dataset`): a header-only pass over each file follows the
record framing (``uint64 length, uint32 crc, data, uint32 crc``) without reading the data
and keeps every record's byte offset; a truncated file is reported (file and offset) and,
with ``on_error="skip"``, only its complete records are read. The pipeline then
interleaves ``(file, record number)`` pairs of the (shuffled) files; each chunk of them is
read by offset with TensorFlow's CRC-checked random-access record reader and parsed in
Python (:func:`decode_example`), shuffled in a buffer, then decoded with the shared OpenCV
chunk decoder of :func:`keras_facemargin.data.pipeline.build_decoded_pipeline` (same contract, same bad-record
handling; image headers are checked against ``max_image_pixels`` first).

What ``on_error="skip"`` covers -- every problem a file's bytes can have -- each reported
as a :class:`TFRecordRecordError` (a :class:`BadRecordError`) naming the file and the
record's byte offset: truncated files (their complete records are read); records whose
header or data CRC does not match (``"crc_mismatch"``); records that are not a
``tf.train.Example`` or lack ``image/encoded``, ``image/label`` or ``image/index`` (or
hold them with another type or count) (``"bad_example"``); labels outside
``[0, num_classes)`` or beyond int32 (``"bad_label"``); indices outside
``[0, num_samples)`` (``"bad_index"``) or already used by another record
(``"duplicate_index"``: the first record met keeps the index); undecodable, empty or
over-cap images (``"bad_image"``). With ``on_error="raise"`` the first of them raises
(while iterating: wrapped in a ``tf.errors`` exception carrying its message). Records are
read one by one by offset, which on remote filesystems costs one request per record.

Example::

    write_tfrecords("out/train", ((i, lab, jpg) for i, (lab, jpg) in enumerate(items)), num_shards=4)
    ds = make_tfrecord_dataset("out/train-*.tfrecord", batch_size=128)
"""

from __future__ import annotations

import os
import struct
import threading

import numpy as np
import tensorflow as tf
from tensorflow.python.lib.io import tf_record

from keras_facemargin.data.errors import BadRecordError, BadRecordReport, check_on_error  # noqa: F401
from keras_facemargin.utils.images import DEFAULT_MAX_IMAGE_PIXELS, check_max_pixels, decode_image
from keras_facemargin.data.pipeline import (
    _check_common,
    _check_pipeline_args,
    build_decoded_pipeline,
    decode_image_into,
    resolve_shard,
)
from keras_facemargin.errors import TFRecordError, TFRecordRecordError

__all__ = ["FEATURES", "encode_example", "decode_example", "write_tfrecords", "scan_tfrecord_file",
           "index_tfrecord_file", "make_tfrecord_dataset", "TFRecordError", "TFRecordRecordError"]

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


def _fail(source, detail, field=None):
    return TFRecordError(source if source is not None else "<serialized tf.train.Example>", detail, field)


def decode_example(serialized: bytes, source=None, num_classes=None):
    """Parse one serialised ``tf.train.Example`` of the schema above (in Python, no graph).

    Each feature must hold exactly one value of its type; ``image/label`` must lie in
    ``[0, num_classes)`` (``[0, 2**31)`` when None, so it fits int32 without wrapping) and
    ``image/index`` in ``[0, 2**31)``.

    Args:
        serialized: the record bytes.
        source: where the record is (file and offset) for the message.
        num_classes: optional label bound.

    Returns:
        ``(index, label, encoded_bytes)``.

    Raises:
        TFRecordError: (a ValueError) not a ``tf.train.Example``, a feature of the schema missing
            or of the wrong type / length, or a value out of range.

    Example::

        index, label, jpg = decode_example(encode_example(7, 3, jpg))   # -> 7, 3, jpg
    """
    from google.protobuf.message import DecodeError

    try:
        feature = tf.train.Example.FromString(bytes(serialized)).features.feature
    except (DecodeError, RuntimeError, ValueError) as e:
        raise _fail(source, f"not a serialised tf.train.Example ({e})") from None
    missing = [k for k in FEATURES if k not in feature]
    if missing:
        raise _fail(source, f"tf.train.Example lacks feature(s) {missing} (expected image/encoded, "
                            "image/label, image/index)")
    out = []
    for key, kind in (("image/index", "int64_list"), ("image/label", "int64_list"),
                      ("image/encoded", "bytes_list")):
        f = feature[key]
        if f.WhichOneof("kind") != kind:
            raise _fail(source, f"feature {key} is a {f.WhichOneof('kind')}, expected a {kind}", key)
        values = getattr(f, kind).value
        if len(values) != 1:
            raise _fail(source, f"feature {key} holds {len(values)} values, expected exactly one", key)
        out.append(values[0])
    index, label, encoded = int(out[0]), int(out[1]), bytes(out[2])
    limit = 2**31 if num_classes is None else min(int(num_classes), 2**31)
    if not 0 <= label < limit:
        raise _fail(source, f"image/label {label} outside [0, {limit})", "image/label")
    if not 0 <= index < 2**31:
        raise _fail(source, f"image/index {index} outside [0, 2**31)", "image/index")
    return index, label, encoded


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


def _frame_file(path):
    """``(record offsets int64, error)``: follow the framing of one file (header reads only)."""
    size = tf.io.gfile.stat(path).length
    offsets, pos, err = [], 0, None
    with tf.io.gfile.GFile(path, "rb") as f:
        while pos < size:
            if pos + 12 > size:
                err = TFRecordRecordError(path, pos, "truncated", f"record header needs 12 bytes, {size - pos} left")
                break
            f.seek(pos)
            (length,) = struct.unpack("<Q", f.read(8))
            end = pos + 12 + length + 4
            if end > size:
                err = TFRecordRecordError(path, pos, "truncated",
                                          f"record of {length} bytes ends past the {size}-byte file")
                break
            offsets.append(pos)
            pos = end
    return np.asarray(offsets, np.int64), err


def scan_tfrecord_file(path):
    """Follow the record framing of one TFRecord file without reading record data.

    Returns:
        ``(num_complete_records, error)`` where ``error`` is ``None`` or a
        :class:`TFRecordRecordError` (a :class:`BadRecordError`) for a truncated tail (naming
        the file and offset).
    """
    offsets, err = _frame_file(path)
    return int(offsets.size), err


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
                err = TFRecordRecordError(path, pos, "truncated",
                                          f"record header needs 12 bytes, {size - pos} left")
                break
            (length,) = unpack(mm, pos)
            end = pos + 12 + length + 4
            if end > size:
                err = TFRecordRecordError(path, pos, "truncated",
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
                          chunk_size: int = 32, num_samples: int | None = None,
                          max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS) -> tf.data.Dataset:
    """Training ``tf.data`` pipeline over TFRecord files of the schema above.

    Records are read by offset (CRC-checked) and parsed in Python (:func:`decode_example`), a
    chunk per call, so a record with a bad CRC, that is not an Example, lacks a feature or
    holds a wrong type is a bad record naming its file and byte offset, never a TensorFlow
    ``DataLossError`` or parse error. ``image/label`` must fit int32 (and lie in
    ``[0, num_classes)`` when given); ``image/index`` must lie in ``[0, num_samples)`` and be
    unique: the first record met with an index keeps it, a later one with the same index is a
    bad record (``"duplicate_index"``).

    Args:
        pattern: glob pattern (or list of patterns/paths) of the TFRecord files.
        batch_size: images per batch (per worker when sharded).
        image_size: int or ``(height, width)`` to resize to; default: the first
            image's size (other sizes are bad records).
        num_classes: when given, records with labels outside ``[0, num_classes)``
            are bad records.
        num_samples: bound of ``image/index`` (default: the number of complete records in
            all files; pass the original count when a file is truncated).
        max_image_pixels: largest ``height * width`` decoded (read from the header first).
        shuffle_buffer: record shuffle buffer (files are shuffled too).
        on_error: ``"skip"`` drops and reports truncated file tails, CRC mismatches, records
            that do not parse, bad labels / indices and undecodable or over-cap images (each
            naming its file and offset; see the module docstring); ``"raise"`` raises
            :class:`TFRecordRecordError` (a :class:`BadRecordError`; while iterating, wrapped
            in a ``tf.errors`` exception carrying its message).
        shuffle, seed, augment_flip, drop_remainder, repeat, num_parallel_calls,
            shard, report, chunk_size: as in
            :func:`keras_facemargin.data.formats.recordio.make_dataset`. Shards are whole
            files when there are at least as many files as shards, else records.

    Returns:
        ``tf.data.Dataset`` of ``({"images", "labels", "index"}, labels)``.

    Raises:
        OSError: no file matches / a file is unreadable. ValueError: bad arguments.
        TFRecordError: no complete record, or no decodable first image to infer the size.
        TFRecordRecordError: with ``on_error="raise"``, a truncated file.

    Example::

        ds = make_tfrecord_dataset("data/train-*.tfrecord", 128, num_classes=85742)
    """
    check_on_error(on_error)
    hw = _check_pipeline_args(chunk_size, num_parallel_calls, image_size)
    cap = check_max_pixels(max_image_pixels)
    resize = hw is not None
    report = BadRecordReport() if report is None else report
    patterns = [pattern] if isinstance(pattern, (str, bytes)) or hasattr(pattern, "__fspath__") else list(pattern)
    files = sorted({f for p in patterns for f in tf.io.gfile.glob(str(p))})
    if not files:
        raise FileNotFoundError(f"No TFRecord files match {pattern!r}.")
    counts, offsets = [], []
    for f in files:
        off, err = _frame_file(f)
        if err is not None:
            if on_error == "raise":
                raise err
            report.add_error(err, log=False)
        counts.append(int(off.size))
        offsets.append(off)
    report.log_summary()
    total_all = sum(counts)
    if total_all == 0:
        raise TFRecordError(", ".join(files[:3]) + (" ..." if len(files) > 3 else ""),
                            f"the files matching {pattern!r} hold no complete records")
    n_index = total_all if num_samples is None else int(num_samples)
    if not 0 < n_index <= 2**31:
        raise ValueError(f"`num_samples` must be in [1, 2**31], got {num_samples!r}.")
    label_limit = None if num_classes is None else int(num_classes)
    shard_spec = resolve_shard(shard)
    by_file = shard_spec is not None and len(files) >= shard_spec[0]
    file_ids = list(range(len(files)))
    if by_file:
        file_ids = list(range(shard_spec[1], len(files), shard_spec[0]))
    sel_counts = [counts[i] for i in file_ids]
    total = sum(sel_counts) if (shard_spec is None or by_file) else None
    if total is not None:
        _check_common(total, batch_size, drop_remainder, seed)
    if hw is None:
        best = file_ids[int(np.argmax(sel_counts))]
        hw = _probe_size(files[best], offsets[best], cap)

    owner = np.full(n_index, -1, np.int64)  # record uid holding each image/index
    base = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    lock = threading.Lock()

    def _record_error(fid, rec, reason, detail, index=None):
        f = files[int(fid)]
        name = f if index is None else f"{f} (image/index {int(index)})"
        return TFRecordRecordError(name, int(offsets[int(fid)][int(rec)]), reason, detail)

    def _bad(err, key=None):
        if on_error == "raise":
            raise err
        report.add_error(err, key=key)

    def _read_record(readers, fid, rec):
        """Record bytes by offset with TensorFlow's CRC-checked random-access reader."""
        reader = readers.get(fid)
        if reader is None:
            reader = readers[fid] = tf_record.tf_record_random_reader(files[fid])
        return reader.read(int(offsets[fid][rec]))[0]

    def parse_chunk(fid, rec):
        readers = {}  # opened per chunk: nothing stays open (or mapped) once the pipeline is gone
        try:
            return _parse_chunk(readers, fid, rec)
        finally:
            for r in readers.values():
                r.close()

    def _parse_chunk(readers, fid, rec):
        n = fid.size
        idx = np.zeros(n, np.int64)
        lab = np.zeros(n, np.int32)
        data = np.empty(n, object)
        ok = np.zeros(n, bool)
        for k in range(n):
            data[k] = b""
            f, r = int(fid[k]), int(rec[k])
            try:
                serialized = _read_record(readers, f, r)
            except (tf.errors.OpError, IndexError) as e:  # DataLossError: a CRC mismatch
                msg = getattr(e, "message", str(e))
                _bad(_record_error(f, r, "crc_mismatch", f"{type(e).__name__}: {msg}"))
                continue
            try:
                i, y, enc = decode_example(serialized, num_classes=label_limit)
            except TFRecordError as e:
                reason = {"image/label": "bad_label", "image/index": "bad_index"}.get(e.where, "bad_example")
                _bad(_record_error(f, r, reason, e.detail))
                continue
            if i >= n_index:
                _bad(_record_error(f, r, "bad_index",
                                   f"image/index {i} outside [0, {n_index}) (num_samples)", i), key=i)
                continue
            uid = int(base[f] + r)
            with lock:
                held = int(owner[i])
                if held < 0:
                    owner[i] = held = uid
            if held != uid:
                hf = int(np.searchsorted(base, held, side="right") - 1)
                _bad(_record_error(f, r, "duplicate_index",
                                   f"image/index {i} is already used by the record at byte offset "
                                   f"{int(offsets[hf][held - base[hf]])} of {files[hf]}", i), key=i)
                continue
            idx[k], lab[k], data[k], ok[k] = i, y, enc, True
        return idx, lab, data, ok

    file_ds = tf.data.Dataset.from_tensor_slices((tf.constant(sel_counts, tf.int64),
                                                  tf.constant(file_ids, tf.int32)))
    if shuffle:
        file_ds = file_ds.shuffle(len(file_ids), seed=int(seed), reshuffle_each_iteration=True)

    @tf.autograph.experimental.do_not_convert
    def _read(n, file_id):  # each record is its file's position in `files` and its number there
        return tf.data.Dataset.zip((tf.data.Dataset.from_tensors(file_id).repeat(),
                                    tf.data.Dataset.range(n)))

    if len(file_ids) > 1:
        records = file_ds.interleave(_read, cycle_length=min(len(file_ids), 8), block_length=1,
                                     num_parallel_calls=min(len(file_ids), 8), deterministic=True)
    else:
        records = file_ds.flat_map(_read)
    if shard_spec is not None and not by_file:
        records = records.shard(*shard_spec)

    @tf.autograph.experimental.do_not_convert
    def _parse(file_id, rec):
        idx, lab, data, ok = tf.numpy_function(parse_chunk, [file_id, rec],
                                               [tf.int64, tf.int32, tf.string, tf.bool], stateful=False)
        for t in (idx, lab, data, ok):
            t.set_shape([None])
        return idx, lab, data, file_id, rec, ok

    @tf.autograph.experimental.do_not_convert
    def _ok(idx, lab, data, file_id, rec, ok):
        return ok

    @tf.autograph.experimental.do_not_convert
    def _drop_ok(idx, lab, data, file_id, rec, ok):
        return idx, lab, data, file_id, rec

    source = records.batch(int(chunk_size)).map(_parse, num_parallel_calls=num_parallel_calls,
                                                 deterministic=True)
    source = source.unbatch().filter(_ok).map(_drop_ok)

    def load_chunk(idx, data, file_id, rec):
        out = np.empty((idx.size, hw[0], hw[1], 3), np.uint8)
        ok = np.ones(idx.size, bool)
        for k in range(idx.size):
            why = decode_image_into(data[k], out[k], resize, cap)
            if why is not None:
                _bad(_record_error(file_id[k], rec[k], "bad_image", why, idx[k]), key=int(idx[k]))
                ok[k] = False
        return out, ok

    ds = build_decoded_pipeline(source, load_chunk, hw, batch_size, shuffle, seed, augment_flip,
                                drop_remainder, repeat, num_parallel_calls, chunk_size, shard_spec,
                                shuffle_buffer=shuffle_buffer)
    ds.bad_records = report
    ds.files = files
    return ds


def _probe_size(path, offsets, max_pixels, tries=16):
    """``(height, width)`` of the first decodable image among the first records of ``path``."""
    why = "no record"
    reader = tf_record.tf_record_random_reader(path)
    try:
        for k, off in enumerate(offsets[:tries]):
            try:
                _, _, enc = decode_example(reader.read(int(off))[0])
            except TFRecordError as e:
                why = f"record at byte offset {int(off)}: {e.detail}"
                continue
            except (tf.errors.OpError, IndexError) as e:
                why = f"record at byte offset {int(off)}: {type(e).__name__}: {getattr(e, 'message', e)}"
                continue
            img, why = decode_image(enc, max_pixels)
            if img is not None:
                return img.shape[:2]
    finally:
        reader.close()
    raise TFRecordError(path, f"cannot infer `image_size` from the first records ({why}); pass image_size=")
