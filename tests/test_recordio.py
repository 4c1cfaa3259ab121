"""RecordIO reader / pipeline vs an independent struct+cv2 writer written here."""

import logging
import struct

import cv2
import numpy as np
import pytest
import tensorflow as tf

from keras_facemargin.data.errors import BadRecordError, BadRecordReport
from keras_facemargin.data.formats.recordio import RecordIOReader, make_dataset
from keras_facemargin.data.pipeline import resolve_shard

MAGIC = 0xCED7230A
SIZE = 16


# ----------------------------------------------------------------- independent reference writer
def _frame(payload, cflag=0):
    return struct.pack("<II", MAGIC, (cflag << 29) | len(payload)) + payload + b"\0" * (-len(payload) % 4)


def _ir(flag, label, id_, id2=0, labels=()):
    return struct.pack("<IfQQ", flag, label, id_, id2) + np.asarray(labels, "<f4").tobytes()


def _encode(img, fmt):
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if fmt == ".jpg" else []
    ok, buf = cv2.imencode(fmt, img[:, :, ::-1], params)  # RGB -> BGR for OpenCV
    assert ok
    return buf.tobytes()


def write_reference(d, labels, fmt=".png", seed=0, header=True, identities=True, num_classes=None,
                    records=None):
    """insightface layout: key 0 header, keys 1..N images, then identity records.

    ``records`` optionally maps image key -> raw framed bytes to use instead.
    Returns dict with images (RGB uint8), encoded bytes, offsets per key, counts.
    """
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    n = labels.size
    c = int(labels.max()) + 1 if num_classes is None else num_classes
    # smooth random images (4x4 noise upsampled) so that JPEG stays close to the original
    coarse = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    images = np.stack([cv2.resize(c, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR) for c in coarse])
    encoded = [_encode(im, fmt) for im in images]
    counts = np.bincount(labels, minlength=c)
    starts = 1 + np.concatenate([[0], np.cumsum(counts)[:-1]])
    blobs = {}
    if header:
        blobs[0] = _frame(_ir(2, 0.0, 0, 0, [n + 1, n + 1 + c] if identities else [n + 1, n + 1]))
    for i in range(n):
        blobs[i + 1] = _frame(_ir(0, float(labels[i]), i + 1) + encoded[i])
    if header and identities:
        for cls in range(c):
            blobs[n + 1 + cls] = _frame(_ir(2, 0.0, n + 1 + cls, 0, [starts[cls], starts[cls] + counts[cls]]))
    if records:
        blobs.update(records)
    offsets, lines = {}, []
    with open(d / "train.rec", "wb") as f:
        for k in sorted(blobs):
            offsets[k] = f.tell()
            lines.append(f"{k}\t{offsets[k]}")
            f.write(blobs[k])
    (d / "train.idx").write_text("\n".join(lines) + "\n")
    (d / "property").write_text(f"{c},{SIZE},{SIZE}")
    return {"images": images, "encoded": encoded, "offsets": offsets, "counts": counts,
            "labels": labels}


LABELS = np.repeat(np.arange(5), [3, 1, 4, 2, 2])  # 12 images, 5 classes


def collect(ds):
    """index -> (uint8 image, label), checking the element contract on the way."""
    out = {}
    for inputs, y in ds:
        assert set(inputs) == {"images", "labels", "index"}
        assert inputs["images"].dtype == tf.float32 and inputs["labels"].dtype == tf.int32
        assert inputs["index"].dtype == tf.int32 and y.dtype == tf.int32
        np.testing.assert_array_equal(inputs["labels"], y)
        pix = inputs["images"].numpy() * 128.0 + 127.5  # exact inverse of (x - 127.5) / 128
        assert np.all(pix == np.round(pix))
        for i, im, lab in zip(inputs["index"].numpy(), pix.astype(np.uint8), y.numpy()):
            assert i not in out, "index produced twice in one epoch"
            out[int(i)] = (im, int(lab))
    return out


