"""Tests for keras_facemargin.data (synthetic faces + tf.data pipelines)."""

import numpy as np
import pytest

from keras_facemargin.data.pipeline import (
    make_synthetic_training_dataset,
    make_training_dataset,
    normalize_images,
)
from keras_facemargin.data.synthetic import SyntheticFaces


@pytest.fixture(scope="module")
def small():
    return SyntheticFaces(num_identities=40, image_size=48, min_images=2, max_images=12, seed=7)


def _gini(x):
    x = np.sort(np.asarray(x, np.float64))
    n = x.size
    return float((2 * np.arange(1, n + 1) - n - 1) @ x / (n * x.sum()))


# ------------------------------------------------------------------ determinism
def test_render_deterministic_and_order_independent():
    a = SyntheticFaces(num_identities=20, image_size=64, seed=3)
    b = SyntheticFaces(num_identities=20, image_size=64, seed=3)
    first = a.render(5, 1)
    for c in range(20):  # rendering other images in between must not matter
        a.render(c, 0)
    assert first.dtype == np.uint8 and first.shape == (64, 64, 3)
    assert first.tobytes() == a.render(5, 1).tobytes() == b.render(5, 1).tobytes()
    assert np.array_equal(a.counts, b.counts) and np.array_equal(a.difficulty, b.difficulty)
    c = SyntheticFaces(num_identities=20, image_size=64, seed=4)
    assert first.tobytes() != c.render(5, 0 if c.counts[5] < 2 else 1).tobytes()
    assert not np.array_equal(a.difficulty, c.difficulty)
    # different samples of one identity differ, and images are not flat
    assert not np.array_equal(a.render(5, 0), a.render(5, 1))
    assert first.std() > 10


def test_default_size_and_render_batch(small):
    faces = SyntheticFaces(num_identities=3, seed=0)
    assert faces.render(0, 0).shape == (112, 112, 3)
    ids, samples, labels = small.image_specs([4, 2])
    batch = small.render_batch(ids, samples)
    assert batch.shape == (ids.size, 48, 48, 3)
    assert np.array_equal(batch[0], small.render(4, 0))
    assert np.array_equal(labels, np.repeat([0, 1], small.counts[[4, 2]]))


# ----------------------------------------------------------------------- counts
def test_counts_long_tailed():
    faces = SyntheticFaces(num_identities=500, min_images=2, max_images=60, seed=0)
    c = faces.counts
    assert c.min() == 2 and c.max() == 60
    assert faces.num_images == c.sum() == faces.labels.size == faces.sample_ids.size
    assert c.max() / c.min() == 30
    assert np.median(c) <= 8  # most identities in the tail
    assert np.mean(c == 2) > 0.15
    assert _gini(c) > 0.4
    # head: the top 10% of identities hold a disproportionate share of the images
    top = np.sort(c)[::-1][:50].sum() / c.sum()
    assert top > 0.3
    # sorted counts are non-increasing with a long flat tail; the assignment to
    # identity indices is shuffled (not sorted by index)
    s = np.sort(c)[::-1]
    assert np.all(np.diff(s) <= 0)
    assert not np.all(np.diff(c) <= 0)
    # heavier exponent -> fewer images per identity
    heavy = SyntheticFaces(num_identities=500, tail_exponent=2.5, seed=0)
    assert heavy.counts.mean() < c.mean()
    flat = SyntheticFaces(num_identities=500, tail_exponent=0.0, seed=0)
    assert abs(flat.counts.mean() - 31) < 1.5


