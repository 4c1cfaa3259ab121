"""Image folders, TFRecord and the converters (folder -> rec -> tfrecord round trip)."""

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf

from keras_facemargin.data.errors import BadRecordError, BadRecordReport
from keras_facemargin.data.formats.folders import make_folder_dataset, scan_image_folder
from keras_facemargin.data.formats.recordio import RecordIOReader, make_dataset
from keras_facemargin.data.formats.tfrecord import make_tfrecord_dataset, write_tfrecords
from testing import load_script

SIZE = 16
COUNTS = {"bob": 3, "alice": 2, "carol": 4}  # sorted: alice=0, bob=1, carol=2


def make_folder(root, counts=COUNTS, fmt=".jpg", seed=0):
    """Writes smooth random images; returns {path: RGB pixels as OpenCV decodes the file}."""
    rng = np.random.default_rng(seed)
    truth = {}
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for j in range(n):
            img = cv2.resize(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), (SIZE, SIZE))
            path = root / name / f"{j:03d}{fmt}"
            cv2.imwrite(str(path), img)
            truth[str(path)] = cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1]
    (root / "alice" / "notes.txt").write_text("not an image")
    return truth


def collect(ds):
    out = {}
    for inputs, y in ds:
        assert inputs["images"].dtype == tf.float32 and inputs["index"].dtype == tf.int32
        np.testing.assert_array_equal(inputs["labels"], y)
        pix = inputs["images"].numpy() * 128.0 + 127.5
        for i, im, lab in zip(inputs["index"].numpy(), pix.astype(np.uint8), y.numpy()):
            assert int(i) not in out
            out[int(i)] = (im, int(lab))
    return out


PLAIN = {"shuffle": False, "augment_flip": False, "drop_remainder": False, "shard": None}


# ----------------------------------------------------------------- folders
def test_scan_image_folder(tmp_path):
    make_folder(tmp_path / "f")
    paths, labels, names = scan_image_folder(tmp_path / "f")
    assert names == ["alice", "bob", "carol"]
    assert [Path(p).relative_to(tmp_path / "f").as_posix() for p in paths] == (
        [f"alice/{j:03d}.jpg" for j in range(2)] + [f"bob/{j:03d}.jpg" for j in range(3)]
        + [f"carol/{j:03d}.jpg" for j in range(4)])
    np.testing.assert_array_equal(labels, [0, 0, 1, 1, 1, 2, 2, 2, 2])
    with pytest.raises(FileNotFoundError, match="missing"):
        scan_image_folder(tmp_path / "missing")
    (tmp_path / "empty" / "x").mkdir(parents=True)
    with pytest.raises(ValueError, match="No images"):
        scan_image_folder(tmp_path / "empty")


def test_folder_dataset_pixels_and_resize(tmp_path):
    truth = make_folder(tmp_path / "f", fmt=".png")
    paths, labels, _ = scan_image_folder(tmp_path / "f")
    got = collect(make_folder_dataset(tmp_path / "f", 4, **PLAIN))
    assert sorted(got) == list(range(9))
    for i, (im, lab) in got.items():
        np.testing.assert_array_equal(im, truth[paths[i]])
        assert lab == labels[i]
    small = collect(make_folder_dataset(tmp_path / "f", 4, image_size=8, **PLAIN))
    for i, (im, _) in small.items():
        np.testing.assert_array_equal(im, cv2.resize(truth[paths[i]], (8, 8), interpolation=cv2.INTER_AREA))


