"""The package's "floor" TAR@FAR / TPIR@FPIR operating point, shared by the evaluators.

For a target FAR ``f`` over ``n`` impostor (non-mated) scores, the threshold is the smallest
``t`` with ``#{impostor > t} / n <= f``: the ``(k+1)``-th largest impostor score with
``k = floor(f * n)`` (a ``1e-12`` relative slack absorbs ``f * n`` landing a hair below an
integer), or a value below every score when ``k >= n``. Accepting ``score > t`` then gives the
ROC point with the largest FAR not exceeding the target.
"""

from __future__ import annotations

import numpy as np


def floor_far_rank(far, n) -> int:
    """``k = floor(far * n)``: the 0-based rank (descending) of the threshold impostor score."""
    return int(np.floor(float(far) * int(n) * (1 + 1e-12)))


def floor_threshold(desc_scores, far, n=None, below=-np.inf):
    """Threshold of the floor convention.

    Args:
        desc_scores: impostor scores sorted in descending order; may hold only the top ones
            when ``n`` (the total number of impostors) is given, as long as it holds the
            ``floor_far_rank(far, n) + 1`` largest.
        far: target in ``(0, 1]``.
        n: number of impostor scores (default ``len(desc_scores)``).
        below: value returned when ``k >= n`` (every impostor may be accepted).

    Returns:
        ``desc_scores[k]`` or ``below``.
    """
    n = len(desc_scores) if n is None else int(n)
    k = floor_far_rank(far, n)
    return desc_scores[k] if k < n else below
