"""The models a training run can name: the tutorial's CNN, ResNet-20, or your own `module.path:function`.

Each model declares what it outputs, logits or probabilities, and the trainer's loss follows
(`Built.from_logits`). Normalisation is a layer of the model: the tutorial's CNN rescales uint8
pixels by 1/255 as the tutorial does; ResNet-20 (and the CNN on float pixels) subtracts the
training images' per-channel mean and divides by their standard deviation (for a TFDS dataset too big
for memory, those of a bounded sample: see `create`'s `stats`).

A function of your own, `module.path:function`, is called as `function(input_shape, num_classes)`
with `input_shape` (H, W, C) and must return a `keras.Model` taking the dataset's raw pixels (uint8
0..255 or the float values of a .npz file) and returning [batch, num_classes]. What it outputs is told
from its last layer (a softmax or sigmoid activation: probabilities; a linear one: logits); where
that cannot be told, or to say it anyway, the function states it with an attribute:
`function.outputs = "logits"` or `"probabilities"`. Its model trains through what `compile()` is
given, so it must not override `train_step` or `test_step` (`compute_loss` is used).
"""

import dataclasses
import importlib

import keras
import numpy as np
from keras import ops

from clr_loop import _keras
from clr_loop import errors


MODELS = ("tutorial_cnn", "resnet20")
OUTPUTS = ("logits", "probabilities")
_STATS_CHUNK = 10000


TUTORIAL_IMAGE_SHAPE = (28, 28, 1)


def create_model(seed=None, input_shape=TUTORIAL_IMAGE_SHAPE, num_classes=10, rescale=True):
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


class ModelError(errors.Error, ValueError):
    """Raised when a named model cannot be built: an unknown name, or a user function that cannot be
    imported, fails, or returns something other than a fitting keras.Model; names the model.
    `argument` is the Config field that names the model: "model" unless given."""

    def __init__(self, message, argument="model"):
        super().__init__(message, argument=argument)


@dataclasses.dataclass(frozen=True)
class Built:
    """A built model and whether it outputs logits (True) or probabilities (False)."""

    model: keras.Model
    from_logits: bool


def is_user_function(name):
    """True when `name` has the `module.path:function` form of a user's model function."""
    return ":" in name


def channel_stats(images):
    """Returns float64 (mean, std), each [C], per channel of `images` [N, H, W, C], or of an iterable of
    such arrays (chunks) taken together (std at least 1e-3 of the scale)."""
    if isinstance(images, np.ndarray):
        chunks = [images[start : start + _STATS_CHUNK] for start in range(0, len(images), _STATS_CHUNK)]
    else:
        chunks = images
    total = squares = None
    count = 0
    for chunk in chunks:
        chunk = np.asarray(chunk).astype(np.float64)
        if total is None:
            total, squares = np.zeros(chunk.shape[-1]), np.zeros(chunk.shape[-1])
        total += chunk.sum(axis=(0, 1, 2))
        squares += np.square(chunk).sum(axis=(0, 1, 2))
        count += chunk.size // chunk.shape[-1]
    if not count:
        raise ValueError("no images to compute the channel statistics of")
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0))
    return mean, np.maximum(std, 1e-3 * max(1.0, float(np.abs(mean).max())))


