"""Callbacks that drive a head's own state: KappaFace's kappa/psi update, SphereFace's lambda schedule."""

import keras

from keras_facemargin.layers.base import FaceHead
from keras_facemargin.layers.cosine_dense import _check_nonnegative, _check_positive
from keras_facemargin.layers.kappaface import KappaMarginDense
from keras_facemargin.layers.sphereface import SphereMarginDense, sphereface_lambda


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
        for attr in ("head", "backbone", "momentum_encoder"):
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


class SphereFaceAnnealing(keras.callbacks.Callback):
    """Anneals the A-Softmax target towards the margin, every training batch.

    Before each training step, every `SphereMarginDense` in the model gets
    `lambda = max(lambda_min, base * (1 + gamma * i)^(-power))` with `i` the
    optimizer's iteration count plus one (the official Caffe
    `MarginInnerProductLayer` increments its counter before computing lambda).
    Counting optimizer steps makes a resumed run continue the schedule where
    it stopped. Defaults are the official SphereFace prototxt's (base 1000,
    gamma 0.12, power 1, lambda_min 5). The current value is written to the
    batch logs as `lambda`.

    Args:
        base, gamma, power, lambda_min: the schedule.

    Example:
        >>> model.fit(ds, epochs=10, callbacks=[SphereFaceAnnealing()])
    """

    def __init__(self, base=1000.0, gamma=0.12, power=1.0, lambda_min=5.0):
        super().__init__()
        self.base = _check_nonnegative("base", base)
        self.gamma = _check_nonnegative("gamma", gamma)
        self.power = _check_positive("power", power)
        self.lambda_min = _check_nonnegative("lambda_min", lambda_min)
        self.value = None

    def on_train_batch_begin(self, batch, logs=None):
        layers = find_layers(self.model, SphereMarginDense)
        if not layers:
            raise ValueError("SphereFaceAnnealing found no SphereMarginDense layer in the model.")
        iteration = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) + 1
        self.value = sphereface_lambda(iteration, self.base, self.gamma, self.power, self.lambda_min)
        for layer in layers:
            layer.annealing_lambda.assign(self.value)

    def on_train_batch_end(self, batch, logs=None):
        if logs is not None and self.value is not None:
            logs["lambda"] = self.value


def head_callbacks(model):
    """The callbacks a model's heads need during `fit` (empty for most heads).

    Each head names them in `required_callbacks` (the head protocol,
    `keras_facemargin.layers.base.FaceHead`): `KappaMarginDense` needs `KappaUpdater`,
    `SphereMarginDense` needs `SphereFaceAnnealing`. One instance of each, in the order
    the heads name them.

    Example:
        >>> model.fit(ds, epochs=5, callbacks=head_callbacks(model))
    """
    known = {"KappaUpdater": KappaUpdater, "SphereFaceAnnealing": SphereFaceAnnealing}
    names = []
    for head in find_layers(model, FaceHead):
        for name in head.required_callbacks:
            if name not in known:
                raise ValueError(f"{type(head).__name__} needs the callback {name!r}, which keras_facemargin "
                                 f"does not define (known: {sorted(known)}).")
            if name not in names:
                names.append(name)
    return [known[name]() for name in names]
