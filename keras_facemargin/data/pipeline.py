"""``tf.data`` input pipelines with the package-wide element contract.

Every training dataset yields batches structured as::

    ({"images": float32 (B, H, W, 3) in [-0.996, 0.996],   # (x - 127.5) / 128
      "labels": int32 (B,),                              # class id in [0, num_classes)
      "index":  int32 (B,)},                             # position of the sample in the training set
     labels int32 (B,))

``index`` identifies the sample across epochs (KappaFace keeps a per-sample
memory buffer). Pipelines shuffle *indices* and gather/render whole batches, so
per-step cost does not depend on the image buffer size. Shuffling and flipping
are deterministic given ``seed``; both change from epoch to epoch.

File-backed sets (:mod:`keras_facemargin.data.formats` and
:class:`~keras_facemargin.data.training_set.TrainingSet`) share one tail,
:func:`build_decoded_pipeline`: chunks of sample indices are decoded with OpenCV inside
``tf.numpy_function`` (:func:`decode_image_into`), failures dropped, then rebatched, flipped
and normalised in TF; :func:`resolve_shard` turns a ``shard`` argument into disjoint shards.

Example::

    ds = make_training_dataset(images_uint8, labels, batch_size=64, seed=0)
    inputs, y = next(iter(ds))
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_facemargin.utils.images import DEFAULT_MAX_IMAGE_PIXELS, decode_image, normalize_images, resize_image

__all__ = ["normalize_images", "make_training_dataset", "make_synthetic_training_dataset",
           "build_decoded_pipeline", "decode_image_into", "resolve_shard"]


def _check_common(num_samples, batch_size, drop_remainder, seed):
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"`seed` must be an integer, got {seed!r}.")
    if num_samples == 0:
        raise ValueError("The training set is empty (0 samples).")
    if num_samples >= 2**31:
        raise ValueError("At most 2**31 - 1 samples are supported (int32 `index`).")
    if drop_remainder and num_samples < batch_size:
        raise ValueError(
            f"`batch_size` ({batch_size}) exceeds the number of samples ({num_samples}) with "
            "`drop_remainder=True`; the dataset would be empty."
        )


def _check_labels(labels, num_samples):
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.shape[0] != num_samples:
        raise ValueError(
            f"`labels` must be 1-D with one entry per image ({num_samples}), got shape {lab.shape}."
        )
    if lab.size and not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"`labels` must be integers, got dtype {lab.dtype}.")
    if lab.size and (lab.min() < 0 or lab.max() >= 2**31):
        raise ValueError("`labels` must be in [0, 2**31).")
    return lab.astype(np.int32)


def _build(num_samples, labels, fetch, batch_size, shuffle, seed, augment_flip, drop_remainder,
           repeat, num_parallel_calls=tf.data.AUTOTUNE, augment=None):
    """Index pipeline -> batched fetch (int64 indices -> uint8 images) -> flip -> augment -> normalise."""
    labels_t = tf.constant(labels, tf.int32)
    seed = int(seed)
    ds = tf.data.Dataset.range(num_samples)
    if shuffle:
        ds = ds.shuffle(num_samples, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    # One fresh random int64 per batch (different every epoch, deterministic given seed).
    rand = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    ds = tf.data.Dataset.zip((ds, rand))
    flip_seed = tf.constant(seed % (2**31), tf.int64)

    def _map(idx, r):
        images = fetch(idx)
        if augment_flip:
            n = tf.shape(idx)[0]
            u = tf.random.stateless_uniform([n], seed=tf.stack([r, flip_seed]))
            images = tf.where((u < 0.5)[:, None, None, None], tf.reverse(images, axis=[2]), images)
        if augment is not None:
            images = augment(images, tf.stack([r, flip_seed + 1]))
        lab = tf.gather(labels_t, idx)
        inputs = {"images": normalize_images(images), "labels": lab, "index": tf.cast(idx, tf.int32)}
        return inputs, lab

    ds = ds.map(_map, num_parallel_calls=num_parallel_calls, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def make_training_dataset(images, labels, batch_size: int = 64, shuffle: bool = True, seed: int = 0,
                          augment_flip: bool = True, drop_remainder: bool = True,
                          repeat: bool = False, augment=None) -> tf.data.Dataset:
    """Batched training dataset over in-memory uint8 images.

    Args:
        images: uint8 ``(N, H, W, 3)`` array; row ``i`` is training sample ``index == i``.
        labels: int ``(N,)`` class ids.
        batch_size: images per batch.
        shuffle: reshuffle sample order every epoch (seeded).
        seed: seed for shuffling and flips.
        augment_flip: random horizontal flip with probability 0.5.
        drop_remainder: drop the last incomplete batch (static batch shape).
        repeat: repeat indefinitely (use ``steps_per_epoch`` in ``fit``).
        augment: ``None`` or a callable ``(images, seed) -> images`` on 0..255 batches, e.g.
            :class:`keras_facemargin.data.augment.FaceAugmentation` (applied after the flip).

    Returns:
        ``tf.data.Dataset`` of ``({"images", "labels", "index"}, labels)`` (see module docstring).

    Raises:
        ValueError: bad shapes/dtypes, mismatched lengths, or an empty result.

    Example::

        x, y, _ = SyntheticFaces(50, image_size=64).to_arrays()
        ds = make_training_dataset(x, y, batch_size=32)
    """
    imgs = np.asarray(images)
    if imgs.ndim != 4 or imgs.shape[-1] != 3:
        raise ValueError(f"`images` must have shape (N, H, W, 3), got {imgs.shape}.")
    if imgs.dtype != np.uint8:
        raise ValueError(f"`images` must be uint8 (raw pixels), got {imgs.dtype}.")
    n = imgs.shape[0]
    lab = _check_labels(labels, n)
    _check_common(n, batch_size, drop_remainder, seed)
    images_t = tf.constant(imgs)

    def fetch(idx):
        return tf.gather(images_t, idx)

    if augment is not None and not callable(augment):
        raise ValueError(f"`augment` must be None or a callable (images, seed) -> images, got {augment!r}.")
    return _build(n, lab, fetch, int(batch_size), shuffle, seed, augment_flip, drop_remainder, repeat,
                  augment=augment)


def make_synthetic_training_dataset(faces, identities=None, batch_size: int = 64, shuffle: bool = True,
                                    seed: int = 0, augment_flip: bool = True,
                                    drop_remainder: bool = True, repeat: bool = False,
                                    cache="auto", max_cache_bytes: int = 1 << 30) -> tf.data.Dataset:
    """Training dataset over all images of ``identities`` of a :class:`SyntheticFaces`.

    Sample ``index`` ``i`` is row ``i`` of ``faces.image_specs(identities)`` (identity-major);
    labels are positions of identities in ``identities`` (``0..len(identities)-1``).

    Pre-rendering (``cache``) renders every image once (~1,300 images/s at 112 px on
    one core) and then gathers from memory, so later epochs cost nothing; on 2 CPU
    cores this is faster than re-rendering each epoch. On-the-fly rendering
    (``tf.numpy_function`` per batch, parallel map) is used for sets too large to
    hold; it produces identical pixels since each image depends only on
    ``(seed, identity, sample)``.

    Args:
        faces: a :class:`~keras_facemargin.data.synthetic.SyntheticFaces`.
        identities: distinct training identities (default: all).
        batch_size, shuffle, seed, augment_flip, drop_remainder, repeat: as in
            :func:`make_training_dataset`.
        cache: ``True`` pre-render, ``False`` render on the fly, ``"auto"`` pre-render
            when the images need at most ``max_cache_bytes``.
        max_cache_bytes: memory limit for ``cache="auto"``.

    Example::

        faces = SyntheticFaces(200, image_size=64)
        train_ids, _ = faces.split(150)
        ds = make_synthetic_training_dataset(faces, train_ids, batch_size=64)
    """
    if cache not in (True, False, "auto"):
        raise ValueError(f"`cache` must be True, False or 'auto', got {cache!r}.")
    img_ids, samples, labels = faces.image_specs(identities)
    n = img_ids.size
    _check_common(n, batch_size, drop_remainder, seed)
    s = faces.image_size
    nbytes = n * s * s * 3
    if cache is True or (cache == "auto" and nbytes <= max_cache_bytes):
        images = faces.render_batch(img_ids, samples)
        return make_training_dataset(images, labels, batch_size, shuffle, seed, augment_flip,
                                     drop_remainder, repeat)

    def _render(idx):
        return faces.render_batch(img_ids[idx], samples[idx])

    def fetch(idx):
        images = tf.numpy_function(_render, [idx], tf.uint8, stateful=False)
        images.set_shape([idx.shape[0], s, s, 3])
        return images

    return _build(n, labels.astype(np.int32), fetch, int(batch_size), shuffle, seed, augment_flip,
                  drop_remainder, repeat)


# --------------------------------------------------------------------------- file-backed pipelines
def decode_image_into(data, out, resize: bool, max_pixels=DEFAULT_MAX_IMAGE_PIXELS) -> str | None:
    """Decode encoded image ``data`` (uint8 array/bytes) as RGB into ``out`` (H, W, 3).

    The header is checked first (JPEG/PNG/BMP/WebP, at most ``max_pixels`` pixels; see
    :mod:`keras_facemargin.utils.images`); with ``resize`` an image of another size is resized
    by :func:`~keras_facemargin.utils.images.resize_image` (area when shrinking, else linear).

    Returns ``None`` on success, else a reason string (undecodable / over the cap / wrong size).
    """
    img, why = decode_image(data, max_pixels)
    if img is None:
        return why
    h, w = out.shape[:2]
    if img.shape[:2] != (h, w):
        if not resize:
            return f"image is {img.shape[0]}x{img.shape[1]}, expected {h}x{w}"
        img = resize_image(img, (h, w))
    out[...] = img
    return None


def resolve_shard(shard):
    """Turn a ``shard`` argument into ``(num_shards, shard_index)`` or ``None``.

    Args:
        shard: ``None`` (no sharding); ``"auto"`` (one shard per worker when a
            multi-worker strategy is in scope: ``MultiWorkerMirroredStrategy``
            or a ``TF_CONFIG`` cluster; single-machine ``MirroredStrategy``
            needs none); a ``tf.distribute.InputContext`` (from
            ``distribute_datasets_from_function``); or ``(num_shards, index)``.

    Example::

        resolve_shard((2, 1))  # -> (2, 1)
    """
    if shard is None:
        return None
    if isinstance(shard, tf.distribute.InputContext):
        n, i = shard.num_input_pipelines, shard.input_pipeline_id
    elif isinstance(shard, str):
        if shard != "auto":
            raise ValueError(f"`shard` must be None, 'auto', an InputContext or (num_shards, "
                             f"index), got {shard!r}.")
        if not tf.distribute.has_strategy():
            return None
        resolver = getattr(tf.distribute.get_strategy(), "cluster_resolver", None)
        if resolver is None or not resolver.cluster_spec().as_dict():
            return None
        spec = resolver.cluster_spec().as_dict()
        n_chief = len(spec.get("chief", []))
        n = n_chief + len(spec.get("worker", []))
        if resolver.task_type == "chief":
            i = 0
        elif resolver.task_type == "worker":
            i = n_chief + int(resolver.task_id)
        else:
            return None
    else:
        try:
            n, i = (int(v) for v in shard)
        except (TypeError, ValueError):
            raise ValueError(f"`shard` must be None, 'auto', an InputContext or (num_shards, "
                             f"index), got {shard!r}.") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"Invalid shard ({n}, {i}): need num_shards >= 1 and 0 <= index < num_shards.")
    return None if n == 1 else (n, i)


def _apply_shard_options(ds, shard):
    opts = tf.data.Options()
    # Explicit shards must not be sharded again by the strategy; otherwise shard by element.
    opts.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF if shard else tf.data.experimental.AutoShardPolicy.DATA)
    return ds.with_options(opts)


# Plain graph code: no AutoGraph conversion needed (also keeps tracing independent of the source file).
_no_autograph = tf.autograph.experimental.do_not_convert


def build_decoded_pipeline(source, load_chunk, image_hw, batch_size, shuffle, seed, augment_flip,
                           drop_remainder, repeat, num_parallel_calls, chunk_size, shard,
                           shuffle_buffer=None):
    """Shared tail of the file-backed pipelines (RecordIO, folders, TFRecord).

    Args:
        source: dataset of ``(index int64, label int32, *extra)`` (already sharded).
        load_chunk: NumPy function ``load_chunk(index, *extra) -> (uint8 (k, H, W, 3), bool ok (k,))``
            applied to chunks of ``chunk_size`` elements inside ``tf.numpy_function``;
            samples with ``ok == False`` are dropped before the final batching.
        image_hw: ``(H, W)``.
        shuffle_buffer: shuffle buffer (default: the whole source when its size is known).

    Returns:
        The contract dataset, prefetched.
    """
    h, w = image_hw
    seed = int(seed)
    if shuffle:
        card = int(source.cardinality())
        buf = shuffle_buffer if shuffle_buffer else (card if card > 0 else 10000)
        source = source.shuffle(int(buf), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        source = source.repeat()
    ds = source.batch(int(chunk_size))

    @_no_autograph
    def _load(idx, lab, *extra):
        images, ok = tf.numpy_function(load_chunk, [idx, *extra], [tf.uint8, tf.bool],
                                       stateful=False)
        images.set_shape([None, h, w, 3])
        ok.set_shape([None])
        return images, idx, lab, ok

    @_no_autograph
    def _ok(images, idx, lab, ok):
        return ok

    @_no_autograph
    def _drop_ok(images, idx, lab, ok):
        return images, idx, lab

    ds = ds.map(_load, num_parallel_calls=num_parallel_calls, deterministic=True)
    ds = ds.unbatch().filter(_ok).map(_drop_ok)
    ds = ds.batch(int(batch_size), drop_remainder=drop_remainder)
    # One fresh random int64 per batch (different every epoch, deterministic given seed).
    rand = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    ds = tf.data.Dataset.zip((ds, rand))
    flip_seed = tf.constant(seed % (2**31), tf.int64)

    @_no_autograph
    def _finish(batch, r):
        images, idx, lab = batch
        if augment_flip:
            u = tf.random.stateless_uniform([tf.shape(idx)[0]], seed=tf.stack([r, flip_seed]))
            images = tf.where((u < 0.5)[:, None, None, None], tf.reverse(images, axis=[2]), images)
        lab = tf.cast(lab, tf.int32)
        return {"images": normalize_images(images), "labels": lab,
                "index": tf.cast(idx, tf.int32)}, lab

    ds = ds.map(_finish, num_parallel_calls=num_parallel_calls, deterministic=True)
    return _apply_shard_options(ds.prefetch(tf.data.AUTOTUNE), shard)


def _check_pipeline_args(chunk_size, num_parallel_calls, image_size):
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive integer, got {chunk_size!r}.")
    if num_parallel_calls != tf.data.AUTOTUNE and (
            not isinstance(num_parallel_calls, (int, np.integer)) or num_parallel_calls < 1):
        raise ValueError(f"`num_parallel_calls` must be tf.data.AUTOTUNE or a positive integer, "
                         f"got {num_parallel_calls!r}.")
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)):
        image_size = (int(image_size), int(image_size))
    hw = tuple(int(v) for v in image_size)
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"`image_size` must be a positive int or (height, width), got {image_size!r}.")
    return hw
