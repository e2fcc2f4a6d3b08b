"""Tests for clr_loop.experiment.models: the tutorial's CNN, layer for layer."""

import keras
import numpy as np

from clr_loop.experiment import models


def test_layers_match_the_tutorial():
    model = models.create_model(seed=0)
    layers = model.layers
    assert [type(layer).__name__ for layer in layers] == [
        "Rescaling",
        "Conv2D",
        "MaxPooling2D",
        "Conv2D",
        "MaxPooling2D",
        "SpatialDropout2D",
        "GlobalAveragePooling2D",
        "Dense",
        "Dense",
    ]
    assert layers[0].scale == 1.0 / 255
    assert (layers[1].filters, layers[1].kernel_size, layers[1].activation.__name__) == (16, (5, 5), "relu")
    assert (layers[3].filters, layers[3].kernel_size, layers[3].activation.__name__) == (32, (5, 5), "relu")
    assert layers[2].pool_size == layers[4].pool_size == (2, 2)
    assert layers[5].rate == 0.2
    assert (layers[7].units, layers[7].activation.__name__) == (128, "relu")
    assert (layers[8].units, layers[8].activation.__name__) == (10, "softmax")
    # Hand count: 5*5*1*16+16, 5*5*16*32+32, 32*128+128, 128*10+10.
    assert model.count_params() == 416 + 12832 + 4224 + 1290 == 18762


def test_uint8_images_give_probabilities_and_rescaling_is_inside():
    model = models.create_model(seed=0)
    images = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
    probs = np.asarray(model(images, training=False))
    assert probs.shape == (4, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # Feeding pre-scaled floats past the Rescaling layer gives the same output.
    rest = keras.Sequential(model.layers[1:])
    np.testing.assert_allclose(np.asarray(rest(images.astype("float32") / 255.0, training=False)), probs, rtol=1e-5)


def test_same_global_seed_same_initial_weights():
    keras.utils.set_random_seed(7)
    a = [w.copy() for w in models.create_model(seed=7).get_weights()]
    keras.utils.set_random_seed(7)
    b = models.create_model(seed=7).get_weights()
    keras.utils.set_random_seed(8)
    c = models.create_model(seed=8).get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert any(not np.array_equal(x, z) for x, z in zip(a, c))
