"""`--loss NAME` -> a margin head, for the trainer and the examples.

A thin layer over `keras_facemargin.layers.registry` (the one list of heads):
it routes the run-level options (scale, margin, KappaFace estimator and its
options) to the heads that take them.
"""

import inspect


def build_head(loss, num_classes, class_counts=None, num_samples=None, scale=64.0,
               estimator="memory_buffer", margin=None, sample_rate=1.0, sample_seed=0, **kappa_options):
    """The head registered as `loss`, with the paper's margin unless `margin` is given.

    Args:
        loss: a name from `keras_facemargin.layers.head_names()`.
        num_classes: number of identities.
        class_counts: images per class (heads that need it: KappaFace, LDAM).
        num_samples: training-set size |D| (KappaFace memory buffer).
        scale: logit scale s, for heads that have one; `None` = each head's paper default.
        estimator: KappaFace estimator, "memory_buffer" or "momentum_encoder".
        margin: the head's `margin` (ArcFace m, KappaFace m0, ...); `None` = the paper's.
            A `ValueError` for heads without a `margin` argument.
        sample_rate: Partial FC rate in (0, 1]; below 1 the head comes wrapped in
            `keras_facemargin.layers.PartialFC` (train it with `PartialFCLoss`).
        sample_seed: seed of the Partial FC sampling.
        **kappa_options: further `KappaMarginDense` arguments (temperature, gamma,
            buffer_alpha, buffer_dtype, encoder_momentum); ignored by other heads.

    Returns:
        A `keras_facemargin.layers` head (float32 under mixed precision).

    Example:
        >>> head = build_head("arcface", num_classes=85742)
    """
    from keras_facemargin.layers import KappaMarginDense, registry

    if loss not in registry.HEADS:
        raise ValueError(f"`loss` must be one of {registry.head_names()}. Received: loss={loss!r}")
    layer_class = registry.HEADS[loss][0]
    if margin is not None and "margin" not in inspect.signature(layer_class.__init__).parameters:
        raise ValueError(f"`margin` does not apply to loss={loss!r}. Received: margin={margin!r}")
    options = {"scale": scale, "margin": margin}
    if issubclass(layer_class, KappaMarginDense):
        options.update(estimator=estimator, **kappa_options)
        if estimator != "memory_buffer":
            num_samples = None
    return registry.build_head(loss, num_classes, class_counts=class_counts, num_samples=num_samples,
                               run_options=options, sample_rate=sample_rate, sample_seed=sample_seed)
