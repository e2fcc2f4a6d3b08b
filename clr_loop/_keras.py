"""The one module of clr_loop that touches Keras's private API (written against Keras 3.15).

Every use of a private Keras name (an underscored attribute of a model, or a module under
`keras.src`) goes through a small function here, which says what it relies on. When a Keras
release moves one of them, this is the file to change; the rest of clr_loop uses public Keras only.
"""

import keras


def flatten_layers(model, include_self=True, recursive=True):
    """Returns `model`'s layers, depth first (`Layer._flatten_layers`, Keras 3.x).

    Args:
        model: a Keras layer or model.
        include_self: whether `model` itself comes first.
        recursive: whether nested layers' own layers follow (False: the direct children only).

    Returns:
        A list of layers, each once, in Keras's tracking order.
    """
    return list(model._flatten_layers(include_self=include_self, recursive=recursive))  # pylint: disable=protected-access


def seed_generator_states(model):
    """Returns the state variables of every Keras SeedGenerator in `model` (dropout's RNG).

    Relies on each layer keeping its generators in `layer._seed_generators` (Keras 3.x).
    `tf.train.Checkpoint(model=...)` does not track them, and without them a resumed run would
    draw different dropout masks.

    Args:
        model: a Keras model.

    Returns:
        A list of `tf.Variable`s, in layer order.

    Example:
        >>> checkpoint = tf.train.Checkpoint(model=model, rng=seed_generator_states(model))
    """
    return [g.state for layer in flatten_layers(model) for g in getattr(layer, "_seed_generators", [])]


def symbolic_build(model, spec):
    """Builds `model`, its compiled loss and compiled metrics from a batch spec, as Keras's `fit`
    does before its first step (`Trainer._symbolic_build(data_batch=...)`, Keras 3.x; it also builds
    `model.optimizer` unless `optimizer.built` is set).

    Args:
        model: a compiled Keras model.
        spec: the element spec of one batch, `(x, y[, sample_weight])` of `tf.TensorSpec`s.
    """
    model._symbolic_build(data_batch=spec)  # pylint: disable=protected-access


def should_eval(model, epoch, validation_freq):
    """Whether `model.fit` validates after 0-based `epoch` for `validation_freq` (an int: every that
    many epochs; a list: those 1-based epochs), as `Trainer._should_eval` decides it (Keras 3.x).

    Raises:
        ValueError: `validation_freq` is neither an int nor a list.
    """
    return model._should_eval(epoch, validation_freq)  # pylint: disable=protected-access


def restored_epoch(model):
    """The epoch a `keras.callbacks.BackupAndRestore` restored at `on_train_begin` (it sets
    `model._initial_epoch`, which Keras 3.x's `fit` reads), or None when none did."""
    return getattr(model, "_initial_epoch", None)


def compiled_loss(model):
    """`model`'s compiled loss container (`model._compile_loss`, a `CompileLoss` in Keras 3.x), or
    None for a model compiled without a loss (or not compiled)."""
    return getattr(model, "_compile_loss", None)


def flat_losses(compile_loss):
    """The `CompileLoss`'s built per-output entries (`_flat_losses`, Keras 3.x: each has `.loss` and
    `.loss_weights`), or None before it is built."""
    return compile_loss._flat_losses  # pylint: disable=protected-access


def compiled_metrics(model):
    """`model`'s compiled metrics container (`model._compile_metrics`, a `CompileMetrics` in Keras
    3.x), or None for a model compiled without metrics."""
    return model._compile_metrics  # pylint: disable=protected-access


def loss_tracker(model):
    """`model`'s loss tracker (`model._loss_tracker`, the Mean behind the logged "loss" in Keras 3.x),
    or None."""
    return getattr(model, "_loss_tracker", None)


def call_has_training_arg(model):
    """Whether `model.call` takes a `training` argument (`Layer._call_has_training_arg`, Keras 3.x)."""
    return model._call_has_training_arg  # pylint: disable=protected-access


def compute_loss(model, x, y, y_pred):
    """The training loss of a batch as Keras's `train_step` computes it (`Trainer._compute_loss`,
    Keras 3.x: the compiled loss plus `model.losses`, through an overridden `compute_loss`), without
    sample weights."""
    return model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=None, training=True)  # pylint: disable=protected-access


def unscale_loss_for_distribution(loss):
    """`loss` multiplied back by the replica count, as Keras's `train_step` does before updating its
    loss tracker (`keras.src.losses.loss.unscale_loss_for_distribution`, Keras 3.x)."""
    return keras.src.losses.loss.unscale_loss_for_distribution(loss)


def is_loss_function_wrapper(loss):
    """Whether `loss` is exactly the `LossFunctionWrapper` that `compile` wraps a loss function or name
    in (`keras.src.losses.LossFunctionWrapper`, Keras 3.x; its function is `.fn`)."""
    return type(loss) is keras.src.losses.LossFunctionWrapper


def loss_function_kwargs(loss):
    """The keyword arguments a `LossFunctionWrapper` passes its function (`_fn_kwargs`, Keras 3.x),
    or {} for another loss."""
    return getattr(loss, "_fn_kwargs", {})


def functional_class():
    """Keras's functional model class (`keras.src.models.functional.Functional`, Keras 3.x; Sequential
    subclasses it), to tell a graph of layers that keeps Keras's own `call` from a subclassed model."""
    from keras.src.models.functional import Functional  # pylint: disable=import-outside-toplevel

    return Functional


def py_dataset_to_tf_dataset(x):
    """A `tf.data.Dataset` of the batches of the `keras.utils.PyDataset` `x`, in order, through Keras's
    own adapter (`keras.src.trainers.data_adapters.py_dataset_adapter.PyDatasetAdapter(x,
    shuffle=False).get_tf_dataset()`, Keras 3.x)."""
    from keras.src.trainers.data_adapters import py_dataset_adapter  # pylint: disable=import-outside-toplevel

    return py_dataset_adapter.PyDatasetAdapter(x, shuffle=False).get_tf_dataset()


def generator_to_tf_dataset(x):
    """A `tf.data.Dataset` of the batches a Python generator `x` yields, through Keras's own adapter
    (`keras.src.trainers.data_adapters.generator_data_adapter.GeneratorDataAdapter(x)
    .get_tf_dataset()`, Keras 3.x; it peeks at the first batch for the spec)."""
    from keras.src.trainers.data_adapters import generator_data_adapter  # pylint: disable=import-outside-toplevel

    return generator_data_adapter.GeneratorDataAdapter(x).get_tf_dataset()


def class_weight_to_sample_weights(y, class_weight):
    """Per-example weights for targets `y` (a numpy array) from `class_weight` ({class: weight}), as
    `model.fit` computes them (`keras.src.trainers.data_adapters.data_adapter_utils
    .class_weight_to_sample_weights`, Keras 3.x)."""
    from keras.src.trainers.data_adapters import data_adapter_utils  # pylint: disable=import-outside-toplevel

    return data_adapter_utils.class_weight_to_sample_weights(y, class_weight)


def producing_layer(tensor):
    """The layer that computed a symbolic Keras tensor (a functional model's output), or None for a
    tensor without that record (`KerasTensor._keras_history[0]`, Keras 3.x's graph record)."""
    history = getattr(tensor, "_keras_history", None)
    return None if history is None else history[0]
