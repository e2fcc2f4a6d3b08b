"""clr_loop.fit on Keras programs in the style of keras.io's examples, with only the fit line changed.

The oracle is Keras's own `model.fit` / `model.evaluate` on a twin model with the same initial
weights and the same data order (`shuffle=False`): the final weights and every History entry must
agree to float rounding. Where the tolerance is looser than float32's, oneDNN's kernels (which
pick their blocking, hence their summation order, per call) are the reason, as commented.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from clr_loop import loop

N, BATCH = 96, 32


def data(n=N, features=8, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    y = (np.argmax(x[:, :classes], axis=1)).astype(np.int32)
    return x, y


def twin(build, compile_fn, x_build):
    """Returns (ours, theirs): `build()` twice with the same initial weights, each compiled by `compile_fn`."""
    keras.utils.set_random_seed(7)
    ours = build()
    theirs = build()
    ours(x_build)
    theirs(x_build)
    theirs.set_weights(ours.get_weights())
    compile_fn(ours)
    compile_fn(theirs)
    return ours, theirs


def assert_same(ours, theirs, history, keras_history, rtol=1e-5, atol=1e-6):
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
    expected = {k: v for k, v in keras_history.history.items()}
    assert set(history.history) - {"lr"} == set(expected)
    for key, values in expected.items():
        np.testing.assert_allclose(history.history[key], values, rtol=rtol, atol=atol, err_msg=key)


def both(ours, theirs, *args, **kwargs):
    """Trains `ours` with clr_loop.fit and `theirs` with model.fit on the same arguments, unshuffled."""
    kwargs = {"shuffle": False, "verbose": 0, **kwargs}
    history = loop.fit(ours, *args, **kwargs, jit_compile=False)
    keras_history = theirs.fit(*args, **kwargs)
    return history, keras_history


def sgd_compile(loss, **kwargs):
    return lambda m: m.compile(keras.optimizers.SGD(0.05, momentum=0.9), loss, jit_compile=False, **kwargs)


def test_cnn():
    """keras.io "Simple MNIST convnet", small: Conv2D, MaxPooling2D, Flatten, Dropout(0), Dense."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, N).astype(np.int32)
    x = (rng.normal(size=(N, 8, 8, 1)) + y[:, None, None, None]).astype(np.float32)

    def build():
        return keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                keras.layers.Conv2D(4, 3, activation="relu"),
                keras.layers.MaxPooling2D(),
                keras.layers.Flatten(),
                keras.layers.Dense(4, activation="softmax"),
            ]
        )

    ours, theirs = twin(build, sgd_compile("sparse_categorical_crossentropy", metrics=["accuracy"]), x[:1])
    history, keras_history = both(ours, theirs, x, y, batch_size=BATCH, epochs=2, validation_data=(x[:40], y[:40]))
    # oneDNN's convolution kernels sum in a batch-size-dependent order: 1e-4.
    assert_same(ours, theirs, history, keras_history, rtol=1e-4, atol=1e-5)


class Recommender(keras.Model):
    """keras.io "Collaborative filtering": a subclassed model with its own call."""

    def __init__(self):
        super().__init__()
        self.user = keras.layers.Embedding(10, 4)
        self.item = keras.layers.Embedding(12, 4)

    def call(self, inputs):
        return keras.ops.sigmoid(
            keras.ops.sum(self.user(inputs[:, 0]) * self.item(inputs[:, 1]), axis=1, keepdims=True)
        )


def test_subclassed_model():
    rng = np.random.default_rng(2)
    x = np.stack([rng.integers(0, 10, N), rng.integers(0, 12, N)], axis=1).astype(np.int32)
    y = rng.uniform(size=(N, 1)).astype(np.float32)
    ours, theirs = twin(Recommender, sgd_compile(keras.losses.BinaryCrossentropy(), metrics=["mae"]), x[:1])
    history, keras_history = both(ours, theirs, x, y, batch_size=BATCH, epochs=2, validation_split=0.25)
    assert_same(ours, theirs, history, keras_history)


