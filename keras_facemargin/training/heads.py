"""`--loss NAME` -> the margin head of a training run.

There is one head table and one `build_head`: :mod:`keras_facemargin.layers.registry`
(re-exported here). `head_for_run` only routes a run's options (scale, margin, KappaFace
estimator and its options) into it: each option reaches the heads whose constructor
takes it, and `margin` is refused by a head without one.
"""

from keras_facemargin.layers.registry import build_head  # noqa: F401  (the one build_head, re-exported)


def head_for_run(loss, num_classes, class_counts=None, num_samples=None, scale=64.0,
                 estimator="memory_buffer", margin=None, sample_rate=1.0, sample_seed=0, **kappa_options):
    """The head registered as `loss`, with the paper's margin unless `margin` is given.

    Args:
        loss: a name from `keras_facemargin.layers.head_names()`.
        num_classes: number of identities.
        class_counts: images per class (heads that need it: KappaFace, LDAM).
        num_samples: training-set size |D| (KappaFace memory buffer; dropped for another estimator).
        scale: logit scale s, for heads that have one; `None` = each head's paper default.
        estimator: KappaFace estimator, "memory_buffer" or "momentum_encoder".
        margin: the head's `margin` (ArcFace m, KappaFace m0, ...); `None` = the paper's.
            A `ValueError` for heads without a `margin` argument.
        sample_rate: Partial FC rate in (0, 1]; below 1 the head comes wrapped in
            `keras_facemargin.layers.PartialFC` (train it with `PartialFCLoss`).
        sample_seed: seed of the Partial FC sampling.
        **kappa_options: further `KappaMarginDense` arguments (temperature, gamma,
            buffer_alpha, buffer_dtype, encoder_momentum); ignored by heads without them.

    Returns:
        A `keras_facemargin.layers` head (float32 under mixed precision).

    Example:
        >>> head = head_for_run("arcface", num_classes=85742, scale=32.0)
    """
    if estimator != "memory_buffer":
        num_samples = None
    options = {"scale": scale, "estimator": estimator, **kappa_options}
    return build_head(loss, num_classes, class_counts=class_counts, num_samples=num_samples, run_options=options,
                      sample_rate=sample_rate, sample_seed=sample_seed, margin=margin)
