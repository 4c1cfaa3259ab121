"""Partial FC's per-step class sample: every positive, then uniformly random negatives, in O(K).

`sample_classes` returns the K sorted class ids of one step: the distinct classes of the batch (the
positives, always kept), then `K - |P|` negatives drawn uniformly without replacement from the other
classes. It is a function of (labels, step, seed) only, in `keras.ops` integer arithmetic (no RNG
state), so every replica, worker, resumed run and backend draws the same set.

Two exact algorithms, both with static shapes (TF graphs, XLA, jitted JAX, torch):

- candidates, O(K log K), used when `K` is at most about 0.4 C: `M ~ -C ln(1 - K/C)` plus a margin
  (1.06 K at K = 0.01 C, 1.08 K at K = 0.1 C, for C = 1-2M) pseudo-random draws in [0, C) (a bijective 32-bit hash of the draw
  index, with rejection of the top `2^31 mod C` values so that each class is exactly equally
  likely), ordered by a second per-step bijective hash of the class id, so that repeats are
  adjacent and the distinct classes come in random order; the first `K - |P|` distinct draws that
  are not positives are kept. No array of length C is ever built. If the draws held fewer than K
  distinct classes (the margin is 8 standard deviations: about 1e-15), the step falls back to:
- exact, O(C): a bijective per-step hash key for every class (keys are distinct, so no ties), and
  the `K - |P|` largest keys among the negatives found by a two-pass 16-bit radix select (two
  histograms over C, no sort, no `top_k`), compacted in class order with a cumulative sum.

The previous sampler (`top_k` over C float keys) grew faster than C on the TF CPU
(`benchmarks/partial_fc.py --sampling-only` times the three).
"""

import math

from keras import ops

_RADIX = 1 << 16


def _i32(value):
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _lsr(x, bits):
    """Logical right shift of int32 bit patterns."""
    return ops.bitwise_and(ops.right_shift(x, bits), (1 << (32 - bits)) - 1)


def _fmix32(x):
    """MurmurHash3's 32-bit finaliser on int32 bit patterns (wrap-around multiplies), a bijection."""
    x = ops.bitwise_xor(x, _lsr(x, 16))
    x = ops.multiply(x, ops.convert_to_tensor(_i32(0x85EBCA6B), "int32"))
    x = ops.bitwise_xor(x, _lsr(x, 13))
    x = ops.multiply(x, ops.convert_to_tensor(_i32(0xC2B2AE35), "int32"))
    return ops.bitwise_xor(x, _lsr(x, 16))


def _fmix32_int(x):
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & 0xFFFFFFFF
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & 0xFFFFFFFF
    return x ^ (x >> 16)


def _stream(step, seed, stream):
    """Two int32 words of the per-(step, seed, stream) hash state."""
    salt = _i32(_fmix32_int(seed * 4 + stream + 0x632BE5AB * stream))
    h1 = _fmix32(ops.bitwise_xor(ops.multiply(step, _i32(0x9E3779B1)), salt))
    h2 = _fmix32(ops.bitwise_xor(h1, _i32(0x5BD1E995)))
    return h1, h2


def _bijective_hash(x, words):
    """A per-step bijection of int32 bit patterns: distinct x give distinct keys."""
    h1, h2 = words
    return _fmix32(ops.bitwise_xor(_fmix32(x + h1), h2))


def num_draws(num_classes, num_sample):
    """Draws M of the candidate sampler, or 0 where the exact O(C) sampler is used (K > ~0.4 C).

    M is such that M uniform draws over C classes hold at least `K + 8 sqrt(K) + 16` distinct
    classes on average (also after the rejected draws), so that fewer than K is an 8-sigma event.
    """
    target = num_sample + 8 * math.sqrt(num_sample) + 16
    if target >= num_classes:
        return 0
    draws = -num_classes * math.log1p(-target / num_classes)
    draws = math.ceil(draws / (1 - num_classes / 2**31)) + 1
    return draws if 2 * draws <= num_classes else 0


def _positives(labels):
    """The sorted labels (N,) and the flags of their first occurrences (distinct classes)."""
    labels = ops.sort(ops.cast(ops.reshape(labels, (-1,)), "int32"))
    first = ops.concatenate([ops.ones((1,), "bool"), ops.not_equal(labels[1:], labels[:-1])])
    return labels, first


def _first_kept(values, keep, num_sample):
    """The first `num_sample` entries of `values` whose `keep` is set (in order), and their count."""
    count = ops.cumsum(ops.cast(keep, "int32"))
    index = ops.searchsorted(count, ops.arange(1, num_sample + 1, dtype="int32"), side="left")
    index = ops.minimum(ops.cast(index, "int32"), ops.shape(values)[0] - 1)
    return ops.take(values, index), count[-1]


