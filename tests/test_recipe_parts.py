"""Pieces of the real-faces recipe: multi-root identity folders, augmentation, angle statistics."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf

from keras_facemargin.data import FaceAugmentation, load_identity_folders, make_training_dataset, read_identity_list
from keras_facemargin.evaluation.angles import angle_statistics
from testing import DATA_DIR



def _write(root, ident, name, value, size=20):
    d = root / ident
    d.mkdir(parents=True, exist_ok=True)
    img = np.full((size, size, 3), value, np.uint8)
    img[0, 0] = (value * 7) % 256  # make files distinguishable
    cv2.imwrite(str(d / name), img)


def test_load_identity_folders_merges_by_name_dedups_and_excludes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _write(a, "7", "001.png", 10)
    _write(a, "7", "002.png", 20)
    _write(a, "9", "003.png", 30)
    _write(b, "7", "002.png", 99)  # duplicate of a/7/002.png: the first root's copy is kept
    _write(b, "7", "004.png", 40)
    _write(b, "8", "005.png", 50)
    _write(b, "bad", "006.png", 60)
    (b / "bad" / "007.jpg").write_bytes(b"not an image")  # excluded folders are never decoded: no error
    d = load_identity_folders([a, b], image_size=20, exclude=["bad"])
    assert d.class_names == ["7", "8", "9"]
    assert d.class_counts.tolist() == [3, 1, 1]
    assert d.labels.tolist() == [0, 0, 0, 1, 2]
    assert [Path(p).name for p in d.paths] == ["001.png", "002.png", "004.png", "005.png", "003.png"]
    assert d.images[1, 5, 5, 0] == 20  # a's copy of the duplicate
    assert d.duplicates == [("7", "002.png", str(a), str(b))]
    assert d.excluded == {"bad": 2} and d.unreadable == []
    assert d.root_of_row.tolist() == [0, 0, 1, 1, 0]
    assert "1 duplicate image(s)" in d.summary()
    with pytest.raises(ValueError, match="same folder twice"):
        load_identity_folders([a, a])
    with pytest.raises(ValueError, match="No identity"):
        load_identity_folders([a], exclude=["7", "9"])


def test_load_identity_folders_min_images_after_merge(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _write(a, "1", "x.png", 1)
    _write(b, "1", "y.png", 2)
    _write(b, "2", "z.png", 3)
    d = load_identity_folders([a, b], image_size=8, min_images=2)
    assert d.class_names == ["1"] and d.dropped_identities == {"2": 1}


def test_read_identity_list_not_utf8(tmp_path):
    f = tmp_path / "ids.txt"
    f.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match="ids.txt.*UTF-8"):
        read_identity_list(f)


@pytest.mark.real_data
@pytest.mark.skipif(not (DATA_DIR / "celeba_identities" / "lfw_overlap_candidates.tsv").is_file(),
                    reason=f"celeba_identities not found under {DATA_DIR} (set KFM_DATA_DIR)")
def test_real_celeba_duplicates_match_an_independent_count():
    ids = DATA_DIR / "celeba_identities"
    roots = [ids / "color_arcface112", DATA_DIR / "celeba_align_10k" / "images"]
    exclude = read_identity_list(ids / "lfw_overlap_candidates.tsv")
    assert len(exclude) == 156
    # independent count: (identity, file) pairs present in both roots, identity not excluded
    files = [{(p.parent.name, p.name) for p in r.glob("*/*.jpg")} for r in roots]
    shared = {k for k in files[0] & files[1] if k[0] not in set(exclude)}
    d = load_identity_folders(roots, image_size=16, exclude=exclude)
    assert len(d.duplicates) == len(shared) > 0
    assert not set(d.class_names) & set(exclude)
    assert len(d.labels) == len({k for k in files[0] | files[1] if k[0] not in set(exclude)})


def test_face_augmentation_is_seeded_and_bounded():
    rng = np.random.default_rng(0)
    x = tf.constant(rng.integers(0, 256, (4, 32, 32, 3)), tf.uint8)
    aug = FaceAugmentation(crop_scale=(0.6, 0.9), grayscale=0.5, blur=0.5)
    s = tf.constant([3, 4], tf.int64)
    a, b = aug(x, s).numpy(), aug(x, s).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, aug(x, tf.constant([3, 5], tf.int64)).numpy())
    assert a.shape == (4, 32, 32, 3) and a.min() >= 0 and a.max() <= 255


def test_face_augmentation_disabled_is_identity_and_grayscale_equalises_channels():
    x = tf.constant(np.random.default_rng(1).integers(0, 256, (3, 16, 16, 3)), tf.uint8)
    s = tf.constant([1, 2], tf.int64)
    off = FaceAugmentation(crop_scale=(1, 1), brightness=0, contrast=0, saturation=0, grayscale=0, blur=0)
    np.testing.assert_allclose(off(x, s).numpy(), x.numpy().astype(np.float32))
    gray = FaceAugmentation(crop_scale=(1, 1), brightness=0, contrast=0, saturation=0, grayscale=1.0, blur=0)
    g = gray(x, s).numpy()
    ref = x.numpy().astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(g[..., 0], ref, atol=1e-3)
    np.testing.assert_allclose(g[..., 0], g[..., 2])


def test_face_augmentation_rejects_bad_arguments():
    with pytest.raises(ValueError, match="crop_scale"):
        FaceAugmentation(crop_scale=(0.9, 0.5))
    with pytest.raises(ValueError, match="grayscale"):
        FaceAugmentation(grayscale=1.5)
    with pytest.raises(ValueError, match="augment"):
        make_training_dataset(np.zeros((4, 8, 8, 3), np.uint8), np.zeros(4, int), batch_size=2, augment="mild")


def test_training_dataset_applies_augmentation_and_keeps_the_contract():
    x = np.full((8, 16, 16, 3), 100, np.uint8)
    y = np.arange(8) % 4
    aug = FaceAugmentation(crop_scale=(1, 1), brightness=0.2, contrast=0, saturation=0, grayscale=0, blur=0)
    inputs, labels = next(iter(make_training_dataset(x, y, batch_size=8, shuffle=False, augment=aug)))
    img = inputs["images"].numpy()
    assert img.dtype == np.float32 and inputs["index"].numpy().tolist() == list(range(8))
    per_image = img.reshape(8, -1)
    assert np.allclose(per_image.std(axis=1), 0, atol=1e-6) and per_image[:, 0].std() > 0.01  # one shift per image


def test_angle_statistics_against_known_geometry():
    # class 0 features at +-10 degrees around 0 deg, class 1 at +-10 degrees around 90 deg (2-D)
    ang = np.radians([-10, 10, 80, 100])
    x = np.stack([np.cos(ang), np.sin(ang)], 1) * np.array([[1.0], [3.0], [2.0], [0.5]])
    y = np.array([0, 0, 1, 1])
    w_ang = np.radians([5.0, 60.0])  # W_0 5 deg from its centre, W_1 30 deg
    kernel = np.stack([np.cos(w_ang), np.sin(w_ang)], 0) * 4.0
    s = angle_statistics(x, y, kernel)
    assert s["classes"] == 2
    assert s["Intra"] == pytest.approx(10.0)
    assert s["Inter"] == pytest.approx(90.0)
    assert s["W-EC"] == pytest.approx((5.0 + 30.0) / 2)
    assert s["W-Inter"] == pytest.approx(55.0)
    with pytest.raises(ValueError, match="kernel"):
        angle_statistics(x, y, np.ones((3, 2)))
