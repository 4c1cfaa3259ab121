"""Registry of margin heads by loss name (`--loss`), shared by the trainer and the demo."""

from keras_facemargin.training.config import LOSSES

#: Paper defaults of the margin per loss (KappaFace m0, ArcFace m, CosFace m).
DEFAULT_MARGINS = {"kappaface": 0.8, "arcface": 0.5, "cosface": 0.35}


def build_head(loss, num_classes, class_counts=None, num_samples=None, scale=64.0,
               estimator="memory_buffer", margin=None, **kappa_options):
    """The margin head for `loss`, with the paper's margin unless `margin` is given.

    Args:
        loss: one of `LOSSES` ("kappaface", "arcface", "cosface", "combined", "normsoftmax").
        num_classes: number of identities.
        class_counts: images per class (KappaFace only).
        num_samples: training-set size |D| (KappaFace memory buffer only).
        scale: logit scale s.
        estimator: KappaFace estimator, "memory_buffer" or "momentum_encoder".
        margin: m (ArcFace, CosFace) or m0 (KappaFace); `None` = the paper's.
            Ignored (must be None) for "combined" and "normsoftmax".
        **kappa_options: further `KappaMarginDense` arguments (temperature, gamma,
            buffer_alpha, buffer_dtype, encoder_momentum).

    Returns:
        A `keras_facemargin.layers` head (float32 under mixed precision).

    Example:
        >>> head = build_head("arcface", num_classes=85742)
    """
    from keras_facemargin import layers

    if loss not in LOSSES:
        raise ValueError(f"`loss` must be one of {list(LOSSES)}. Received: loss={loss!r}")
    if margin is not None and loss not in DEFAULT_MARGINS:
        raise ValueError(f"`margin` does not apply to loss={loss!r}. Received: margin={margin!r}")
    if kappa_options and loss != "kappaface":
        kappa_options = {}
    m = {} if margin is None else {"margin": margin}
    if loss == "kappaface":
        if class_counts is None:
            raise ValueError("loss='kappaface' needs `class_counts` (images per class).")
        return layers.KappaMarginDense(
            num_classes, class_counts=class_counts, scale=scale, estimator=estimator,
            num_samples=num_samples if estimator == "memory_buffer" else None, **m, **kappa_options,
        )
    if loss == "arcface":
        return layers.ArcMarginDense(num_classes, scale=scale, **m)
    if loss == "cosface":
        return layers.CosMarginDense(num_classes, scale=scale, **m)
    if loss == "combined":
        return layers.CombinedMarginDense(num_classes, scale=scale)
    return layers.CosineDense(num_classes, scale=scale)