def plain_loss(y_true, y_pred):
    return keras.ops.mean(keras.ops.square(y_true - y_pred), axis=-1) + 0.1 * keras.ops.mean(
        keras.ops.abs(y_pred), axis=-1
    )


class Unregistered(keras.losses.Loss):
    def call(self, y_true, y_pred):
        return keras.ops.mean(keras.ops.abs(y_true - y_pred), axis=-1)


def scalar_loss(y_true, y_pred):
    return keras.ops.mean(keras.ops.square(y_true - y_pred))  # one number per batch, not per example


@pytest.mark.parametrize(
    "loss",
    [plain_loss, Unregistered(), scalar_loss, keras.losses.MeanSquaredError(reduction="sum")],
    ids=["function", "unregistered_subclass", "scalar_function", "sum_reduction"],
)
def test_custom_losses_train_and_validate_as_keras(loss):
    x, _ = data()
    y = x[:, :2] * 0.5
    build = lambda: keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])  # noqa: E731
    ours, theirs = twin(build, sgd_compile(loss), x[:1])
    history, keras_history = both(ours, theirs, x, y, batch_size=BATCH, epochs=2, validation_data=(x[:50], y[:50]))
    assert_same(ours, theirs, history, keras_history, rtol=2e-5)
    assert history.history["val_loss"][-1] == pytest.approx(
        ours.evaluate(x[:50], y[:50], batch_size=BATCH, verbose=0), rel=1e-5
    )


def test_multi_input_multi_output_functional_with_loss_weights():
    """keras.io "The Functional API": two inputs, two named outputs, per-output losses and weights."""
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(N, 5)).astype(np.float32), rng.normal(size=(N, 3)).astype(np.float32)
    priority = (a[:, :1] + b[:, :1]).astype(np.float32)
    department = np.argmax(a[:, :4], axis=1).astype(np.int32)

    def build():
        ta, tb = keras.Input((5,), name="title"), keras.Input((3,), name="tags")
        h = keras.layers.Dense(8, activation="relu")(keras.layers.Concatenate()([ta, tb]))
        return keras.Model(
            {"title": ta, "tags": tb},
            {
                "priority": keras.layers.Dense(1, name="priority")(h),
                "department": keras.layers.Dense(4, name="department")(h),
            },
        )

    compile_fn = lambda m: m.compile(  # noqa: E731
        keras.optimizers.Adam(0.01),
        loss={"priority": "mse", "department": keras.losses.SparseCategoricalCrossentropy(from_logits=True)},
        loss_weights={"priority": 1.0, "department": 0.2},
        metrics={"department": ["accuracy"]},
        jit_compile=False,
    )
    x = {"title": a, "tags": b}
    ours, theirs = twin(build, compile_fn, {"title": a[:1], "tags": b[:1]})
    history, keras_history = both(
        ours,
        theirs,
        x,
        {"priority": priority, "department": department},
        batch_size=BATCH,
        epochs=2,
        validation_split=0.25,
    )
    assert "department_loss" in history.history and "val_priority_loss" in history.history
    assert_same(ours, theirs, history, keras_history, rtol=2e-5)


class Distiller(keras.Model):
    """keras.io "Knowledge distillation": the loss comes from a compute_loss override."""

    def __init__(self, student, teacher):
        super().__init__()
        self.student, self.teacher = student, teacher

    def call(self, x):
        return self.student(x)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        teacher = keras.ops.softmax(self.teacher(x, training=False) / 2.0)
        student = keras.ops.softmax(y_pred / 2.0)
        distill = keras.losses.KLDivergence()(teacher, student)
        hard = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, y_pred)
        return 0.3 * hard + 0.7 * distill


def test_compute_loss_override():
    x, y = data()

    def build():
        keras.utils.set_random_seed(11)
        teacher = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
        teacher.trainable = False
        return Distiller(keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)]), teacher)

    ours, theirs = twin(
        build, lambda m: m.compile(keras.optimizers.SGD(0.1), metrics=["accuracy"], jit_compile=False), x[:1]
    )
    history, keras_history = both(ours, theirs, x, y, batch_size=BATCH, epochs=2, validation_data=(x[:40], y[:40]))
    assert_same(ours, theirs, history, keras_history)


