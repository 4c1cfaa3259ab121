"""`--data` kinds (RecordIO, image folders, TFRecord), several roots as one label space, duplicates,
exclusions, bad images, class counts and sample indices, and the trainer on an image folder (KappaFace)."""

import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from keras_facemargin.data.formats.recordio import write_recordio
from keras_facemargin.data.sources import (
    DataSourceError,
    detect_data_kind,
    open_source,
)
from keras_facemargin.data.training_set import load_training_set, read_identity_list
from keras_facemargin.data.formats.tfrecord import encode_example, write_tfrecords
from keras_facemargin.training.config import TrainConfig, get_experiment
from testing import REPO, load_script

SIZE = 16
PLAIN = {"shuffle": False, "augment_flip": False, "drop_remainder": False}


def _jpeg(rng, size=SIZE):
    img = cv2.resize(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), (size[1], size[0]) if
                     isinstance(size, tuple) else (size, size))
    return cv2.imencode(".jpg", img)[1].tobytes()


def make_tree(root, files, seed=0, size=SIZE):
    """`files`: {identity: [file names]}; writes small random JPEGs (an empty list: an empty folder)."""
    rng = np.random.default_rng(seed)
    for name, names in files.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for f in names:
            (root / name / f).write_bytes(_jpeg(rng, size))
    return root


def decoded(path):
    return cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]


def collect(ds):
    """{index: (uint8 image, label)}; asserts each index comes once."""
    out = {}
    for inputs, y in ds:
        np.testing.assert_array_equal(inputs["labels"], y)
        pix = np.round(inputs["images"].numpy() * 128.0 + 127.5).astype(np.uint8)
        for i, im, lab in zip(inputs["index"].numpy(), pix, y.numpy()):
            assert int(i) not in out, f"index {i} produced twice"
            out[int(i)] = (im, int(lab))
    return out


