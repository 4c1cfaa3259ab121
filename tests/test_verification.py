"""Tests for keras_facemargin.evaluation.verification against hand-computed references."""

import math

import numpy as np
import pytest

from keras_facemargin.evaluation.verification import (
    embed_images,
    evaluate_pairs,
    format_table,
    kfold_verification,
    pair_scores,
    tar_at_far,
)


def lfw_labels(num_pairs=6000, folds=10):
    """LFW pairs.txt layout: each fold = half matched, then half mismatched."""
    m = num_pairs // folds
    return np.tile(np.repeat([True, False], m // 2), folds)


# ------------------------------------------------------------ pure-python reference
def ref_fold_ids(n, f):
    """sklearn KFold(f, shuffle=False): the first n % f folds get one extra pair."""
    ids, start = [], 0
    for k in range(f):
        size = n // f + (1 if k < n % f else 0)
        ids += [k] * size
        start += size
    return ids


def ref_candidates(train):
    u = sorted(set(train))
    cand = [math.nextafter(u[0], -math.inf)]
    for a, b in zip(u[:-1], u[1:]):
        mid = a + (b - a) / 2.0
        cand.append(a if mid >= b else mid)
    cand.append(u[-1])
    return cand


def ref_kfold(scores, same, f, grid=None):
    scores, same = [float(s) for s in scores], [bool(y) for y in same]
    fid = ref_fold_ids(len(scores), f)
    accs, thrs = [], []
    for k in range(f):
        tr = [(s, y) for s, y, i in zip(scores, same, fid) if i != k]
        te = [(s, y) for s, y, i in zip(scores, same, fid) if i == k]
        cands = grid if grid is not None else ref_candidates([s for s, _ in tr])
        best_t, best_c = None, -1
        for t in cands:  # first strict maximum wins
            c = sum((s > t) == y for s, y in tr)
            if c > best_c:
                best_t, best_c = t, c
        thrs.append(best_t)
        accs.append(sum((s > best_t) == y for s, y in te) / len(te))
    return accs, thrs


# ------------------------------------------------------------------ accuracy
def test_perfect_separation():
    rng = np.random.default_rng(0)
    y = lfw_labels(600)
    s = np.where(y, rng.uniform(0.6, 0.9, y.size), rng.uniform(-0.2, 0.3, y.size))
    r = kfold_verification(s, y)
    assert r.accuracy_mean == 1.0 and r.accuracy_std == 0.0
    assert np.all(r.fold_accuracies == 1.0) and r.fold_accuracies.shape == (10,)
    assert np.all(r.fold_thresholds > s[~y].max()) and np.all(r.fold_thresholds < s[y].min())
    assert s[~y].max() < r.best_threshold < s[y].min()
    assert r.tar_at_far == {1e-3: 1.0, 1e-2: 1.0}
    assert r.auc == 1.0


def test_inverted_scores_are_chance_level():
    # Genuine pairs score *below* impostors. The rule "genuine iff score > t" can only
    # accept an upper set of scores, so on every training split the best accuracy is
    # 50% (accept-all ties with reject-all; the smallest threshold, accept-all, wins)
    # and each balanced held-out fold scores 50%: chance, not the 0% a sign flip would
    # give, because the protocol cannot flip the sign of the score. The accept-all
    # threshold sits just below the *training* minimum, so a held-out genuine pair
    # scoring below every training score is rejected and costs 1/60 in that fold.
    rng = np.random.default_rng(1)
    y = lfw_labels(600)
    s = np.where(y, rng.uniform(-0.9, -0.5, y.size), rng.uniform(0.5, 0.9, y.size))
    r = kfold_verification(s, y)
    assert r.accuracy_mean <= 0.5 + 1e-12
    fold = np.repeat(np.arange(10), 60)
    for k in range(10):
        train_min = s[fold != k].min()
        assert r.fold_thresholds[k] == np.nextafter(train_min, -np.inf)  # accept-all wins the tie
        below = np.sum(s[fold == k] < train_min)
        assert r.fold_accuracies[k] == (30 - below) / 60
    assert np.sum(r.fold_accuracies == 0.5) >= 8
    assert r.auc == 0.0


def test_all_scores_tied():
    s = np.full(8, 0.3)
    y = np.array([1, 0, 1, 0, 1, 0, 1, 0], bool)
    r = kfold_verification(s, y, folds=2)
    np.testing.assert_array_equal(r.fold_thresholds, np.nextafter(0.3, -np.inf))
    np.testing.assert_array_equal(r.fold_accuracies, 0.5)


def test_ties_hand_computed():
    # fold 0: scores .4(T) .3(F) .6(F); fold 1: .8(T) .5(T) .5(F) .2(F)
    s = np.array([0.4, 0.3, 0.6, 0.8, 0.5, 0.5, 0.2])
    y = np.array([1, 0, 0, 1, 1, 0, 0], bool)
    fid = np.array([0, 0, 0, 1, 1, 1, 1])
    r = kfold_verification(s, y, folds=fid)
    # Test fold 0, train on fold 1: candidates (<.2: 2/4, .35: 3/4, .65: 3/4, .8: 2/4)
    # -> tie .35 vs .65 resolved to the smallest, .35; fold 0 predictions T,F,T -> 2/3.
    # Test fold 1, train on fold 0: (<.3: 1/3, .35: 2/3, .5: 1/3, .6: 2/3) -> .35;
    # fold 1 predictions T,T,T,F -> 3/4.
    np.testing.assert_allclose(r.fold_thresholds, [0.35, 0.35], rtol=0, atol=1e-15)
    np.testing.assert_allclose(r.fold_accuracies, [2 / 3, 3 / 4], rtol=0, atol=1e-15)
    assert r.accuracy_mean == pytest.approx((2 / 3 + 3 / 4) / 2)
    assert r.accuracy_std == pytest.approx(abs(3 / 4 - 2 / 3) / 2)


def test_fold_split_matches_lfw_pairs_txt():
    # 6000 pairs, folds of 600 (300 matched then 300 mismatched). In fold k we
    # invert the first 5k and the last 5k pairs, so fold k's held-out accuracy is
    # exactly (600 - 10k) / 600 -- and would change if any boundary moved by one pair.
    y = lfw_labels(6000)
    s = np.where(y, 0.8, 0.2)
    for k in range(10):
        lo, hi = k * 600, k * 600 + 599
        for i in list(range(lo, lo + 5 * k)) + list(range(hi - 5 * k + 1, hi + 1)):
            s[i] = 0.2 if y[i] else 0.8
    r = kfold_verification(s, y, folds=10)
    np.testing.assert_array_equal(r.fold_accuracies, (600 - 10 * np.arange(10)) / 600)
    np.testing.assert_array_equal(r.fold_thresholds, 0.5)
    explicit = kfold_verification(s, y, folds=np.repeat(np.arange(10), 600))
    np.testing.assert_array_equal(explicit.fold_accuracies, r.fold_accuracies)


@pytest.mark.parametrize("n", [40, 57, 63])
def test_matches_bruteforce_reference(n):
    for seed in range(15):
        rng = np.random.default_rng((n, seed))
        y = rng.random(n) < 0.5
        s = np.round(rng.normal(y * 0.6, 0.5), 1)  # coarse rounding -> many ties
        r = kfold_verification(s, y, folds=10)
        accs, thrs = ref_kfold(s, y, 10)
        assert r.fold_thresholds.tolist() == thrs
        assert r.fold_accuracies.tolist() == accs
        grid = np.arange(-1.0, 1.5, 0.05)
        rg = kfold_verification(s, y, folds=10, thresholds=grid)
        accs_g, thrs_g = ref_kfold(s, y, 10, grid=grid.tolist())
        assert rg.fold_thresholds.tolist() == thrs_g
        assert rg.fold_accuracies.tolist() == accs_g


# -------------------------------------------------------------------- TAR@FAR
def test_tar_at_far_hand_example():
    imp = [0.9, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0, -0.1]
    gen = [0.95, 0.8, 0.65, 0.55, 0.35]
    s = np.array(gen + imp)
    y = np.array([True] * 5 + [False] * 10)
    tars, thrs = tar_at_far(s, y, (0.05, 0.1, 0.3, 1.0))
    # FAR 0.05: k=0 impostors allowed -> t=.9 -> {.95} ; FAR .1: k=1 -> t=.7 -> {.95,.8}
    # FAR .3: k=3 -> t=.5 -> 4 genuine ; FAR 1: accept all.
    assert tars == {0.05: 0.2, 0.1: 0.4, 0.3: 0.8, 1.0: 1.0}
    assert thrs[0.05] == 0.9 and thrs[0.1] == 0.7 and thrs[0.3] == 0.5
    # Ties among impostors: FAR 0.25 of 4 impostors allows 1, but three tie at .5,
    # so the threshold stays at .5 (achieved FAR 0) and TAR counts genuine > .5.
    tars, _ = tar_at_far([0.6, 0.5, 0.5, 0.5, 0.5, 0.1], [1, 1, 0, 0, 0, 0], (0.25,))
    assert tars == {0.25: 0.5}


def test_tar_at_far_matches_bruteforce():
    rng = np.random.default_rng(5)
    y = rng.random(500) < 0.4
    s = np.round(rng.normal(y * 1.0, 1.0), 2)
    for far in (0.001, 0.01, 0.05, 0.2):
        best = 0.0
        for t in np.concatenate([[-np.inf], np.unique(s)]):
            if np.mean(s[~y] > t) <= far:
                best = max(best, np.mean(s[y] > t))
        assert tar_at_far(s, y, (far,))[0][far] == best


def test_roc_and_auc():
    rng = np.random.default_rng(2)
    y = rng.random(300) < 0.5
    s = np.round(rng.normal(y * 0.7, 1.0), 1)
    r = kfold_verification(s, y)
    g, i = s[y], s[~y]
    mw = np.mean((g[:, None] > i[None]) + 0.5 * (g[:, None] == i[None]))
    assert r.auc == pytest.approx(mw, abs=1e-12)
    assert r.roc_fpr[0] == 0 and r.roc_tpr[0] == 0 and r.roc_fpr[-1] == 1 and r.roc_tpr[-1] == 1
    assert np.all(np.diff(r.roc_fpr) >= 0) and np.all(np.diff(r.roc_thresholds) < 0)


# ---------------------------------------------------------------- embeddings
def toy_embed(x):
    """[mean(left half) - mean(right half), 1]: antisymmetric under a horizontal flip."""
    w = x.shape[2] // 2
    d = x[:, :, :w].mean(axis=(1, 2, 3)) - x[:, :, w:].mean(axis=(1, 2, 3))
    return np.stack([d, np.ones_like(d)], 1)


def test_flip_embedding_sum():
    img = np.zeros((3, 4, 6, 3), np.uint8)
    img[:, :, :3] = 255  # left half white, right half black
    d = (255 - 127.5) / 128 - (0 - 127.5) / 128
    no_flip = embed_images(toy_embed, img, flip=False, batch_size=2)
    np.testing.assert_allclose(no_flip, np.tile([d, 1.0], (3, 1)) / np.hypot(d, 1.0))
    # flip: f(x) + f(flip x) = [d - d, 2] -> normalised [0, 1]
    np.testing.assert_allclose(embed_images(toy_embed, img, flip=True), np.tile([0.0, 1.0], (3, 1)))


def test_embed_keras_model_and_embedder_attribute():
    import keras

    rng = np.random.default_rng(0)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(5)])
    x = rng.integers(0, 256, (7, 8, 8, 3), dtype=np.uint8)
    e = embed_images(model, x, batch_size=3, flip=False)
    ref = model.predict((x.astype(np.float32) - 127.5) / 128, verbose=0).astype(np.float64)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(e, ref, atol=1e-5)

    class Recognizer:  # FaceRecognizer-like: embeddings via `.embedder`
        embedder = staticmethod(toy_embed)

        def __call__(self, x):
            raise AssertionError("must use .embedder")

    assert embed_images(Recognizer(), x).shape == (7, 2)


