"""Cross-backend checks run on one Keras backend; driven by tests/test_backends.py.

Usage: `KERAS_BACKEND=jax python tests/backend_worker.py OUT_DIR`. Writes
`OUT_DIR/<backend>.json` (every head's logits, gradients and new state; every
backbone's outputs; the KappaFace / CurricularFace / Center loss / SphereFace
state after `fit`, with the references computed here) and
`OUT_DIR/<backend>_kappa.keras` for the cross-backend round trip. All weights
and inputs come from NumPy generators, so the runs on the three backends are
directly comparable.
"""

import json
import os
import sys
import time

BACKEND = os.environ["KERAS_BACKEND"]
if BACKEND == "torch":
    import torch

    # torch 2.13.0 (CPU): oneDNN's backward of a 1x1 stride-2 convolution on a
    # channels-last input corrupts the heap (IResNet's downsample shortcut).
    torch.backends.mkldnn.enabled = False

import numpy as np  # noqa: E402

import keras  # noqa: E402
from keras import ops  # noqa: E402

import keras_facemargin as kfm  # noqa: E402
from keras_facemargin.callbacks import KappaUpdater, SphereFaceAnnealing  # noqa: E402
from keras_facemargin.layers.sphereface import sphereface_lambda  # noqa: E402

C, D, B, N_SAMPLES = 6, 8, 6, 10
IMAGE, FIT_D = 32, 16  # the fits reuse the IResNet of the backbone check (building is slow on JAX)
_BACKBONES = {}


def np_(x):
    if BACKEND == "torch" and isinstance(x, torch.Tensor):
        x = x.detach()
    return np.asarray(ops.convert_to_numpy(x), dtype="float64")


def tolist(x):
    return np_(x).tolist()


def value_and_grads(fn, args, jit=False):
    """`fn(*args) -> (scalar, aux)`; returns (scalar, aux, gradients w.r.t. every arg)."""
    if BACKEND == "jax":
        import jax

        step = jax.value_and_grad(fn, argnums=tuple(range(len(args))), has_aux=True)
        (value, aux), grads = (jax.jit(step) if jit else step)(*args)
        return value, aux, list(grads)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        args = [tf.convert_to_tensor(a) for a in args]
        with tf.GradientTape() as tape:
            tape.watch(args)
            value, aux = fn(*args)
        return value, aux, tape.gradient(value, args)
    args = [ops.convert_to_tensor(a).detach().clone().requires_grad_(True) for a in args]
    value, aux = fn(*args)
    grads = torch.autograd.grad(value, args, allow_unused=True)
    return value, aux, [g if g is not None else torch.zeros_like(a) for g, a in zip(grads, args)]


def set_weights(layer, seed, names=None):
    """Deterministic values for every float weight (or those `names`; BN variances kept positive)."""
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        if not keras.backend.standardize_dtype(w.dtype).startswith("float") or (names and w.name not in names):
            continue
        value = rng.normal(0.0, 0.3, size=w.shape)
        if "variance" in w.path:
            value = rng.uniform(0.5, 1.5, size=w.shape)
        w.assign(value.astype(w.dtype))


# -- heads ----------------------------------------------------------------------
HEAD_RANDOM_WEIGHTS = ("kernel", "bias", "centers")


def make_head(name):
    head = kfm.layers.build_head(name, C, class_counts=[3, 1, 4, 2, 5, 2], num_samples=N_SAMPLES)
    head.build((None, D))
    rng = np.random.default_rng(1)
    for w in head.weights:
        if w.name in HEAD_RANDOM_WEIGHTS:
            w.assign(rng.normal(0.0, 1.0, size=w.shape).astype(w.dtype))
    if isinstance(head, kfm.layers.SubFaceDense):
        fixed = np.array([5, 0, 3, 6], "int32")  # the random subspace, fixed
        head.sample_subspace = lambda: ops.convert_to_tensor(fixed)
    return head