# ------------------------------------------------------------------------------------ kinds
def test_kind_detection_and_errors_name_the_path(tmp_path):
    tree = make_tree(tmp_path / "tree", {"a": ["1.jpg", "2.jpg"], "b": ["1.png"]})
    rng = np.random.default_rng(0)
    write_recordio(tmp_path / "rec", [(0, _jpeg(rng)), (1, _jpeg(rng))], image_size=(SIZE, SIZE))
    files = write_tfrecords(tmp_path / "tfr" / "train", [(0, 0, _jpeg(rng)), (1, 1, _jpeg(rng))], num_shards=2)
    assert detect_data_kind(tree) == "image_folder"
    assert detect_data_kind(tmp_path / "rec") == "recordio"
    assert detect_data_kind(tmp_path / "rec" / "train.rec") == "recordio"
    assert detect_data_kind(files[0]) == "tfrecord"
    assert detect_data_kind(tmp_path / "tfr") == "tfrecord"
    assert detect_data_kind(str(tmp_path / "tfr" / "train-*")) == "tfrecord"
    assert open_source(tree).summary() == f"image-folder tree {tree}: 2 identities, 3 images of 16x16 px"
    assert open_source(tmp_path / "tfr").summary().startswith(f"TFRecord {tmp_path / 'tfr'}: 2 identities, 2 images")

    with pytest.raises(FileNotFoundError, match="missing.*expected an insightface RecordIO folder"):
        detect_data_kind(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="matches no file"):
        detect_data_kind(str(tmp_path / "tfr" / "nothing-*"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataSourceError, match=r"notes\.txt.*neither a \.rec nor a \.tfrecord"):
        detect_data_kind(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty.*not a known layout"):  # DataSourceError is a ValueError
        detect_data_kind(tmp_path / "empty")
    with pytest.raises(DataSourceError, match=r"sub-folder .*tree' looks like an image-folder tree; pass that path"):
        detect_data_kind(tmp_path)  # the parent of `tree`: CelebA's celeba_align_10k vs celeba_align_10k/images
    make_tree(tmp_path / "no_images", {"x": []})
    (tmp_path / "no_images" / "x" / "readme.txt").write_text("x")
    with pytest.raises(DataSourceError, match="hold no"):
        detect_data_kind(tmp_path / "no_images")
    with pytest.raises(DataSourceError, match="given twice"):
        load_training_set([tree, str(tree) + "/"])


def test_the_three_kinds_of_one_folder_agree(tmp_path):
    """folder -> tools/folder2rec.py -> RecordIO -> tools/rec2tfrecord.py -> TFRecord: same labels, counts, pixels."""
    tree = make_tree(tmp_path / "tree", {"bob": ["a.jpg", "b.jpg", "c.jpg"], "alice": ["x.jpg", "y.jpg"],
                                         "carol": ["1.jpg", "2.jpg", "3.jpg", "4.jpg"]})
    assert load_script("tools/folder2rec.py").main([str(tree), str(tmp_path / "rec")]) == 0
    assert load_script("tools/rec2tfrecord.py").main([str(tmp_path / "rec"), str(tmp_path / "tfr" / "t"), "--num-shards", "3"]) == 0
    sets = {kind: load_training_set(tmp_path / sub) for kind, sub in
            (("image_folder", "tree"), ("recordio", "rec"), ("tfrecord", "tfr"))}
    got = {}
    for kind, ts in sets.items():
        assert ts.sources[0].kind == kind
        np.testing.assert_array_equal(ts.class_counts, [2, 3, 4])  # alice, bob, carol
        got[kind] = collect(ts.make_dataset(4, **PLAIN))
        assert sorted(got[kind]) == list(range(9))
    assert sets["image_folder"].class_names == ["alice", "bob", "carol"]
    assert sets["recordio"].class_names == ["0", "1", "2"]
    for i in range(9):  # folder2rec stores the JPEG bytes as they are: identical pixels
        im, lab = got["image_folder"][i]
        np.testing.assert_array_equal(im, decoded(sets["image_folder"].where(i)[0]))
        for kind in ("recordio", "tfrecord"):
            assert got[kind][i][1] == lab
            np.testing.assert_array_equal(got[kind][i][0], im)


# ------------------------------------------------------------------------------ multi-root
def _two_roots(tmp_path):
    a = make_tree(tmp_path / "A", {"10": ["001.jpg", "002.jpg"], "2": ["003.jpg"], "7": ["004.jpg", "005.jpg"],
                                   "empty": []}, seed=1)
    b = make_tree(tmp_path / "B", {"10": ["002.jpg", "006.jpg"], "3": ["007.jpg", "008.jpg", "009.jpg"],
                                   "7": ["010.jpg"]}, seed=2)
    (b / "10" / "002.jpg").write_bytes((a / "10" / "002.jpg").read_bytes())  # the same image in both sets
    (b / "3" / "011.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated JPEG")  # passes the signature check
    (b / "3" / "012.jpg").write_bytes(b"<html>not found</html>")  # fails it: left out up front
    (b / "3" / "notes.txt").write_text("not an image")
    return a, b


def _independent_table(roots, merge, exclude):
    """The expected combined set, listed with os.walk: [(identity key, path)] in index order."""
    rows, seen = [], set()
    for r, root in enumerate(roots):
        for name in sorted(os.listdir(root)):
            if name in exclude:
                continue
            for f in sorted(os.listdir(root / name)):
                path = root / name / f
                if not f.endswith(".jpg") or path.read_bytes()[:3] != b"\xff\xd8\xff":
                    continue
                key = name if merge == "by_name" else f"{r}:{name}"
                if merge == "by_name" and (name, f) in seen:
                    continue
                seen.add((name, f))
                rows.append((key, path))
    return rows


@pytest.mark.parametrize("merge", ["by_name", "per_root"])
def test_multi_root_counts_index_duplicates_exclusion_and_bad_image(tmp_path, merge):
    from keras_facemargin.data.errors import BadRecordReport

    a, b = _two_roots(tmp_path)
    ts = load_training_set([a, b], merge_identities=merge, exclude_identities=["7", "no_such_id"])
    rows = _independent_table([a, b], merge, exclude={"7"})
    names = sorted({k for k, _ in rows}) if merge == "by_name" else list(dict.fromkeys(k for k, _ in rows))
    assert ts.class_names == names
    assert ts.num_samples == len(rows)
    expected_counts = [sum(k == n for k, _ in rows) for n in names]
    np.testing.assert_array_equal(ts.class_counts, expected_counts)
    assert ts.class_counts.sum() == ts.num_samples and np.all(ts.class_counts > 0)
    if merge == "by_name":
        assert names == ["10", "2", "3"] and expected_counts == [3, 1, 4]  # string order, 002.jpg once
        assert [(d["identity"], d["file"]) for d in ts.duplicates] == [("10", "002.jpg")]
        assert ts.duplicates[0]["kept"] == str(a / "10" / "002.jpg")
        assert ts.shared_identities == ["10"]
    else:
        assert names == ["0:10", "0:2", "1:10", "1:3"] and ts.duplicates == []
    assert ts.exclusions["excluded"] == {"7": 3} and ts.exclusions["unmatched"] == ["no_such_id"]
    assert ts.dropped_identities == ["empty" if merge == "by_name" else "0:empty"]
    assert [(e.file, e.reason) for e in ts.bad_records] == [(str(b / "3" / "012.jpg"), "bad_image")]
    assert ts.sources[1].ignored == ["3/notes.txt"]
    lines = "\n".join(ts.summary_lines())
    assert "excluded 1 of 2 listed identities (3 images); 1 listed name(s) match no" in lines
    assert ("1 duplicate image(s) kept once" in lines) == (merge == "by_name")

    report = BadRecordReport()
    got = collect(ts.make_dataset(3, report=report, **PLAIN))
    truncated = next(i for i, (_, p) in enumerate(rows) if p.name == "011.jpg")
    assert sorted(got) == sorted(set(range(len(rows))) - {truncated})  # 0..N-1, unique, the bad one skipped
    assert report.count == 1 and report.examples[0]["file"] == str(b / "3" / "011.jpg")
    for i, (im, lab) in got.items():
        key, path = rows[i]
        assert ts.class_names[lab] == key and ts.where(i) == (str(path), None)
        np.testing.assert_array_equal(im, decoded(path))
    # Shards are disjoint and cover the set.
    shards = [collect(ts.make_dataset(1, shard=(2, k), **PLAIN)) for k in range(2)]
    assert not set(shards[0]) & set(shards[1]) and set(shards[0]) | set(shards[1]) == set(got)


def test_recordio_and_tfrecord_roots_keep_their_own_label_blocks(tmp_path):
    rng = np.random.default_rng(0)
    tree = make_tree(tmp_path / "tree", {"x": ["1.jpg"], "y": ["2.jpg", "3.jpg"]})
    write_recordio(tmp_path / "rec", [(0, _jpeg(rng)), (0, _jpeg(rng)), (2, _jpeg(rng))],
                   image_size=(SIZE, SIZE), num_classes=3)  # class 1 is empty
    # Two shards holding the same image/index 1 (e.g. a glob matching two conversions): kept once.
    write_tfrecords(tmp_path / "tfr" / "a", [(0, 1, _jpeg(rng)), (1, 0, _jpeg(rng))])
    write_tfrecords(tmp_path / "tfr" / "b", [(1, 0, _jpeg(rng))])
    with open(tmp_path / "tfr" / "c-00000-of-00001.tfrecord", "wb") as f:  # truncated file: reported
        f.write(b"\x10" + b"\x00" * 7)
    ts = load_training_set([tmp_path / "rec", tree, tmp_path / "tfr"], exclude_identities=["0"])
    # RecordIO labels 0, 2 (1 has no image), then the folder block, then the TFRecord labels 0, 1.
    assert ts.class_names == ["0:0", "0:2", "x", "y", "2:0", "2:1"]
    np.testing.assert_array_equal(ts.class_counts, [2, 1, 1, 2, 1, 1])
    assert ts.exclusions["excluded"] == {} and ts.exclusions["unmatched"] == ["0"]  # names apply to folders only
    assert ts.dropped_identities == ["0:1"]
    assert [d["reason"] for d in ts.duplicates] == ["repeated image/index in one TFRecord root"]
    assert [e.reason for e in ts.bad_records] == ["truncated"]
    np.testing.assert_array_equal(ts.labels, [0, 0, 1, 2, 3, 3, 5, 4])  # TFRecord rows by image/index
    got = collect(ts.make_dataset(8, **PLAIN))
    assert sorted(got) == list(range(8)) and [got[i][1] for i in range(8)] == ts.labels.tolist()


def test_image_sizes_and_unparsable_tfrecord_record(tmp_path):
    small = make_tree(tmp_path / "small", {"a": ["1.jpg"]})
    big = make_tree(tmp_path / "big", {"b": ["1.jpg"]}, size=(20, 12))
    with pytest.raises(DataSourceError, match=r"different image sizes .*20x12.*--image-size"):
        load_training_set([small, big])
    ts = load_training_set([small, big], image_size=24)
    assert ts.image_hw == (24, 24) and ts.resize
    assert {im.shape for im, _ in collect(ts.make_dataset(2, **PLAIN)).values()} == {(24, 24, 3)}
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(tmp_path / "x.tfrecord")) as w:
        w.write(encode_example(0, 0, _jpeg(np.random.default_rng(0))))
        w.write(b"not a tf.train.Example \xff\xff")
    ts = load_training_set(tmp_path / "x.tfrecord")
    assert ts.num_samples == 1 and [e.reason for e in ts.bad_records] == ["bad_example"]
    assert ts.bad_records[0].file == str(tmp_path / "x.tfrecord")


def test_read_identity_list(tmp_path):
    (tmp_path / "ids.txt").write_text("# LFW overlap\n6803\n\n1496\t Camilla\n6803\n")
    assert read_identity_list(tmp_path / "ids.txt") == ("6803", "1496")
    (tmp_path / "c.tsv").write_text("celeba_identity\tnearest_lfw_name\n6803\tMichael_Schumacher\n7398\tOxana\n")
    assert read_identity_list(tmp_path / "c.tsv") == ("6803", "7398")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_identity_list(tmp_path / "nope.txt")
    (tmp_path / "blank.txt").write_text("# nothing\n\n")
    with pytest.raises(DataSourceError, match="blank.txt.*lists no identity"):
        read_identity_list(tmp_path / "blank.txt")


# -------------------------------------------------------------------------- config and CLI
def test_config_data_paths_round_trip(tmp_path):
    one = get_experiment("ms1mv2", data="/d/faces_emore")
    assert one.data == ("/d/faces_emore",) and not one.synthetic
    cfg = get_experiment("ms1mv2", data=["/d/a", Path("/d/b")], merge_identities="per_root",
                         exclude_identities=["6803", "1496"], augment_flip=False, output=str(tmp_path))
    assert cfg.data == ("/d/a", "/d/b") and cfg.exclude_identities == ("6803", "1496")
    assert TrainConfig.from_json(cfg.save()) == cfg
    assert json.loads(cfg.to_json())["data"] == ["/d/a", "/d/b"]
    assert TrainConfig.from_dict(dict(cfg.to_dict(), data="/d/a")).data == ("/d/a",)  # an older config.json
    assert get_experiment("synthetic").data is None and get_experiment("synthetic", data=()).synthetic
    with pytest.raises(ValueError, match="merge_identities"):
        get_experiment("ms1mv2", data="/d", merge_identities="by_folder")
    with pytest.raises(ValueError, match="exclude_identities.*needs `data`"):
        get_experiment("synthetic", exclude_identities=["1"])
    with pytest.raises(ValueError, match="exclude_identities.*not a string"):
        get_experiment("ms1mv2", data="/d", exclude_identities="6803")
    with pytest.raises(ValueError, match="`data`"):
        get_experiment("ms1mv2", data=["/d", ""])


def test_example_flags(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "examples"))
    import train_ms1mv2 as example

    (tmp_path / "lfw.tsv").write_text("celeba_identity\tname\n6803\tMichael_Schumacher\n")
    args = example.parse_args(["--data", "/d/a", "--data", "/d/b", "--merge-identities", "per_root",
                               "--exclude-identities", str(tmp_path / "lfw.tsv"), "--no-flip"])
    cfg = example.config_from_args(args)
    assert cfg.experiment == "ms1mv2" and cfg.data == ("/d/a", "/d/b")
    assert (cfg.merge_identities, cfg.exclude_identities, cfg.augment_flip) == ("per_root", ("6803",), False)
    assert example.config_from_args(example.parse_args(["--data", "/d/a"])).merge_identities == "by_name"
    with pytest.raises(SystemExit, match="--exclude-identities.*missing.txt"):
        example.config_from_args(example.parse_args(["--data", "/d", "--exclude-identities", "missing.txt"]))
    with pytest.raises(SystemExit):
        example.parse_args(["--help"])
    helptext = " ".join(capsys.readouterr().out.split()).replace("- ", "-")
    data_help = helptext[helptext.index("--data PATH training data"):helptext.index("--merge-identities {by_name,per_root} image")]
    for kind in ("insightface RecordIO folder", "image-folder tree", "TFRecord files", "repeatable"):
        assert kind in data_help