class GAN(keras.Model):
    """keras.io "DCGAN": train_step overridden, two optimizers, its own loss trackers."""

    def __init__(self):
        super().__init__()
        self.generator = keras.Sequential([keras.Input((2,)), keras.layers.Dense(4)])
        self.discriminator = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")

    def call(self, z):
        return self.discriminator(self.generator(z))

    @property
    def metrics(self):
        return [self.d_loss_tracker, self.g_loss_tracker]

    def compile(self, d_optimizer, g_optimizer, **kwargs):
        super().compile(**kwargs)
        self.d_optimizer, self.g_optimizer = d_optimizer, g_optimizer
        self.loss_fn = keras.losses.BinaryCrossentropy(from_logits=True)

    def train_step(self, data):
        real = data[0] if isinstance(data, tuple) else data
        batch = tf.shape(real)[0]
        z = tf.ones((batch, 2)) * tf.reshape(tf.cast(tf.range(batch), tf.float32) / 32.0, (-1, 1))
        fake = self.generator(z)
        with tf.GradientTape() as tape:
            logits = self.discriminator(tf.concat([fake, real], 0))
            labels = tf.concat([tf.ones((batch, 1)), tf.zeros((batch, 1))], 0)
            d_loss = self.loss_fn(labels, logits)
        grads = tape.gradient(d_loss, self.discriminator.trainable_weights)
        self.d_optimizer.apply_gradients(zip(grads, self.discriminator.trainable_weights))
        with tf.GradientTape() as tape:
            g_loss = self.loss_fn(tf.zeros((batch, 1)), self.discriminator(self.generator(z)))
        grads = tape.gradient(g_loss, self.generator.trainable_weights)
        self.g_optimizer.apply_gradients(zip(grads, self.generator.trainable_weights))
        self.d_loss_tracker.update_state(d_loss)
        self.g_loss_tracker.update_state(g_loss)
        return {"d_loss": self.d_loss_tracker.result(), "g_loss": self.g_loss_tracker.result()}


def test_gan_train_step_override():
    x = np.random.default_rng(4).normal(size=(N, 4)).astype(np.float32)
    compile_fn = lambda m: m.compile(keras.optimizers.SGD(0.05), keras.optimizers.SGD(0.05), jit_compile=False)  # noqa: E731
    ours, theirs = twin(GAN, compile_fn, x[:1, :2])
    history, keras_history = both(ours, theirs, x, batch_size=BATCH, epochs=2)
    assert set(history.history) >= {"d_loss", "g_loss"}
    assert_same(ours, theirs, history, keras_history)


class LogisticEndpoint(keras.layers.Layer):
    """keras.io "The endpoint layer pattern": the loss comes from add_loss, the targets are an input."""

    def call(self, targets, logits, sample_weights=None):
        loss = keras.losses.BinaryCrossentropy(from_logits=True)(targets, logits, sample_weights)
        self.add_loss(loss)
        return keras.ops.sigmoid(logits)


def test_add_loss_endpoint_layer_without_targets():
    rng = np.random.default_rng(5)
    inputs = rng.normal(size=(N, 3)).astype(np.float32)
    targets = (inputs[:, :1] > 0).astype(np.float32)

    def build():
        x_in = keras.Input((3,), name="inputs")
        t_in = keras.Input((1,), name="targets")
        logits = keras.layers.Dense(1)(x_in)
        return keras.Model({"inputs": x_in, "targets": t_in}, LogisticEndpoint()(t_in, logits))

    x = {"inputs": inputs, "targets": targets}
    ours, theirs = twin(
        build,
        lambda m: m.compile(keras.optimizers.Adam(0.01), jit_compile=False),
        {"inputs": inputs[:1], "targets": targets[:1]},
    )
    history, keras_history = both(ours, theirs, x, batch_size=BATCH, epochs=2)
    assert_same(ours, theirs, history, keras_history)


