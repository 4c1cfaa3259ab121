"""Putting a run together: data, strategy, model, optimizer, callbacks, resume, outputs.

`run(config)` is what `examples/train_ms1mv2.py` calls. Outputs in `config.run_dir`:

    config.json        the resolved TrainConfig
    data_report.json   the training data (`--data` roots): kinds, identities, images, merged
                       identities, duplicates, exclusions, bad records; identities.tsv (label ->
                       identity) and duplicates.tsv next to it
    checkpoints/       tf.train checkpoints (fault tolerance; see TrainingCheckpoint); on JAX
                       ckpt-<step>.npz files (WeightsCheckpoint)
    history.jsonl      one JSON line of logs per epoch (loss, lr, images_per_second, kappa_*, val_*)
    training.png       loss, mean kappa per epoch, margin histogram (matplotlib)
    model.keras        the trained FaceRecognizer
    results.json       summary (and the held-out verification of the synthetic default)

On JAX (`config.backend="jax"`, KERAS_BACKEND=jax) the same run trains under `keras.distribution`:
`DataParallel` over several devices, or with `config.shard_classes` the class-centre matrix split
over the devices (`keras_facemargin.training.distribution.class_sharded_distribution`). JAX runs
checkpoint with `keras_facemargin.callbacks.WeightsCheckpoint` (`tf.train` cannot track JAX
variables): every model and optimizer variable in one `.npz` per checkpoint, gathered from the
shards on save and laid out again under each variable's layout on restore, so they resume the same
way (a TensorFlow run's checkpoints are refused by a JAX run, and the reverse).

Example:
    >>> from keras_facemargin.training import get_experiment, run
    >>> results = run(get_experiment("synthetic", epochs=2))
"""

import json
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional

import keras
import numpy as np

from keras_facemargin import callbacks as kfm_callbacks
from keras_facemargin.training.config import TrainConfig
from keras_facemargin.training.plots import plot_training
from keras_facemargin.utils import keras_compat
from keras_facemargin.utils.atomic import atomic_write_json


def check_backend(config):
    """Raise `ValueError` when keras runs on another backend than `config.backend`."""
    if keras.backend.backend() != config.backend:
        raise ValueError(
            f"The run is configured for backend={config.backend!r}, but keras runs on {keras.backend.backend()!r}: "
            f"set KERAS_BACKEND={config.backend} before keras is imported (examples/train_ms1mv2.py "
            f"--backend {config.backend} does)."
        )


def default_strategy(config):
    """`strategy.get_strategy(config.multi_worker)` on TensorFlow; TF's no-op default strategy on JAX,
    whose runs are distributed by `keras.distribution` instead (`jax_distribution`)."""
    from keras_facemargin.training import strategy as strat

    if config.backend != "tensorflow":
        import tensorflow as tf

        return tf.distribute.get_strategy()
    return strat.get_strategy(config.multi_worker)


def jax_distribution(config, head, devices=None):
    """The `keras.distribution` of a JAX run: class-sharded `ModelParallel` (`config.shard_classes`),
    `DataParallel` over several devices, or None on one device."""
    from keras_facemargin.training.distribution import class_sharded_distribution

    devices = list(devices) if devices is not None else keras.distribution.list_devices()
    if config.shard_classes:
        return class_sharded_distribution(head, devices=devices)
    if len(devices) > 1:
        return keras.distribution.DataParallel(devices=devices)
    return None


def make_optimizer(config, learning_rate):
    """The run's SGD: `RowSparseSGD` for Partial FC on TensorFlow, `keras.optimizers.SGD` otherwise.

    With `config.sample_rate < 1` on TensorFlow the class-centre matrix gets a row gradient
    (`IndexedSlices`) and `keras_facemargin.training.sparse_sgd.RowSparseSGD` updates only the
    sampled rows of it and of its momentum (insightface PartialFC v1: a row not sampled keeps its
    centre and momentum bit-identical; the backbone gets plain SGD). On JAX (and at rate 1) the
    gradient is dense and Keras SGD moves every row (PartialFC v2's dense momentum). Both keep
    the momentum slots of Keras SGD, so checkpoints hold the same variables.

    Args:
        config: the `TrainConfig` (`sample_rate`, `backend`, `momentum`, `weight_decay`).
        learning_rate: a float or a `LearningRateSchedule`.

    Example:
        >>> make_optimizer(get_experiment("glint360k"), 0.1)  # RowSparseSGD on TensorFlow
    """
    kwargs = dict(momentum=config.momentum, weight_decay=config.weight_decay)
    if config.sample_rate < 1 and config.backend == "tensorflow":
        from keras_facemargin.training.sparse_sgd import RowSparseSGD

        return RowSparseSGD(learning_rate, **kwargs)
    return keras.optimizers.SGD(learning_rate, **kwargs)