def head_inputs(head):
    rng = np.random.default_rng(2)
    emb = (rng.normal(size=(B, D)) * rng.uniform(5.0, 30.0, size=(B, 1))).astype("float32")
    labels = np.array([0, 2, 2, 5, 1, 3], "int32")
    extra = [np.array([0, 4, 9, 1, 7, 3], "int32")] if isinstance(head, kfm.layers.KappaMarginDense) else []
    cot = rng.normal(size=(B, C)).astype("float32")
    return emb, labels, extra, cot


def check_head(name):
    head = make_head(name)
    emb, labels, extra, cot = head_inputs(head)
    ntv = [v.value for v in head.non_trainable_variables]
    initial = {v.path: tolist(v.value) for v in head.non_trainable_variables}
    weights = {v.path: tolist(v.value) for v in head.trainable_variables}  # for the NumPy references

    def fn(e, *tv):
        out, new_ntv, losses = head.stateless_call(
            list(tv), ntv, [e, labels, *extra], training=True, return_losses=True
        )
        extra_loss = sum(ops.sum(loss) for loss in losses) if losses else 0.0
        return ops.sum(out * ops.convert_to_tensor(cot)) + extra_loss, (out, new_ntv, extra_loss)

    _, (logits, new_ntv, extra_loss), grads = value_and_grads(fn, [emb] + [v.value for v in head.trainable_variables])
    state = {v.path: tolist(x) for v, x in zip(head.non_trainable_variables, new_ntv) if x is not None}
    # The same step called directly (TF scatter / torch in-place paths), then inference.
    head([emb, labels, *extra], training=True)
    eager_state = {v.path: tolist(v.value) for v in head.non_trainable_variables}
    return {
        "logits": tolist(logits),
        "extra_loss": float(np_(extra_loss)),
        "grad_embeddings": tolist(grads[0]),
        "grad_weights": {v.path: tolist(g) for v, g in zip(head.trainable_variables, grads[1:])},
        "initial_state": initial,
        "state": state,
        "eager_state": eager_state,
        "inference": tolist(head(emb)),
        "inputs": {"embeddings": emb.tolist(), "labels": labels.tolist(), "cotangent": cot.tolist()},
        "initial_weights": weights,
    }


# -- backbones --------------------------------------------------------------------
def make_backbones():
    if _BACKBONES:
        return _BACKBONES
    _BACKBONES.update({
        "iresnet": kfm.backbones.IResNet(
            stage_blocks=(1, 1, 1, 1), stage_filters=(8, 8, 16, 16), image_size=32, embedding_dim=16
        ),
        "mobilefacenet": kfm.backbones.MobileFaceNet(
            image_size=32, width_multiplier=0.125, blocks=(1, 1, 1, 1), embedding_dim=16
        ),
    })
    if os.environ.get("KFM_BACKENDS_FULL"):  # keras.applications' ResNet50: slow to build on JAX
        _BACKBONES["resnet50"] = kfm.backbones.KerasApplicationBackbone(
            "ResNet50", image_size=32, embedding_dim=16
        )
    return _BACKBONES


def check_backbone(model, gradients=True):
    set_weights(model, 3)
    rng = np.random.default_rng(4)
    images = rng.uniform(-1.0, 1.0, size=(2, 32, 32, 3)).astype("float32")
    cot = rng.normal(size=(2, 16)).astype("float32")
    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]

    def fn(x):
        out, _ = model.stateless_call(tv, ntv, x, training=True)
        return ops.sum(out * ops.convert_to_tensor(cot)), out

    out = {"inference": tolist(model(images, training=False))}
    if gradients:
        _, train_out, (grad,) = value_and_grads(fn, [images], jit=True)
        out["grad_images"] = tolist(grad)
    else:
        train_out = fn(images)[1]
    out["training"] = tolist(train_out)
    return out


