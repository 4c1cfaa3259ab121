"""Independent NumPy implementations written from the papers' equations.

Used only by tests. Float64 throughout; no clipping tricks beyond what the
equations need (arccos of a value in [-1, 1]).
"""

import numpy as np


def l2n(x, axis=-1):
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


def cosines(x, w):
    """cos(theta_j) = <x/|x|, w_j/|w_j|> (ArcFace eq. 2), w is (d, C)."""
    return np.clip(l2n(np.asarray(x, np.float64)) @ l2n(np.asarray(w, np.float64), axis=0), -1.0, 1.0)


def arcface_target(cos_y, m):
    """cos(theta + m); insightface's cos(theta) - m sin(m) where theta + m > pi."""
    theta = np.arccos(cos_y)
    return np.where(theta + m <= np.pi, np.cos(theta + m), cos_y - m * np.sin(m))


def cosface_target(cos_y, m):
    return cos_y - m


def combined_target(cos_y, m1, m2, m3):
    """cos(m1 theta + m2) - m3 (ArcFace eq. 4), continued linearly in cos past pi."""
    theta = np.arccos(cos_y)
    theta_t = min((np.pi - m2) / m1, np.pi)
    delta = np.cos(theta_t) - (np.cos(m1 * theta_t + m2) - m3)
    return np.where(theta <= theta_t, np.cos(m1 * theta + m2) - m3, cos_y - delta)


def margin_logits(x, w, labels, target_fn, s):
    cos = cosines(x, w)
    rows = np.arange(len(labels))
    out = cos.copy()
    out[rows, labels] = target_fn(cos[rows, labels])
    return s * out


# --- KappaFace (Oinar et al. 2023) ---------------------------------------------
def kappa_reference(features, labels, class_counts, dim, T=0.4, gamma=0.7, factor=1.05):
    """kappa and psi from unit features grouped by label (eq. 3, 6, 8-13)."""
    C = len(class_counts)
    sums = np.zeros((C, dim))
    n = np.zeros(C)
    for f, y in zip(features, labels):
        sums[y] += f
        n[y] += 1
    return kappa_reference_from_sums(sums, n, class_counts, dim, T, gamma, factor)


def kappa_reference_from_sums(sums, n, class_counts, dim, T=0.4, gamma=0.7, factor=1.05):
    """kappa and psi from per-class sums ``(C, d)`` of unit features and their counts ``(C,)`` (every class seen)."""
    sums, n = np.asarray(sums, np.float64), np.asarray(n, np.float64)
    r = np.linalg.norm(sums, axis=1) / n  # eq. 6
    kappa = r * (dim - r**2) / (1 - r**2)  # eq. 3
    z = (kappa - kappa.mean()) / kappa.std()  # eq. 8-10 (population std)
    w_kappa = 1 - 1 / (1 + np.exp(-T * z))  # eq. 11
    K = factor * np.max(class_counts)
    w_pop = (np.cos(np.pi * np.asarray(class_counts, float) / K) + 1) / 2  # eq. 12
    psi = gamma * w_kappa + (1 - gamma) * w_pop  # eq. 13
    return kappa, psi, w_kappa, w_pop


def vmf_like_cluster(rng, mean_direction, n, spread):
    """Unit vectors scattered around `mean_direction` (larger spread = looser)."""
    x = mean_direction[None, :] + spread * rng.standard_normal((n, mean_direction.shape[0]))
    return l2n(x)