def test_sample_and_class_weights():
    x, y = data()
    build = lambda: keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])  # noqa: E731
    compile_fn = sgd_compile(keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    weights = np.linspace(0.1, 2.0, N).astype(np.float32)
    ours, theirs = twin(build, compile_fn, x[:1])
    history, keras_history = both(ours, theirs, x, y, batch_size=BATCH, epochs=2, sample_weight=weights)
    assert_same(ours, theirs, history, keras_history)
    ours, theirs = twin(build, compile_fn, x[:1])
    history, keras_history = both(ours, theirs, x, y, batch_size=BATCH, epochs=2, class_weight={0: 0.2, 1: 1.0, 2: 3.0})
    assert_same(ours, theirs, history, keras_history)


def test_batch_dependent_nested_block_and_in_batch_loss_are_never_split():
    """A nested subclassed block that normalises over its batch: clr_loop must run train_step on
    whole batches (its automatic CPU split would compute something else), whatever the cores."""

    class BatchCentre(keras.Model):
        def call(self, x):
            return x - keras.ops.mean(x, axis=0, keepdims=True)

    x, y = data()
    build = lambda: keras.Sequential([keras.Input((8,)), keras.layers.Dense(8), BatchCentre(), keras.layers.Dense(3)])  # noqa: E731
    ours, theirs = twin(build, sgd_compile(keras.losses.SparseCategoricalCrossentropy(from_logits=True)), x[:1])
    history = loop.fit(ours, x, y, batch_size=64, epochs=2, shuffle=False, verbose=0, jit_compile=False)
    keras_history = theirs.fit(x, y, batch_size=64, epochs=2, shuffle=False, verbose=0)
    assert_same(ours, theirs, history, keras_history)


def test_a_second_call_continues_like_model_fit():
    x, y = data()
    build = lambda: keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])  # noqa: E731
    ours, theirs = twin(build, sgd_compile(keras.losses.SparseCategoricalCrossentropy(from_logits=True)), x[:1])
    theirs.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    ours.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)  # model.fit first, then clr_loop
    history, keras_history = both(ours, theirs, x, y, batch_size=BATCH, epochs=2)
    assert int(ours.optimizer.iterations) == int(theirs.optimizer.iterations) == 3 * 3
    assert_same(ours, theirs, history, keras_history)
    history, keras_history = both(ours, theirs, x, y, batch_size=BATCH, epochs=3, initial_epoch=2)
    assert history.epoch == keras_history.epoch == [2]
    assert_same(ours, theirs, history, keras_history)


def test_positional_arguments_and_validation_freq():
    x, y = data()
    build = lambda: keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])  # noqa: E731
    ours, theirs = twin(build, sgd_compile(keras.losses.SparseCategoricalCrossentropy(from_logits=True)), x[:1])
    history = loop.fit(ours, x, y, BATCH, 2, 0, None, 0.25, shuffle=False, validation_freq=2, jit_compile=False)
    keras_history = theirs.fit(x, y, BATCH, 2, 0, None, 0.25, shuffle=False, validation_freq=2)
    assert len(history.history["val_loss"]) == len(keras_history.history["val_loss"]) == 1
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# Inputs model.fit takes ---------------------------------------------------------------------


class Batches(keras.utils.PyDataset):
    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x) // BATCH

    def __getitem__(self, i):
        return self.x[i * BATCH : (i + 1) * BATCH], self.y[i * BATCH : (i + 1) * BATCH]


def dense_twins():
    x, y = data()
    build = lambda: keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])  # noqa: E731
    ours, theirs = twin(build, sgd_compile(keras.losses.SparseCategoricalCrossentropy(from_logits=True)), x[:1])
    return ours, theirs, x, y