def epoch_seed(seed, epoch):
    """Data-order seed of `epoch`: the order depends only on (seed, epoch), so a resumed run sees the same batches."""
    return (int(seed) * 1_000_003 + int(epoch)) % (2**31 - 1)


@dataclass
class DataSpec:
    """What the trainer needs to know about the training set.

    Attributes:
        num_classes, class_counts, num_samples: identities, images per identity, |D|.
        image_shape: (H, W, 3).
        steps_per_epoch: global steps S per epoch.
        make_dataset: `(epoch, batch_size, shard) -> tf.data.Dataset`, `shard` = (num, index) or None.
        description: lines for the log.
        heldout: `(images_a, images_b, is_same)` pairs of held-out identities (synthetic), or None.
        training_set: the `keras_facemargin.data.sources.TrainingSet` of `config.data` (None: synthetic).
        bad_records: the `BadRecordReport` every epoch's dataset counts undecodable images into.
    """

    num_classes: int
    class_counts: np.ndarray
    num_samples: int
    image_shape: tuple
    steps_per_epoch: int
    make_dataset: Callable
    description: str
    heldout: Optional[tuple] = None
    training_set: Optional[object] = None
    bad_records: Optional[object] = None


def prepare_data(config: TrainConfig, num_workers=1):
    """The `DataSpec` of `config.data` (RecordIO / image-folder / TFRecord roots) or of the synthetic default.

    Example:
        >>> spec = prepare_data(get_experiment("ms1mv2", data=("celeba/color", "celeba/10k"), image_size=112))
        >>> spec.num_classes, spec.class_counts.sum() == spec.num_samples
    """
    if config.synthetic:
        return _synthetic_data(config, num_workers)
    return _file_data(config, num_workers)


