"""Batch augmentation for aligned face crops (``tf.data``, stateless, seeded).

Face-recognition training sets are aligned crops, so augmentation stays mild: the
geometry must remain close to the alignment template. :class:`FaceAugmentation` applies,
per image and in this order, a random resized crop (area ``crop_scale``, aspect
``crop_ratio``, resized back to the input size), brightness, contrast and saturation
jitter, a random greyscale conversion and a random 3x3 Gaussian blur. The flip is the
pipeline's own (``augment_flip``). Every draw is a stateless function of one per-batch
seed, so a run is reproducible and a resumed epoch sees the same augmentation.

Example::

    aug = FaceAugmentation(crop_scale=(0.8, 1.0), brightness=0.2, grayscale=0.1)
    ds = make_training_dataset(x, y, batch_size=64, augment=aug)
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

__all__ = ["FaceAugmentation"]


def _check_range(name, value, lo, hi):
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a (min, max) pair, got {value!r}.") from None
    if not (lo <= a <= b <= hi):
        raise ValueError(f"`{name}` must satisfy {lo} <= min <= max <= {hi}, got {value!r}.")
    return (a, b)


def _check_prob(name, value, hi=1.0):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= hi:
        raise ValueError(f"`{name}` must be a number in [0, {hi}], got {value!r}.")
    return float(value)


@dataclasses.dataclass(frozen=True)
class FaceAugmentation:
    """Mild photometric and geometric augmentation of uint8 face batches.

    Args:
        crop_scale: (min, max) fraction of the image area kept by the random resized crop;
            ``(1, 1)`` disables it.
        crop_ratio: (min, max) aspect ratio (width / height) of the crop.
        brightness: maximum additive brightness change, as a fraction of 255.
        contrast: maximum relative contrast change (factor in ``[1 - c, 1 + c]``).
        saturation: maximum relative saturation change.
        grayscale: probability of converting an image to greyscale (kept 3-channel).
        blur: probability of a 3x3 Gaussian blur (sigma 1).

    Example::

        FaceAugmentation()(images_uint8, seed=tf.constant([1, 2], tf.int64))  # float32 0..255
    """

    crop_scale: tuple = (0.85, 1.0)
    crop_ratio: tuple = (0.9, 1.1)
    brightness: float = 0.15
    contrast: float = 0.2
    saturation: float = 0.2
    grayscale: float = 0.1
    blur: float = 0.1

    def __post_init__(self):
        object.__setattr__(self, "crop_scale", _check_range("crop_scale", self.crop_scale, 0.05, 1.0))
        object.__setattr__(self, "crop_ratio", _check_range("crop_ratio", self.crop_ratio, 0.2, 5.0))
        for name in ("brightness", "contrast", "saturation", "grayscale", "blur"):
            object.__setattr__(self, name, _check_prob(name, getattr(self, name)))

    def to_config(self) -> dict:
        return dataclasses.asdict(self)

    def __call__(self, images, seed):
        """Augment a ``(B, H, W, 3)`` batch (any real dtype, 0..255); float32 0..255 out.

        Args:
            images: the batch.
            seed: int64 ``[2]`` tensor (the per-batch stateless seed).
        """
        x = tf.cast(images, tf.float32)
        n = tf.shape(x)[0]
        h, w = tf.shape(x)[1], tf.shape(x)[2]
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 8)

        def uniform(i, lo, hi, shape=None):
            return tf.random.stateless_uniform([n] if shape is None else shape, seed=seeds[i], minval=lo, maxval=hi)

        if self.crop_scale != (1.0, 1.0):
            area = uniform(0, *self.crop_scale)
            log_r = uniform(1, tf.math.log(self.crop_ratio[0]), tf.math.log(self.crop_ratio[1]))
            ratio = tf.exp(log_r)
            cw = tf.minimum(tf.sqrt(area * ratio), 1.0)
            ch = tf.minimum(tf.sqrt(area / ratio), 1.0)
            off = uniform(2, 0.0, 1.0, shape=[n, 2])
            y0, x0 = off[:, 0] * (1.0 - ch), off[:, 1] * (1.0 - cw)
            boxes = tf.stack([y0, x0, y0 + ch, x0 + cw], axis=1)
            x = tf.image.crop_and_resize(x, boxes, tf.range(n), tf.stack([h, w]))
        if self.brightness:
            x = x + 255.0 * uniform(3, -self.brightness, self.brightness)[:, None, None, None]
        if self.contrast:
            f = uniform(4, 1.0 - self.contrast, 1.0 + self.contrast)[:, None, None, None]
            mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
            x = (x - mean) * f + mean
        gray = tf.reduce_sum(x * tf.constant([0.299, 0.587, 0.114]), axis=-1, keepdims=True)
        if self.saturation:
            f = uniform(5, 1.0 - self.saturation, 1.0 + self.saturation)[:, None, None, None]
            x = (x - gray) * f + gray
        if self.grayscale:
            to_gray = (uniform(6, 0.0, 1.0) < self.grayscale)[:, None, None, None]
            x = tf.where(to_gray, tf.repeat(gray, 3, axis=-1), x)
        if self.blur:
            k = tf.constant([0.27406862, 0.45186276, 0.27406862])  # Gaussian, sigma 1, 3 taps
            kernel = tf.tile((k[:, None] * k[None, :])[:, :, None, None], [1, 1, 3, 1])
            blurred = tf.nn.depthwise_conv2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], "SYMMETRIC"),
                                             kernel, [1, 1, 1, 1], "VALID")
            x = tf.where((uniform(7, 0.0, 1.0) < self.blur)[:, None, None, None], blurred, x)
        return tf.clip_by_value(x, 0.0, 255.0)
