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
