"""Tests for clr_loop.experiment.models: the registry, ResNet-20's size and shortcuts, normalisation, user functions."""

import textwrap

import keras
import numpy as np
import pytest

from clr_loop.experiment import models


def uint8_images(n=20, shape=(32, 32, 3), seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def test_resnet20_has_he_et_als_0_27_million_parameters():
    # Counted by hand: 3x3 convolutions without bias (first 3->16; stage 1: 6 of 16->16; stage 2:
    # 16->32 then 5 of 32->32; stage 3: 32->64 then 5 of 64->64), 19 batch norms (gamma and beta),
    # and the 64->10 dense layer with bias. Option-A shortcuts have no parameters.
    convs = 9 * (3 * 16 + 6 * 16 * 16 + 16 * 32 + 5 * 32 * 32 + 32 * 64 + 5 * 64 * 64)
    batch_norms = 2 * (7 * 16 + 6 * 32 + 6 * 64)
    dense = 64 * 10 + 10
    built = models.create("resnet20", (32, 32, 3), 10, train_images=uint8_images())
    count = sum(int(np.prod(v.shape)) for v in built.model.trainable_variables)
    assert count == convs + batch_norms + dense == 269_722
    assert built.from_logits
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in built.model.layers) == 19
    assert sum(isinstance(layer, keras.layers.Add) for layer in built.model.layers) == 9


def test_resnet20_fits_fashion_mnist_sized_images():
    built = models.create("resnet20", (28, 28, 1), 7, train_images=uint8_images(shape=(28, 28, 1)))
    assert built.model(uint8_images(n=2, shape=(28, 28, 1))).shape == (2, 7)


def test_option_a_shortcut_subsamples_and_zero_pads_channels():
    x = np.random.default_rng(1).normal(size=(2, 6, 6, 16)).astype(np.float32)
    got = np.asarray(models.ZeroPadShortcut(32, 2)(x))
    expected = np.zeros((2, 3, 3, 32), np.float32)
    expected[..., 8:24] = x[:, ::2, ::2, :]
    np.testing.assert_array_equal(got, expected)


def test_channel_stats_of_chunks_and_a_streamed_models_stats_function():
    images = uint8_images(n=50, shape=(4, 4, 3))
    flat = images.reshape(-1, 3).astype(np.float64)
    mean, std = models.channel_stats(iter([images[:7], images[7:30], images[30:]]))
    np.testing.assert_allclose(mean, flat.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, flat.std(axis=0), rtol=1e-10)
    calls = []
    stats = lambda: calls.append(1) or (mean, std)  # noqa: E731
    models.create("tutorial_cnn", (28, 28, 1), 10, stats=stats)
    assert calls == []  # a model without a normalisation layer reads no sample
    built = models.create("resnet20", (4, 4, 3), 10, stats=stats)
    assert calls == [1]
    layer = next(candidate for candidate in built.model.layers if isinstance(candidate, keras.layers.Normalization))
    np.testing.assert_allclose(np.asarray(layer.mean).ravel(), mean, rtol=1e-6)


def test_normalisation_layer_uses_the_training_images_channel_mean_and_std():
    images = uint8_images(n=50, shape=(4, 4, 3))
    mean, std = models.channel_stats(images)
    flat = images.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(mean, flat.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, flat.std(axis=0), rtol=1e-10)
    floats = images.astype(np.float32) / 255
    built = models.create(
        "tutorial_cnn", (16, 16, 3), 4, train_images=uint8_images(n=8, shape=(16, 16, 3)).astype(np.float32)
    )
    assert isinstance(built.model.layers[1], keras.layers.Normalization) and not built.from_logits
    layer = keras.layers.Normalization(
        mean=models.channel_stats(floats)[0], variance=models.channel_stats(floats)[1] ** 2
    )
    np.testing.assert_allclose(
        np.asarray(layer(floats)), (floats - flat.mean(0) / 255) / (flat.std(0) / 255), atol=1e-4
    )