def create(name, input_shape, num_classes, *, train_images=None, stats=None, seed=None):
    """Returns the `Built` model `name` for images of `input_shape` (H, W, C) and `num_classes` classes.

    `train_images` ([N, H, W, C], uint8 or float) give the normalisation layer's per-channel mean
    and standard deviation where the model has one (ResNet-20; the CNN on float pixels). Without
    them, `stats` (for data that is not in memory, uint8 pixels) is a function returning that
    (mean, std), called only by a model that normalises. `seed`
    fixes the tutorial CNN's dropout seed; weights follow Keras's global seed. Raises ModelError
    naming the model for an unknown name or a user function that fails (see the module docstring).
    """
    input_shape = tuple(int(d) for d in input_shape)
    uint8 = train_images is None or train_images.dtype == np.uint8
    if name == "tutorial_cnn":
        if uint8:
            model = _build(
                name, input_shape, lambda: create_model(seed=seed, input_shape=input_shape, num_classes=num_classes)
            )
        else:
            model = _build(
                name,
                input_shape,
                lambda: _normalized(
                    create_model(seed=seed, input_shape=input_shape, num_classes=num_classes, rescale=False),
                    train_images,
                ),
            )
        return Built(model, from_logits=False)
    if name == "resnet20":
        if train_images is not None:
            mean, std = channel_stats(train_images)
        else:
            mean, std = stats() if stats is not None else (None, None)
        return Built(
            _build(name, input_shape, lambda: resnet20(input_shape, num_classes, mean=mean, std=std)), from_logits=True
        )
    if is_user_function(name):
        return _user_model(name, input_shape, num_classes)
    raise ModelError(f"model {name!r}: unknown; one of {', '.join(MODELS)}, or module.path:function")


def _build(name, input_shape, make):
    try:
        return make()
    except ValueError as e:  # Keras's shape errors: images too small for the layers
        raise ModelError(f"model {name!r} cannot take images of shape {list(input_shape)}: {e}") from e


def _normalized(model, train_images):
    """Returns `model` with a per-channel mean/std Normalization layer of `train_images` before it."""
    mean, std = channel_stats(train_images)
    inputs = keras.Input(model.input_shape[1:])
    x = keras.layers.Normalization(mean=mean, variance=np.square(std), name="normalize")(inputs)
    return keras.Model(inputs, model(x), name=f"{model.name}_normalized")


