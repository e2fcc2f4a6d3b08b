"""clr_loop.steps: one compiled train step against an independent tape-and-SGD step, split and whole."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from clr_loop import steps


def model_and_batch(lr=0.1):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)])
    model.compile(
        keras.optimizers.SGD(lr), keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 6)).astype(np.float32)
    y = rng.integers(0, 3, 10).astype(np.int32)
    model.compute_metrics(x, y, model(x))  # builds the compiled metrics, as fit does first
    return model, x, y


@pytest.mark.parametrize("splits", [1, 3])  # 3 parts of 10: sizes 4, 3, 3
def test_train_step_is_one_sgd_update_on_the_mean_loss(splits):
    model, x, y = model_and_batch()
    before = [v.numpy() for v in model.trainable_variables]
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, model(x), from_logits=True))
    grads = [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]
    out = steps.Steps(model, splits=splits).train_step(tf.constant(x), tf.constant(y))
    assert float(out["count"]) == 10
    assert float(out["loss_sum"]) == pytest.approx(10 * float(loss), rel=1e-6)
    assert float(out["lr"]) == pytest.approx(0.1)
    assert bool(out["finite"])
    assert int(model.optimizer.iterations) == 1
    for w0, g, w1 in zip(before, grads, model.trainable_variables):
        np.testing.assert_allclose(w1.numpy(), w0 - 0.1 * g, rtol=1e-5, atol=1e-7)


def test_eval_step_runs_keras_test_step():
    """The eval step is the model's own test_step: its loss tracker holds Keras's batch loss (numpy's
    mean cross-entropy here) and the step returns the batch's example count."""
    model, x, y = model_and_batch()
    per_example = keras.losses.sparse_categorical_crossentropy(y, model(x), from_logits=True).numpy()
    model.reset_metrics()
    count = steps.Steps(model).eval_step(tf.constant(x), tf.constant(y))
    assert float(count) == 10
    assert float(model.get_metrics_result()["loss"]) == pytest.approx(per_example.mean(), rel=1e-6)


def test_train_step_runs_a_train_step_override():
    """A model overriding train_step (a GAN does) is run through its own train_step."""
    calls = []

    class Counting(keras.Sequential):
        def train_step(self, data):
            calls.append(len(data))
            return super().train_step(data)

    keras.utils.set_random_seed(1)
    model = Counting([keras.Input((6,)), keras.layers.Dense(3)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x, y = np.ones((4, 6), np.float32), np.zeros((4, 3), np.float32)
    model.compute_metrics(x, y, model(x))
    out = steps.Steps(model).train_step(tf.constant(x), tf.constant(y))
    assert calls == [2] and float(out["count"]) == 4 and bool(out["finite"])
    assert steps.can_split(model)[0] is False


class OwnCall(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(3)

    def call(self, x):
        return self.dense(x)


def _built(model, loss):
    model.compile(keras.optimizers.SGD(0.1), loss)
    x, y = np.ones((4, 6), np.float32), np.zeros((4,), np.int32)
    model._symbolic_build(data_batch=(x, y))  # pylint: disable=protected-access
    return model


@pytest.mark.parametrize(
    "make, why",
    [
        (lambda: _built(OwnCall(), "sparse_categorical_crossentropy"), "subclassed"),
        (
            lambda: _built(keras.Sequential([keras.Input((6,)), OwnCall()]), "sparse_categorical_crossentropy"),
            "own call",
        ),
        (
            lambda: _built(
                keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)]),
                keras.losses.SparseCategoricalCrossentropy(reduction="sum"),
            ),
            "reduction",
        ),
        (
            lambda: _built(
                keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)]), lambda a, b: keras.ops.mean(b) * 0
            ),
            "per-example",
        ),
        (
            lambda: _built(
                keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)]),
                keras.losses.SparseCategoricalCrossentropy(ignore_class=0),
            ),
            "ignores a class",
        ),
        (
            lambda: _built(
                keras.Sequential(
                    [
                        keras.Input((6,), dtype="int32"),
                        keras.layers.Embedding(5, 3, mask_zero=True),
                        keras.layers.GlobalAveragePooling1D(),
                    ]
                ),
                "sparse_categorical_crossentropy",
            ),
            "mask",
        ),
    ],
    ids=["subclass", "nested_subclass", "sum_reduction", "custom_function", "ignore_class", "mask_zero"],
)
def test_can_split_refuses_what_train_step_computes_otherwise(make, why):
    ok, reason = steps.can_split(make())
    assert not ok and why in reason