def test_labels_and_sample_ids_layout(small):
    for c in range(small.num_identities):
        sl = slice(small.offsets[c], small.offsets[c + 1])
        assert np.all(small.labels[sl] == c)
        assert np.array_equal(small.sample_ids[sl], np.arange(small.counts[c]))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(num_identities=0), "num_identities"),
        (dict(min_images=5, max_images=4), "min_images"),
        (dict(min_images=0), "min_images"),
        (dict(tail_exponent=-1.0), "tail_exponent"),
        (dict(image_size=16), "image_size"),
        (dict(seed=-1), "seed"),
        (dict(difficulty_range=(0.5, 0.2)), "difficulty_range"),
    ],
)
def test_constructor_validation(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SyntheticFaces(**kwargs)


def test_render_validation(small):
    with pytest.raises(ValueError, match="identity"):
        small.render(small.num_identities, 0)
    with pytest.raises(ValueError, match="sample"):
        small.render(0, int(small.counts[0]))
    with pytest.raises(ValueError, match="same length"):
        small.render_batch([0, 1], [0])


# ------------------------------------------------------------------- difficulty
def test_difficulty_scales_intra_class_variation():
    faces = SyntheticFaces(num_identities=120, image_size=48, min_images=6, max_images=6, seed=1)
    order = np.argsort(faces.difficulty)
    easy, hard = order[:8], order[-8:]
    assert faces.difficulty[easy].max() < 0.15 and faces.difficulty[hard].min() > 0.85

    def mean_intra(ids, crop):
        # RMS pixel distance between all pairs of images of one identity. The
        # background colour is random per image for every identity (so it carries
        # no identity information); the central crop measures the face itself.
        out = []
        for c in ids:
            x = faces.render_batch([c] * 6, range(6))[:, crop:48 - crop, crop:48 - crop]
            x = x.reshape(6, -1).astype(np.float64)
            d = np.sqrt(((x[:, None] - x[None]) ** 2).mean(-1))
            out.append(d[np.triu_indices(6, 1)].mean())
        return np.mean(out)

    e, h = mean_intra(easy, 0), mean_intra(hard, 0)
    assert h > 1.1 * e, (e, h)
    e, h = mean_intra(easy, 12), mean_intra(hard, 12)
    assert h > 1.8 * e, (e, h)


# ----------------------------------------------------------------------- splits
def test_split_identity_disjoint(small):
    tr, te = small.split(30)
    assert tr.size == 30 and te.size == 10
    assert not set(tr) & set(te)
    assert set(tr) | set(te) == set(range(40))
    for bad in (0, 40):
        with pytest.raises(ValueError, match="num_train_identities"):
            small.split(bad)


def test_verification_pairs_lfw_layout(small):
    _, test_ids = small.split(25)
    pairs = small.verification_pairs(600, identities=test_ids, seed=1)
    a, b, same = pairs
    assert len(pairs) == 600 and a.shape == b.shape == (600, 2)
    folds = same.reshape(10, 60)
    assert np.all(folds[:, :30]) and not np.any(folds[:, 30:])  # per fold: 30 genuine then 30 impostor
    assert set(a[:, 0]) | set(b[:, 0]) <= set(test_ids)
    assert np.all(a[same, 0] == b[same, 0]) and np.all(a[same, 1] != b[same, 1])
    assert np.all(a[~same, 0] != b[~same, 0])
    for spec in (a, b):
        assert np.all(spec[:, 1] < small.counts[spec[:, 0]]) and np.all(spec[:, 1] >= 0)
    again = small.verification_pairs(600, identities=test_ids, seed=1)
    assert np.array_equal(again.spec_a, a) and np.array_equal(again.spec_b, b)
    other = small.verification_pairs(600, identities=test_ids, seed=2)
    assert not np.array_equal(other.spec_a, a)
    with pytest.raises(ValueError, match="num_pairs"):
        small.verification_pairs(610, identities=test_ids)
    with pytest.raises(ValueError, match="identities"):
        small.verification_pairs(20, identities=[test_ids[0]])


def test_pair_images(small):
    pairs = small.verification_pairs(20, identities=small.split(30)[1], seed=0)
    ia, ib, same = small.pair_images(pairs)
    assert ia.shape == ib.shape == (20, 48, 48, 3) and ia.dtype == np.uint8
    for k in (0, 7, 19):
        assert np.array_equal(ia[k], small.render(*pairs.spec_a[k]))
        assert np.array_equal(ib[k], small.render(*pairs.spec_b[k]))
    assert np.array_equal(same, pairs.is_same)


def test_to_arrays(small):
    ids = np.array([3, 1])
    x, y, s = small.to_arrays(ids)
    n = small.counts[ids].sum()
    assert x.shape == (n, 48, 48, 3) and x.dtype == np.uint8
    assert np.array_equal(y, np.repeat([0, 1], small.counts[ids]))
    assert np.array_equal(x[-1], small.render(1, s[-1]))
    with pytest.raises(ValueError, match="identities"):
        small.to_arrays([1, 1])


# --------------------------------------------------------------------- pipeline
def test_normalize_images():
    x = np.array([0, 127, 128, 255], np.uint8)
    np.testing.assert_array_equal(normalize_images(x), (x.astype(np.float32) - 127.5) / 128)
    assert normalize_images(x).dtype == np.float32


def test_dataset_structure_and_values(small):
    ids = np.arange(10)
    ds = make_synthetic_training_dataset(small, ids, batch_size=8, seed=0, augment_flip=True)
    inputs, y = next(iter(ds))
    assert set(inputs) == {"images", "labels", "index"}
    assert inputs["images"].dtype.name == "float32" and tuple(inputs["images"].shape) == (8, 48, 48, 3)
    assert inputs["labels"].dtype.name == "int32" and inputs["index"].dtype.name == "int32"
    assert y.dtype.name == "int32" and np.array_equal(y.numpy(), inputs["labels"].numpy())
    spec = ds.element_spec
    assert tuple(spec[0]["images"].shape) == (8, 48, 48, 3)  # static batch with drop_remainder
    img = inputs["images"].numpy()
    assert img.min() >= -1.0 and img.max() <= 1.0
    img_ids, samples, labels = small.image_specs(ids)
    for k, i in enumerate(inputs["index"].numpy()):
        assert y.numpy()[k] == labels[i]
        ref = normalize_images(small.render(img_ids[i], samples[i]))
        assert np.array_equal(img[k], ref) or np.array_equal(img[k], ref[:, ::-1])


def test_epoch_indices_unique_and_complete(small):
    ids = np.arange(12)
    n = int(small.counts[ids].sum())
    ds = make_synthetic_training_dataset(small, ids, batch_size=7, drop_remainder=False, seed=3)
    orders = []
    for _ in range(2):
        idx = np.concatenate([x["index"].numpy() for x, _ in ds])
        assert idx.size == n and np.array_equal(np.sort(idx), np.arange(n))
        orders.append(idx)
    assert not np.array_equal(orders[0], orders[1])  # reshuffled every epoch
    # same seed, fresh dataset -> same order; cached and on-the-fly rendering agree
    ds_a = make_synthetic_training_dataset(small, ids, batch_size=7, seed=3, cache=True)
    ds_b = make_synthetic_training_dataset(small, ids, batch_size=7, seed=3, cache=False)
    for (xa, _), (xb, _) in zip(ds_a, ds_b):
        assert np.array_equal(xa["index"].numpy(), xb["index"].numpy())
        assert np.array_equal(xa["images"].numpy(), xb["images"].numpy())


def test_make_training_dataset_validation():
    x = np.zeros((10, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="labels"):
        make_training_dataset(x, np.zeros(9, int), batch_size=4)
    with pytest.raises(ValueError, match="batch_size"):
        make_training_dataset(x, np.zeros(10, int), batch_size=11)
    with pytest.raises(ValueError, match="uint8"):
        make_training_dataset(x.astype(np.float32), np.zeros(10, int), batch_size=4)
    ds = make_training_dataset(x, np.arange(10), batch_size=4, shuffle=False, augment_flip=False,
                               drop_remainder=False)
    idx = np.concatenate([b[0]["index"].numpy() for b in ds])
    assert np.array_equal(idx, np.arange(10))
    rep = make_training_dataset(x, np.arange(10), batch_size=4, repeat=True)
    assert sum(1 for _ in rep.take(7)) == 7


def test_flip_augmentation_seeded_and_varies_per_epoch():
    x = np.zeros((64, 4, 4, 3), np.uint8)
    x[:, :, :2] = 255  # left half white: a flipped image has a black top-left pixel

    def flips(ds):
        return next(iter(ds))[0]["images"].numpy()[:, 0, 0, 0] < 0

    ds = make_training_dataset(x, np.arange(64), batch_size=64, shuffle=False, seed=5)
    e1, e2 = flips(ds), flips(ds)
    assert 10 < e1.sum() < 54 and not np.array_equal(e1, e2)  # ~half flipped, new draw each epoch
    fresh = make_training_dataset(x, np.arange(64), batch_size=64, shuffle=False, seed=5)
    assert np.array_equal(flips(fresh), e1)  # deterministic given the seed
    off = make_training_dataset(x, np.arange(64), batch_size=64, shuffle=False, augment_flip=False)
    assert not flips(off).any()
