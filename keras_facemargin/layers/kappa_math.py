"""KappaFace formulas as pure functions (Oinar, Le & Woo, IEEE Access 2023).

Every function takes and returns tensors (NumPy arrays work too) and is written
in `keras.ops`, so the same code runs on any Keras backend. Equation numbers
refer to the IEEE Access version of the paper (arXiv:2201.07394v2).

Pipeline (run once per epoch by `KappaUpdater`)::

    r      = mean_resultant_length(feature_sums, counts)       # eq. 6
    kappa  = vmf_concentration(r, dim)                         # eq. 3
    k_std  = standardize(kappa)                                # eq. 8-10
    w_k    = concentration_weight(k_std, temperature)          # eq. 11
    w_p    = population_weight(class_counts)                   # eq. 12
    psi    = mix_weights(w_k, w_p, gamma)                      # eq. 13
    margin = psi * m0                                          # eq. 14
"""

import math

from keras import ops

# r is clipped below 1 - R_EPS: a class whose features all coincide (for example
# a class with a single image) has r == 1 and an infinite concentration.
R_EPS = 1e-6


def mean_resultant_length(feature_sums, counts):
    """Mean resultant length `r_c = ||sum_i z_i|| / n_c` (eq. 6).

    Args:
        feature_sums: (C, d) per-class sums of unit-norm features.
        counts: (C,) number of features summed per class. Classes with a zero
            count get r = 0 (they are marked invalid by `vmf_concentration`'s
            caller through `counts`).

    Returns:
        (C,) float tensor in [0, 1].
    """
    feature_sums = ops.convert_to_tensor(feature_sums, "float32")
    counts = ops.cast(ops.convert_to_tensor(counts), "float32")
    norms = ops.sqrt(ops.sum(ops.square(feature_sums), axis=-1))
    return ops.where(counts > 0, norms / ops.maximum(counts, 1.0), 0.0)


def vmf_concentration(r, dim):
    """Approximate vMF concentration `kappa = r (d - r^2) / (1 - r^2)` (eq. 3).

    This is the closed-form estimate of Banerjee et al. (JMLR 2005) that the
    paper uses. A saturated class (r >= 1 - 1e-6, e.g. one image) would get an
    infinite kappa; as in the official code, such classes take the largest
    finite kappa of the other classes (see `saturated_to_max`).

    Args:
        r: (C,) mean resultant lengths.
        dim: feature dimension d.
    """
    r = ops.clip(ops.convert_to_tensor(r, "float32"), 0.0, 1.0 - R_EPS)
    return r * (float(dim) - ops.square(r)) / (1.0 - ops.square(r))


def saturated_to_max(kappa, r, valid=None):
    """Replace kappa of saturated classes (r >= 1 - 1e-6) by the max other kappa.

    Args:
        kappa: (C,) concentrations from `vmf_concentration`.
        r: (C,) mean resultant lengths they came from.
        valid: optional (C,) bool mask of classes that were observed; invalid
            classes are ignored when taking the maximum.
    """
    kappa = ops.convert_to_tensor(kappa, "float32")
    r = ops.convert_to_tensor(r, "float32")
    saturated = r >= 1.0 - R_EPS
    usable = ops.logical_not(saturated)
    if valid is not None:
        usable = ops.logical_and(usable, valid)
    any_usable = ops.any(usable)
    finite_max = ops.max(ops.where(usable, kappa, -1.0))
    replacement = ops.where(any_usable, finite_max, kappa)
    return ops.where(saturated, replacement, kappa)


def standardize(kappa, valid=None, epsilon=1e-12):
    """Standardise `(kappa - mean) / std` over classes (eq. 8-10).

    The population standard deviation (ddof=0) is used; the official PyTorch
    code uses `torch.std` (ddof=1): the difference is a factor
    sqrt((C-1)/C), negligible for thousands of classes.

    Args:
        kappa: (C,) concentrations.
        valid: optional (C,) bool mask; statistics use only valid classes and
            invalid classes get 0 (the mean).
        epsilon: guards a zero standard deviation (all kappa equal -> all 0).
    """
    kappa = ops.convert_to_tensor(kappa, "float32")
    if valid is None:
        valid = ops.ones_like(kappa, dtype="bool")
    w = ops.cast(valid, "float32")
    n = ops.maximum(ops.sum(w), 1.0)
    mean = ops.sum(kappa * w) / n
    var = ops.sum(ops.square(kappa - mean) * w) / n
    std = ops.sqrt(var)
    z = ops.where(std > epsilon, (kappa - mean) / ops.maximum(std, epsilon), 0.0)
    return ops.where(valid, z, 0.0)


def concentration_weight(kappa_std, temperature=0.4):
    """Concentration weight `w_kappa = 1 - sigmoid(T * kappa_std)` (eq. 11).

    A tighter (more concentrated, easier) class gets a smaller weight and so a
    smaller margin.
    """
    kappa_std = ops.convert_to_tensor(kappa_std, "float32")
    return 1.0 - ops.sigmoid(temperature * kappa_std)


def population_weight(class_counts, max_count_factor=1.05):
    """Population weight `w_pop = (cos(pi * n_c / K) + 1) / 2` (eq. 12).

    `K = max_count_factor * max_c n_c`. The official code uses 1.05, so that the
    largest class keeps a small positive weight instead of exactly 0.

    Args:
        class_counts: (C,) number of training images per class.
        max_count_factor: K as a multiple of the largest class count (>= 1).
    """
    counts = ops.cast(ops.convert_to_tensor(class_counts), "float32")
    k = max_count_factor * ops.max(counts)
    return (ops.cos(math.pi * counts / k) + 1.0) / 2.0


def mix_weights(w_kappa, w_pop, gamma=0.7):
    """Margin multiplier `psi = gamma * w_kappa + (1 - gamma) * w_pop` (eq. 13)."""
    return gamma * ops.convert_to_tensor(w_kappa, "float32") + (1.0 - gamma) * ops.convert_to_tensor(
        w_pop, "float32"
    )


def kappa_margin_weights(
    feature_sums,
    counts,
    class_counts,
    dim,
    temperature=0.4,
    gamma=0.7,
    max_count_factor=1.05,
):
    """End-to-end update: per-class kappa and margin multipliers psi.

    Classes with no observed feature (count 0) get the mean kappa, i.e. a
    neutral concentration weight of 0.5.

    Args:
        feature_sums: (C, d) sums of unit-norm features observed this epoch.
        counts: (C,) number of features summed per class.
        class_counts: (C,) training images per class (population, eq. 12).
        dim: feature dimension d.
        temperature, gamma, max_count_factor: see the functions above.

    Returns:
        (kappa, psi), each (C,) float32. `psi * m0` is the class margin (eq. 14).

    Example:
        >>> kappa, psi = kappa_margin_weights(sums, seen, counts, dim=512)
    """
    valid = ops.convert_to_tensor(counts) > 0
    r = mean_resultant_length(feature_sums, counts)
    kappa = saturated_to_max(vmf_concentration(r, dim), r, valid)
    n_valid = ops.maximum(ops.sum(ops.cast(valid, "float32")), 1.0)
    mean_kappa = ops.sum(ops.where(valid, kappa, 0.0)) / n_valid
    kappa = ops.where(valid, kappa, mean_kappa)
    w_k = concentration_weight(standardize(kappa, valid), temperature)
    w_p = population_weight(class_counts, max_count_factor)
    return kappa, mix_weights(w_k, w_p, gamma)