def test_can_split_accepts_a_nested_sequential_of_per_example_layers():
    inner = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
    model = _built(
        keras.Sequential([keras.Input((6,)), inner, keras.layers.Dense(3)]), "sparse_categorical_crossentropy"
    )
    assert steps.can_split(model) == (True, "")


def test_can_split_names_the_batch_dependent_layer():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4), keras.layers.BatchNormalization(name="bn")])
    ok, why = steps.can_split(model)
    assert not ok and "'bn'" in why
    assert steps.can_split(keras.Sequential([keras.Input((4,)), keras.layers.Dense(4)])) == (True, "")


def test_an_uncompiled_model_is_refused():
    with pytest.raises(ValueError, match="compile"):
        steps.check_compiled(keras.Sequential([keras.Input((4,)), keras.layers.Dense(4)]))


def dropout_probe(splits, seed=3, batch=8, width=64):
    """One train step of Dropout(0.5) -> Dense(1, no bias, zero kernel) with SGD(1) and a loss whose
    gradient is the batch mean of the dropout output; example i is the constant 2**i, so the
    kernel's change encodes every example's mask in binary. Returns the masks the step drew
    ([batch, width] of 0/1) and `keras_masks(*sizes)`: the masks Keras's own Dropout layer draws
    for consecutive batches of those sizes, starting from the generator state the step started from."""
    keras.utils.set_random_seed(seed)
    dropout = keras.layers.Dropout(0.5, seed=seed)
    model = keras.Sequential(
        [keras.Input((width,)), dropout, keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")]
    )
    model.compile(keras.optimizers.SGD(1.0), keras.losses.MeanAbsoluteError())  # |p + 1| = p + 1 while p = 0
    x = np.repeat(2.0 ** np.arange(batch, dtype=np.float32)[:, None], width, axis=1)
    y = -np.ones((batch, 1), np.float32)
    state = dropout.seed_generator.state.numpy()
    steps.Steps(model, splits=splits).train_step(tf.constant(x), tf.constant(y))
    # g_j = mean_i(2 * m_ij * 2**i) = sum_i m_ij 2**i / 4, exact in float32.
    codes = np.rint(-model.layers[-1].kernel.numpy()[:, 0] * batch / 2).astype(np.int64)
    masks = (codes[None, :] >> np.arange(batch)[:, None]) & 1

    def keras_masks(*sizes):
        dropout.seed_generator.state.assign(state)
        return np.concatenate(
            [(dropout(tf.ones((n, width)), training=True).numpy() != 0).astype(np.int64) for n in sizes]
        )

    return masks, keras_masks


def test_split_step_draws_one_dropout_mask_per_part():
    masks, keras_masks = dropout_probe(splits=2)
    first, second = masks[:4], masks[4:]
    assert not np.array_equal(first, second), "both halves of the batch got the same dropout mask"
    for part in (first, second):
        assert 0.35 < part.mean() < 0.65  # each keeps about 1 - rate of its units (256 draws each)
    # Each part draws what Keras's Dropout draws for a batch of its size, from the generator in turn.
    np.testing.assert_array_equal(masks, keras_masks(4, 4))
    # The whole-batch step (batch_splits=1) draws what Keras's Dropout draws for the whole batch.
    whole, keras_masks = dropout_probe(splits=1)
    assert 0.4 < whole.mean() < 0.6
    np.testing.assert_array_equal(whole, keras_masks(8))
    assert not np.array_equal(whole, masks)
