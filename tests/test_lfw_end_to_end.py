"""End-to-end LFW View 2 (6000 pairs, 10 folds) from the real image folder with a tiny model."""

import cv2
import numpy as np
import pytest

from keras_facemargin.backbones import IResNet
from keras_facemargin.evaluation import embed_images
from keras_facemargin.evaluation.bin_sets import evaluate_pair_set, find_verification_sets, load_verification_set


@pytest.fixture(scope="module")
def lfw_root(data_dir):
    root = data_dir / "lfw"
    if not (root / "pairs.txt").is_file():
        pytest.skip(f"LFW not found at {root}")
    return root


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

    model = IResNet(depth=18, image_shape=(32, 32, 3), embedding_dim=16, stage_blocks=(1, 1, 1, 1),
                    stage_filters=(8, 8, 16, 16))
    r = evaluate_pair_set(model, ps, flip=True, batch_size=256)
    assert r.num_pairs == 6000 and r.fold_accuracies.shape == (10,)
    assert 0.4 <= r.accuracy_mean <= 1.0
    assert set(r.tar_at_far) == {1e-3, 1e-2}

    # embeddings computed per pair side (materialised arrays) agree for files shared between sides
    a, b, _ = ps.pair_arrays()
    ea = embed_images(model, a[:600], batch_size=200)
    eb = embed_images(model, b[:600], batch_size=200)
    shared = [(i, j) for i in range(600) for j in np.flatnonzero(ps.index_b[:600] == ps.index_a[i])]
    assert shared, "fold 1 has matched pairs sharing a file on both sides"
    for i, j in shared:
        np.testing.assert_allclose(ea[i], eb[j], atol=1e-5)