def test_folder_bad_images(tmp_path):
    make_folder(tmp_path / "f")
    (tmp_path / "f" / "bob" / "001.jpg").write_bytes(b"\xff\xd8\xff" + b"\0" * 50)  # undecodable
    (tmp_path / "f" / "carol" / "002.jpg").write_bytes(b"")  # empty
    paths, _, _ = scan_image_folder(tmp_path / "f")
    report = BadRecordReport()
    got = collect(make_folder_dataset(tmp_path / "f", 4, report=report, **PLAIN))
    assert sorted(got) == [0, 1, 2, 4, 5, 6, 8]
    assert report.count == 2 and report.by_reason == {"bad_image": 2}
    assert {e["file"] for e in report.examples} == {paths[3], paths[7]}
    with pytest.raises(BadRecordError, match="002.jpg.*empty file"):
        make_folder_dataset(tmp_path / "f", 4, on_error="raise", **PLAIN)
    (tmp_path / "f" / "carol" / "002.jpg").unlink()
    with pytest.raises(tf.errors.OpError, match="001.jpg.*undecodable"):
        collect(make_folder_dataset(tmp_path / "f", 4, on_error="raise", **PLAIN))


# ----------------------------------------------------------------- converters + round trip
def _parse_rec_independently(d):
    """insightface MXFaceDataset's view of a rec: header0 range, identity ranges, image headers."""
    raw = (d / "train.rec").read_bytes()
    offs = dict(tuple(map(int, ln.split("\t"))) for ln in (d / "train.idx").read_text().split("\n") if ln)

    def rec(key):
        o = offs[key]
        magic, lrec = struct.unpack_from("<II", raw, o)
        assert magic == 0xCED7230A and lrec >> 29 == 0
        payload = raw[o + 8:o + 8 + (lrec & (2**29 - 1))]
        flag, label, id_, id2 = struct.unpack_from("<IfQQ", payload)
        labels = np.frombuffer(payload, "<f4", flag, 24) if flag else label
        return flag, labels, id_, payload[24 + 4 * flag:]

    flag, h0, _, _ = rec(0)
    assert flag == 2
    s, e = int(h0[0]), int(h0[1])
    ranges = [tuple(int(v) for v in rec(k)[1]) for k in range(s, e)]
    images = {k: rec(k) for k in range(1, s)}
    return s, e, ranges, images


def test_folder_to_rec_to_tfrecord_round_trip(tmp_path, capsys, monkeypatch):
    truth = make_folder(tmp_path / "f")  # JPEG: folder2rec stores the bytes as they are
    paths, labels, names = scan_image_folder(tmp_path / "f")
    assert load_script("tools/folder2rec.py").main([str(tmp_path / "f"), str(tmp_path / "rec")]) == 0
    assert (tmp_path / "rec" / "property").read_text() == f"3,{SIZE},{SIZE}"
    s, e, ranges, images = _parse_rec_independently(tmp_path / "rec")
    assert (s, e) == (10, 13) and ranges == [(1, 3), (3, 6), (6, 10)]
    for k, (flag, lab, id_, data) in images.items():
        assert flag == 0 and lab == labels[k - 1] and id_ == k
        assert data == Path(paths[k - 1]).read_bytes()
    r = RecordIOReader(tmp_path / "rec")
    np.testing.assert_array_equal(r.class_counts(), [2, 3, 4])

    closed, close = [], RecordIOReader.close
    monkeypatch.setattr(RecordIOReader, "close", lambda self: (closed.append(self.rec_path), close(self))[1])
    assert load_script("tools/rec2tfrecord.py").main([str(tmp_path / "rec"), str(tmp_path / "tf" / "train"),
                                       "--num-shards", "2"]) == 0
    assert closed == [tmp_path / "rec" / "train.rec"]  # the tool closes its reader
    files = sorted(str(p) for p in (tmp_path / "tf").glob("train-*.tfrecord"))
    assert len(files) == 2

    from_folder = collect(make_folder_dataset(tmp_path / "f", 4, **PLAIN))
    from_rec = collect(make_dataset(tmp_path / "rec", 4, **PLAIN))
    from_tf = collect(make_tfrecord_dataset(str(tmp_path / "tf" / "train-*.tfrecord"), 4,
                                            num_classes=3, **PLAIN))
    for got in (from_folder, from_rec, from_tf):
        assert sorted(got) == list(range(9))
        for i, (im, lab) in got.items():
            assert lab == labels[i]
            np.testing.assert_array_equal(im, truth[paths[i]])