class ZeroPadShortcut(keras.layers.Layer):
    """He et al.'s option-A shortcut: subsample by `strides`, then zero-pad the channels to `filters`."""

    def __init__(self, filters, strides, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.strides = int(strides)

    def call(self, x):
        x = x[:, :: self.strides, :: self.strides, :]
        extra = self.filters - x.shape[-1]
        return ops.pad(x, [[0, 0], [0, 0], [0, 0], [extra // 2, extra - extra // 2]])

    def compute_output_shape(self, input_shape):
        size = lambda d: None if d is None else -(-d // self.strides)  # noqa: E731
        return (input_shape[0], size(input_shape[1]), size(input_shape[2]), self.filters)

    def get_config(self):
        """Returns the layer's config: Keras's plus `filters` and `strides`."""
        return {**super().get_config(), "filters": self.filters, "strides": self.strides}


def resnet20(input_shape, num_classes, *, mean=None, std=None, depth=20):
    """Returns He et al. 2016's CIFAR ResNet (`depth` = 6n + 2; 20: 3 stages of 3 basic blocks with
    16/32/64 filters, batch norm, option-A zero-padding shortcuts, ~0.27 M parameters) outputting logits.

    `mean` and `std` ([C]) make its first layer a per-channel normalisation (else it rescales by 1/255).
    """
    blocks = (depth - 2) // 6
    if depth != 6 * blocks + 2 or blocks < 1:
        raise ValueError(f"depth must be 6n + 2, got {depth}")
    inputs = keras.Input(input_shape)
    if mean is not None:
        x = keras.layers.Normalization(mean=mean, variance=np.square(std), name="normalize")(inputs)
    else:
        x = keras.layers.Rescaling(1.0 / 255)(inputs)

    def conv(filters, strides=1):
        return keras.layers.Conv2D(
            filters, 3, strides=strides, padding="same", use_bias=False, kernel_initializer="he_normal"
        )

    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(conv(16)(x)))
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            y = keras.layers.ReLU()(keras.layers.BatchNormalization()(conv(filters, strides)(x)))
            y = keras.layers.BatchNormalization()(conv(filters)(y))
            shortcut = x if strides == 1 and x.shape[-1] == filters else ZeroPadShortcut(filters, strides)(x)
            x = keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    # float32 logits under any dtype policy (Keras's mixed-precision guide).
    outputs = keras.layers.Dense(num_classes, kernel_initializer="he_normal", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=f"resnet{depth}")


def _user_model(name, input_shape, num_classes):
    """Imports and calls the user's `module.path:function`; returns its Built model."""
    module_name, _, function_name = name.rpartition(":")
    if not module_name or not function_name:
        raise ModelError(f"model {name!r}: expected module.path:function")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # pylint: disable=broad-except  (ImportError, and whatever the module raises)
        raise ModelError(f"model {name}: cannot import {module_name}: {type(e).__name__}: {e}") from e
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ModelError(f"model {name}: {module_name} has no function {function_name}")
    outputs = getattr(function, "outputs", None)
    if outputs is not None and outputs not in OUTPUTS:
        raise ModelError(
            f"model {name}: {function_name}.outputs must be \"logits\" or \"probabilities\", got {outputs!r}"
        )
    try:
        model = function(input_shape, num_classes)
    except Exception as e:  # pylint: disable=broad-except  (the user's code)
        raise ModelError(
            f"model {name}: {function_name}{(input_shape, num_classes)} raised {type(e).__name__}: {e}"
        ) from e
    if not isinstance(model, keras.Model):
        raise ModelError(f"model {name}: {function_name} returned a {type(model).__name__}, not a keras.Model")
    for method in ("train_step", "test_step"):
        if getattr(type(model), method) is not getattr(keras.Model, method):
            raise ModelError(
                f"model {name}: {function_name} returns a {type(model).__name__}, which overrides "
                f"{method}; clr_loop does not run it (its compiled step is built from what compile() "
                "is given): override compute_loss instead, which it uses"
            )
    shape = tuple(model.outputs[0].shape) if getattr(model, "outputs", None) else None
    if shape is not None and (len(model.outputs) != 1 or shape[-1] != num_classes):
        raise ModelError(
            f"model {name}: {function_name} returns outputs of shape "
            f"{[list(o.shape) for o in model.outputs]}, expected one [batch, {num_classes}]"
        )
    if outputs is None:
        outputs, last = told_outputs(model)
        if outputs is None:
            raise ModelError(
                f"model {name}: cannot tell whether it outputs logits or probabilities from its last "
                f"layer {last}; set {function_name}.outputs = \"logits\" or \"probabilities\""
            )
    return Built(model, from_logits=outputs == "logits")


# A last layer's activation that says what a model outputs.
_PROBABILITY_ACTIVATIONS = ("softmax", "sigmoid")
# log_softmax's outputs are logits too: their softmax is the model's probabilities.
_LOGIT_ACTIVATIONS = ("linear", "log_softmax")


def told_outputs(model):
    """Returns `(outputs, last)`: what `model` outputs, "probabilities" (its last layer's activation is a
    softmax or sigmoid), "logits" (linear, or log_softmax) or None where its last layer does not tell, and that layer
    described for a message (`'name' (Class)`, with its activation when it has one).

    The last layer is the one that computes the model's (single) output; a nested model there is
    looked into. A model without a graph (a subclassed model) does not tell.
    """
    layer = _last_layer(model)
    if layer is None:
        return None, f"(none: {type(model).__name__} has no layer graph)"
    if isinstance(layer, keras.layers.Softmax):
        return "probabilities", f"{layer.name!r} (Softmax)"
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None, f"{layer.name!r} ({type(layer).__name__})"
    activation_name = getattr(activation, "__name__", type(activation).__name__)
    described = f"{layer.name!r} ({type(layer).__name__}, activation {activation_name})"
    if activation_name in _PROBABILITY_ACTIVATIONS:
        return "probabilities", described
    if activation_name in _LOGIT_ACTIVATIONS:
        return "logits", described
    return None, described


def _last_layer(model):
    """Returns the layer that computes `model`'s output (inside nested models), or None when unknown."""
    for _ in range(100):  # nested models, each one level deeper
        outputs = getattr(model, "outputs", None)
        if isinstance(model, keras.Sequential) and model.layers:
            layer = model.layers[-1]
        elif outputs and len(outputs) == 1 and _keras.producing_layer(outputs[0]) is not None:
            layer = _keras.producing_layer(outputs[0])
        else:
            return None
        if not isinstance(layer, keras.Model):
            return layer
        model = layer
    return None
