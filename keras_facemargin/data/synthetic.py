"""Deterministic procedural synthetic face identities.

:class:`SyntheticFaces` is the package's embedded dataset: it needs no download
and reproduces bit-for-bit from a seed.  It is built to exhibit the two
imbalances targeted by KappaFace (Oinar et al., 2023):

* **population imbalance** -- images per identity follow a truncated power law
  between ``min_images`` and ``max_images`` (a few "head" identities with many
  images, a long tail with very few);
* **difficulty imbalance** -- each identity has a scalar ``difficulty`` in
  ``difficulty_range`` that scales its intra-class variation (in-plane rotation,
  yaw-like feature shift, scale, translation, lighting, colour cast, blur,
  noise, expression, occlusion).  Difficulty is drawn independently of the
  image count, so the two imbalances are not confounded.

Randomness streams (all ``numpy.random.default_rng`` seeded by tuples):

* identity ``c`` parameters and difficulty: ``default_rng((seed, c))``
* image ``(c, s)``: ``default_rng((seed, c, s))``
* count-to-identity assignment: ``default_rng((seed, _TAG_COUNTS))``
* verification pairs: ``default_rng((seed, _TAG_PAIRS, pair_seed))``
* pixel noise: random windows (chosen by the image stream) of a fixed bank drawn
  from ``default_rng((seed, _TAG_NOISE))`` -- much faster than fresh normals.

The tags are larger than any allowed identity index, so streams never collide.

Example::

    faces = SyntheticFaces(num_identities=200, image_size=64, seed=0)
    train_ids, test_ids = faces.split(150)
    images, labels, samples = faces.to_arrays(train_ids)
    pairs = faces.verification_pairs(600, identities=test_ids)
    img_a, img_b, is_same = faces.pair_images(pairs)
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["SyntheticFaces", "VerificationPairs"]

_MAX_IDENTITIES = 2**31 - 1
_TAG_COUNTS = 2**40 + 1
_TAG_PAIRS = 2**40 + 2
_TAG_NOISE = 2**40 + 3
_SHIFT = 4  # fractional bits for sub-pixel cv2 drawing
_ONE = 1 << _SHIFT

# RGB palettes (interpolated / jittered per identity).
_SKIN = np.array(
    [[255, 224, 196], [241, 194, 158], [224, 172, 125], [198, 134, 86],
     [160, 101, 62], [118, 72, 44], [84, 52, 34]], np.float64)
_HAIR = np.array(
    [[20, 16, 14], [60, 38, 24], [110, 70, 40], [170, 120, 60], [225, 190, 120],
     [165, 70, 35], [150, 150, 150], [230, 230, 225]], np.float64)
_IRIS = np.array(
    [[70, 40, 20], [110, 70, 35], [60, 110, 170], [80, 130, 80], [110, 120, 130],
     [30, 25, 20]], np.float64)
_LIPS = np.array([[180, 80, 80], [150, 60, 70], [200, 110, 110], [120, 50, 50]], np.float64)


@dataclass(frozen=True)
class VerificationPairs:
    """Pair list in the LFW ``pairs.txt`` layout.

    Attributes:
        spec_a: int64 ``(num_pairs, 2)`` array of ``(identity, sample)`` of the first image.
        spec_b: int64 ``(num_pairs, 2)`` array of ``(identity, sample)`` of the second image.
        is_same: bool ``(num_pairs,)``; fold ``k`` of ``num_folds`` holds pairs
            ``k*m .. (k+1)*m-1`` (``m = num_pairs // num_folds``), its first ``m/2``
            genuine and its last ``m/2`` impostor.
        num_folds: number of folds (10 for the LFW protocol).
    """

    spec_a: np.ndarray
    spec_b: np.ndarray
    is_same: np.ndarray
    num_folds: int = 10

    def __len__(self) -> int:
        return int(self.is_same.shape[0])

    def __iter__(self):
        # Allows ``spec_a, spec_b, is_same = pairs``.
        return iter((self.spec_a, self.spec_b, self.is_same))


def _check_int(name, value, minimum=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"`{name}` must be an integer, got {value!r}.")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}.")
    return value


def _power_law_counts(n, kmin, kmax, a):
    """Deterministic quantiles of a continuous power law p(x) ~ x^-a on [kmin, kmax+1).

    Quantile positions ``u_i = i / (n - 1)`` hit both ends, so the smallest count is
    exactly ``kmin`` and the largest exactly ``kmax``. Returned sorted descending.
    """
    if n == 1:
        return np.array([kmax], np.int64)
    u = np.arange(n, dtype=np.float64) / (n - 1)
    lo, hi = float(kmin), float(kmax + 1)
    if abs(a - 1.0) < 1e-12:
        x = lo * np.exp(u * np.log(hi / lo))
    else:
        e = 1.0 - a
        x = (lo**e + u * (hi**e - lo**e)) ** (1.0 / e)
    k = np.clip(np.floor(x + 1e-9), kmin, kmax).astype(np.int64)
    return k[::-1].copy()


def _pt(x, y):
    return (int(round(x * _ONE)), int(round(y * _ONE)))


def _ax(a, b):
    return (max(int(round(a * _ONE)), 1), max(int(round(b * _ONE)), 1))


def _col(c):
    return tuple(int(v) for v in np.clip(c, 0, 255))


class SyntheticFaces:
    """Procedural face-like identities with long-tailed counts and per-identity difficulty.

    Args:
        num_identities: number of identities (> 0).
        image_size: output height = width in pixels (>= 32; 112 matches ArcFace crops).
        min_images: fewest images of an identity (>= 1).
        max_images: most images of an identity (>= ``min_images``).
        tail_exponent: exponent ``a`` of the count density ``p(n) ~ n^-a`` (>= 0;
            0 gives uniform counts, larger gives a heavier concentration on
            ``min_images``). Counts are the deterministic quantiles
            ``i/(num_identities-1)`` of this law, so the head identity has exactly
            ``max_images`` and the tail exactly ``min_images``; they are assigned to
            identities in a seeded random order (independent of identity index).
        difficulty_range: ``(low, high)`` within ``[0, 1]``; each identity's difficulty is
            uniform in this range.
        seed: non-negative integer seed.

    Attributes:
        counts: int64 ``(num_identities,)`` images per identity.
        difficulty: float64 ``(num_identities,)``.
        labels: int64 ``(num_images,)`` identity of each image, identity-major order.
        sample_ids: int64 ``(num_images,)`` sample number of each image within its identity.
        offsets: int64 ``(num_identities + 1,)``; identity ``c`` owns images
            ``offsets[c]:offsets[c+1]`` of ``labels`` / ``sample_ids``.

    Example::

        faces = SyntheticFaces(num_identities=100, image_size=112, seed=0)
        img = faces.render(3, 0)          # uint8 (112, 112, 3), RGB
        faces.counts[:5], faces.num_images
    """

    def __init__(
        self,
        num_identities: int = 500,
        image_size: int = 112,
        min_images: int = 2,
        max_images: int = 60,
        tail_exponent: float = 1.5,
        difficulty_range: tuple[float, float] = (0.0, 1.0),
        seed: int = 0,
    ):
        self.num_identities = _check_int("num_identities", num_identities, 1)
        if self.num_identities > _MAX_IDENTITIES:
            raise ValueError(f"`num_identities` must be <= {_MAX_IDENTITIES}.")
        self.image_size = _check_int("image_size", image_size, 32)
        self.min_images = _check_int("min_images", min_images, 1)
        self.max_images = _check_int("max_images", max_images, 1)
        if self.min_images > self.max_images:
            raise ValueError(
                f"`min_images` ({self.min_images}) must be <= `max_images` ({self.max_images})."
            )
        tail_exponent = float(tail_exponent)
        if not np.isfinite(tail_exponent) or tail_exponent < 0:
            raise ValueError(f"`tail_exponent` must be a finite number >= 0, got {tail_exponent}.")
        self.tail_exponent = tail_exponent
        lo, hi = (float(v) for v in difficulty_range)
        if not (0.0 <= lo <= hi <= 1.0):
            raise ValueError(
                f"`difficulty_range` must satisfy 0 <= low <= high <= 1, got {difficulty_range!r}."
            )
        self.difficulty_range = (lo, hi)
        self.seed = _check_int("seed", seed, 0)

        sorted_counts = _power_law_counts(
            self.num_identities, self.min_images, self.max_images, tail_exponent
        )
        perm = np.random.default_rng((self.seed, _TAG_COUNTS)).permutation(self.num_identities)
        self.counts = np.empty(self.num_identities, np.int64)
        self.counts[perm] = sorted_counts
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self.labels = np.repeat(np.arange(self.num_identities, dtype=np.int64), self.counts)
        self.sample_ids = np.arange(self.num_images, dtype=np.int64) - np.repeat(
            self.offsets[:-1], self.counts
        )
        self._params: dict[int, dict] = {}
        self.difficulty = np.array(
            [self.identity_params(c)["difficulty"] for c in range(self.num_identities)]
        )
        s = self.image_size
        self._lin = np.linspace(-1.0, 1.0, s, dtype=np.float32)
        self._noise = np.random.default_rng((self.seed, _TAG_NOISE)).standard_normal(
            (2 * s, 2 * s, 3), dtype=np.float32
        )

    # ------------------------------------------------------------------ basics
    @property
    def num_images(self) -> int:
        """Total number of images over all identities."""
        return int(self.offsets[-1])

    def __len__(self) -> int:
        return self.num_images

    def __repr__(self) -> str:
        return (
            f"SyntheticFaces(num_identities={self.num_identities}, image_size={self.image_size}, "
            f"min_images={self.min_images}, max_images={self.max_images}, "
            f"tail_exponent={self.tail_exponent}, difficulty_range={self.difficulty_range}, "
            f"seed={self.seed}) with {self.num_images} images"
        )

    def _check_identity(self, identity, name="identity"):
        identity = _check_int(name, identity, 0)
        if identity >= self.num_identities:
            raise ValueError(
                f"`{name}` must be < num_identities ({self.num_identities}), got {identity}."
            )
        return identity

    def _check_identities(self, identities, name="identities"):
        if identities is None:
            return np.arange(self.num_identities, dtype=np.int64)
        ids = np.asarray(identities)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"`{name}` must be a 1-D sequence of integers.")
        ids = ids.astype(np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_identities):
            raise ValueError(f"`{name}` must lie in [0, {self.num_identities}).")
        if np.unique(ids).size != ids.size:
            raise ValueError(f"`{name}` contains duplicates.")
        return ids

    # ------------------------------------------------------ identity parameters
    def identity_params(self, identity: int) -> dict:
        """Deterministic face parameters of ``identity`` (from ``default_rng((seed, identity))``).

        Lengths are fractions of the image size. Cached after the first call.
        """
        identity = self._check_identity(identity)
        p = self._params.get(identity)
        if p is not None:
            return p
        r = np.random.default_rng((self.seed, identity))
        lo, hi = self.difficulty_range

        def pick(palette, jitter):
            i = r.integers(len(palette))
            j = r.integers(len(palette))
            t = r.uniform(0, 1)
            return (1 - t) * palette[i] + t * palette[j] + r.normal(0, jitter, 3)

        p = dict(
            difficulty=lo + (hi - lo) * r.uniform(),
            face_w=r.uniform(0.25, 0.34),
            face_h=r.uniform(0.33, 0.42),
            chin=r.uniform(0.0, 0.06),
            skin=r.uniform(0, len(_SKIN) - 1),
            hair_style=int(r.integers(5)),  # 0 bald, 1 short, 2 long, 3 fringe, 4 curly
            hair_col=pick(_HAIR, 8.0),
            hair_line=r.uniform(0.08, 0.2),
            hair_vol=r.uniform(0.02, 0.07),
            eye_y=r.uniform(-0.1, -0.02),
            eye_dx=r.uniform(0.09, 0.14),
            eye_w=r.uniform(0.035, 0.06),
            eye_h=r.uniform(0.015, 0.03),
            eye_tilt=r.uniform(-12, 12),
            iris=pick(_IRIS, 10.0),
            iris_r=r.uniform(0.45, 0.8),
            brow_dy=r.uniform(0.035, 0.07),
            brow_w=r.uniform(0.045, 0.075),
            brow_tilt=r.uniform(-0.025, 0.025),
            brow_arch=r.uniform(-0.01, 0.02),
            brow_t=r.uniform(0.008, 0.022),
            nose_len=r.uniform(0.06, 0.13),
            nose_w=r.uniform(0.02, 0.05),
            nose_style=int(r.integers(3)),
            mouth_y=r.uniform(0.13, 0.21),
            mouth_w=r.uniform(0.06, 0.12),
            mouth_curve=r.uniform(-0.03, 0.04),
            lip_t=r.uniform(0.008, 0.025),
            lips=pick(_LIPS, 12.0),
            glasses=bool(r.uniform() < 0.25),
            glasses_col=r.uniform(0, 255, 3) * r.uniform(0, 1),
            beard=int(r.integers(3)) if r.uniform() < 0.3 else 0,  # 0 none, 1 moustache, 2 beard
            mole=bool(r.uniform() < 0.35),
            mole_pos=np.array([r.uniform(-0.18, 0.18), r.uniform(-0.05, 0.2)]),
            ears=r.uniform(0.03, 0.05),
            cheek=r.uniform(0.0, 0.5),
        )
        ti = p["skin"]
        i0 = int(np.floor(ti))
        i1 = min(i0 + 1, len(_SKIN) - 1)
        p["skin_col"] = (1 - (ti - i0)) * _SKIN[i0] + (ti - i0) * _SKIN[i1] + r.normal(0, 6, 3)
        del p["skin"]
        self._params[identity] = p
        return p

    # ----------------------------------------------------------------- render
    def render(self, identity: int, sample: int) -> np.ndarray:
        """Render image ``sample`` of ``identity`` as uint8 ``(H, W, 3)`` RGB.

        Deterministic given ``(seed, identity, sample)`` (``default_rng((seed, identity, sample))``).

        Args:
            identity: identity index in ``[0, num_identities)``.
            sample: sample index in ``[0, counts[identity])``.
        """
        identity = self._check_identity(identity)
        sample = _check_int("sample", sample, 0)
        if sample >= self.counts[identity]:
            raise ValueError(
                f"`sample` must be < counts[{identity}] ({self.counts[identity]}), got {sample}."
            )
        return self._render(identity, sample)

    def _render(self, identity, sample):
        p = self.identity_params(identity)
        r = np.random.default_rng((self.seed, identity, sample))
        d = p["difficulty"]
        S = float(self.image_size)
        img = np.empty((self.image_size, self.image_size, 3), np.uint8)
        bg = r.uniform(20, 235, 3)
        img[:] = _col(bg)
        lt = cv2.LINE_AA
        # Background clutter (per-sample, never identity information).
        for _ in range(int(r.integers(0, 3))):
            c = _col(r.uniform(0, 255, 3))
            cv2.ellipse(img, _pt(*r.uniform(0, S, 2)), _ax(*r.uniform(0.05, 0.3, 2) * S),
                        r.uniform(0, 180), 0, 360, c, -1, lt, _SHIFT)

        # Per-sample pose/expression (all scaled by difficulty).
        yaw = float(np.clip(r.normal(0, 0.12 + 0.45 * d), -0.9, 0.9))
        pitch = float(np.clip(r.normal(0, 0.01 + 0.03 * d), -0.06, 0.06))
        smile = r.normal(0, 0.005 + 0.02 * d)
        mouth_open = max(0.0, r.normal(-0.01, 0.006 + 0.02 * d))
        blink = r.uniform() < 0.02 + 0.2 * d
        gaze = r.normal(0, 0.1 + 0.2 * d, 2)

        cx, cy = 0.5 * S, 0.53 * S
        fw, fh = p["face_w"] * S * (1 - 0.12 * abs(yaw)), p["face_h"] * S
        fdx = yaw * 0.32 * fw  # feature shift (yaw-like)
        fy = pitch * S
        skin = p["skin_col"] * r.uniform(0.97, 1.03)
        dark_skin = skin * 0.82
        hair = p["hair_col"]
        style = p["hair_style"]

        # Neck, back hair, ears.
        cv2.rectangle(img, _pt(cx - 0.45 * fw, cy + 0.5 * fh), _pt(cx + 0.45 * fw, S + 2),
                      _col(dark_skin), -1, lt, _SHIFT)
        if style == 2:
            cv2.ellipse(img, _pt(cx - 0.3 * fdx, cy + 0.15 * fh), _ax(fw * 1.22, fh * 1.15),
                        0, 0, 360, _col(hair), -1, lt, _SHIFT)
        ear_r = p["ears"] * S
        for side in (-1, 1):
            vis = 1 - 0.8 * max(0.0, side * -yaw) / 0.9
            cv2.ellipse(img, _pt(cx + side * fw * 0.98 - 0.2 * fdx, cy + (p["eye_y"] + 0.03) * S + fy),
                        _ax(ear_r * 0.6 * vis, ear_r * 1.2), 0, 0, 360, _col(dark_skin), -1, lt, _SHIFT)
        # Face with chin.
        cv2.ellipse(img, _pt(cx, cy), _ax(fw, fh), 0, 0, 360, _col(skin), -1, lt, _SHIFT)
        if p["chin"] > 0.01:
            cv2.ellipse(img, _pt(cx + 0.5 * fdx, cy + 0.55 * fh), _ax(0.55 * fw, 0.45 * fh + p["chin"] * S),
                        0, 0, 180, _col(skin), -1, lt, _SHIFT)
        if p["cheek"] > 0.25:
            for side in (-1, 1):
                cv2.circle(img, _pt(cx + fdx + side * 0.55 * fw, cy + 0.25 * fh + fy), int(0.1 * fw * _ONE),
                           _col(skin * 0.9 + np.array([30, 0, 0]) * p["cheek"]), -1, lt, _SHIFT)
        # Hair on top.
        top = cy - fh
        hl = top + p["hair_line"] * S
        if style in (1, 2, 3):
            cv2.ellipse(img, _pt(cx - 0.25 * fdx, hl), _ax(fw * 1.04, hl - top + p["hair_vol"] * S),
                        0, 180, 360, _col(hair), -1, lt, _SHIFT)
        if style == 3:  # fringe: polygon across the forehead
            pts = np.array([_pt(cx - fw, hl), _pt(cx + fw * 0.7, hl),
                            _pt(cx + 0.3 * fw + 0.5 * fdx, hl + 0.08 * S), _pt(cx - fw * 0.8, hl + 0.05 * S)],
                           np.int32)
            cv2.fillPoly(img, [pts], _col(hair), lt, _SHIFT)
        if style == 4:  # curly: ring of circles
            n = 9
            for k in range(n):
                ang = np.pi * (1.05 + 0.9 * k / (n - 1))
                cv2.circle(img, _pt(cx + np.cos(ang) * fw * 0.95 - 0.2 * fdx, cy + np.sin(ang) * fh * 0.95),
                           int(p["hair_vol"] * S * 1.6 * _ONE), _col(hair), -1, lt, _SHIFT)
        if style == 0:  # bald: side hair only
            for side in (-1, 1):
                cv2.ellipse(img, _pt(cx + side * fw * 0.9 - 0.2 * fdx, cy - 0.1 * fh),
                            _ax(0.15 * fw, 0.3 * fh), 0, 0, 360, _col(hair), -1, lt, _SHIFT)

        # Eyes and brows.
        ey = cy + p["eye_y"] * S + fy
        ew, eh = p["eye_w"] * S, p["eye_h"] * S
        brow_col = _col(hair * 0.8)
        for side in (-1, 1):
            ex = cx + fdx + side * p["eye_dx"] * S * (1 - 0.15 * abs(yaw))
            persp = 1 - 0.35 * side * yaw
            tilt = side * p["eye_tilt"]
            eh_s = eh * (0.15 if blink else 1.0)
            cv2.ellipse(img, _pt(ex, ey), _ax(ew * persp, eh_s), tilt, 0, 360, (245, 245, 240), -1, lt, _SHIFT)
            if not blink:
                ir = eh * p["iris_r"] * 1.4
                ix, iy = ex + gaze[0] * ew * 0.4, ey + gaze[1] * eh * 0.3
                cv2.circle(img, _pt(ix, iy), int(ir * _ONE), _col(p["iris"]), -1, lt, _SHIFT)
                cv2.circle(img, _pt(ix, iy), int(ir * 0.45 * _ONE), (10, 10, 10), -1, lt, _SHIFT)
            cv2.ellipse(img, _pt(ex, ey), _ax(ew * persp, eh_s), tilt, 0, 360,
                        _col(dark_skin * 0.7), max(1, int(S / 112)), lt, _SHIFT)
            by = ey - p["brow_dy"] * S
            bw = p["brow_w"] * S * persp
            pts = np.array([_pt(ex - bw, by + side * p["brow_tilt"] * S),
                            _pt(ex, by - p["brow_arch"] * S),
                            _pt(ex + bw, by - side * p["brow_tilt"] * S)], np.int32)
            cv2.polylines(img, [pts], False, brow_col, max(1, int(round(p["brow_t"] * S))), lt, _SHIFT)
            if p["glasses"]:
                cv2.circle(img, _pt(ex, ey), int(ew * 1.35 * persp * _ONE), _col(p["glasses_col"]),
                           max(1, int(S / 80)), lt, _SHIFT)
        if p["glasses"]:
            gx = p["eye_dx"] * S * (1 - 0.15 * abs(yaw))
            cv2.line(img, _pt(cx + fdx - gx + ew * 1.3, ey), _pt(cx + fdx + gx - ew * 1.3, ey),
                     _col(p["glasses_col"]), max(1, int(S / 80)), lt, _SHIFT)

        # Nose.
        nx = cx + fdx * 1.35
        ny0, ny1 = ey + 0.02 * S, ey + p["nose_len"] * S
        nw = p["nose_w"] * S
        ncol = _col(dark_skin * 0.85)
        if p["nose_style"] == 0:
            pts = np.array([_pt(nx, ny0), _pt(nx - nw, ny1), _pt(nx + nw, ny1)], np.int32)
            cv2.fillPoly(img, [pts], _col(dark_skin), lt, _SHIFT)
        elif p["nose_style"] == 1:
            pts = np.array([_pt(nx, ny0), _pt(nx + 0.4 * nw, ny1 - 0.3 * nw), _pt(nx - 0.3 * nw, ny1)], np.int32)
            cv2.polylines(img, [pts], False, ncol, max(1, int(S / 60)), lt, _SHIFT)
        else:
            cv2.circle(img, _pt(nx - 0.5 * nw, ny1), int(0.3 * nw * _ONE), ncol, -1, lt, _SHIFT)
            cv2.circle(img, _pt(nx + 0.5 * nw, ny1), int(0.3 * nw * _ONE), ncol, -1, lt, _SHIFT)

        # Mouth (+ facial hair).
        my = cy + p["mouth_y"] * S + fy
        mw = p["mouth_w"] * S * (1 - 0.2 * abs(yaw))
        mx = cx + fdx * 1.1
        curve = (p["mouth_curve"] + smile) * S
        t = np.linspace(-1, 1, 7)
        upper = np.stack([mx + t * mw, my - curve * (1 - t**2) + curve], 1)
        if p["beard"] == 2:
            cv2.ellipse(img, _pt(cx + 0.5 * fdx, cy + 0.32 * fh), _ax(0.86 * fw, 0.72 * fh), 0, 0, 180,
                        _col(hair * 0.9), -1, lt, _SHIFT)
        if p["beard"] >= 1:
            cv2.ellipse(img, _pt(mx, my - 0.025 * S), _ax(mw * 1.05, 0.018 * S), 0, 180, 360,
                        _col(hair * 0.9), -1, lt, _SHIFT)
        lip = _col(p["lips"])
        if mouth_open > 0.004:
            cv2.ellipse(img, _pt(mx, my + curve * 0.5), _ax(mw * 0.8, mouth_open * S + 1), 0, 0, 360,
                        (60, 20, 25), -1, lt, _SHIFT)
        cv2.polylines(img, [np.array([_pt(x, y) for x, y in upper], np.int32)], False, lip,
                      max(1, int(round(p["lip_t"] * S))), lt, _SHIFT)
        if p["mole"]:
            mp = p["mole_pos"]
            cv2.circle(img, _pt(cx + fdx + mp[0] * S, cy + mp[1] * S), max(int(0.012 * S * _ONE), _ONE),
                       (50, 30, 25), -1, lt, _SHIFT)
        # Occlusion (more likely for hard identities).
        if r.uniform() < 0.25 * d:
            oc = _col(r.uniform(0, 255, 3))
            ox, oy = r.uniform(0.25, 0.75) * S, r.uniform(0.35, 0.9) * S
            cv2.ellipse(img, _pt(ox, oy), _ax(*r.uniform(0.06, 0.18, 2) * S), r.uniform(0, 180), 0, 360,
                        oc, -1, lt, _SHIFT)

        # Geometric jitter: rotation + scale + translation in one warp.
        angle = r.normal(0, 3 + 20 * d)
        scale = float(np.exp(r.normal(0, 0.03 + 0.1 * d)))
        shift = r.normal(0, (0.015 + 0.05 * d) * S, 2)
        m = cv2.getRotationMatrix2D((cx, cy), angle, scale)
        m[:, 2] += shift
        img = cv2.warpAffine(img, m, (self.image_size, self.image_size), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE)
        # Blur.
        sigma = r.uniform(0, 0.2 + 1.6 * d) * S / 112
        if sigma > 0.3:
            img = cv2.GaussianBlur(img, (0, 0), sigma)
        # Lighting: gain, contrast, directional gradient, colour cast; then noise.
        gain = float(np.exp(r.normal(0, 0.05 + 0.25 * d)))
        contrast = float(np.exp(r.normal(0, 0.05 + 0.25 * d)))
        theta = r.uniform(0, 2 * np.pi)
        amp = r.uniform(0, 0.05 + 0.45 * d)
        cast = np.exp(r.normal(0, 0.02 + 0.06 * d, 3)).astype(np.float32)
        noise = 2.0 + 10.0 * d
        ct, sn = np.cos(theta), np.sin(theta)
        field = (gain + gain * amp * ct * self._lin)[None, :] + (gain * amp * sn * self._lin)[:, None]
        out = img.astype(np.float32)
        out *= contrast * cast
        out += (128.0 * (1.0 - contrast)) * cast
        out *= field[..., None]
        # Noise: a random window (with random sign) of a per-instance bank of N(0, 1) values.
        oy, ox = r.integers(0, self.image_size + 1, 2)
        sign = np.float32(noise * (1.0 if r.uniform() < 0.5 else -1.0))
        out += self._noise[oy:oy + self.image_size, ox:ox + self.image_size] * sign
        np.clip(out, 0, 255, out=out)
        return out.astype(np.uint8)

    def render_batch(self, identities, samples) -> np.ndarray:
        """Render several images; returns uint8 ``(N, H, W, 3)``.

        Args:
            identities: int sequence of identities.
            samples: int sequence of the same length, sample index per image.
        """
        ids = np.asarray(identities, dtype=np.int64).reshape(-1)
        smp = np.asarray(samples, dtype=np.int64).reshape(-1)
        if ids.shape != smp.shape:
            raise ValueError(
                f"`identities` and `samples` must have the same length, got {ids.size} and {smp.size}."
            )
        if ids.size:
            if ids.min() < 0 or ids.max() >= self.num_identities:
                raise ValueError(f"`identities` must lie in [0, {self.num_identities}).")
            if smp.min() < 0 or np.any(smp >= self.counts[ids]):
                raise ValueError("`samples` must lie in [0, counts[identity]) for each image.")
        out = np.empty((ids.size, self.image_size, self.image_size, 3), np.uint8)
        for i, (c, s) in enumerate(zip(ids.tolist(), smp.tolist())):
            out[i] = self._render(c, s)
        return out

    # ------------------------------------------------------------ data splits
    def split(self, num_train_identities: int) -> tuple[np.ndarray, np.ndarray]:
        """Identity-disjoint split: identities ``0..K-1`` train, ``K..N-1`` held out.

        Counts and difficulty are assigned independently of the identity index,
        so both halves carry the same long tail. With this split a training
        identity's class label equals its identity index.

        Args:
            num_train_identities: ``K``, with ``0 < K < num_identities``.

        Returns:
            ``(train_identities, heldout_identities)`` int64 arrays.
        """
        k = _check_int("num_train_identities", num_train_identities, 1)
        if k >= self.num_identities:
            raise ValueError(
                f"`num_train_identities` must be < num_identities ({self.num_identities}), got {k}."
            )
        return np.arange(k, dtype=np.int64), np.arange(k, self.num_identities, dtype=np.int64)

    def image_specs(self, identities=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All images of ``identities`` in identity-major order, without rendering.

        Args:
            identities: distinct identity indices (default: all).

        Returns:
            ``(image_identities, sample_ids, labels)`` int64 arrays, where ``labels`` is the
            position of each image's identity in ``identities`` (0..len-1, i.e. class ids).
        """
        ids = self._check_identities(identities)
        cnt = self.counts[ids]
        img_ids = np.repeat(ids, cnt)
        starts = np.repeat(np.cumsum(cnt) - cnt, cnt)
        samples = np.arange(img_ids.size, dtype=np.int64) - starts
        labels = np.repeat(np.arange(ids.size, dtype=np.int64), cnt)
        return img_ids, samples, labels

    def to_arrays(self, identities=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Render every image of ``identities`` into memory.

        Args:
            identities: distinct identity indices (default: all). Memory use is
                ``sum(counts[identities]) * image_size**2 * 3`` bytes.

        Returns:
            ``(images, labels, sample_ids)``: uint8 ``(N, H, W, 3)``; int64 class labels
            (position of the identity in ``identities``); int64 sample number within the
            identity. Row ``i`` is the training-set sample index ``i``.

        Example::

            x, y, s = faces.to_arrays(faces.split(400)[0])
        """
        img_ids, samples, labels = self.image_specs(identities)
        return self.render_batch(img_ids, samples), labels, samples

    # -------------------------------------------------------- verification
    def verification_pairs(self, num_pairs: int = 6000, identities=None, seed: int = 0,
                           num_folds: int = 10) -> VerificationPairs:
        """Balanced genuine/impostor pairs in the LFW ``pairs.txt`` layout.

        Fold ``k`` holds pairs ``k*m .. (k+1)*m - 1`` with ``m = num_pairs / num_folds``;
        its first ``m/2`` are genuine (same identity, two distinct samples, identity
        uniform over those with >= 2 images) and its last ``m/2`` impostor (two
        distinct identities, uniform, one random sample each). Pairs are drawn with
        replacement, so with few identities some pairs can repeat.

        Args:
            num_pairs: total pairs, a positive multiple of ``2 * num_folds``.
            identities: identities to draw from (default: all); pass the held-out set.
            seed: pair-sampling seed (stream ``(faces.seed, tag, seed)``).
            num_folds: number of folds (10 for LFW).

        Returns:
            :class:`VerificationPairs`.

        Example::

            _, test_ids = faces.split(400)
            pairs = faces.verification_pairs(600, identities=test_ids)
        """
        num_pairs = _check_int("num_pairs", num_pairs, 1)
        num_folds = _check_int("num_folds", num_folds, 1)
        seed = _check_int("seed", seed, 0)
        if num_pairs % (2 * num_folds):
            raise ValueError(
                f"`num_pairs` must be a multiple of 2 * num_folds = {2 * num_folds}, got {num_pairs}."
            )
        ids = self._check_identities(identities)
        multi = ids[self.counts[ids] >= 2]
        if multi.size < 1:
            raise ValueError("`identities` must include an identity with >= 2 images for genuine pairs.")
        if ids.size < 2:
            raise ValueError("`identities` must hold >= 2 identities for impostor pairs.")
        r = np.random.default_rng((self.seed, _TAG_PAIRS, seed))
        half = num_pairs // (2 * num_folds)
        ng = ni = num_pairs // 2
        gid = multi[r.integers(0, multi.size, ng)]
        gcnt = self.counts[gid]
        s1 = (r.random(ng) * gcnt).astype(np.int64)
        s2 = (r.random(ng) * (gcnt - 1)).astype(np.int64)
        s2 = s2 + (s2 >= s1)  # distinct from s1
        i1 = r.integers(0, ids.size, ni)
        i2 = r.integers(0, ids.size - 1, ni)
        i2 = i2 + (i2 >= i1)
        a_id, b_id = ids[i1], ids[i2]
        t1 = (r.random(ni) * self.counts[a_id]).astype(np.int64)
        t2 = (r.random(ni) * self.counts[b_id]).astype(np.int64)
        gen_a, gen_b = np.stack([gid, s1], 1), np.stack([gid, s2], 1)
        imp_a, imp_b = np.stack([a_id, t1], 1), np.stack([b_id, t2], 1)
        # Interleave per fold: [half genuine, half impostor] x num_folds.
        shape = (num_folds, half, 2)
        spec_a = np.concatenate([gen_a.reshape(shape), imp_a.reshape(shape)], 1).reshape(-1, 2)
        spec_b = np.concatenate([gen_b.reshape(shape), imp_b.reshape(shape)], 1).reshape(-1, 2)
        is_same = np.tile(np.repeat([True, False], half), num_folds)
        return VerificationPairs(spec_a, spec_b, is_same, num_folds)

    def pair_images(self, pairs: VerificationPairs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Render both sides of ``pairs``: ``(images_a, images_b, is_same)``.

        Each distinct image is rendered once.
        """
        specs = np.concatenate([pairs.spec_a, pairs.spec_b], 0)
        uniq, inv = np.unique(specs, axis=0, return_inverse=True)
        imgs = self.render_batch(uniq[:, 0], uniq[:, 1])[inv.reshape(-1)]
        n = len(pairs.spec_a)
        return imgs[:n], imgs[n:], np.asarray(pairs.is_same, bool).copy()