def _candidates(labels, first, step, seed, num_classes, num_sample, draws):
    """(classes, enough): K classes from M draws, and whether the draws held K distinct classes."""
    index = ops.arange(draws, dtype="int32")
    raw = ops.bitwise_and(_bijective_hash(index, _stream(step, seed, 1)), 0x7FFFFFFF)
    cand = ops.mod(raw, num_classes)
    limit = (2**31 // num_classes) * num_classes
    if limit < 2**31:  # a rejected draw becomes the smallest positive, never kept as a negative
        cand = ops.where(raw < limit, cand, labels[0])
    order = ops.argsort(_bijective_hash(cand, _stream(step, seed, 2)))  # repeats adjacent, random order
    cand = ops.take(cand, order)
    distinct = ops.concatenate([ops.ones((1,), "bool"), ops.not_equal(cand[1:], cand[:-1])])
    where = ops.minimum(ops.cast(ops.searchsorted(labels, cand, side="left"), "int32"), ops.shape(labels)[0] - 1)
    negative = ops.not_equal(ops.take(labels, where), cand)
    values = ops.concatenate([labels, cand])
    keep = ops.concatenate([first, ops.logical_and(distinct, negative)])
    picked, total = _first_kept(values, keep, num_sample)
    return ops.sort(picked), total >= num_sample


def _radix_select_from_top(bucket, count):
    """The bucket b holding the `count`-th largest entry of the histogram of `bucket` (values in
    [0, 2^16], 2^16 = not counted), and how many of the wanted entries lie in it."""
    hist = ops.segment_sum(ops.ones_like(bucket), bucket, num_segments=_RADIX + 1)[:_RADIX]
    at_or_above = ops.flip(ops.cumsum(ops.flip(hist)))
    b = ops.sum(ops.cast(at_or_above >= count, "int32")) - 1
    return b, count - (ops.take(at_or_above, b) - ops.take(hist, b))


def _exact(labels, first, step, seed, num_classes, num_sample):
    """K classes in O(C): the positives and the K - |P| negatives of the largest per-step keys."""
    keys = _bijective_hash(ops.arange(num_classes, dtype="int32"), _stream(step, seed, 3))
    positive = ops.scatter(ops.expand_dims(labels, -1), ops.ones_like(labels), (num_classes,)) > 0
    need = ops.maximum(num_sample - ops.sum(ops.cast(first, "int32")), 0)
    high = ops.right_shift(keys, 16) + (_RADIX // 2)  # order-preserving 16-bit halves of the key
    low = ops.bitwise_and(keys, _RADIX - 1)
    b, need_in_b = _radix_select_from_top(ops.where(positive, _RADIX, high), need)
    in_b = ops.logical_and(ops.equal(high, b), ops.logical_not(positive))
    lo, _ = _radix_select_from_top(ops.where(in_b, low, _RADIX), need_in_b)
    lo = ops.where(need_in_b > 0, lo, _RADIX)  # none of bucket b wanted
    chosen = positive | (ops.logical_not(positive) & (high > b)) | (in_b & (low >= lo))
    classes, _ = _first_kept(ops.arange(num_classes, dtype="int32"), chosen, num_sample)
    return classes


def sample_classes(labels, step, num_classes, num_sample, seed=0, draws=None):
    """The sampled class set of one step: every class in `labels`, then uniformly random others.

    Each step's set depends only on the labels, the step counter and the
    seed (hashes in `keras.ops` integer arithmetic, no RNG state): identical
    on every replica and worker, after a resume and on every backend. See the
    module docstring for the two algorithms.

    Args:
        labels: int class ids of the whole global batch, (N,), N >= 1.
        step: int32 scalar step counter.
        num_classes: C.
        num_sample: K, the size of the set.
        seed: Python int.
        draws: None (automatic: `num_draws(C, K)`), 0 (the exact O(C) sampler), or the number of
            candidate draws M (tests; the exact sampler runs where they hold fewer than K classes).

    Returns:
        (classes, num_positive): the sorted int32 class ids (K,), all distinct, and the number of
        distinct classes in `labels` (more than K means some were dropped).
    """
    step = ops.cast(step, "int32")
    labels, first = _positives(labels)
    num_positive = ops.sum(ops.cast(first, "int32"))
    if draws is None:
        draws = num_draws(num_classes, num_sample)
    if not draws:
        return _exact(labels, first, step, seed, num_classes, num_sample), num_positive
    classes, enough = _candidates(labels, first, step, seed, num_classes, num_sample, draws)
    classes = ops.cond(enough, lambda: classes,
                       lambda: _exact(labels, first, step, seed, num_classes, num_sample))
    return classes, num_positive