def plain(path, **kw):
    kw = {"shuffle": False, "augment_flip": False, "drop_remainder": False, "shard": None, **kw}
    return make_dataset(path, kw.pop("batch_size", 5), **kw)


# ----------------------------------------------------------------- round trips
def test_reader_matches_reference_layout(tmp_path):
    ref = write_reference(tmp_path / "s", LABELS)
    r = RecordIOReader(tmp_path / "s")
    assert r.num_images == 12 and r.num_classes == 5 and r.image_size == (SIZE, SIZE)
    np.testing.assert_array_equal(r.keys, np.arange(1, 13))
    np.testing.assert_array_equal(r.identity_keys, np.arange(13, 18))
    np.testing.assert_array_equal(r.labels, LABELS)
    for i, key in enumerate(r.keys):
        label, data = r.read(key)
        assert label == LABELS[i] and data == ref["encoded"][i]
        h = r.header(key)
        assert (h.flag, h.id, h.id2) == (0, key, 0)
    h0 = r.header(0)
    np.testing.assert_array_equal(h0.label, [13, 18])
    starts = 1 + np.concatenate([[0], np.cumsum(ref["counts"])[:-1]])
    np.testing.assert_array_equal(r.identity_ranges(), np.stack([starts, starts + ref["counts"]], 1))
    # Opening by the .rec path is equivalent.
    assert RecordIOReader(tmp_path / "s" / "train.rec").num_images == 12


def test_dataset_pixels_exact_png(tmp_path):
    ref = write_reference(tmp_path / "s", LABELS, fmt=".png")
    got = collect(plain(tmp_path / "s"))
    assert sorted(got) == list(range(12))
    for i, (im, lab) in got.items():
        np.testing.assert_array_equal(im, ref["images"][i])  # PNG is lossless
        assert lab == LABELS[i]