def test_tutorial_cnn_on_fashion_mnist_is_the_tutorials_model():
    keras.utils.set_random_seed(5)
    built = models.create("tutorial_cnn", (28, 28, 1), 10, train_images=uint8_images(shape=(28, 28, 1)), seed=5)
    keras.utils.set_random_seed(5)
    tutorial = models.create_model(seed=5)
    assert [type(layer) for layer in built.model.layers] == [type(layer) for layer in tutorial.layers]
    for a, b in zip(built.model.weights, tutorial.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not built.from_logits


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        textwrap.dedent("""
        import keras

        def small(input_shape, num_classes):
            return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(), keras.layers.Dense(num_classes)])
        small.outputs = "logits"

        def probabilities(input_shape, num_classes):
            return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),
                                     keras.layers.Dense(num_classes, activation="softmax")])
        probabilities.outputs = "probabilities"

        def undeclared(input_shape, num_classes):
            return small(input_shape, num_classes)

        def not_a_model(input_shape, num_classes):
            return "a string"
        not_a_model.outputs = "logits"

        def wrong_classes(input_shape, num_classes):
            return small(input_shape, num_classes + 1)
        wrong_classes.outputs = "logits"

        def fails(input_shape, num_classes):
            raise RuntimeError("out of ideas")
        fails.outputs = "logits"

        def plain_softmax(input_shape, num_classes):  # an ordinary Keras model, not annotated
            return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),
                                     keras.layers.Dense(num_classes, activation="softmax")])

        def plain_sigmoid(input_shape, num_classes):
            inputs = keras.Input(input_shape)
            x = keras.layers.Dense(num_classes)(keras.layers.Flatten()(inputs))
            return keras.Model(inputs, keras.layers.Activation("sigmoid")(x))

        def softmax_layer(input_shape, num_classes):
            inputs = keras.Input(input_shape)
            x = keras.layers.Dense(num_classes)(keras.layers.Flatten()(inputs))
            return keras.Model(inputs, keras.layers.Softmax()(x))

        def nested_softmax(input_shape, num_classes):  # a model whose last layer is another model
            inputs = keras.Input(input_shape)
            return keras.Model(inputs, plain_softmax(input_shape, num_classes)(inputs))

        def unannotated_logits(input_shape, num_classes):
            inputs = keras.Input(input_shape)
            return keras.Model(inputs, keras.layers.Dense(num_classes, name="head")(keras.layers.Flatten()(inputs)))

        def log_softmax_head(input_shape, num_classes):
            return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),
                                     keras.layers.Dense(num_classes, activation="log_softmax")])

        def cannot_tell(input_shape, num_classes):
            inputs = keras.Input(input_shape)
            x = keras.layers.Dense(num_classes)(keras.layers.Flatten()(inputs))
            return keras.Model(inputs, keras.layers.Lambda(lambda t: 2 * t, name="doubled")(x))

        def relu_head(input_shape, num_classes):
            return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),
                                     keras.layers.Dense(num_classes, activation="relu", name="relu_head")])

        def declared_wins(input_shape, num_classes):  # says logits although its layer is a softmax
            return plain_softmax(input_shape, num_classes)
        declared_wins.outputs = "logits"

        class OwnStep(keras.Model):
            def train_step(self, data):
                return super().train_step(data)

        def own_train_step(input_shape, num_classes):
            inputs = keras.Input(input_shape)
            return OwnStep(inputs, keras.layers.Dense(num_classes)(keras.layers.Flatten()(inputs)))
        own_train_step.outputs = "logits"
    """)
    )
    (tmp_path / "broken_models.py").write_text("import no_such_package_here\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_models"


def test_user_function_is_called_with_shape_and_classes(user_module):
    built = models.create(f"{user_module}:small", (8, 8, 1), 3)
    assert built.from_logits and built.model.output_shape == (None, 3) and built.model.input_shape == (None, 8, 8, 1)
    assert not models.create(f"{user_module}:probabilities", (8, 8, 1), 3).from_logits


@pytest.mark.parametrize(
    "name,from_logits",
    [
        ("plain_softmax", False),
        ("plain_sigmoid", False),
        ("softmax_layer", False),
        ("nested_softmax", False),
        ("unannotated_logits", True),
        ("log_softmax_head", True),
        ("undeclared", True),
        ("declared_wins", True),
    ],
)
def test_what_a_user_model_outputs_is_told_from_its_last_layer(user_module, name, from_logits):
    """An ordinary Keras model needs no annotation: a final softmax or sigmoid gives
    probabilities, a linear one logits; a declared `outputs` is taken as given."""
    assert models.create(f"{user_module}:{name}", (8, 8, 1), 3).from_logits is from_logits


@pytest.mark.parametrize(
    "name,message",
    [
        ("broken_models:small", r"model broken_models:small: cannot import broken_models: ModuleNotFoundError"),
        ("my_models:missing", r"my_models has no function missing"),
        (
            "my_models:cannot_tell",
            r"model my_models:cannot_tell: cannot tell whether it outputs logits or "
            r"probabilities from its last layer 'doubled' \(Lambda\); set cannot_tell.outputs = "
            r"\"logits\" or \"probabilities\"",
        ),
        ("my_models:relu_head", r"last layer 'relu_head' \(Dense, activation relu\); set relu_head.outputs"),
        # clr_loop runs compile()'s step, not the model's own train_step: refused in one line.
        (
            "my_models:own_train_step",
            r"model my_models:own_train_step: own_train_step returns a OwnStep, which "
            r"overrides train_step; clr_loop does not run it",
        ),
        ("my_models:not_a_model", r"not_a_model returned a str, not a keras.Model"),
        (
            "my_models:wrong_classes",
            r"wrong_classes returns outputs of shape \[\[None, 4\]\], expected one \[batch, 3\]",
        ),
        ("my_models:fails", r"fails\(\(8, 8, 1\), 3\) raised RuntimeError: out of ideas"),
        (":small", r"expected module.path:function"),
        ("resnet56", r"model 'resnet56': unknown; one of tutorial_cnn, resnet20"),
    ],
)
def test_bad_models_are_named(user_module, name, message):
    with pytest.raises(models.ModelError, match=message):
        models.create(name, (8, 8, 1), 3)


def test_images_too_small_for_the_cnn_are_named():
    with pytest.raises(models.ModelError, match=r"model 'tutorial_cnn' cannot take images of shape \[8, 8, 1\]"):
        models.create("tutorial_cnn", (8, 8, 1), 3)
