"""The compiled train and eval steps of a compiled Keras model: the model's own `train_step` and `test_step`.

A step is what `model.fit`'s inner loop runs: `model.train_step(data)` with `data` packed as Keras
packs it (`(x, y, sample_weight)`, `(x, y)` or `(x,)`), so a subclassed model, a custom or
per-output loss, `compute_loss` and `add_loss`, sample and class weights, a `train_step` override
(a GAN) and Keras's own metrics behave as in `model.fit` by construction. Around it a step reads
the learning rate it is about to use (the schedule at `optimizer.iterations` before the update) and
returns the change of Keras's loss tracker (the batch's loss times its example count) and whether
the loss and the trainable weights are finite. Nothing here reads flags, prints or writes summaries.

On a CPU without XLA a batch can be computed as several parts side by side (`splits`), each with
its own forward and backward pass, the parts' gradients summed into one update. That computes what
`train_step` computes only for the models `can_split` accepts: the model's own Keras `train_step`,
`test_step` and `compute_loss`, layers that treat every example on their own, one standard Keras
loss with its default reduction, and no sample weights (checked per call: a weighted batch is never split).
"""

import keras
import tensorflow as tf

from clr_loop import _keras

# Layers that compute each example independently of the others in its batch (and add no
# activity loss), so that a batch computed in parts equals the whole batch to float rounding.
# Dropout-type layers qualify but draw one mask per part. BatchNormalization does not qualify;
# Normalization does (its mean and variance are constants while training).
_PER_EXAMPLE_LAYERS = tuple(
    getattr(keras.layers, name)
    for name in (
        "InputLayer",
        "Conv1D",
        "Conv2D",
        "Conv3D",
        "Conv1DTranspose",
        "Conv2DTranspose",
        "Conv3DTranspose",
        "DepthwiseConv1D",
        "DepthwiseConv2D",
        "SeparableConv1D",
        "SeparableConv2D",
        "Dense",
        "EinsumDense",
        "Embedding",
        "MaxPooling1D",
        "MaxPooling2D",
        "MaxPooling3D",
        "AveragePooling1D",
        "AveragePooling2D",
        "AveragePooling3D",
        "GlobalMaxPooling1D",
        "GlobalMaxPooling2D",
        "GlobalMaxPooling3D",
        "GlobalAveragePooling1D",
        "GlobalAveragePooling2D",
        "GlobalAveragePooling3D",
        "Dropout",
        "SpatialDropout1D",
        "SpatialDropout2D",
        "SpatialDropout3D",
        "GaussianDropout",
        "GaussianNoise",
        "AlphaDropout",
        "Activation",
        "ReLU",
        "LeakyReLU",
        "PReLU",
        "ELU",
        "Softmax",
        "Flatten",
        "Reshape",
        "Permute",
        "RepeatVector",
        "Rescaling",
        "ZeroPadding1D",
        "ZeroPadding2D",
        "ZeroPadding3D",
        "Cropping1D",
        "Cropping2D",
        "Cropping3D",
        "UpSampling1D",
        "UpSampling2D",
        "UpSampling3D",
        "Add",
        "Subtract",
        "Multiply",
        "Average",
        "Maximum",
        "Minimum",
        "Concatenate",
        "Dot",
        "LayerNormalization",
        "UnitNormalization",
        "GroupNormalization",
        "Identity",
        "Normalization",
    )
    if hasattr(keras.layers, name)
)

# Keras's own per-example losses (each computes one value per example, then the default
# "sum_over_batch_size" reduction averages them), by class; a string or function in compile
# becomes one of these or a LossFunctionWrapper of the function of the same name.
_PER_EXAMPLE_LOSSES = tuple(
    getattr(keras.losses, name)
    for name in (
        "BinaryCrossentropy",
        "BinaryFocalCrossentropy",
        "CategoricalCrossentropy",
        "CategoricalFocalCrossentropy",
        "SparseCategoricalCrossentropy",
        "MeanSquaredError",
        "MeanAbsoluteError",
        "MeanAbsolutePercentageError",
        "MeanSquaredLogarithmicError",
        "Huber",
        "LogCosh",
        "Hinge",
        "SquaredHinge",
        "CategoricalHinge",
        "KLDivergence",
        "Poisson",
        "CosineSimilarity",
    )
    if hasattr(keras.losses, name)
)
_PER_EXAMPLE_FUNCTIONS = {
    getattr(keras.losses, name)
    for name in (
        "binary_crossentropy",
        "binary_focal_crossentropy",
        "categorical_crossentropy",
        "categorical_focal_crossentropy",
        "sparse_categorical_crossentropy",
        "mean_squared_error",
        "mean_absolute_error",
        "mean_absolute_percentage_error",
        "mean_squared_logarithmic_error",
        "huber",
        "log_cosh",
        "hinge",
        "squared_hinge",
        "categorical_hinge",
        "kl_divergence",
        "poisson",
        "cosine_similarity",
    )
    if hasattr(keras.losses, name)
}