# ----------------------------------------------------------------- TFRecord
def _tf_set(tmp_path, n=20, shards=4):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.arange(n) % 5
    items = [(i, int(labels[i]), cv2.imencode(".png", imgs[i][:, :, ::-1])[1].tobytes()) for i in range(n)]
    files = write_tfrecords(tmp_path / "t" / "train", items, num_shards=shards)
    return files, imgs, labels


def test_tfrecord_schema_and_pixels(tmp_path):
    files, imgs, labels = _tf_set(tmp_path)
    assert [Path(f).name for f in files] == [f"train-0000{i}-of-00004.tfrecord" for i in range(4)]
    ex = tf.train.Example.FromString(next(iter(tf.data.TFRecordDataset(files[1]))).numpy())
    f = ex.features.feature
    assert f["image/index"].int64_list.value == [1] and f["image/label"].int64_list.value == [1]
    assert f["image/encoded"].bytes_list.value[0][:4] == b"\x89PNG"
    got = collect(make_tfrecord_dataset(files, 6, seed=2, shuffle=True, augment_flip=False,
                                        drop_remainder=False, shard=None))
    assert sorted(got) == list(range(20))
    for i, (im, lab) in got.items():
        np.testing.assert_array_equal(im, imgs[i])
        assert lab == labels[i]


@pytest.mark.parametrize("num_shards", [2, 3])
def test_tfrecord_sharding_disjoint_complete(tmp_path, num_shards):
    files, _, _ = _tf_set(tmp_path, n=20, shards=3 if num_shards == 2 else 2)  # by file / by record
    seen = [set(collect(make_tfrecord_dataset(files, 3, shard=(num_shards, w), drop_remainder=False)))
            for w in range(num_shards)]
    assert sum(len(s) for s in seen) == 20 and set().union(*seen) == set(range(20))


def test_folder_sharding_disjoint_complete(tmp_path):
    make_folder(tmp_path / "f")
    a, b = (set(collect(make_folder_dataset(tmp_path / "f", 2, shard=(2, w), drop_remainder=False)))
            for w in range(2))
    assert not a & b and a | b == set(range(9))


def test_tfrecord_truncated_and_bad_label(tmp_path):
    files, imgs, labels = _tf_set(tmp_path, n=20, shards=2)
    raw = Path(files[1]).read_bytes()
    # walk the framing (uint64 length, crc, data, crc) to find the last record's offset
    pos, starts = 0, []
    while pos < len(raw):
        starts.append(pos)
        (length,) = struct.unpack_from("<Q", raw, pos)
        pos += 16 + length
    Path(files[1]).write_bytes(raw[:starts[-1] + 20])  # last record of shard 1 (index 19) cut
    report = BadRecordReport()
    got = collect(make_tfrecord_dataset(files, 4, num_classes=4, report=report, **PLAIN))
    # index 19 is truncated; labels 4 (indices 4, 9, 14, 19) are outside [0, 4)
    assert sorted(got) == [i for i in range(20) if labels[i] != 4]
    assert report.by_reason == {"truncated": 1, "bad_label": 3}
    trunc = [e for e in report.examples if e["reason"] == "truncated"][0]
    assert trunc["file"] == files[1] and trunc["offset"] == starts[-1]
    with pytest.raises(BadRecordError, match=rf"of-00002\.tfrecord at byte offset {starts[-1]}: truncated"):
        make_tfrecord_dataset(files, 4, on_error="raise", **PLAIN)
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        make_tfrecord_dataset(str(tmp_path / "nothing-here-*.tfrecord"), 4)


