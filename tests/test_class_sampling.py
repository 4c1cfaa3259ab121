"""Partial FC's class sampler (`keras_facemargin.layers.class_sampling`): positives kept, K distinct
classes, negatives uniform (chi-square, with NumPy's own without-replacement sampler as the control),
the O(C) exact path and the fallback, the per-shard use of `training.class_sharding`, and the same
sets on TF, JAX and torch.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from keras_facemargin.layers.class_sampling import num_draws, sample_classes
from testing import repo_env, result_of

LABELS = np.array([3, 3, 0, 511, 250, 77, 77, 77], "int32")  # 5 distinct positives
POSITIVES = np.unique(LABELS)


def draw_sets(C, K, steps, draws=None, labels=LABELS, seed=5):
    fn = tf.function(lambda t: sample_classes(labels, t, C, K, seed=seed, draws=draws))
    return np.stack([fn(tf.constant(t))[0].numpy() for t in range(steps)])


def check_sets(sets, C, K, labels=LABELS):
    assert sets.shape[1] == K and sets.dtype == np.int32
    assert np.all(np.diff(sets, axis=1) > 0)  # sorted, so K distinct classes
    assert sets.min() >= 0 and sets.max() < C
    assert np.all(np.isin(np.unique(labels), sets))  # every positive, every step


def chi_square_p(sets, C, K, positives):
    """p-value of the inclusion counts of the negatives against uniform sampling without replacement.

    Each step holds n = K - |P| of the C' negatives: a negative is in a step's set with p = n / C'
    (counts Binomial(T, p)), and within a step the counts are tied (sum n): the statistic
    sum (O - E)^2 / (E (1 - p)) is chi-square with C' - 1 degrees of freedom.
    """
    negatives = np.setdiff1d(np.arange(C), positives)
    counts = np.bincount(sets.ravel(), minlength=C)[negatives]
    T, n = len(sets), K - len(positives)
    assert counts.sum() == T * n  # exactly K - |P| negatives per step
    p = n / len(negatives)
    expected = T * p
    statistic = np.sum((counts - expected) ** 2) / (expected * (1 - p))
    return stats.chi2.sf(statistic, len(negatives) - 1)


@pytest.mark.parametrize("draws", [None, 0], ids=["candidates", "exact"])
def test_positives_kept_k_distinct_and_negatives_uniform_against_numpy(draws):
    C, K, T = 512, 64, 600
    assert num_draws(C, K) > 0  # the default path here is the candidate sampler
    sets = draw_sets(C, K, T, draws)
    check_sets(sets, C, K)
    ours = chi_square_p(sets, C, K, POSITIVES)
    rng = np.random.default_rng(0)
    negatives = np.setdiff1d(np.arange(C), POSITIVES)
    control = np.stack([np.sort(np.concatenate([POSITIVES, rng.choice(negatives, K - 5, replace=False)]))
                        for _ in range(T)])
    numpy_p = chi_square_p(control, C, K, POSITIVES)
    assert numpy_p > 1e-4  # the test's own calibration: NumPy's sampler passes it
    assert ours > 1e-4, (ours, numpy_p)
    # Pairs: two classes together as often as without replacement (p * (n-1)/(C'-1)).
    n, c = K - 5, C - 5
    together = np.mean([np.isin([1, 2], s).all() for s in sets])
    expected = n / c * (n - 1) / (c - 1)
    assert abs(together - expected) < 5 * np.sqrt(expected / T)
    # Deterministic in (labels, step, seed); another seed, another set.
    again = draw_sets(C, K, 3, draws)
    np.testing.assert_array_equal(again, sets[:3])
    assert not np.array_equal(draw_sets(C, K, 3, draws, seed=6), sets[:3])


def test_large_rate_uses_the_exact_sampler_and_stays_uniform():
    C, K, T = 600, 400, 400
    assert num_draws(C, K) == 0
    sets = draw_sets(C, K, T)
    check_sets(sets, C, K)
    assert chi_square_p(sets, C, K, POSITIVES) > 1e-4


def test_too_few_draws_fall_back_to_the_exact_sampler():
    C, K = 512, 64
    fallback = draw_sets(C, K, 5, draws=8)  # 8 draws can never hold 59 negatives
    np.testing.assert_array_equal(fallback, draw_sets(C, K, 5, draws=0))
    check_sets(fallback, C, K)


def test_every_class_positive_or_budget_overflow():
    labels = np.arange(40, dtype="int32")[::-1].copy()
    for draws in (None, 0):
        classes, count = sample_classes(labels, 3, 40, 40, draws=draws)
        np.testing.assert_array_equal(classes.numpy(), np.arange(40))
        classes, count = sample_classes(labels, 3, 100, 10, draws=draws)  # 40 positives > K = 10
        assert int(count) == 40 and len(np.unique(classes.numpy())) == 10
        assert np.all(np.isin(classes.numpy(), labels))
    classes, count = sample_classes(np.array([7], "int32"), 0, 2_000_000, 20_000)
    check_sets(classes.numpy()[None], 2_000_000, 20_000, labels=[7])
    assert int(count) == 1


def test_default_draws_are_about_k_over_log():
    assert num_draws(2_000_000, 20_000) < 1.02 * 20_000 + 1200
    assert num_draws(1_000_000, 100_000) < 1.09 * 100_000  # -ln(0.9) = 1.054, + 8 sigma
    assert num_draws(1000, 500) == 0 and num_draws(10, 10) == 0


@pytest.mark.parametrize("rows, num_sample", [(300, 30), (50, 35)], ids=["candidates", "exact"])
def test_class_sharding_shard_sample_keeps_its_positives_and_draws_uniform_others(rows, num_sample):
    """`class_sharding._sampled_rows`: a shard [lo, lo + rows) of the global classes; the batch labels
    in it are its positives (local ids), the others are not part of its sample."""
    from keras_facemargin.training.class_sharding import _sampled_rows

    lo, T = 1000, 400
    labels = np.array([1003, 1003, 7, 1000 + rows - 1, 1020, 5000, 999], "int32")  # 3 in the shard, 3 not
    local = labels - lo
    owned_local = np.where((local >= 0) & (local < rows), local, rows).astype("int32")
    positives = np.unique(local[(local >= 0) & (local < rows)])
    assert len(positives) == 3

    def draw(owned, shard, steps):
        fn = tf.function(lambda t: _sampled_rows(owned, rows, num_sample, t, 11, shard))
        return np.stack([fn(tf.constant(t, "int64")).numpy() for t in range(steps)])

    sets = draw(owned_local, 1, T)
    check_sets(sets, rows, num_sample, labels=positives)  # sorted, K distinct rows of the shard, positives kept
    assert chi_square_p(sets, rows, num_sample, positives) > 1e-4
    none_here = draw(np.full(7, rows, "int32"), 1, T)  # no label in the shard: K uniform rows
    check_sets(none_here, rows, num_sample, labels=[])
    assert chi_square_p(none_here, rows, num_sample, []) > 1e-4
    np.testing.assert_array_equal(draw(owned_local, 1, 3), sets[:3])  # a function of (labels, step, seed, shard)
    assert not np.array_equal(draw(owned_local, 0, 3), sets[:3])
    too_many = np.arange(num_sample + 1, dtype="int32")
    with pytest.raises(tf.errors.InvalidArgumentError, match="more distinct classes than its Partial FC sample"):
        _sampled_rows(too_many, rows, num_sample, 0, 11, 1)


_WORKER = """
import json, numpy as np
from keras_facemargin.layers.class_sampling import sample_classes
labels = np.array([3, 3, 0, 511, 250, 77], "int32")
out = [np.asarray(sample_classes(labels, t, 512, 64, seed=5, draws=d)[0]).tolist()
       for t in range(3) for d in (None, 0, 8)]
print("RESULT " + json.dumps(out))
"""


@pytest.mark.backend
@pytest.mark.slow
def test_same_sets_on_jax_and_torch():
    ref = [sample_classes(LABELS[:6], t, 512, 64, seed=5, draws=d)[0].numpy().tolist()
           for t in range(3) for d in (None, 0, 8)]
    for backend in ("jax", "torch"):
        proc = subprocess.run([sys.executable, "-c", _WORKER], capture_output=True, text=True, timeout=300,
                              env=repo_env(KERAS_BACKEND=backend))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert result_of(proc.stdout, proc.stderr) == ref, backend
    assert json.dumps(ref)
