"""In-graph augmentation of image batches, a pure function of (seed, step) so a resumed run draws the same.

`flip_crop` is the standard CIFAR recipe (He et al. 2016): pad each image by 4 pixels of zeros, take a
random crop of the original size and flip it horizontally at random. The offsets and flips come from
stateless random ops keyed on `(seed, step)` (`flip_crop_params`), so the augmentation of the batch
at any step can be rebuilt from the step alone: no random state to checkpoint. `make` turns a name or
a function into the `augment(x, step) -> x` that the compiled train step applies to each batch
before it is split (see `clr_loop.steps.Steps`).
"""

import tensorflow as tf

AUGMENTS = ("none", "flip_crop")
PAD = 4


def step_key(seed, step):
    """Returns the int64 [2] stateless-RNG key for `step` of a run seeded `seed` (both ints or int tensors)."""
    return tf.stack([tf.cast(seed, tf.int64), tf.cast(step, tf.int64)])


def flip_crop_params(batch_size, key, pad=PAD):
    """Returns `(offsets, flips)` for a batch: int32 [B, 2] crop offsets (row, column) in [0, 2*pad]
    into the padded image, and bool [B] horizontal flips; a pure function of the [2] `key`."""
    # Philox named, not "auto_select": XLA's choice differs from the kernels', and a run must draw
    # the same whether or not its step is compiled.
    offsets = tf.random.stateless_uniform(
        tf.stack([batch_size, 2]), seed=key, minval=0, maxval=2 * pad + 1, dtype=tf.int32, alg="philox"
    )
    flip_key = tf.random.experimental.stateless_fold_in(key, 1, alg="philox")
    flips = tf.random.stateless_uniform(
        tf.reshape(batch_size, [1]), seed=flip_key, minval=0, maxval=2, dtype=tf.int32, alg="philox"
    )
    return offsets, tf.equal(flips, 1)


def flip_crop(images, key, pad=PAD):
    """Returns `images` ([B, H, W, C], any dtype) padded by `pad` zeros, cropped back to HxW at
    `flip_crop_params(B, key)`'s offsets and flipped left-right where its flips say; same shape and dtype."""
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    offsets, flips = flip_crop_params(shape[0], key, pad)
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    rows = offsets[:, :1] + tf.range(height)[None, :]
    columns = tf.range(width)[None, :]
    columns = tf.where(flips[:, None], width - 1 - columns, columns) + offsets[:, 1:]
    cropped = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(cropped, columns, axis=2, batch_dims=1)


def make(augment, seed):
    """Returns the `augment(x, step) -> x` a run applies to its training batches, or None for none.

    `augment` is None or "none" (no augmentation), "flip_crop" (`flip_crop` keyed on `(seed, step)`;
    `x` must be one [B, H, W, C] image tensor), or a function `(x, step) -> x` used as is (it
    should be a pure function of its arguments for a resume to be exact). Under a strategy with
    several replicas each replica folds its id into the key, so the replicas' examples draw apart.
    Raises ValueError for any other value.
    """
    if augment is None or (isinstance(augment, str) and augment == "none"):
        return None
    if callable(augment):
        return augment
    if augment != "flip_crop":
        raise ValueError(f"augment must be one of {', '.join(AUGMENTS)} or a function (x, step) -> x, got {augment!r}")

    def augment_fn(x, step):
        key = step_key(seed, step)
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            key = tf.random.experimental.stateless_fold_in(key, context.replica_id_in_sync_group, alg="philox")
        return flip_crop(x, key)

    return augment_fn
