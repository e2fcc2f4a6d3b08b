"""The tutorial's small CNN for 28x28x1 Fashion-MNIST images, layer for layer (any image shape and class count too)."""

import keras

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)


def create_model(seed=None, input_shape=IMAGE_SHAPE, num_classes=NUM_CLASSES, rescale=True):
    """Returns a built Keras `Sequential` CNN that maps uint8 images to 10 softmax probabilities.

    With the defaults it is the tutorial's model; `input_shape` (H, W, C) and `num_classes` fit it
    to other images (the same layers), and `rescale=False` leaves out the Rescaling layer (for
    float images already scaled).

    Layers as in the tutorial: Rescaling(1/255) (so the input pipeline keeps uint8 pixels),
    Conv2D(16, 5x5, relu), MaxPool(2), Conv2D(32, 5x5, relu), MaxPool(2), SpatialDropout2D(0.2),
    GlobalAveragePooling2D, Dense(128, relu), Dense(10, softmax). Built under a mixed dtype policy
    (`clr_loop.runtime.precision`) its layers compute in bfloat16/float16, except the last one, whose
    probabilities stay float32. `seed` fixes the dropout layer's
    seed generator; the weight initialisers follow Keras's global seed
    (`keras.utils.set_random_seed`).
    """
    return keras.Sequential(
        [
            keras.Input(tuple(input_shape)),
            *([keras.layers.Rescaling(1.0 / 255)] if rescale else []),
            keras.layers.Conv2D(16, (5, 5), activation="relu"),
            keras.layers.MaxPooling2D(pool_size=(2, 2)),
            keras.layers.Conv2D(32, (5, 5), activation="relu"),
            keras.layers.MaxPooling2D(pool_size=(2, 2)),
            keras.layers.SpatialDropout2D(0.2, seed=seed),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(128, activation="relu"),
            # float32 whatever the dtype policy, as Keras's mixed-precision guide asks of the output.
            keras.layers.Dense(num_classes, activation="softmax", dtype="float32"),
        ],
        name="clr_cnn",
    )