def check_compiled(model):
    """Raises ValueError unless `model` is a Keras 3 model compiled with an optimizer."""
    if not isinstance(model, keras.Model):
        raise ValueError(f"model must be a keras.Model, got {type(model).__name__}")
    if not getattr(model, "compiled", False) or model.optimizer is None:
        raise ValueError(
            "the model is not compiled: call model.compile(optimizer=..., loss=..., metrics=[...]) before training it"
        )


def _overrides(model, method):
    return getattr(type(model), method) is not getattr(keras.Model, method)


def _is_graph_model(model):
    """True for a Sequential or functional model that keeps Keras's own `call` (a graph of layers)."""
    for graph in (keras.Sequential, _keras.functional_class()):
        if isinstance(model, graph) and type(model).call is graph.call:
            return True
    return False


def _layers_per_example(model):
    """Returns "" when every layer of `model` treats each example on its own, else the reason it may not."""
    for layer in _keras.flatten_layers(model, include_self=False, recursive=False):
        if isinstance(layer, keras.Model):
            # A nested model qualifies only as a graph of qualifying layers (no call of its own).
            if not _is_graph_model(layer):
                return f"nested model {layer.name!r} ({type(layer).__name__}) has its own call"
            why = _layers_per_example(layer)
            if why:
                return why
            continue
        if not isinstance(layer, _PER_EXAMPLE_LAYERS):
            return f"layer {layer.name!r} ({type(layer).__name__}) may depend on the whole batch"
        if getattr(layer, "activity_regularizer", None) is not None:
            return f"layer {layer.name!r} has an activity regularizer (a loss over its batch)"
        if getattr(layer, "mask_zero", False):
            return f"layer {layer.name!r} makes a mask, which changes the loss's divisor per batch"
    return ""


def _standard_loss(model):
    """Returns "" when the model's compiled loss is one of Keras's per-example losses on one output
    with the default reduction and no loss weight, else why it is not. Raises AttributeError for a
    compiled loss of another shape (a Keras version that builds it otherwise)."""
    compile_loss = _keras.compiled_loss(model)
    if compile_loss is None:
        return "the model has no compiled loss"
    flat = _keras.flat_losses(compile_loss)
    if flat is None or len(flat) != 1:
        return "the loss is not one loss on one output"
    entry = flat[0]
    if entry.loss_weights not in (None, 1, 1.0):
        return "loss_weights"
    fn = entry.loss
    if _keras.is_loss_function_wrapper(fn):  # a function or name given to compile
        if fn.fn not in _PER_EXAMPLE_FUNCTIONS:
            return f"the loss {getattr(fn.fn, '__name__', fn.fn)!r} is not one of Keras's per-example losses"
    elif type(fn) not in _PER_EXAMPLE_LOSSES:
        return f"the loss {type(fn).__name__} is not one of Keras's per-example losses"
    if _keras.loss_function_kwargs(fn).get("ignore_class") is not None:
        return "the loss ignores a class (a mask, which changes its divisor per batch)"
    if fn.reduction != "sum_over_batch_size":
        return f"the loss's reduction is {fn.reduction!r}, not the default 'sum_over_batch_size'"
    return ""


def can_split(model):
    """Returns (True, "") when a batch of `model` computed in parts provably computes what its
    `train_step` computes on the whole batch (see the module's docstring), else (False, reason).
    The compiled loss is checked once the model is built (`model._compile_loss` is built with it)."""
    for method in ("train_step", "test_step", "compute_loss", "compute_metrics"):
        if _overrides(model, method):
            return False, f"{type(model).__name__} overrides {method}"
    if not _is_graph_model(model):
        return False, f"{type(model).__name__} is a subclassed model with its own call"
    why = _layers_per_example(model)
    if why:
        return False, why
    compile_loss = _keras.compiled_loss(model)
    if getattr(model, "compiled", False) and compile_loss is None:
        return False, "the model has no compiled loss (its loss comes from add_loss)"
    if getattr(compile_loss, "built", False):
        try:
            why = _standard_loss(model)
        except AttributeError as e:
            why = f"the compiled loss could not be inspected ({e})"
        if why:
            return False, why
    return True, ""