def test_py_dataset_and_generator():
    ours, theirs, x, y = dense_twins()
    history = loop.fit(ours, Batches(x, y), epochs=2, verbose=0, shuffle=False, jit_compile=False)
    keras_history = theirs.fit(Batches(x, y), epochs=2, verbose=0, shuffle=False)
    assert_same(ours, theirs, history, keras_history)
    generator = lambda: ((x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, N, BATCH))  # noqa: E731
    history = loop.fit(ours, generator(), verbose=0, jit_compile=False)
    keras_history = theirs.fit(generator(), verbose=0)
    assert_same(ours, theirs, history, keras_history)
    with pytest.raises(ValueError, match="PyDataset"):
        loop.fit(ours, Batches(x, y), verbose=0, workdir="/nonexistent/never")


def test_rank_one_x_for_an_input_of_one_feature_and_string_inputs():
    rng = np.random.default_rng(6)
    x = rng.normal(size=N).astype(np.float32)
    y = (2 * x + 1).astype(np.float32)
    build = lambda: keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])  # noqa: E731
    ours, theirs = twin(build, sgd_compile("mse"), x[:1, None])
    history, keras_history = both(ours, theirs, x, y, batch_size=BATCH, epochs=2)
    assert_same(ours, theirs, history, keras_history)

    # keras.io "Text classification from scratch": strings in, TextVectorization inside the model
    # (as a string tensor: model.fit itself refuses numpy's unicode arrays).
    words = np.array(["good movie", "bad film", "good", "bad bad"] * (N // 4))
    labels = np.array([1, 0, 1, 0] * (N // 4), np.float32)
    vectorize = keras.layers.TextVectorization(max_tokens=10, output_mode="count")
    vectorize.adapt(words)

    def build_text():
        text = keras.Input((1,), dtype="string")
        return keras.Model(text, keras.layers.Dense(1, activation="sigmoid")(vectorize(text)))

    ours, theirs = twin(build_text, sgd_compile("binary_crossentropy"), tf.constant(words[:1, None]))
    history, keras_history = both(ours, theirs, tf.constant(words[:, None]), labels, batch_size=BATCH, epochs=2)
    assert_same(ours, theirs, history, keras_history)


def test_dict_keys_matched_as_keras_matches_them_and_no_trainable_weights():
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=(N, 2)).astype(np.float32), rng.normal(size=(N, 3)).astype(np.float32)
    y = (a[:, :1] - b[:, :1]).astype(np.float32)

    def build():
        ia, ib = keras.Input((2,), name="first"), keras.Input((3,), name="second")
        return keras.Model({"first": ia, "second": ib}, keras.layers.Dense(1)(keras.layers.Concatenate()([ia, ib])))

    ours, theirs = twin(build, sgd_compile("mse"), {"first": a[:1], "second": b[:1]})
    history, keras_history = both(ours, theirs, {"second": b, "first": a}, y, batch_size=BATCH, epochs=2)
    assert_same(ours, theirs, history, keras_history)

    frozen = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, trainable=False)])
    frozen.compile("sgd", "mse", jit_compile=False)
    history = loop.fit(frozen, a, y, verbose=0)
    assert history.history["loss"][0] == pytest.approx(frozen.evaluate(a, y, verbose=0), rel=1e-5)


def test_a_shuffled_run_is_reproducible_under_keras_set_random_seed():
    runs = []
    for _ in range(2):
        ours, _, x, y = dense_twins()
        keras.utils.set_random_seed(3)
        loop.fit(ours, x, y, batch_size=BATCH, epochs=2, verbose=0)
        runs.append(ours.get_weights())
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_test_hooks_are_called():
    ours, _, x, y = dense_twins()
    calls = []

    class Record(keras.callbacks.Callback):
        def on_test_begin(self, logs=None):
            calls.append("begin")

        def on_test_end(self, logs=None):
            calls.append(sorted(logs))

    loop.fit(ours, x, y, epochs=2, verbose=0, validation_split=0.25, callbacks=[Record()])
    assert calls == ["begin", ["loss"], "begin", ["loss"]]


