"""Independent float64 NumPy references of the loss-zoo heads, from the papers' equations.

Used only by tests/test_loss_zoo.py. Each function follows the cited equation
(and, where the paper leaves a detail open, the official code named in the
layer's docstring); none reuses the layers' code or their tricks (no
Chebyshev polynomials, no straight-through clips).
"""

import numpy as np

from numpy_reference import cosines, l2n  # noqa: F401  (re-exported for the tests)


def norms(x):
    return np.linalg.norm(np.asarray(x, np.float64), axis=-1)


def replace_target(cos, labels, target_values):
    out = np.array(cos, np.float64, copy=True)
    out[np.arange(len(labels)), labels] = target_values
    return out


def target_of(cos, labels):
    return cos[np.arange(len(labels)), labels]


# --- Softmax (ArcFace eq. 1) ---------------------------------------------------
def softmax_logits(x, w, b):
    return np.asarray(x, np.float64) @ np.asarray(w, np.float64) + b


# --- SphereFace (Liu et al. 2017, eq. 7) and the official annealing -------------
def sphere_psi(cos_y, m):
    theta = np.arccos(np.clip(cos_y, -1, 1))
    k = np.minimum(np.floor(m * theta / np.pi), m - 1)
    return (-1.0) ** k * np.cos(m * theta) - 2 * k


def sphere_logits(x, w, labels, m=4, lam=0.0):
    r = norms(x)[:, None]
    cos = cosines(x, w)
    cy = target_of(cos, labels)
    return r * replace_target(cos, labels, (lam * cy + sphere_psi(cy, m)) / (1 + lam))


def sphere_lambda_schedule(n_iters, base=1000.0, gamma=0.12, power=1.0, lambda_min=5.0):
    """Caffe: iter_ += 1, then lambda = max(lambda_min, base (1 + gamma iter)^-power)."""
    out, it = [], 0
    for _ in range(n_iters):
        it += 1
        out.append(max(lambda_min, base * (1 + gamma * it) ** (-power)))
    return out


# --- CurricularFace (Huang et al. 2020, eq. 8-10) ------------------------------
def curricular_logits(x, w, labels, t, m=0.5, s=64.0, alpha=0.01, training=True):
    """Returns (logits, t_after). t is updated first (Algorithm 1 / official code)."""
    cos = cosines(x, w)
    cy = target_of(cos, labels)
    theta = np.arccos(cy)
    phi = np.cos(theta + m)
    target = np.where(theta + m <= np.pi, phi, cy - m * np.sin(m))
    if training:
        t = alpha * cy.mean() + (1 - alpha) * t
    out = np.where(cos > phi[:, None], cos * (t + cos), cos)
    return s * replace_target(out, labels, target), t


# --- MagFace (Meng et al. 2021, eq. 3-5) ----------------------------------------
def magface_logits_and_reg(x, w, labels, s=64.0, l_a=10.0, u_a=110.0, l_m=0.45, u_m=0.8, lambda_g=35.0, easy=True):
    a = np.clip(norms(x), l_a, u_a)
    m = (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m
    cos = _cos_zero_safe(x, w)
    cy = target_of(cos, labels)
    theta = np.arccos(cy)
    if easy:
        target = np.where(cy > 0, np.cos(theta + m), cy)
    else:
        target = np.where(theta + m <= np.pi, np.cos(theta + m), cy - m * np.sin(m))
    g = 1 / a + a / u_a**2
    return s * replace_target(cos, labels, target), lambda_g * g.mean()


def _cos_zero_safe(x, w):
    n = norms(x)[:, None]
    xn = np.where(n > 0, x / np.where(n > 0, n, 1), 0.0)
    return np.clip(xn @ l2n(np.asarray(w, np.float64), axis=0), -1, 1)


# --- AdaFace (Kim et al. 2022, eq. 9-12; official head.py) ---------------------
def adaface_logits(
    x, w, labels, mean, std, m=0.4, h=0.333, s=64.0, t_alpha=0.01, training=True, eps=1e-3, frozen_norms_of=None
):
    """Returns (logits, mean_after, std_after).

    The norms are detached in AdaFace; `frozen_norms_of` takes them from
    another x (the unperturbed one, for finite differences).
    """
    n = np.clip(norms(x if frozen_norms_of is None else frozen_norms_of), 0.001, 100)
    if training:
        mean = t_alpha * n.mean() + (1 - t_alpha) * mean
        std = t_alpha * (n.std(ddof=1) if len(n) > 1 else 0.0) + (1 - t_alpha) * std
    g = np.clip((n - mean) / (std + eps) * h, -1, 1)
    cos = np.clip(_cos_zero_safe(x, w), -1 + eps, 1 - eps)
    theta = np.arccos(target_of(cos, labels))
    theta_m = np.clip(theta - m * g, eps, np.pi - eps)
    target = np.cos(theta_m) - (m + m * g)
    return s * replace_target(cos, labels, target), mean, std


# --- ExpFace, X2-Softmax, LDAM: target functions --------------------------------
def expface_target(cos_y, m=0.7):
    return np.cos(np.pi * (np.arccos(cos_y) / np.pi) ** m)


def x2softmax_target(cos_y, a=-0.9, h=0.0, k=0.65):
    return a * (np.arccos(cos_y) - h) ** 2 + k


def ldam_margins(counts, max_m=0.5):
    d = np.asarray(counts, np.float64) ** -0.25
    return d * max_m / d.max()


# --- ArcFace ablations (eq. 5-7) --------------------------------------------------
def intra_extra(x, w, labels):
    return np.mean(np.arccos(target_of(cosines(x, w), labels))) / np.pi


def inter_extra(w, labels):
    wn = l2n(np.asarray(w, np.float64), axis=0)
    n = wn.shape[1]
    total = 0.0
    for y in labels:
        total += sum(np.arccos(np.clip(wn[:, y] @ wn[:, j], -1, 1)) for j in range(n) if j != y)
    return -total / len(labels) / (np.pi * (n - 1))


def angular_triplet(x, labels, alpha=0.35):
    xn = l2n(np.asarray(x, np.float64))
    losses = []
    for i in range(len(labels)):
        for p in range(len(labels)):
            for q in range(len(labels)):
                if p != i and labels[p] == labels[i] and labels[q] != labels[i]:
                    ap = np.arccos(np.clip(xn[i] @ xn[p], -1, 1))
                    an = np.arccos(np.clip(xn[i] @ xn[q], -1, 1))
                    losses.append(max(0.0, ap + alpha - an))
    return float(np.mean(losses)) if losses else 0.0


# --- Center loss (Wen et al. 2016, eq. 2-4) ---------------------------------------
def center_loss_and_update(x, labels, centers, lam=0.003, alpha=0.5):
    x = np.asarray(x, np.float64)
    c = np.asarray(centers, np.float64)
    loss = lam * 0.5 * np.mean([np.sum((x[i] - c[y]) ** 2) for i, y in enumerate(labels)])
    new = c.copy()
    for j in range(len(c)):
        idx = [i for i, y in enumerate(labels) if y == j]
        delta = sum((c[j] - x[i] for i in idx), np.zeros(c.shape[1])) / (1 + len(idx))
        new[j] = c[j] - alpha * delta
    return loss, new


def central_difference(f, z, h=1e-6):
    g = np.zeros_like(z)
    for idx in np.ndindex(z.shape):
        e = np.zeros_like(z)
        e[idx] = h
        g[idx] = (f(z + e) - f(z - e)) / (2 * h)
    return g

