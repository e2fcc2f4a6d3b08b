"""Tests for clr_loop.augment: flip_crop against a numpy oracle, purity in (seed, step), and its use in the step."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from clr_loop import augment
from clr_loop import inputs
from clr_loop import loop
from clr_loop import steps as steps_lib


def numpy_flip_crop(images, offsets, flips, pad=4):
    """The recipe spelled out: pad with zeros, crop HxW at (row, column), flip left-right where asked."""
    _, height, width, _ = images.shape
    padded = np.pad(images, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    out = []
    for image, (row, column), flip in zip(padded, offsets, flips):
        crop = image[row : row + height, column : column + width]
        out.append(crop[:, ::-1] if flip else crop)
    return np.stack(out)


def images(n=16, height=7, width=5, channels=3, dtype=np.uint8, seed=0):
    return np.random.default_rng(seed).integers(1, 256, (n, height, width, channels)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_flip_crop_matches_the_numpy_oracle_at_its_offsets_and_flips(dtype):
    x = images(dtype=dtype)
    key = augment.step_key(42, 7)
    offsets, flips = (t.numpy() for t in augment.flip_crop_params(len(x), key))
    assert offsets.min() >= 0 and offsets.max() <= 8 and offsets.shape == (16, 2)
    assert 0 < flips.sum() < 16  # both kinds occur in this batch
    got = augment.flip_crop(tf.constant(x), key).numpy()
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, numpy_flip_crop(x, offsets, flips))


def test_flip_crop_is_a_pure_function_of_seed_and_step():
    x = tf.constant(images(n=64, height=8, width=8))
    fn = augment.make("flip_crop", seed=3)
    first = fn(x, tf.constant(5, tf.int64)).numpy()
    np.testing.assert_array_equal(first, fn(x, tf.constant(5, tf.int64)).numpy())
    np.testing.assert_array_equal(first, augment.make("flip_crop", seed=3)(x, 5).numpy())
    assert not np.array_equal(first, fn(x, 6).numpy())
    assert not np.array_equal(first, augment.make("flip_crop", seed=4)(x, 5).numpy())
    # Under XLA too, the same draws.
    compiled = tf.function(fn, jit_compile=True)
    np.testing.assert_array_equal(first, compiled(x, tf.constant(5, tf.int64)).numpy())


def test_make_none_and_bad_names():
    assert augment.make(None, 1) is None and augment.make("none", 1) is None
    identity = lambda x, step: x  # noqa: E731
    assert augment.make(identity, 1) is identity
    with pytest.raises(ValueError, match="flip_crop"):
        augment.make("mixup", 1)


def _dense_model(splits_seed=0):
    keras.utils.set_random_seed(splits_seed)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    model.compile(
        optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.optimizer.build(model.trainable_variables)
    return model


def test_the_step_augments_before_splitting_the_batch():
    """Each example is augmented the same whether the batch is computed whole or in parts."""
    x = tf.constant(images(n=8, height=8, width=8, channels=1, dtype=np.float32) / 255.0)
    y = tf.constant(np.arange(8) % 3)
    results = []
    for splits in (1, 2, 4):
        model = _dense_model()
        model.optimizer.iterations.assign(11)
        step = steps_lib.Steps(model, splits=splits, augment=augment.make("flip_crop", seed=9)).train_step
        step(x, y)
        results.append([v.numpy() for v in model.trainable_variables])
    # The oracle: the whole batch augmented at step 11, then one plain step.
    model = _dense_model()
    offsets, flips = (t.numpy() for t in augment.flip_crop_params(8, augment.step_key(9, 11)))
    steps_lib.Steps(model).train_step(tf.constant(numpy_flip_crop(x.numpy(), offsets, flips)), y)
    for got in results:
        for a, b in zip(got, [v.numpy() for v in model.trainable_variables]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_fit_refuses_augmenting_what_is_not_images():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = np.zeros((8, 4), np.float32), np.zeros(8, np.int32)
    with pytest.raises(inputs.InputError, match=r"augment='flip_crop' needs x to be one array of images"):
        loop.fit(model, x, y, batch_size=4, augment="flip_crop", verbose=0)
    with pytest.raises(inputs.InputError, match="augment must be one of none, flip_crop"):
        loop.fit(model, x, y, batch_size=4, augment="cutout", verbose=0)