def test_tfrecord_bad_image_names_its_file_not_the_pattern(tmp_path):
    rng = np.random.default_rng(2)
    good = [cv2.imencode(".png", rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))[1].tobytes()
            for _ in range(6)]
    items = [(i, i % 3, b"\xff\xd8\xff" + b"\0" * 40 if i == 3 else good[i]) for i in range(6)]
    files = write_tfrecords(tmp_path / "t" / "train", items, num_shards=2)  # index 3 -> shard 1
    pattern = str(tmp_path / "t" / "train-*.tfrecord")
    report = BadRecordReport()
    got = collect(make_tfrecord_dataset(pattern, 2, report=report, **PLAIN))
    assert sorted(got) == [0, 1, 2, 4, 5]
    assert report.by_reason == {"bad_image": 1}
    assert report.examples[0]["file"] == f"{files[1]} (image/index 3)"
    with pytest.raises(tf.errors.OpError, match=r"train-00001-of-00002\.tfrecord \(image/index 3\)"):
        collect(make_tfrecord_dataset(pattern, 2, on_error="raise", **PLAIN))


def test_tfrecord_crc_corrupt_record_is_a_bad_record_naming_file_and_offset(tmp_path):
    """A CRC-corrupt complete record is skipped and reported (it used to be TF's DataLossError)."""
    files, _, _ = _tf_set(tmp_path, n=6, shards=1)
    raw = bytearray(Path(files[0]).read_bytes())
    (length,) = struct.unpack_from("<Q", raw, 0)
    raw[12 + length // 2] ^= 0xFF  # a data byte of the first (complete) record
    Path(files[0]).write_bytes(bytes(raw))
    report = BadRecordReport()
    got = collect(make_tfrecord_dataset(files, 2, on_error="skip", image_size=SIZE, report=report, **PLAIN))
    assert sorted(got) == [1, 2, 3, 4, 5]
    assert report.by_reason == {"crc_mismatch": 1}
    assert report.examples[0]["file"] == files[0] and report.examples[0]["offset"] == 0
    with pytest.raises(tf.errors.OpError, match=r"train-00000-of-00001\.tfrecord at byte offset 0: crc_mismatch"):
        collect(make_tfrecord_dataset(files, 2, on_error="raise", image_size=SIZE, **PLAIN))
    # inferring the image size skips the corrupt record too
    assert sorted(collect(make_tfrecord_dataset(files, 2, **PLAIN))) == [1, 2, 3, 4, 5]


def test_folder2rec_refuses_mixed_sizes_undecodable_and_failed_encode(tmp_path, monkeypatch, capsys):
    folder2rec = load_script("tools/folder2rec.py")
    make_folder(tmp_path / "f")
    odd = tmp_path / "f" / "bob" / "001.jpg"  # second image of label 1
    cv2.imwrite(str(odd), np.zeros((SIZE + 4, SIZE, 3), np.uint8))
    with pytest.raises(SystemExit):
        folder2rec.main([str(tmp_path / "f"), str(tmp_path / "rec")])
    err = capsys.readouterr().err
    assert f"{odd} is {SIZE + 4}x{SIZE}" in err and "--image-size" in err
    assert not (tmp_path / "rec" / "train.rec").exists() and not (tmp_path / "rec" / "train.idx").exists()
    odd.write_bytes(b"\xff\xd8\xff" + b"\0" * 50)  # JPEG signature, undecodable body
    with pytest.raises(SystemExit):
        folder2rec.main([str(tmp_path / "f"), str(tmp_path / "rec")])
    assert f"cannot decode {odd}" in capsys.readouterr().err
    # --image-size: the undecodable file is skipped, the others are resized and written.
    assert folder2rec.main([str(tmp_path / "f"), str(tmp_path / "rec"), "--image-size", str(SIZE)]) == 0
    assert RecordIOReader(tmp_path / "rec").num_images == 8
    monkeypatch.setattr(folder2rec.cv2, "imencode", lambda *a, **k: (False, None))
    with pytest.raises(SystemExit):
        folder2rec.main([str(tmp_path / "f"), str(tmp_path / "rec2"), "--reencode"])
    assert "JPEG encoding of" in capsys.readouterr().err
