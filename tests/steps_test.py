"""clr_loop.steps: one compiled train step against an independent tape-and-SGD step, split and whole."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from clr_loop import steps


def model_and_batch(lr=0.1):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)])
    model.compile(keras.optimizers.SGD(lr), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
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


def test_eval_step_sums_per_example_losses():
    model, x, y = model_and_batch()
    per_example = keras.losses.sparse_categorical_crossentropy(y, model(x), from_logits=True).numpy()
    loss_sum, count = steps.Steps(model).eval_step(tf.constant(x), tf.constant(y))
    assert float(count) == 10
    assert float(loss_sum) == pytest.approx(per_example.sum(), rel=1e-6)


def test_can_split_names_the_batch_dependent_layer():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4), keras.layers.BatchNormalization(name="bn")])
    ok, why = steps.can_split(model)
    assert not ok and "'bn'" in why
    assert steps.can_split(keras.Sequential([keras.Input((4,)), keras.layers.Dense(4)])) == (True, "")


def test_an_uncompiled_model_is_refused():
    with pytest.raises(ValueError, match="compile"):
        steps.check_compiled(keras.Sequential([keras.Input((4,)), keras.layers.Dense(4)]))