def test_backup_and_restore_resumes_at_the_epoch_it_saved(tmp_path):
    """keras.callbacks.BackupAndRestore after an interruption: the restarted call trains only the
    epochs left, as model.fit's does, from the weights of the last epoch end."""
    x, y = data()

    class StopAt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("interrupted")

    results = []
    for train in (loop.fit, None):
        ours, theirs, _, _ = dense_twins()
        model = ours if train else theirs
        fit = (lambda *a, **k: loop.fit(model, *a, **k, jit_compile=False)) if train else model.fit
        backup = keras.callbacks.BackupAndRestore(str(tmp_path / ("ours" if train else "keras")))
        with pytest.raises(RuntimeError, match="interrupted"):
            fit(x, y, batch_size=BATCH, epochs=4, shuffle=False, verbose=0, callbacks=[backup, StopAt()])
        history = fit(x, y, batch_size=BATCH, epochs=4, shuffle=False, verbose=0, callbacks=[backup])
        results.append((history.epoch, model.get_weights(), int(model.optimizer.iterations)))
    (ours_epochs, ours_weights, ours_steps), (keras_epochs, keras_weights, keras_steps) = results
    assert ours_epochs == keras_epochs == [2, 3]
    assert ours_steps == keras_steps == 4 * 3
    for a, b in zip(ours_weights, keras_weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_find_lr_takes_a_plain_function_loss_and_leaves_the_model_as_it_was():
    from clr_loop import lr_finder  # pylint: disable=import-outside-toplevel

    x, _ = data()
    y = x[:, :2] * 0.5
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.1), plain_loss)
    before = [w.copy() for w in model.get_weights()]
    result = lr_finder.find_lr(model, x, y, batch_size=16, num_steps=5)
    assert len(result.lr) == 5 and all(np.isfinite(result.loss))
    assert model.optimizer is not None and int(model.optimizer.iterations) == 0
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_max_steps_ends_an_epoch_of_a_dataset_of_unknown_length():
    """max_steps caps a Dataset whose length is unknown (a filter) inside its epoch, as with arrays;
    the steps run are model.fit's on the first max_steps batches."""
    ours, theirs, x, y = dense_twins()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda a, b: True).batch(8)
    history = loop.fit(ours, ds, epochs=2, max_steps=3, verbose=0, jit_compile=False)
    keras_history = theirs.fit(ds.take(3), verbose=0)
    assert int(ours.optimizer.iterations) == 3
    assert_same(ours, theirs, history, keras_history)


@pytest.mark.parametrize("unknown_length", [False, True])
@pytest.mark.parametrize("steps_per_execution", [1, 2])
def test_test_batch_hooks_are_called_as_model_fit_calls_them(steps_per_execution, unknown_length):
    """A callback's on_test_batch_begin/end run during validation with model.fit's batch indices (one
    call per steps_per_execution batches) and logs (the running validation metrics), also for a
    validation Dataset of unknown length."""
    x, y = data()
    validation = (x[:40], y[:40])
    if unknown_length:
        validation = tf.data.Dataset.from_tensor_slices(validation).filter(lambda a, b: True).batch(8)

    class Record(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.calls = []

        def on_test_begin(self, logs=None):
            self.calls.append(("begin", None, None))

        def on_test_batch_begin(self, batch, logs=None):
            self.calls.append(("batch_begin", batch, None))

        def on_test_batch_end(self, batch, logs=None):
            self.calls.append(("batch_end", batch, dict(logs)))

        def on_test_end(self, logs=None):
            self.calls.append(("end", None, dict(logs)))

    recorded = []
    for train in (True, False):
        build = lambda: keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])  # noqa: E731
        ours, theirs = twin(
            build,
            sgd_compile(
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"],
                steps_per_execution=steps_per_execution,
            ),
            x[:1],
        )
        record = Record()
        kwargs = {
            "batch_size": BATCH,
            "epochs": 2,
            "validation_data": validation,
            "validation_batch_size": 8,
            "shuffle": False,
            "verbose": 0,
            "callbacks": [record],
        }
        if train:
            loop.fit(ours, x, y, **kwargs, jit_compile=False)
        else:
            theirs.fit(x, y, **kwargs)
        recorded.append(record.calls)
    ours_calls, keras_calls = recorded
    assert [c[:2] for c in ours_calls] == [c[:2] for c in keras_calls]
    assert sum(c[0] == "batch_end" for c in keras_calls) == 2 * -(-5 // steps_per_execution)
    for (_, _, a), (_, _, b) in zip(ours_calls, keras_calls):
        assert (a is None) == (b is None)
        if a is not None:
            assert set(a) == set(b)
            for key in b:
                np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)


