"""Training callbacks."""

import keras

from keras_facemargin.layers.kappaface import KappaMarginDense


def find_layers(model, layer_class):
    """All layers of `layer_class` inside `model`, searching nested models."""
    found, stack, seen = [], [model], set()
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, layer_class):
            found.append(layer)
        stack.extend(getattr(layer, "layers", []) or [])
        for attr in ("head", "backbone"):
            child = getattr(layer, attr, None)
            if isinstance(child, keras.layers.Layer):
                stack.append(child)
    return found


class KappaUpdater(keras.callbacks.Callback):
    """Updates every `KappaMarginDense` in the model at each epoch end.

    It turns the per-class feature sums gathered during the epoch into kappa
    and psi (KappaFace eq. 3-13), resets the sums, and writes `kappa_min`,
    `kappa_mean`, `kappa_max`, `margin_min`, `margin_mean`, `margin_max` and
    `kappa_classes_seen` into the epoch logs (prefixed with the layer name when
    the model has several Kappa heads).

    Args:
        verbose: print the statistics at each epoch end when > 0.

    Example:
        >>> model.fit(dataset, epochs=24, callbacks=[KappaUpdater()])
    """

    def __init__(self, verbose=0):
        super().__init__()
        self.verbose = verbose
        self.history = []

    def on_epoch_end(self, epoch, logs=None):
        layers = find_layers(self.model, KappaMarginDense)
        if not layers:
            raise ValueError("KappaUpdater found no KappaMarginDense layer in the model.")
        for layer in layers:
            stats = layer.update_margins()
            self.history.append({"epoch": epoch, "layer": layer.name, **stats})
            prefix = "" if len(layers) == 1 else f"{layer.name}_"
            if logs is not None:
                logs.update({prefix + k: v for k, v in stats.items()})
            if self.verbose:
                print(
                    f"\nKappaUpdater[{layer.name}] epoch {epoch}: kappa min/mean/max "
                    f"{stats['kappa_min']:.1f}/{stats['kappa_mean']:.1f}/{stats['kappa_max']:.1f}, "
                    f"margin min/mean/max {stats['margin_min']:.3f}/{stats['margin_mean']:.3f}/"
                    f"{stats['margin_max']:.3f}"
                )
