"""The verification-set container and the image helpers its loaders share.

:class:`PairSet` is what :mod:`keras_facemargin.evaluation.bin_sets` (insightface ``.bin``)
and :mod:`keras_facemargin.evaluation.pairs_sets` (LFW / CFP folders) both return; it lives
here so that neither loader module has to import the other for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from keras_facemargin.utils.images import resize_image


@dataclass
class PairSet:
    """A verification set: unique images and the pairs that reference them.

    Attributes:
        name: set name (e.g. ``"lfw"``).
        images: uint8 ``(M, H, W, 3)`` RGB.
        index_a, index_b: int64 ``(N,)`` rows of ``images`` forming pair ``i``.
        is_same: bool ``(N,)``.
        folds: number of contiguous folds (int) or an int ``(N,)`` fold id per pair.
        source: where it was loaded from (for messages).
    """

    name: str
    images: np.ndarray
    index_a: np.ndarray
    index_b: np.ndarray
    is_same: np.ndarray
    folds: object = 10
    source: str = ""

    def __post_init__(self):
        n = len(self.is_same)
        if not (len(self.index_a) == len(self.index_b) == n):
            raise ValueError(f"PairSet '{self.name}': index_a, index_b and is_same lengths differ.")
        m = len(self.images)
        for side in (self.index_a, self.index_b):
            if n and (np.min(side) < 0 or np.max(side) >= m):
                raise ValueError(f"PairSet '{self.name}': pair indices out of range [0, {m}).")

    @property
    def num_pairs(self) -> int:
        return int(len(self.is_same))

    def pair_arrays(self):
        """``(images_a, images_b, is_same)`` as materialised arrays (e.g. for ``evaluate_pairs``)."""
        return self.images[self.index_a], self.images[self.index_b], self.is_same


def _check_image_size(image_size):
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        image_size = (int(image_size), int(image_size))
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"`image_size` must be None, an int or (height, width), got {image_size!r}.") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"`image_size` must be positive, got {image_size!r}.")
    return h, w


#: The package's one resizer (``keras_facemargin.utils.images.resize_image``); the loaders of
#: :mod:`~keras_facemargin.evaluation.bin_sets` import it from here under this name.
_resize = resize_image
