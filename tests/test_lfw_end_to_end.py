"""End-to-end LFW View 2 (6000 pairs, 10 folds) from the real image folder with a tiny model."""

import cv2
import numpy as np
import pytest

from keras_facemargin.backbones import IResNet
from keras_facemargin.evaluation import embed_images
from keras_facemargin.evaluation.bin_sets import evaluate_pair_set, find_verification_sets, load_verification_set


@pytest.mark.slow
def test_lfw_pipeline_is_exact(lfw_root):
    found = find_verification_sets(lfw_root.parent)
    assert found["lfw"].kind == "lfw_folder"
    ps = load_verification_set(found["lfw"], image_size=(32, 32), crop=128)
    assert ps.num_pairs == 6000
    assert np.bincount(ps.folds).tolist() == [600] * 10
    # independent parse of pairs.txt: blocks of 300 matched + 300 mismatched per fold
    lines = [ln.split() for ln in (lfw_root / "pairs.txt").read_text().splitlines()[1:] if ln.strip()]
    assert len(lines) == 6000
    exp_same = np.array([len(t) == 3 for t in lines])
    np.testing.assert_array_equal(ps.is_same, exp_same)
    assert exp_same.reshape(10, 600)[:, :300].all() and not exp_same.reshape(10, 600)[:, 300:].any()
    for i in (0, 299, 300, 5999):  # spot check decoded pixels against a direct read
        t = lines[i]
        n2, j2 = (t[0], t[2]) if len(t) == 3 else (t[2], t[3])
        img = cv2.imread(str(lfw_root / "images" / n2 / f"{n2}_{int(j2):04d}.jpg"))
        ref = cv2.resize(cv2.cvtColor(img[61:189, 61:189], cv2.COLOR_BGR2RGB), (32, 32), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(ps.images[ps.index_b[i]], ref)

    model = IResNet(depth=18, image_size=32, embedding_dim=16, stage_blocks=(1, 1, 1, 1),
                    stage_filters=(8, 8, 16, 16))
    r = evaluate_pair_set(model, ps, flip=True, batch_size=256)
    assert r.num_pairs == 6000 and r.fold_accuracies.shape == (10,)
    assert set(r.tar_at_far) == {1e-3, 1e-2}
    # Independent reference on the same pairs: scores from the bare Keras model and NumPy
    # ((x - 127.5) / 128, f(x) + f(flip x), cosine), then the 10-fold protocol written out here.
    scores = _reference_scores(model, ps)
    ref_acc, ref_thr = _reference_ten_fold(scores, exp_same)
    np.testing.assert_allclose(r.fold_thresholds, ref_thr, atol=1e-5)
    np.testing.assert_allclose(r.fold_accuracies, ref_acc, atol=1.5 / 600)  # a score within 1e-6 of a threshold
    assert r.accuracy_mean == pytest.approx(ref_acc.mean(), abs=1 / 600)
    for f in (1e-3, 1e-2):  # TAR@FAR: the smallest impostor score t with #{impostor > t} <= f * #impostor
        imp = np.sort(scores[~exp_same])
        t = min(v for v in np.r_[-np.inf, imp] if np.sum(imp > v) <= f * imp.size)
        assert r.tar_at_far[f] == pytest.approx(np.mean(scores[exp_same] > t), abs=2 / 3000)

    # embeddings computed per pair side (materialised arrays) agree for files shared between sides
    a, b, _ = ps.pair_arrays()
    ea = embed_images(model, a[:600], batch_size=200)
    eb = embed_images(model, b[:600], batch_size=200)
    shared = [(i, j) for i in range(600) for j in np.flatnonzero(ps.index_b[:600] == ps.index_a[i])]
    assert shared, "fold 1 has matched pairs sharing a file on both sides"
    for i, j in shared:
        np.testing.assert_allclose(ea[i], eb[j], atol=1e-5)


def _reference_scores(model, ps):
    """Cosine of each pair from ``model.predict`` on the normalised and the flipped images (float64)."""
    x = ((ps.images.astype(np.float64) - 127.5) / 128.0).astype("float32")
    emb = model.predict(x, batch_size=256, verbose=0) + model.predict(x[:, :, ::-1], batch_size=256, verbose=0)
    emb = emb.astype(np.float64) / np.linalg.norm(emb, axis=1, keepdims=True)
    return np.sum(emb[ps.index_a] * emb[ps.index_b], axis=1)


def _reference_ten_fold(scores, same):
    """LFW View 2: per fold, the threshold maximising accuracy of ``score > t`` on the other nine folds
    (candidates: below every score, the midpoints of consecutive distinct scores, the largest; the
    first maximiser), applied to the fold. Returns (fold accuracies, fold thresholds)."""
    folds = np.arange(scores.size) // 600
    acc, thr = np.zeros(10), np.zeros(10)
    for k in range(10):
        train, test = folds != k, folds == k
        u = np.unique(scores[train])
        cands = np.r_[np.nextafter(u[0], -np.inf), (u[:-1] + u[1:]) / 2, u[-1]]
        s, y = scores[train], same[train]
        correct = np.array([np.sum((s > c) == y) for c in cands])  # brute force, one candidate at a time
        best = cands[np.argmax(correct)]
        thr[k] = best
        acc[k] = np.mean((scores[test] > best) == same[test])
    return acc, thr