def test_dataset_pixels_jpeg_equal_opencv_decode(tmp_path):
    ref = write_reference(tmp_path / "s", LABELS, fmt=".jpg")
    got = collect(plain(tmp_path / "s"))
    for i, (im, _) in got.items():
        expect = cv2.imdecode(np.frombuffer(ref["encoded"][i], np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
        np.testing.assert_array_equal(im, expect)
        # and close to the original pixels (q=95 JPEG)
        assert np.abs(im.astype(int) - ref["images"][i]).mean() < 10


def test_flip_shuffle_batches(tmp_path):
    ref = write_reference(tmp_path / "s", LABELS)
    ds = make_dataset(tmp_path / "s", 4, seed=3, shard=None)  # shuffle + flip + drop_remainder
    sizes = [int(x["index"].shape[0]) for x, _ in ds]
    assert sizes == [4, 4, 4]
    flipped = 0
    orders = []
    for _ in range(3):
        got = collect(ds)
        assert sorted(got) == list(range(12))
        for i, (im, _) in got.items():
            if np.array_equal(im, ref["images"][i]):
                continue
            np.testing.assert_array_equal(im, ref["images"][i][:, ::-1])
            flipped += 1
        orders.append(list(got))
    assert 0 < flipped < 36
    assert orders[0] != orders[1] or orders[1] != orders[2]  # reshuffled per epoch
    # Deterministic given the seed.
    a = [x["index"].numpy().tolist() for x, _ in make_dataset(tmp_path / "s", 4, seed=3, shard=None)]
    b = [x["index"].numpy().tolist() for x, _ in make_dataset(tmp_path / "s", 4, seed=3, shard=None)]
    assert a == b


def test_multipart_record(tmp_path):
    """A payload containing the magic at an aligned position is split in parts (cflag 1/3)."""
    img = np.random.default_rng(5).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    png = _encode(img, ".png")
    head = _ir(0, 1.0, 2)
    pad = b"\0" * (-(len(head) + len(png)) % 4)
    tail = b"tail"
    data = png + pad + struct.pack("<I", MAGIC) + tail  # bytes after IEND are ignored by decoders
    parts = _frame(head + png + pad, cflag=1) + _frame(tail, cflag=3)
    write_reference(tmp_path / "s", [0, 1, 1], records={2: parts})
    r = RecordIOReader(tmp_path / "s")
    label, got = r.read(2)
    assert label == 1 and got == data
    sc = r.scan()
    assert sc["valid"].all() and sc["multipart"].tolist() == [False, True, False]
    out = collect(plain(tmp_path / "s"))
    np.testing.assert_array_equal(out[1][0], img)


def test_no_header_record_and_class_counts(tmp_path):
    write_reference(tmp_path / "h", LABELS, header=False)
    r = RecordIOReader(tmp_path / "h")
    np.testing.assert_array_equal(r.keys, np.arange(1, 13))
    assert r.identity_keys.size == 0
    np.testing.assert_array_equal(r.class_counts(), np.bincount(LABELS))
    ref = write_reference(tmp_path / "f", LABELS)
    np.testing.assert_array_equal(RecordIOReader(tmp_path / "f").class_counts(), ref["counts"])


def test_class_counts_from_identity_records_without_scanning(tmp_path, monkeypatch):
    write_reference(tmp_path / "s", LABELS)
    r = RecordIOReader(tmp_path / "s")
    monkeypatch.setattr(RecordIOReader, "scan", lambda self: pytest.fail("scanned images"))
    np.testing.assert_array_equal(r.class_counts(), [3, 1, 4, 2, 2])


# ----------------------------------------------------------------- corrupt input
def _corrupt_set(tmp_path, kind):
    ref = write_reference(tmp_path / "s", LABELS, fmt=".jpg")
    rec = tmp_path / "s" / "train.rec"
    raw = bytearray(rec.read_bytes())
    if kind == "truncate":  # the file ends 40 bytes into the last image record (key 12)
        key, cut = 12, ref["offsets"][12] + 40
        raw = raw[:cut]
        lines = [ln for ln in (tmp_path / "s" / "train.idx").read_text().split("\n")
                 if ln and int(ln.split("\t")[0]) <= 12]
        (tmp_path / "s" / "train.idx").write_text("\n".join(lines) + "\n")
        # the identity records (after key 12) are gone too: header announces none
        raw[:len(_frame(_ir(2, 0.0, 0, 0, [13, 13])))] = _frame(_ir(2, 0.0, 0, 0, [13, 13]))
        reason = "truncated"
    elif kind == "magic":
        key = 4
        raw[ref["offsets"][key]] ^= 0xFF
        reason = "bad_magic"
    elif kind == "garbage":
        key = 7
        start = ref["offsets"][key] + 8 + 24
        raw[start:start + len(ref["encoded"][6])] = np.random.default_rng(0).integers(
            0, 256, len(ref["encoded"][6]), dtype=np.uint8).tobytes()
        raw[start] = 0x00  # make sure no signature survives by chance
        reason = "bad_image"
    elif kind == "label":
        key = 9
        raw[ref["offsets"][key] + 12:ref["offsets"][key] + 16] = struct.pack("<f", 7.0)  # >= 5 classes
        reason = "bad_label"
    rec.write_bytes(bytes(raw))
    return ref, key, ref["offsets"][key], reason


@pytest.mark.parametrize("kind", ["truncate", "magic", "garbage", "label"])
def test_corrupt_record_skip_is_counted_and_logged(tmp_path, kind, caplog):
    ref, key, offset, reason = _corrupt_set(tmp_path, kind)
    report = BadRecordReport()
    with caplog.at_level(logging.WARNING, logger="keras_facemargin.data"):
        ds = plain(tmp_path / "s", on_error="skip", report=report)
    assert ds.bad_records is report
    assert report.count == 1 and report.by_reason == {reason: 1}
    ex = report.examples[0]
    assert ex["offset"] == offset and ex["key"] == key and ex["file"].endswith("train.rec")
    assert any(str(offset) in r.getMessage() and "1 bad record" in r.getMessage() for r in caplog.records)
    got = collect(ds)
    assert sorted(got) == [i for i in range(12) if i != key - 1]  # the bad sample only is missing
    for i, (im, lab) in got.items():
        assert lab == LABELS[i]
        expect = cv2.imdecode(np.frombuffer(ref["encoded"][i], np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
        np.testing.assert_array_equal(im, expect)
    sc = RecordIOReader(tmp_path / "s").scan()
    assert sc["valid"].sum() == 11 and sc["labels"][key - 1] == -1


@pytest.mark.parametrize("kind", ["truncate", "magic", "garbage", "label"])
def test_corrupt_record_raise_names_file_and_offset(tmp_path, kind):
    _, key, offset, reason = _corrupt_set(tmp_path, kind)
    with pytest.raises(BadRecordError, match=rf"train\.rec at byte offset {offset}: {reason}") as e:
        plain(tmp_path / "s", on_error="raise")
    assert e.value.offset == offset and e.value.reason == reason
    with pytest.raises(BadRecordError, match=str(offset)):
        RecordIOReader(tmp_path / "s").read(key)


def test_undecodable_jpeg_body_found_while_decoding(tmp_path):
    """Valid framing and JPEG signature but a garbage body: caught at decode time."""
    ref = write_reference(tmp_path / "s", LABELS, fmt=".jpg")
    rec = tmp_path / "s" / "train.rec"
    raw = bytearray(rec.read_bytes())
    key = 5
    start = ref["offsets"][key] + 8 + 24
    n = len(ref["encoded"][key - 1])
    raw[start + 3:start + n] = b"\x00" * (n - 3)  # keep FF D8 FF only
    rec.write_bytes(bytes(raw))
    report = BadRecordReport()
    ds = plain(tmp_path / "s", report=report, batch_size=4)
    assert report.count == 0  # the header scan cannot see it
    for _ in range(2):  # two epochs: counted once, met twice
        got = collect(ds)
        assert sorted(got) == [i for i in range(12) if i != key - 1]
    assert report.count == 1 and report.occurrences == 2
    assert report.examples[0]["offset"] == ref["offsets"][key] and report.by_reason == {"bad_image": 1}
    with pytest.raises(tf.errors.OpError, match=rf"train\.rec at byte offset {ref['offsets'][key]}"):
        collect(plain(tmp_path / "s", on_error="raise"))


# ----------------------------------------------------------------- sharding
def test_sharding_disjoint_and_complete(tmp_path):
    write_reference(tmp_path / "s", np.repeat(np.arange(6), 5))  # 30 images
    shards = []
    for w in range(2):
        ds = make_dataset(tmp_path / "s", 4, shard=(2, w), drop_remainder=False, seed=1)
        shards.append([int(i) for x, _ in ds for i in x["index"].numpy()])
    a, b = set(shards[0]), set(shards[1])
    assert len(a) == len(shards[0]) and len(b) == len(shards[1])
    assert not a & b and a | b == set(range(30))
    ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1)
    ds = make_dataset(tmp_path / "s", 4, shard=ctx, drop_remainder=False, seed=1)
    assert set(int(i) for x, _ in ds for i in x["index"].numpy()) == b


def test_resolve_shard():
    assert resolve_shard(None) is None and resolve_shard("auto") is None  # no strategy
    assert resolve_shard((3, 2)) == (3, 2) and resolve_shard((1, 0)) is None
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        assert resolve_shard("auto") is None
    for bad in [(2, 2), (0, 0), "all", 3]:
        with pytest.raises(ValueError):
            resolve_shard(bad)


# ----------------------------------------------------------------- argument errors
def test_wrong_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope.*train\.rec"):
        RecordIOReader(tmp_path / "nope")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.rec").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"missing .*train\.idx"):
        RecordIOReader(tmp_path / "d")
    (tmp_path / "d" / "train.idx").write_text("0\t0\n")
    with pytest.raises(ValueError, match="empty"):
        RecordIOReader(tmp_path / "d")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"x\.txt"):
        RecordIOReader(tmp_path / "x.txt")


def test_bad_arguments(tmp_path):
    write_reference(tmp_path / "s", LABELS)
    with pytest.raises(ValueError, match="on_error"):
        make_dataset(tmp_path / "s", 4, on_error="ignore")
    with pytest.raises(ValueError, match="batch_size"):
        make_dataset(tmp_path / "s", 13)  # > 12 samples with drop_remainder
    with pytest.raises(ValueError, match="key"):
        RecordIOReader(tmp_path / "s").read(99)
    (tmp_path / "s" / "property").write_text("five,16,16")
    with pytest.raises(ValueError, match="property"):
        RecordIOReader(tmp_path / "s")


def test_headerless_set_keeps_image_at_key_0(tmp_path):
    """im2rec without a header: key 0 is an ordinary image record (flag 0) and must be read."""
    d = tmp_path / "h0"
    d.mkdir()
    rng = np.random.default_rng(11)
    images = rng.integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    labels = [2, 0, 1]
    lines = []
    with open(d / "train.rec", "wb") as f:
        for key in range(3):
            lines.append(f"{key}\t{f.tell()}")
            f.write(_frame(_ir(0, float(labels[key]), key) + _encode(images[key], ".png")))
    (d / "train.idx").write_text("\n".join(lines) + "\n")
    r = RecordIOReader(d)
    np.testing.assert_array_equal(r.keys, [0, 1, 2])
    assert r.num_images == 3 and r.num_classes == 3
    np.testing.assert_array_equal(r.labels, labels)
    assert r.read(0)[0] == 2
    got = collect(plain(d))
    assert sorted(got) == [0, 1, 2]
    for i, (im, lab) in got.items():
        np.testing.assert_array_equal(im, images[i])
        assert lab == labels[i]


def test_multipart_record_label_beyond_int32_is_bad(tmp_path):
    """The Python (multi-part) parser applies scan()'s < 2**31 label bound too."""
    img = np.random.default_rng(5).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    png = _encode(img, ".png")
    head = _ir(0, float(2**31), 2)
    pad = b"\0" * (-(len(head) + len(png)) % 4)
    parts = _frame(head + png + pad, cflag=1) + _frame(b"tail", cflag=3)
    write_reference(tmp_path / "s", [0, 1, 1], header=False, records={2: parts})
    (tmp_path / "s" / "property").unlink()  # no class count: only the int32 bound applies
    r = RecordIOReader(tmp_path / "s")
    with pytest.raises(BadRecordError, match="2147483648"):
        r.read(2)
    sc = r.scan()
    assert sc["valid"].tolist() == [True, False, True]
    assert sc["labels"].tolist() == [0, -1, 1] and len(sc["bad"]) == 1


def test_failed_open_closes_file_and_map(tmp_path, monkeypatch):
    """A malformed .idx / property / header record does not leak the .rec handle."""
    from keras_facemargin.data.formats.recordio import reader as recordio

    opened = []

    def tracking_open(*args, **kwargs):
        f = open(*args, **kwargs)
        opened.append(f)
        return f

    monkeypatch.setattr(recordio, "open", tracking_open, raising=False)
    write_reference(tmp_path / "s", LABELS)
    (tmp_path / "s" / "property").write_text("five,16,16")
    with pytest.raises(ValueError, match="property"):
        RecordIOReader(tmp_path / "s")
    (tmp_path / "s" / "property").write_text("5,16,16")
    (tmp_path / "s" / "train.idx").write_text("0\tx\n")
    with pytest.raises(ValueError, match="index file"):
        RecordIOReader(tmp_path / "s")
    assert len(opened) == 2 and all(f.closed for f in opened)