# ------------------------------------------------------------------------------- trainer
def _tiny(tmp_path, data, **kw):
    return get_experiment(
        "ms1mv2", data=data, name="tiny", output=str(tmp_path / "runs"), loss="kappaface", backbone="iresnet18",
        backbone_kwargs={"stage_blocks": [1, 1, 1, 1], "stage_filters": [4, 8, 8, 8]}, embedding_dim=8,
        scale=16.0, batch_size=2, lr_reference_batch=2, epochs=2, lr_steps=(5,), save_every_steps=2,
        verification_sets="", plots=False, verbose=0, **kw)


class Crash(RuntimeError):
    pass


def crash_after(step):
    """A callback raising `Crash` after global step `step` of the first epoch (a killed run)."""
    import keras

    class CrashAfter(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch + 1 == step:
                raise Crash(f"crash after step {step}")

    return CrashAfter()


@pytest.mark.slow
def test_trainer_on_image_folders_with_kappaface_and_resume(tmp_path):
    import tensorflow as tf

    from keras_facemargin.callbacks import find_layers
    from keras_facemargin.layers.kappaface import KappaMarginDense
    from keras_facemargin.training import Trainer

    a, b = _two_roots(tmp_path)
    cfg = _tiny(tmp_path, [a, b], exclude_identities=["7"])
    trainer = Trainer(cfg, extra_callbacks=[crash_after(3)])
    with pytest.raises(Crash):
        trainer.train()  # epoch 0 of 4 steps: the checkpoint of step 2 is written, then the crash
    ts = trainer.data.training_set
    assert (ts.num_classes, ts.num_samples, trainer.data.steps_per_epoch) == (3, 8, 4)
    assert tf.train.latest_checkpoint(str(cfg.run_dir / "checkpoints")).endswith("ckpt-2")
    head = find_layers(trainer.model, KappaMarginDense)[0]
    np.testing.assert_array_equal(np.asarray(head.class_counts), ts.class_counts)
    assert tuple(head.memory.shape) == (ts.num_samples, 8)
    report = json.loads((cfg.run_dir / "data_report.json").read_text())
    assert report["duplicates"]["count"] == 1 and report["exclusions"]["excluded"] == {"7": 3}
    assert report["bad_records_up_front"]["count"] == 1 and report["num_samples"] == 8
    assert (cfg.run_dir / "identities.tsv").read_text().splitlines()[1:] == ["0\t10\t3\t0,1", "1\t2\t1\t0",
                                                                            "2\t3\t4\t1"]
    assert (cfg.run_dir / "duplicates.tsv").read_text().splitlines()[1].split("\t")[:4] == [
        "10", "002.jpg", str(a / "10" / "002.jpg"), str(b / "10" / "002.jpg")]

    # The same command resumes mid-epoch: the global step, then both epochs logged once.
    trainer = Trainer(cfg)
    results = trainer.train()
    assert results["resumed_from_step"] == 2 and results["history"]["epoch"] == [0, 1]
    assert results["data"]["num_samples"] == 8 and results["data"]["fingerprint"] == ts.fingerprint()
    # Every sample index the memory buffer got is a real, decodable sample: the truncated JPEG's row stays 0.
    head = find_layers(trainer.model, KappaMarginDense)[0]
    visited = np.flatnonzero(np.abs(np.asarray(head.memory.value)).sum(1) > 0)
    truncated = next(i for i in range(ts.num_samples) if ts.where(i)[0].endswith("011.jpg"))
    assert truncated not in visited and set(visited) == set(range(ts.num_samples)) - {truncated}
    assert results["data"]["bad_records_training"]["count"] == 1
    saved = json.loads((cfg.run_dir / "data_report.json").read_text())
    assert saved["bad_records_training"]["examples"][0]["file"].endswith("011.jpg")

    # Other data under the same run: a clear error, and config.json is left as it was.
    before = (cfg.run_dir / "config.json").read_text()
    with pytest.raises(DataSourceError, match="Cannot resume .*3 identities, 8 images.*now.*4 identities, 11 images"):
        Trainer(cfg.replace(exclude_identities=())).train()
    assert (cfg.run_dir / "config.json").read_text() == before


# ------------------------------------------------------------------------------- real data
def test_celeba_roots_combine_as_their_readme_says(data_dir):
    """celeba_identities/README.md: 291 colour identities also in celeba_align_10k, 562 files the same images."""
    color, ten_k = data_dir / "celeba_identities" / "color_arcface112", data_dir / "celeba_align_10k" / "images"
    if not (color.is_dir() and ten_k.is_dir()):
        pytest.skip(f"celeba_identities/color_arcface112 or celeba_align_10k/images not under {data_dir}")
    with pytest.raises(DataSourceError, match="celeba_align_10k/images' looks like an image-folder tree"):
        detect_data_kind(data_dir / "celeba_align_10k")
    ts = load_training_set([color, ten_k], image_size=112)
    assert [s.num_images for s in ts.sources] == [11850, 10000]
    assert len(ts.shared_identities) == 291 and len(ts.duplicates) == 562
    assert (ts.num_classes, ts.num_samples) == (483 + 5429 - 291, 11850 + 10000 - 562)
    assert ts.class_counts.sum() == ts.num_samples and ts.class_counts.min() > 0
    exclude = read_identity_list(data_dir / "celeba_identities" / "lfw_overlap_candidates.tsv")
    assert len(exclude) == 156 and "6803" in exclude
    kept = load_training_set([color, ten_k], image_size=112, exclude_identities=exclude)
    assert "6803" in ts.class_names and not set(exclude) & set(kept.class_names)
    # Exclusion comes first (it counts every file of an identity), then duplicates among what is left.
    excluded = sum(kept.exclusions["excluded"].values())
    assert kept.num_samples == 11850 + 10000 - excluded - len(kept.duplicates) and len(kept.duplicates) < 562