def _batch_size(structure):
    return tf.shape(next(t for t in tf.nest.flatten(structure) if t is not None))[0]


def _split(structure, sizes):
    """Returns one structure per part: every leaf cut along its first dimension into `sizes`."""
    leaves = [tf.split(leaf, sizes) for leaf in tf.nest.flatten(structure)]
    return [tf.nest.pack_sequence_as(structure, [pieces[i] for pieces in leaves]) for i in range(len(sizes))]


def _part_sizes(count, splits):
    """The sizes of `splits` parts of a batch of `count` (a tensor): the first ones one larger when needed."""
    return [(count + splits - 1 - i) // splits for i in range(splits)]


class Steps:
    """The compiled steps of one compiled model: `train_step(*batch)` and `eval_step(*batch)`.

    A batch is `(x,)`, `(x, y)` or `(x, y, sample_weight)`. `train_step` runs the model's own
    `train_step` on it and returns `loss_sum` (the change of Keras's loss tracker's total: the batch's
    loss times its example count; float32, 0 for a `train_step` that does not use the tracker),
    `count` (the tracker's change of count, else 0), `lr` (the rate this step used: the schedule at
    `optimizer.iterations` before the update), `momentum` when the optimizer's momentum is a
    schedule, and `finite` (False when that loss, the rate, the momentum or a trainable weight after
    the update is NaN or Inf; a `LossScaleOptimizer` skips an overflowing update itself, as in `model.fit`). The model's
    metrics are updated in their Keras state. `eval_step` runs the model's own `test_step` (the
    metrics and the loss tracker are updated as in `model.evaluate`) and returns the batch's
    example count (float32); with `padded_eval` (a multi-replica run's validation) a batch ends
    with a padding mask whose 0 examples are left out of test_step and the count.

    With `fuse_update` the whole train step is one `tf.function` compiled with `jit_compile`. Under
    any `tf.distribute` strategy (one replica too) pass `fuse_update=False`: the update all-reduces,
    which cannot happen inside a nested compiled function, so the step runs in the caller's function.
    With `splits` > 1 (only for a model `can_split` accepts) each unweighted batch is computed as that
    many parts, each part's loss weighted by its share of the batch, so the gradients add up to the
    whole batch's. `optimizer` (default `model.optimizer`) is the one the steps update with: a built
    optimizer of the model's trainable variables (it stands in for `model.optimizer` while the step
    is traced). `augment` (default None) is a function `(x, step) -> x` applied to each training
    batch's x inside the step, with `step` the optimizer's iterations before the update (see
    `clr_loop.augment`); evaluation batches are not augmented.
    """

    def __init__(
        self, model, *, jit_compile=False, splits=1, fuse_update=True, optimizer=None, augment=None, padded_eval=False
    ):
        check_compiled(model)
        self.model = model
        self.optimizer = model.optimizer if optimizer is None else optimizer
        self.splits = int(splits)
        self.jit_compile = bool(jit_compile)
        self.augment = augment
        self.metrics = _keras.compiled_metrics(model)
        self.tracker = _keras.loss_tracker(model)
        self.momentum_schedule = _momentum_schedule(self.optimizer)
        step = lambda *batch: self._step(tuple(batch))  # noqa: E731
        if fuse_update:
            step = tf.function(step, jit_compile=self.jit_compile, autograph=False)
        self.train_step = step if self.optimizer is model.optimizer else self._with_optimizer(step)
        self.padded_eval = padded_eval
        # A padded batch's real examples are cut out by a mask, a shape XLA cannot compile.
        self.eval_step = tf.function(
            lambda *batch: self._eval(tuple(batch)), jit_compile=self.jit_compile and not padded_eval, autograph=False
        )

    def _with_optimizer(self, step):
        # The model's train_step updates `model.optimizer`: another optimizer (the range test's)
        # stands in for it while the step is traced (and run).
        def run(*batch):
            model = self.model
            original = model.optimizer
            model.optimizer = self.optimizer
            try:
                return step(*batch)
            finally:
                model.optimizer = original

        return run

    def _tracker_sums(self):
        if self.tracker is None:
            return tf.constant(0.0), tf.constant(0.0)
        return tf.cast(self.tracker.total, tf.float32), tf.cast(self.tracker.count, tf.float32)

    def _step(self, batch):
        optimizer = self.optimizer
        lr = tf.cast(optimizer.learning_rate, tf.float32)
        momentum = None
        if self.momentum_schedule is not None:
            momentum = tf.cast(self.momentum_schedule(optimizer.iterations), tf.float32)
        if self.augment is not None:
            batch = (self.augment(batch[0], optimizer.iterations),) + tuple(batch[1:])
        total0, count0 = self._tracker_sums()
        # Identity copies: the reads above happen before the step's update of the tracker.
        total0, count0 = tf.identity(total0), tf.identity(count0)
        if self.splits > 1 and len(batch) == 2:
            self._split_train(batch)
        else:
            self.model.train_step(batch)
        total1, count1 = self._tracker_sums()
        loss_sum, count = total1 - total0, count1 - count0
        # A non-finite rate (or momentum, below) makes the update non-finite; the weights after the
        # update catch a non-finite gradient or update whatever the loss.
        finite = tf.logical_and(tf.math.is_finite(loss_sum), tf.math.is_finite(lr))
        for variable in self.model.trainable_variables:
            finite = tf.logical_and(finite, tf.reduce_all(tf.math.is_finite(variable)))
        out = {"loss_sum": loss_sum, "count": count, "finite": finite, "lr": lr}
        if momentum is not None:
            out["momentum"] = momentum
            finite = tf.logical_and(finite, tf.math.is_finite(momentum))
        out["finite"] = finite
        return out

    def _part(self, x, y, share):
        """One part's forward and backward pass as Keras's train_step does it, its loss weighted by `share`."""
        model = self.model
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True) if _keras.call_has_training_arg(model) else model(x)
            loss = _keras.compute_loss(model, x, y, y_pred)
            if self.tracker is not None:
                self.tracker.update_state(_keras.unscale_loss_for_distribution(loss), sample_weight=_batch_size(x))
            objective = self.optimizer.scale_loss(loss * tf.cast(share, loss.dtype))
        grads = tape.gradient(objective, model.trainable_variables)
        model.compute_metrics(x, y, y_pred, sample_weight=None)
        return grads

    def _split_train(self, batch):
        # The parts are independent subgraphs, which the executor runs side by side. A batch smaller
        # than the number of parts is computed whole.
        x, y = batch
        model = self.model
        count = _batch_size(x)
        variables = model.trainable_variables

        def parts():
            sizes = _part_sizes(count, self.splits)
            total = tf.cast(count, tf.float32)
            results = [
                self._part(px, py, tf.cast(size, tf.float32) / total)
                for px, py, size in zip(_split(x, sizes), _split(y, sizes), sizes)
            ]
            return [
                tf.add_n([g if g is not None else tf.zeros_like(v) for g in part])
                for part, v in zip(zip(*results), variables)
            ]

        def whole():
            return [g if g is not None else tf.zeros_like(v) for g, v in zip(self._part(x, y, 1.0), variables)]

        static = tf.nest.flatten(x)[0].shape[0]
        if static is not None:
            grads = parts() if static >= self.splits else whole()
        else:
            grads = tf.cond(count >= self.splits, parts, whole)
        self.optimizer.apply_gradients(zip(grads, variables))

    def _eval(self, batch):
        if not self.padded_eval:
            self.model.test_step(batch)
            return tf.cast(_batch_size(batch[0]), tf.float32)
        # The batch with a padding mask last, 0 for a padding example (see `inputs.pad_batches`):
        # test_step sees only the real ones, with the user's own sample weights if any, and a
        # replica whose part is all padding runs nothing.
        *data, weight = batch
        real = weight > 0
        count = tf.reduce_sum(tf.cast(real, tf.float32))

        def run():
            cut = lambda t: tf.boolean_mask(t, real)  # noqa: E731
            self.model.test_step(tuple(tf.nest.map_structure(cut, data)))
            return tf.constant(0)

        tf.cond(count > 0, run, lambda: tf.constant(0))
        return count


def _momentum_schedule(optimizer):
    """Returns the optimizer's momentum schedule (a callable of the step: SGD's momentum or Adam's
    beta_1), or None for a constant."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    for name in ("momentum", "beta_1"):
        momentum = getattr(inner, name, None)
        if callable(momentum):
            return momentum
    return None