def _steps(num_samples, config, num_workers):
    per_worker = config.batch_size // num_workers
    steps = (num_samples // num_workers) // per_worker
    if config.steps_per_epoch is not None:
        if config.steps_per_epoch > steps:
            raise ValueError(
                f"`steps_per_epoch`={config.steps_per_epoch} exceeds the {steps} full batches of "
                f"{config.batch_size} images in the training set."
            )
        steps = config.steps_per_epoch
    if steps == 0:
        raise ValueError(
            f"`batch_size`={config.batch_size} exceeds the training set ({num_samples} images)."
        )
    return steps


def _synthetic_data(config, num_workers):
    from keras_facemargin import data

    size = config.image_size or 112
    faces = data.SyntheticFaces(
        num_identities=config.synthetic_identities + config.synthetic_heldout, image_size=size, seed=config.seed
    )
    if config.synthetic_heldout:
        train_ids, test_ids = faces.split(config.synthetic_identities)
    else:
        train_ids, test_ids = np.arange(config.synthetic_identities), None
    images, labels, _ = faces.to_arrays(train_ids)
    counts = np.bincount(labels, minlength=config.synthetic_identities)

    def make(epoch, batch_size, shard):
        ds = data.make_training_dataset(images, labels, batch_size=batch_size, seed=epoch_seed(config.seed, epoch),
                                        augment_flip=config.augment_flip)
        return ds if shard is None else ds.shard(*shard)

    heldout = None
    if config.synthetic_heldout >= 2:
        n_pairs = max(20, min(2000, 20 * (config.synthetic_heldout // 2)))
        pairs = faces.verification_pairs(n_pairs, identities=test_ids, seed=config.seed)
        heldout = faces.pair_images(pairs)
    return DataSpec(
        num_classes=config.synthetic_identities,
        class_counts=counts,
        num_samples=len(labels),
        image_shape=(size, size, 3),
        steps_per_epoch=_steps(len(labels), config, num_workers),
        make_dataset=make,
        description=(
            f"SYNTHETIC data (no --data given): {config.synthetic_identities} generated identities, "
            f"{len(labels)} images of {size}x{size} px, {config.synthetic_heldout} held-out identities"
        ),
        heldout=heldout,
    )


def _file_data(config, num_workers):
    from keras_facemargin.data.errors import BadRecordReport
    from keras_facemargin.data.training_set import load_training_set

    ts = load_training_set(config.data, merge_identities=config.merge_identities,
                           exclude_identities=config.exclude_identities, image_size=config.image_size,
                           follow_links=config.follow_links)
    report = BadRecordReport()

    def make(epoch, batch_size, shard):
        # repeat: images that fail to decode leave the epoch short; the next pass fills the last steps.
        return ts.make_dataset(batch_size, seed=epoch_seed(config.seed, epoch), shard=shard, repeat=True,
                               augment_flip=config.augment_flip, report=report)

    h, w = ts.image_hw
    return DataSpec(
        num_classes=ts.num_classes,
        class_counts=ts.class_counts,
        num_samples=ts.num_samples,
        image_shape=(h, w, 3),
        steps_per_epoch=_steps(ts.num_samples, config, num_workers),
        make_dataset=make,
        description="\n".join(ts.summary_lines()),
        training_set=ts,
        bad_records=report,
    )


def check_resumed_data(run_dir, training_set):
    """Raise `DataSourceError` when `run_dir` holds a checkpoint whose `data_report.json` describes other data.

    The checkpoint's class weights and KappaFace memory rows are indexed by label and sample
    index, so resuming on other identities or samples would silently mix them up.

    Returns:
        The latest checkpoint path (tf.train, or a JAX run's `.npz`), or None (fresh run).
    """
    import tensorflow as tf

    from keras_facemargin.data.sources import DataSourceError

    directory = str(run_dir / "checkpoints")
    latest = tf.train.latest_checkpoint(directory) or kfm_callbacks.latest_weights_checkpoint(directory)
    path = run_dir / "data_report.json"
    if latest is None or not path.is_file():
        return latest
    old = json.loads(path.read_text())
    if old.get("fingerprint") != training_set.fingerprint():
        then = [s.get("path") for s in old.get("sources", [])]
        raise DataSourceError(
            f"Cannot resume {run_dir}: its checkpoint {latest} was trained on other data ({then}: "
            f"{old.get('num_classes')} identities, {old.get('num_samples')} images, merge_identities="
            f"{old.get('merge_identities')!r}, {old.get('exclusions', {}).get('excluded_identities', 0)} identities "
            f"excluded) than --data now ({[s.path for s in training_set.sources]}: {training_set.num_classes} "
            f"identities, {training_set.num_samples} images, merge_identities={training_set.merge_identities!r}, "
            f"{len(training_set.exclusions['excluded'])} identities excluded). Labels and KappaFace memory rows "
            "would no longer match: restore the data and options, or start a new run (--name)."
        )
    return latest


def epoch_progbar(total_epochs):
    """A `ProgbarLogger` showing "Epoch e/total_epochs" across the per-epoch `fit` calls."""
    import keras

    class EpochProgbar(keras.callbacks.ProgbarLogger):
        def set_params(self, params):
            super().set_params(params)
            self.epochs = total_epochs

    return EpochProgbar()


def verification_callback(config, data_spec=None):
    """The epoch-end `VerificationCallback` (logs `val_<set>_accuracy`), or None.

    With `config.data`: the `.bin` (and LFW/CFP folder) sets found there, all
    (`verification_sets="auto"`) or the named ones. Synthetic: the held-out
    identities' pairs, as `val_synthetic_heldout_accuracy`.
    """

    if not config.verification_sets:
        return None
    if config.synthetic:
        if data_spec is None or data_spec.heldout is None:
            return None
        return kfm_callbacks.VerificationCallback({"synthetic_heldout": data_spec.heldout}, verbose=0)
    from keras_facemargin.evaluation import bin_sets

    folders = verification_folders(config, data_spec)
    sources = {}
    for folder in folders:  # a name found in several folders: the first root's
        for name, src in bin_sets.find_verification_sets(folder).items():
            sources.setdefault(name, src)
    if config.verification_sets != "auto":
        wanted = [n.strip() for n in config.verification_sets.split(",") if n.strip()]
        missing = sorted(set(wanted) - set(sources))
        if missing:
            raise ValueError(
                f"`verification_sets` {missing} not found in {folders} (the RecordIO / TFRecord folders of "
                f"`data`; image-folder roots are not searched); found {sorted(sources)}."
            )
        sources = {n: sources[n] for n in wanted}
    if not sources:
        print(f"No verification sets (.bin) found in {folders or 'the data (image-folder roots are not searched)'}: "
              "no per-epoch verification.")
        return None
    return kfm_callbacks.VerificationCallback({name: src.path for name, src in sources.items()})


def verification_folders(config, data_spec=None):
    """Folders searched for `.bin` / LFW-style verification sets: each RecordIO folder and the
    folder of each TFRecord root (image-folder roots are identity trees and are not searched)."""
    from pathlib import Path

    from keras_facemargin.data.sources import detect_data_kind

    if data_spec is not None and data_spec.training_set is not None:
        kinds = [(s.path, s.kind) for s in data_spec.training_set.sources]
    else:
        kinds = [(p, detect_data_kind(p)) for p in config.data]
    folders = []
    for path, kind in kinds:
        p = Path(path)
        if kind == "image_folder":
            continue
        folder = p if p.is_dir() else p.parent
        if str(folder) not in folders:
            folders.append(str(folder))
    return folders


class Trainer:
    """Builds and trains a run described by a `TrainConfig`.

    `model.fit` under `MirroredStrategy` (all visible GPUs; the default strategy
    on one device), or the custom loop under `MultiWorkerMirroredStrategy`
    (`config.multi_worker`). `fit` is called once per epoch on that epoch's
    dataset (its order depends only on (seed, epoch)), so a restored run can
    skip exactly the steps of the interrupted epoch it already did. With
    `config.backend="jax"`: `model.fit` under `jax_distribution(config, head)`
    (class-sharded `ModelParallel` with `config.shard_classes`, else `DataParallel`
    over several devices), checkpointed by `WeightsCheckpoint` (`.npz`) instead of `TrainingCheckpoint`.

    Args:
        config: the run's `TrainConfig`; its `backend` must be the one keras runs on.
        strategy: a `tf.distribute.Strategy` (default: `default_strategy(config)`).
        extra_callbacks: callbacks run before the trainer's own (e.g. to inspect state).

    Example:
        >>> trainer = Trainer(get_experiment("synthetic", epochs=1))
        >>> results = trainer.train()
    """

    def __init__(self, config: TrainConfig, strategy=None, extra_callbacks=()):
        from keras_facemargin.training import strategy as strat

        check_backend(config)
        self.config = config
        self.distribution = None  # JAX: set by build_model
        self.strategy = strategy if strategy is not None else default_strategy(config)
        self.is_chief = strat.is_chief(self.strategy)
        _, self.worker_index, self.num_workers = strat.task_info() if config.multi_worker else (None, 0, 1)
        if config.batch_size % self.strategy.num_replicas_in_sync:
            raise ValueError(
                f"`batch_size`={config.batch_size} must be divisible by the "
                f"{self.strategy.num_replicas_in_sync} replicas."
            )
        self.num_devices = len(keras.distribution.list_devices()) if config.backend == "jax" else None
        if self.num_devices and config.batch_size % self.num_devices:
            raise ValueError(
                f"`batch_size`={config.batch_size} must be divisible by the {self.num_devices} JAX devices "
                "(keras.distribution splits every batch over them)."
            )
        self.extra_callbacks = list(extra_callbacks)
        self.data = None
        self.model = None

    # -- pieces --------------------------------------------------------------------
    def build_model(self):
        """Backbone + head + SGD (`make_optimizer`: `RowSparseSGD` for Partial FC on TensorFlow) with
        the epoch step decay, created in the strategy's scope.

        On JAX the head is made first and `jax_distribution(config, head)` set as the global
        distribution before any variable exists, so the class-sharded layout applies to them all.
        """
        from keras_facemargin import backbones
        from keras_facemargin.models import FaceRecognizer
        from keras_facemargin.training.heads import head_for_run
        from keras_facemargin.training.schedules import EpochStepDecay

        cfg, spec = self.config, self.data
        keras.mixed_precision.set_global_policy("mixed_float16" if cfg.mixed_precision else "float32")
        keras.utils.set_random_seed(cfg.seed)
        kappa = dict(temperature=cfg.temperature, gamma=cfg.gamma, buffer_alpha=cfg.buffer_alpha,
                     buffer_dtype=cfg.buffer_dtype, encoder_momentum=cfg.encoder_momentum)

        def make_head():
            return head_for_run(cfg.loss, spec.num_classes, spec.class_counts, spec.num_samples, cfg.scale,
                                cfg.estimator, cfg.margin, sample_rate=cfg.sample_rate, sample_seed=cfg.seed, **kappa)

        with self.strategy.scope():
            if cfg.backend == "jax":
                head = make_head()
                self.distribution = jax_distribution(cfg, head)
                if self.distribution is not None:
                    keras.distribution.set_distribution(self.distribution)
            kwargs = dict(cfg.backbone_kwargs)
            kwargs["image_size"] = spec.image_shape[:2]
            if cfg.embedding_dim is not None:
                kwargs["embedding_dim"] = cfg.embedding_dim
            backbone = backbones.get_backbone(cfg.backbone, **kwargs)
            if cfg.backend != "jax":
                head = make_head()
            model = FaceRecognizer(backbone, head)
            if cfg.sample_rate < 1:
                from keras_facemargin.layers.partial_fc import PartialFCLoss

                loss = PartialFCLoss(head)
            else:
                loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            schedule = EpochStepDecay(cfg.effective_lr, spec.steps_per_epoch, cfg.lr_steps, cfg.lr_factor)
            optimizer = make_optimizer(cfg, schedule)
            if cfg.mixed_precision:
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            # TF: no XLA (the scatter state updates and tf.data-fed steps run as graph ops); JAX: jax.jit,
            # without which every step runs op by op.
            model.compile(optimizer=optimizer, loss=loss, jit_compile=cfg.backend == "jax")
            h, w, _ = spec.image_shape
            model({"images": np.zeros((1, h, w, 3), "float32"), "labels": np.zeros((1,), "int32"),
                   "index": np.zeros((1,), "int32")}, training=False)
            optimizer.build(model.trainable_variables)
            if cfg.backend == "jax":
                # Keras' JAX `fit` builds the compiled loss and metrics from a first batch it draws from
                # the dataset, then iterates the dataset again, and a dataset reshuffles on each iteration:
                # the first `fit` of a process would train on another batch order than a later one, so a
                # resumed epoch would not see the uninterrupted run's batches. Build them from shapes here.
                specs = {"images": keras.KerasTensor((None, h, w, 3), "float32"),
                         "labels": keras.KerasTensor((None,), "int32"), "index": keras.KerasTensor((None,), "int32")}
                keras_compat.symbolic_build(model, data_batch=(specs, specs["labels"]))
        self.model = model
        return model

    def dataset_fn(self, epoch, skip=0):
        """The batches of `epoch` after its first `skip` steps (global batches, or distributed per worker)."""
        spec, cfg = self.data, self.config
        if not cfg.multi_worker:
            return spec.make_dataset(epoch, cfg.batch_size, None).skip(skip).take(spec.steps_per_epoch - skip)

        def per_worker(ctx):
            b = ctx.get_per_replica_batch_size(cfg.batch_size)
            shard = (ctx.num_input_pipelines, ctx.input_pipeline_id) if ctx.num_input_pipelines > 1 else None
            return spec.make_dataset(epoch, b, shard).skip(skip).take(spec.steps_per_epoch - skip)

        return self.strategy.distribute_datasets_from_function(per_worker)

    def make_callbacks(self):
        """extra, NaNGuard, throughput/lr, KappaUpdater, verification, history file, [TensorBoard], checkpoint, progress bar.

        The checkpoint comes after `KappaUpdater`, so an epoch-end checkpoint
        holds the psi the next epoch trains with and zeroed accumulators.
        """

        cfg, run_dir = self.config, self.config.run_dir
        if cfg.backend == "jax":
            self.checkpoint = kfm_callbacks.WeightsCheckpoint(
                run_dir / "checkpoints", self.model, self.data.steps_per_epoch, cfg.save_every_steps,
                cfg.keep_checkpoints, optimizer=self.model.optimizer,
            )
        else:
            self.checkpoint = kfm_callbacks.TrainingCheckpoint(
                run_dir / "checkpoints", self.model, self.data.steps_per_epoch, cfg.save_every_steps,
                cfg.keep_checkpoints, optimizer=self.model.optimizer, is_chief=self.is_chief, strategy=self.strategy,
            )
        # Throughput first: its epoch end comes before the (slow) verification.
        cbs = list(self.extra_callbacks) + [kfm_callbacks.NaNGuard(self.checkpoint), kfm_callbacks.ThroughputLogger(cfg.batch_size)]
        cbs += kfm_callbacks.head_callbacks(self.model)  # KappaUpdater, SphereFaceAnnealing
        self.verification = None
        if not cfg.multi_worker:  # predict-based evaluation is not collective-safe under MWMS
            self.verification = verification_callback(cfg, self.data)
            if self.verification is not None:
                cbs.append(self.verification)
        cbs.append(kfm_callbacks.HistoryFile(run_dir / "history.jsonl", enabled=self.is_chief))
        if cfg.tensorboard and self.is_chief:
            import keras

            cbs.append(keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), update_freq=100))
        cbs.append(self.checkpoint)
        if cfg.verbose:
            cbs.append(epoch_progbar(cfg.epochs))
        return cbs

    # -- the run ---------------------------------------------------------------------
    def train(self):
        """Prepare, restore if a checkpoint exists, train, then write the model, plots and results.

        On JAX the global `keras.distribution` set by `build_model` is restored afterwards.
        """
        previous = keras.distribution.distribution()
        try:
            return self._train()
        finally:
            if self.distribution is not None:
                keras.distribution.set_distribution(previous)

    def _train(self):
        cfg = self.config
        run_dir = cfg.run_dir
        t0 = time.time()
        self.data = prepare_data(cfg, self.num_workers)
        spec = self.data
        if spec.training_set is not None:
            check_resumed_data(run_dir, spec.training_set)  # before anything in run_dir is overwritten
        if self.is_chief:
            cfg.save()
            if spec.training_set is not None:
                spec.training_set.write_report(run_dir)
        self._log(
            f"{spec.description}.\nRun {cfg.run_name}: {cfg.loss} head"
            + (f" (Partial FC, sample rate {cfg.sample_rate:g})" if cfg.sample_rate < 1 else "")
            + f", {cfg.backbone} backbone, "
            f"{self._parallelism()}, "
            f"global batch {cfg.batch_size}, {spec.steps_per_epoch} steps/epoch, lr {cfg.effective_lr:g} "
            f"/ {1 / cfg.lr_factor:g} at epochs {list(cfg.lr_steps)}, {cfg.epochs} epochs. Output: {run_dir}/"
            + (f"\nData report: {run_dir / 'data_report.json'}" if spec.training_set is not None else "")
        )
        self.build_model()
        callbacks = self.make_callbacks()
        step = self.checkpoint.restore()
        initial_epoch, skip = divmod(step, spec.steps_per_epoch)
        if step:
            self._log(f"Resuming from {self.checkpoint.latest}: epoch {initial_epoch}, step {skip}.")
        if self.is_chief:
            kfm_callbacks.truncate_history(run_dir / "history.jsonl", initial_epoch)
        t_train = time.time()
        if initial_epoch < cfg.epochs:
            if cfg.multi_worker:
                self._train_custom_loop(callbacks, initial_epoch, skip)
            else:
                self._train_fit(callbacks, initial_epoch, skip)
        train_seconds = time.time() - t_train
        return self._finish(t0, train_seconds, step)

    def _parallelism(self):
        cfg = self.config
        if cfg.backend == "jax":
            if cfg.shard_classes:
                what = f"ModelParallel, class centres split {self.num_devices} ways"
            else:
                what = "DataParallel" if self.num_devices > 1 else "one device"
            return f"JAX, {self.num_devices} device(s) ({what}; .npz checkpoints)"
        kind = "MultiWorkerMirroredStrategy, custom loop" if cfg.multi_worker else type(self.strategy).__name__
        return f"{self.strategy.num_replicas_in_sync} replica(s) ({kind})"

    def _train_fit(self, callbacks, initial_epoch, skip):
        cfg, spec = self.config, self.data
        for epoch in range(initial_epoch, cfg.epochs):
            first = skip if epoch == initial_epoch else 0
            for cb in callbacks:
                if hasattr(cb, "first_step"):
                    cb.first_step = first
            self.model.fit(
                self.dataset_fn(epoch, first), initial_epoch=epoch, epochs=epoch + 1,
                steps_per_epoch=spec.steps_per_epoch - first, callbacks=callbacks, verbose=cfg.verbose,
                shuffle=False,
            )
            self._log_bad_records(epoch)
            if self.model.stop_training:
                break

    def _train_custom_loop(self, callbacks, initial_epoch, skip):
        from keras_facemargin.training.custom_loop import CustomLoop

        cfg = self.config
        loop = CustomLoop(self.model, self.model.optimizer, self.strategy, cfg.batch_size, loss=self.model.loss)
        verbose = cfg.verbose if self.is_chief else 0
        callbacks = [cb for cb in callbacks if verbose or cb.__class__.__name__ != "EpochProgbar"]
        loop.fit(self.dataset_fn, cfg.epochs, self.data.steps_per_epoch, initial_epoch, skip,
                 callbacks=callbacks, verbose=verbose)
        self._log_bad_records(cfg.epochs - 1)

    def _log_bad_records(self, epoch):
        """Print the images newly found undecodable (the report counts each once, over all epochs)."""
        report = self.data.bad_records
        if report is None or report.count == getattr(self, "_bad_logged", 0):
            return
        self._log(f"Epoch {epoch}: {report.count - getattr(self, '_bad_logged', 0)} more undecodable image(s) "
                  f"skipped; {report.summary()}")
        self._bad_logged = report.count

    def _finish(self, t0, train_seconds, start_step):
        from keras_facemargin.layers.kappaface import KappaMarginDense

        cfg, run_dir, model = self.config, self.config.run_dir, self.model
        history = kfm_callbacks.read_history(run_dir / "history.jsonl")
        results = {
            "run": cfg.run_name,
            "epochs": cfg.epochs,
            "resumed_from_step": start_step,
            "train_seconds": round(train_seconds, 1),
            "replicas": self.strategy.num_replicas_in_sync,
            "history": history,
        }
        if cfg.backend == "jax":
            from keras_facemargin.training.distribution import class_heads, shard_shapes

            results["backend"] = {"name": "jax", "devices": self.num_devices,
                                  "distribution": type(self.distribution).__name__ if self.distribution else None}
            if cfg.shard_classes:
                results["backend"]["kernel_shards"] = [shard_shapes(h.kernel) for h in class_heads(model)]
        # Every worker saves (reading on_read variables is collective); non-chiefs to a scratch file.
        model_path = run_dir / "model.keras" if self.is_chief else run_dir / f".model_worker{self.worker_index}.keras"
        model.save(model_path)
        if not self.is_chief:
            os.remove(model_path)
            return results
        kappa_layers = kfm_callbacks.find_layers(model, KappaMarginDense)
        margins = np.asarray(kappa_layers[0].margins()) if kappa_layers else None
        if cfg.plots and history:
            path = plot_training(history, run_dir / "training.png", margins, title=cfg.run_name)
            if path:
                self._log(f"Plot: {path}")
        if self.verification is not None and self.verification.history:
            results["verification"] = {name: runs[-1].to_dict() for name, runs in self.verification.history.items()}
            for name, runs in self.verification.history.items():
                self._log(f"Verification {name}: {100 * runs[-1].accuracy_mean:.2f} +- "
                          f"{100 * runs[-1].accuracy_std:.2f} % (10-fold)")
        spec = self.data
        if spec.training_set is not None:
            report = spec.bad_records
            results["data"] = {"num_classes": spec.num_classes, "num_samples": spec.num_samples,
                               "fingerprint": spec.training_set.fingerprint(),
                               "bad_records_up_front": len(spec.training_set.bad_records),
                               "bad_records_training": {"count": report.count, "by_reason": dict(report.by_reason),
                                                        "examples": report.examples}}
            spec.training_set.write_report(run_dir, bad_records=report)
            if spec.training_set.bad_records or report.count:
                self._log(f"Bad records: {len(spec.training_set.bad_records)} left out up front, {report.count} "
                          f"undecodable while training ({report.summary()}); see {run_dir / 'data_report.json'}")
        results["total_seconds"] = round(time.time() - t0, 1)
        atomic_write_json(run_dir / "results.json", results, indent=2, default=float)
        self._log(f"Done in {results['total_seconds']:.0f} s; model, history and results in {run_dir}/")
        return results

    def _log(self, message):
        if self.is_chief:
            print(message, flush=True)


def run(config: TrainConfig, strategy=None, extra_callbacks=()):
    """Train the run described by `config` (resuming from its checkpoints); returns the results dict.

    Example:
        >>> run(get_experiment("synthetic", epochs=1, output="/tmp/runs"))
    """
    return Trainer(config, strategy=strategy, extra_callbacks=extra_callbacks).train()