def test_pair_scores():
    a = np.array([[1.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    b = np.array([[0.0, 2.0], [6.0, 8.0], [1.0, 1.0]])
    np.testing.assert_allclose(pair_scores(a, b), [0.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="emb_a"):
        pair_scores(a, b[:2])


def test_evaluate_pairs_end_to_end():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    b = a.copy()
    b[20:] = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    y = np.repeat([True, False], 20)
    embed = lambda x: x.reshape(len(x), -1)  # noqa: E731
    r = evaluate_pairs(embed, a, b, y, flip=False, batch_size=16, folds=4)
    manual = kfold_verification(pair_scores(embed_images(embed, a, flip=False),
                                            embed_images(embed, b, flip=False)), y, folds=4)
    np.testing.assert_array_equal(r.fold_accuracies, manual.fold_accuracies)
    assert r.accuracy_mean == 1.0 and r.num_pairs == 40
    table = format_table({"pixels": r, "again": manual})
    assert "pixels" in table and "again" in table and "100.00" in table and "TAR@FAR=0.001" in table
    assert set(r.to_dict()) >= {"accuracy_mean", "accuracy_std", "fold_accuracies", "tar_at_far"}


# ------------------------------------------------------------------- validation
def test_input_validation():
    y = lfw_labels(40)
    s = np.linspace(0, 1, 40)
    with pytest.raises(ValueError, match="scores"):
        kfold_verification(np.where(np.arange(40) == 3, np.nan, s), y)
    with pytest.raises(ValueError, match="is_same"):
        kfold_verification(s, y[:-1])
    with pytest.raises(ValueError, match="is_same"):
        kfold_verification(s, np.full(40, 2))
    with pytest.raises(ValueError, match="folds"):
        kfold_verification(s, y, folds=1)
    with pytest.raises(ValueError, match="folds"):
        kfold_verification(s, y, folds=np.zeros(39, int))
    with pytest.raises(ValueError, match="thresholds"):
        kfold_verification(s, y, thresholds=[0.1, np.nan])
    with pytest.raises(ValueError, match="far_targets"):
        tar_at_far(s, y, (0.0,))
    with pytest.raises(ValueError, match="genuine and impostor"):
        tar_at_far(s, np.ones(40, bool))
    with pytest.raises(ValueError, match="uint8"):
        embed_images(toy_embed, np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="batch_size"):
        embed_images(toy_embed, np.zeros((2, 4, 4, 3), np.uint8), batch_size=0)
    with pytest.raises(ValueError, match="results"):
        format_table({})
