"""Evaluation: 10-fold pair verification (LFW / insightface protocol)."""

from keras_facemargin.evaluation.verification import (  # noqa: F401
    VerificationResult,
    embed_images,
    evaluate_pairs,
    format_table,
    kfold_verification,
    pair_scores,
    tar_at_far,
)

__all__ = [
    "VerificationResult",
    "embed_images",
    "evaluate_pairs",
    "format_table",
    "kfold_verification",
    "pair_scores",
    "tar_at_far",
]

# Standard benchmarks (insightface .bin sets, LFW/CFP folders, IJB-B/C, MegaFace); the epoch-end
# VerificationCallback is in keras_facemargin.callbacks.
from keras_facemargin.evaluation.bin_sets import (  # noqa: E402,F401
    KNOWN_BIN_SETS,
    PairSet,
    UnsafeBinError,
    evaluate_pair_set,
    evaluate_verification_sets,
    find_verification_sets,
    load_bin,
    load_verification_set,
)
from keras_facemargin.evaluation.pairs_sets import lfw_verification  # noqa: E402,F401
from keras_facemargin.evaluation.plots import plot_roc  # noqa: E402,F401

__all__ += [
    "KNOWN_BIN_SETS",
    "PairSet",
    "UnsafeBinError",
    "evaluate_pair_set",
    "evaluate_verification_sets",
    "find_verification_sets",
    "load_bin",
    "load_verification_set",
    "lfw_verification",
    "plot_roc",
]
