"""Margin-based softmax heads. Each takes `[embeddings, labels]` and returns `scale * logits`."""

from keras_facemargin.layers import kappa_math
from keras_facemargin.layers.arcface import ArcMarginDense
from keras_facemargin.layers.combined import CombinedMarginDense
from keras_facemargin.layers.cosface import CosMarginDense
from keras_facemargin.layers.cosine_dense import CosineDense
from keras_facemargin.layers.kappaface import KappaMarginDense
from keras_facemargin.layers.registry import HEADS, build_head, head_names, register_head

__all__ = [
    "ArcMarginDense",
    "CombinedMarginDense",
    "CosMarginDense",
    "CosineDense",
    "KappaMarginDense",
    "kappa_math",
    "HEADS",
    "build_head",
    "head_names",
    "register_head",
]