# -- fit ----------------------------------------------------------------------------
def tiny_backbone(seed=5):
    """The shared tiny IResNet, trainable, with deterministic weights (BN at its initial state)."""
    model = make_backbones()["iresnet"]
    model.trainable = True
    set_weights(model, seed)
    for w in model.weights:
        name = w.path.rsplit("/", 1)[-1]
        if name in ("beta", "moving_mean"):
            w.assign(np.zeros(w.shape, "float32"))
        elif name in ("gamma", "moving_variance"):
            w.assign(np.ones(w.shape, "float32"))
    return model


def fit_data(n=24, seed=6):
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1.0, 1.0, size=(2, n, IMAGE, IMAGE, 3)).astype("float32")
    labels = np.array([0, 1, 2, 3] * (n // 4), "int32")[rng.permutation(n)]
    labels[:2] = 0  # unequal class counts
    return images, labels


def compile_model(model, lr=0.05, head_seed=None):
    """Compile; with `head_seed`, first build the head and give it deterministic weights."""
    if head_seed is not None:
        images, labels = fit_data()
        model({"images": images[0][:2], "labels": labels[:2]})
        set_weights(model.head, head_seed, names=HEAD_RANDOM_WEIGHTS)
    model.compile(optimizer=keras.optimizers.SGD(lr), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def kappa_state(head):
    out = {
        "feature_counts": tolist(head.feature_counts.value),
        "feature_sums": tolist(head.feature_sums.value),
        "kappa": tolist(head.kappa),
        "psi": tolist(head.psi),
    }
    if head.estimator == "memory_buffer":
        out["memory"] = tolist(head.memory.value)
    return out


def fit_memory_buffer(out_dir):
    """Frozen backbone (fixed features), every sample visited twice: an exact eq. 5 reference."""
    images, labels = fit_data()
    n = len(labels)
    perm = np.random.default_rng(7).permutation(n)
    index = np.concatenate([np.arange(n), perm]).astype("int32")
    x = {"images": np.concatenate([images[0], images[1][perm]]), "labels": labels[index], "index": index}
    backbone = tiny_backbone()
    backbone.trainable = False
    counts = np.bincount(labels, minlength=4)
    head = kfm.layers.KappaMarginDense(4, class_counts=counts, num_samples=n, scale=8.0, buffer_alpha=0.3)
    model = compile_model(kfm.FaceRecognizer(backbone, head), head_seed=12)
    model.fit(x, x["labels"], batch_size=8, epochs=1, shuffle=False, verbose=0)
    result = {"index": index.tolist(), "labels": x["labels"].tolist(), "after_epoch": kappa_state(head)}
    result["features"] = tolist(backbone(x["images"], training=False))  # inference mode: frozen BN
    updater = KappaUpdater()
    updater.set_model(model)
    logs = {}
    updater.on_epoch_end(0, logs)
    result["after_updater"] = kappa_state(head)
    result["updater_logs"] = logs
    # KappaUpdater inside fit.
    history = model.fit(x, x["labels"], batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[KappaUpdater()])
    result["fit_history"] = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    result["after_fit_with_updater"] = kappa_state(head)
    model.save(os.path.join(out_dir, f"{BACKEND}_kappa.keras"))
    result["roundtrip_images"] = images[0][:4].tolist()
    result["roundtrip_embeddings"] = tolist(model.embedder(images[0][:4], training=False))
    return result


class RecordBackbone(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        self.recorded = getattr(self, "recorded", []) + [self.model.backbone.get_weights()]


def fit_momentum_encoder():
    """Trainable backbone; reference: the EMA of the recorded weights and its features."""
    images, labels = fit_data()
    backbone = tiny_backbone()
    head = kfm.layers.KappaMarginDense(
        4, class_counts=np.bincount(labels, minlength=4), estimator="momentum_encoder", encoder_momentum=0.9, scale=8.0
    )
    model = compile_model(kfm.FaceRecognizer(backbone, head), head_seed=11)
    recorder = RecordBackbone()
    model.fit({"images": images[0], "labels": labels}, labels, batch_size=8, epochs=1, shuffle=False, verbose=0,
              callbacks=[recorder])
    encoder = model.momentum_encoder.get_weights()
    reference = backbone  # re-used for the reference features (its training is over)
    ema = [np_(w) for w in recorder.recorded[0]]
    sums, counts = np.zeros((4, FIT_D)), np.zeros(4)
    for step, weights in enumerate(recorder.recorded):
        ema = [0.9 * e + 0.1 * np_(w) for e, w in zip(ema, weights)]
        reference.set_weights([e.astype("float32") for e in ema])
        batch = slice(8 * step, 8 * step + 8)
        feats = np_(reference(images[0][batch], training=False))
        feats /= np.linalg.norm(feats, axis=1, keepdims=True)
        np.add.at(sums, labels[batch], feats)
        np.add.at(counts, labels[batch], 1)
    return {
        "labels": labels.tolist(),
        "after_epoch": kappa_state(head),
        "reference_sums": sums.tolist(),
        "reference_counts": counts.tolist(),
        "encoder_max_abs_error": max(float(np.abs(np_(a) - b).max()) for a, b in zip(encoder, ema)),
        "steps": len(recorder.recorded),
    }


def fit_stateful_heads():
    """CurricularFace (tf.data input), Center loss (a generator), SphereFace + annealing (NumPy)."""
    import tensorflow as tf

    images, labels = fit_data()
    out = {}
    x = {"images": images[0], "labels": labels}

    model = compile_model(kfm.FaceRecognizer(tiny_backbone(), kfm.layers.CurricularMarginDense(4, scale=8.0)), head_seed=8)
    ds = tf.data.Dataset.from_tensor_slices((x, labels)).batch(8)
    model.fit(ds, epochs=1, verbose=0)
    out["curricularface_t"] = float(np_(model.head.t))
    out["curricularface_kernel"] = tolist(model.head.kernel)

    model = compile_model(kfm.FaceRecognizer(tiny_backbone(), kfm.layers.CenterLossDense(4, center_weight=0.1)), head_seed=9)
    initial = np_(model.head.centers)

    def batches():
        for start in range(0, len(labels), 8):
            yield {"images": images[0][start:start + 8], "labels": labels[start:start + 8]}, labels[start:start + 8]

    model.fit(batches(), epochs=1, verbose=0, steps_per_epoch=3)
    out["centerloss_centers"] = tolist(model.head.centers)
    out["centerloss_initial"] = initial.tolist()

    model = compile_model(kfm.FaceRecognizer(tiny_backbone(), kfm.layers.SphereMarginDense(4)), head_seed=10)
    annealing = SphereFaceAnnealing()
    history = model.fit(x, labels, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[annealing])
    out["sphereface_lambda"] = float(np_(model.head.annealing_lambda))
    out["sphereface_expected"] = sphereface_lambda(3)
    out["sphereface_iterations"] = int(np_(model.optimizer.iterations))
    out["sphereface_loss"] = [float(v) for v in history.history["loss"]]
    return out


def main(out_dir):
    keras.utils.set_random_seed(0)
    timings, result = {}, {"backend": keras.backend.backend()}

    def timed(key, fn, *args):
        start = time.perf_counter()
        try:
            result[key] = fn(*args)
        except Exception as exc:  # noqa: BLE001 - reported per check, not fatal for the others
            import traceback

            result[key] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
        timings[key] = round(time.perf_counter() - start, 2)

    timed("heads", lambda: {name: safe(check_head, name) for name in kfm.layers.head_names()})
    timed("backbones", lambda: {name: safe(check_backbone, m) for name, m in make_backbones().items()})
    timed("memory_buffer", fit_memory_buffer, out_dir)
    timed("momentum_encoder", fit_momentum_encoder)
    timed("stateful_heads", fit_stateful_heads)
    result["timings"] = timings
    with open(os.path.join(out_dir, f"{BACKEND}.json"), "w") as f:
        json.dump(result, f)


def safe(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001
        import traceback

        return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}


if __name__ == "__main__":
    main(sys.argv[1])