def tensorboard_points(log_dir):
    """{subfolder: {tag: [(step, value)]}} of the scalars a TensorBoard callback wrote under `log_dir`."""
    from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=import-outside-toplevel

    out = {}
    for sub in sorted(os.listdir(log_dir)):
        events = event_accumulator.EventAccumulator(os.path.join(log_dir, sub), size_guidance={"tensors": 0})
        events.Reload()
        out[sub] = {
            tag: [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in events.Tensors(tag)]
            for tag in events.Tags()["tensors"]
            if tag != "keras"
        }  # "keras": the model's config
    return out


@pytest.mark.parametrize("update_freq", ["epoch", 2])
def test_tensorboard_callback_writes_what_it_writes_under_model_fit(tmp_path, update_freq):
    """keras.callbacks.TensorBoard gets model.fit's scalars in its train/ and validation/ folders (epoch
    and batch points, the rate, the evaluation-vs-iterations curves) and none of clr_loop's own, which
    go to fit's workdir only."""
    x, y = data()
    points = []
    for train in (True, False):
        ours, theirs = twin(
            lambda: keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)]),
            sgd_compile(keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]),
            x[:1],
        )
        log_dir = str(tmp_path / ("ours" if train else "keras"))
        kwargs = {
            "batch_size": BATCH,
            "epochs": 2,
            "validation_data": (x[:40], y[:40]),
            "validation_batch_size": 8,
            "shuffle": False,
            "verbose": 0,
            "callbacks": [keras.callbacks.TensorBoard(log_dir, update_freq=update_freq)],
        }
        if train:
            loop.fit(ours, x, y, **kwargs, jit_compile=False, workdir=str(tmp_path / "workdir"))
        else:
            theirs.fit(x, y, **kwargs)
        points.append(tensorboard_points(log_dir))
    ours_points, keras_points = points
    assert {sub: set(tags) for sub, tags in ours_points.items()} == {
        sub: set(tags) for sub, tags in keras_points.items()
    }
    assert {"epoch_loss", "epoch_learning_rate"} <= set(keras_points["train"])
    assert "evaluation_loss_vs_iterations" in keras_points["validation"]
    for sub, tags in keras_points.items():
        for tag, expected in tags.items():
            assert [s for s, _ in ours_points[sub][tag]] == [s for s, _ in expected], (sub, tag)
            np.testing.assert_allclose(
                [v for _, v in ours_points[sub][tag]],
                [v for _, v in expected],
                rtol=1e-5,
                atol=1e-6,
                err_msg=f"{sub}/{tag}",
            )
    assert "lr" in tensorboard_points(str(tmp_path / "workdir"))["train"]


class EagerProbe(keras.Model):
    """Records whether its train_step and test_step run eagerly."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(3)
        self.seen = []

    def call(self, x):
        return self.dense(x)

    def train_step(self, data):
        self.seen.append(("train", tf.executing_eagerly()))
        return super().train_step(data)

    def test_step(self, data):
        self.seen.append(("test", tf.executing_eagerly()))
        return super().test_step(data)


def test_run_eagerly_runs_every_step_eagerly_as_model_fit_does():
    x, y = data()
    ours, theirs = twin(
        EagerProbe, sgd_compile(keras.losses.SparseCategoricalCrossentropy(from_logits=True), run_eagerly=True), x[:1]
    )
    history, keras_history = both(ours, theirs, x, y, batch_size=BATCH, epochs=2, validation_data=(x[:40], y[:40]))
    assert ours.seen == theirs.seen
    assert ("train", True) in ours.seen and ("test", True) in ours.seen and ("train", False) not in ours.seen
    assert not tf.config.functions_run_eagerly()  # left as it was
    assert_same(ours, theirs, history, keras_history)
