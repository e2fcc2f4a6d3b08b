"""The compiled train and eval steps of a compiled Keras model, built from what `compile` was given.

A step is a pure function of (model state, batch): `train_step(x, y)` runs the forward pass, the
compiled loss plus `model.losses` (`model.compute_loss`, as Keras's own `train_step`), the
gradients and `optimizer.apply_gradients`, which evaluates the optimizer's schedule on
`optimizer.iterations`. The compiled metrics keep their own Keras state, updated inside the step;
the loss is returned as a sum over the batch's examples, so the loop can add batches exactly in
float64 whatever their sizes. Nothing here reads flags, prints or writes summaries.

On a CPU without XLA a batch can be computed as several parts side by side (`splits`), each with
its own forward and backward pass, the parts' gradients summed into one update. That computes the
same thing only for a model whose layers treat every example on its own, which `can_split` checks.
"""

import copy

import keras
import tensorflow as tf

# Layers that compute each example independently of the others in its batch (and add no
# activity loss), so that a batch computed in parts equals the whole batch to float rounding.
# Dropout-type layers qualify but draw one mask per part. BatchNormalization does not qualify;
# Normalization does (its mean and variance are constants while training).
_PER_EXAMPLE_LAYERS = tuple(
    getattr(keras.layers, name)
    for name in (
        "InputLayer", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
        "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D", "Dense", "EinsumDense",
        "Embedding", "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
        "AveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
        "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D", "Dropout",
        "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianDropout", "GaussianNoise",
        "AlphaDropout", "Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax", "Flatten", "Reshape",
        "Permute", "RepeatVector", "Rescaling", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D",
        "Cropping1D", "Cropping2D", "Cropping3D", "UpSampling1D", "UpSampling2D", "UpSampling3D", "Add",
        "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate", "Dot", "LayerNormalization",
        "UnitNormalization", "GroupNormalization", "Identity", "Normalization",
    )
    if hasattr(keras.layers, name)
) + (keras.Sequential, keras.Model)


def check_compiled(model):
    """Raises ValueError unless `model` is a Keras 3 model compiled with an optimizer and a loss."""
    if not isinstance(model, keras.Model):
        raise ValueError(f"model must be a keras.Model, got {type(model).__name__}")
    if not getattr(model, "compiled", False) or model.optimizer is None:
        raise ValueError(
            "the model is not compiled: call model.compile(optimizer=..., loss=..., metrics=[...]) before training it"
        )
    if model._compile_loss is None and not model.losses:  # pylint: disable=protected-access
        raise ValueError("the model was compiled without a loss: pass loss=... to model.compile")
    for method in ("train_step", "test_step"):
        if getattr(type(model), method) is not getattr(keras.Model, method):
            raise ValueError(
                f"{type(model).__name__} overrides {method}, which clr_loop does not run: its compiled step "
                "is built from what compile() was given (override compute_loss instead, which it uses)"
            )


def can_split(model):
    """Returns (True, "") when every layer of `model` treats each example on its own, else
    (False, reason) naming the first layer that depends on the whole batch (or is not known not to)."""
    for layer in model._flatten_layers(include_self=False):  # pylint: disable=protected-access
        if not isinstance(layer, _PER_EXAMPLE_LAYERS):
            return False, f"layer {layer.name!r} ({type(layer).__name__}) may depend on the whole batch"
        if getattr(layer, "activity_regularizer", None) is not None:
            return False, f"layer {layer.name!r} has an activity regularizer (a loss over its batch)"
    return True, ""


def _batch_size(structure):
    return tf.shape(tf.nest.flatten(structure)[0])[0]


def _split(structure, sizes):
    """Returns one structure per part: every leaf cut along its first dimension into `sizes`."""
    leaves = [tf.split(leaf, sizes) for leaf in tf.nest.flatten(structure)]
    return [tf.nest.pack_sequence_as(structure, [pieces[i] for pieces in leaves]) for i in range(len(sizes))]


def _part_sizes(count, splits):
    """The sizes of `splits` parts of a batch of `count` (a tensor): the first ones one larger when needed."""
    return [(count + splits - 1 - i) // splits for i in range(splits)]


def _unreduced_loss(model):
    """Returns `f(y, y_pred) -> per-example loss [B]` for a model with one compiled loss on one
    output (the loss object copied with its reduction off), or None when there is no such loss."""
    compile_loss = model._compile_loss  # pylint: disable=protected-access
    flat = getattr(compile_loss, "_flat_losses", None)
    if not flat or len(flat) != 1 or len(model.outputs or [None]) != 1:
        return None
    entry = flat[0]
    loss_fn = entry[1] if isinstance(entry, tuple) else getattr(entry, "fn", None)
    weight = entry[2] if isinstance(entry, tuple) and len(entry) > 2 else 1.0
    if not isinstance(loss_fn, keras.losses.Loss) or weight not in (None, 1.0):
        return None
    unreduced = copy.copy(loss_fn)
    unreduced.reduction = None

    def per_example(y, y_pred):
        values = unreduced(y, y_pred)
        if values.shape.rank > 1:
            values = tf.reduce_mean(values, axis=list(range(1, values.shape.rank)))
        return values

    return per_example


class Steps:
    """The compiled steps of one compiled model: `train_step(x, y)` and `eval_step(x, y)`.

    `train_step` returns `loss_sum` (the batch's loss, `model.compute_loss` including
    `model.losses`, times its example count; float32), `count`, `lr` (the rate this step used:
    the schedule at `optimizer.iterations` before the update), `momentum` when the optimizer's
    momentum is a schedule, and `finite` (False when the rate, the momentum, the loss or a gradient
    is NaN or Inf; with a
    `LossScaleOptimizer`, whose overflowing steps are skipped, the gradients do not count: its
    `apply_gradients` skips the update, halves the scale and leaves `iterations`, so the schedule,
    where they were, as in Keras's own `train_step`). The compiled
    metrics are updated in their Keras state. `eval_step` returns `(loss_sum, count)` in float32:
    per-example losses summed where the model has one compiled loss, else the batch loss times its
    count, plus `model.losses` per example; it updates the metrics too.

    With `fuse_update` the whole train step (schedule, forward, gradients, update) is one
    `tf.function` compiled with `jit_compile`. Under any `tf.distribute` strategy (one replica
    too) pass `fuse_update=False`: the update all-reduces, which cannot happen inside a nested compiled
    function, so only the forward and backward pass are compiled. With `splits` > 1 each batch is
    computed as that many parts (see `can_split`), each part's loss weighted by its share of the
    batch, so the gradients add up to the whole batch's. `optimizer` (default `model.optimizer`)
    is the one the steps update with: a built optimizer of the model's trainable variables.
    `augment` (default None) is a function `(x, step) -> x` applied to each training batch inside
    the step, before it is split, with `step` the optimizer's iterations before the update (see
    `clr_loop.augment`); evaluation batches are not augmented.
    """

    def __init__(self, model, *, jit_compile=False, splits=1, fuse_update=True, optimizer=None, augment=None):
        check_compiled(model)
        self.model = model
        self.optimizer = model.optimizer if optimizer is None else optimizer
        self.splits = int(splits)
        self.jit_compile = bool(jit_compile)
        self.augment = augment
        self.metrics = model._compile_metrics  # pylint: disable=protected-access
        self._per_example = _unreduced_loss(model)
        self._loss_scaled = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
        self.momentum_schedule = _momentum_schedule(self.optimizer)
        compute = self._split_gradients if self.splits > 1 else self._gradients
        if fuse_update:
            self.train_step = tf.function(
                lambda x, y: self._step(x, y, compute), jit_compile=self.jit_compile, autograph=False
            )
        else:
            compiled = tf.function(compute, jit_compile=self.jit_compile, autograph=False)
            self.train_step = lambda x, y: self._step(x, y, compiled)
        self.eval_step = tf.function(self._eval, jit_compile=self.jit_compile, autograph=False)

    def _forward(self, x, training):
        model = self.model
        if model._call_has_training_arg:  # pylint: disable=protected-access
            return model(x, training=training)
        return model(x)

    def _gradients(self, x, y, weight=None):
        model = self.model
        with tf.GradientTape() as tape:
            y_pred = self._forward(x, training=True)
            loss = model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=None, training=True)  # pylint: disable=protected-access
            objective = loss if weight is None else loss * tf.cast(weight, loss.dtype)
            objective = self.optimizer.scale_loss(objective)
        grads = tape.gradient(objective, model.trainable_variables)
        if self.metrics is not None:
            self.metrics.update_state(y, y_pred)
        count = tf.cast(_batch_size(x), tf.float32)
        loss = tf.cast(keras.src.losses.loss.unscale_loss_for_distribution(loss), tf.float32)
        finite = tf.math.is_finite(loss)
        if not self._loss_scaled:
            for grad in grads:
                if grad is not None:
                    finite = tf.logical_and(finite, tf.reduce_all(tf.math.is_finite(grad)))
        return grads, {"loss_sum": loss * count, "count": count, "finite": finite}

    def _split_gradients(self, x, y):
        # Each part's loss is weighted by its share of the batch, so the parts' gradients add up to
        # the batch's mean-loss gradient. The parts are independent subgraphs, which the executor
        # runs side by side. A batch smaller than the number of parts is computed whole.
        count = _batch_size(x)

        def parts():
            sizes = _part_sizes(count, self.splits)
            total = tf.cast(count, tf.float32)
            results = [
                self._gradients(px, py, tf.cast(size, tf.float32) / total)
                for px, py, size in zip(_split(x, sizes), _split(y, sizes), sizes)
            ]
            grads = [
                None if any(g is None for g in part) else tf.add_n(list(part))
                for part in zip(*(g for g, _ in results))
            ]
            metrics = {k: tf.add_n([m[k] for _, m in results]) for k in ("loss_sum", "count")}
            metrics["finite"] = tf.reduce_all(tf.stack([m["finite"] for _, m in results]))
            return grads, metrics

        static = tf.nest.flatten(x)[0].shape[0]
        if static is not None:
            return parts() if static >= self.splits else self._gradients(x, y)
        # Unknown batch size (an epoch's last partial batch): decided when it runs. Both branches
        # must return tensors, so a variable without a gradient gets zeros.
        variables = self.model.trainable_variables

        def dense(result):
            grads, metrics = result
            return [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)], metrics

        return tf.cond(count >= self.splits, lambda: dense(parts()), lambda: dense(self._gradients(x, y)))

    def _step(self, x, y, compute):
        optimizer = self.optimizer
        lr = tf.cast(optimizer.learning_rate, tf.float32)
        momentum = None
        if self.momentum_schedule is not None:
            momentum = tf.cast(self.momentum_schedule(optimizer.iterations), tf.float32)
        if self.augment is not None:
            x = self.augment(x, optimizer.iterations)
        grads, metrics = compute(x, y)
        variables = self.model.trainable_variables
        optimizer.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])
        # A non-finite rate (or momentum) makes the update non-finite while this step's loss and
        # gradients, computed before it, are finite: the step is not finite either.
        finite = tf.logical_and(metrics["finite"], tf.math.is_finite(lr))
        out = {**metrics, "lr": lr}
        if momentum is not None:
            out["momentum"] = momentum
            finite = tf.logical_and(finite, tf.math.is_finite(momentum))
        out["finite"] = finite
        return out

    def _eval(self, x, y, weight=None):
        count = _batch_size(x)
        if self.splits > 1:
            # A last batch smaller than `splits` would leave a part empty: it is computed whole.
            return tf.cond(
                count >= self.splits,
                lambda: self._split_eval(x, y, weight, count),
                lambda: self._eval_sums(x, y, weight),
            )
        return self._eval_sums(x, y, weight)

    def _split_eval(self, x, y, weight, count):
        sizes = _part_sizes(count, self.splits)
        weights = [None] * self.splits if weight is None else _split(weight, sizes)
        parts = [self._eval_sums(px, py, pw) for px, py, pw in zip(_split(x, sizes), _split(y, sizes), weights)]
        return tuple(tf.add_n(list(values)) for values in zip(*parts))

    def _eval_sums(self, x, y, weight=None):
        """The batch's (loss sum, example count) in float32. `weight` (default all 1) is 0 for a
        padding example, which then adds to neither, nor to the metrics."""
        model = self.model
        y_pred = self._forward(x, training=False)
        size = tf.cast(_batch_size(x), tf.float32)
        count = size if weight is None else tf.reduce_sum(weight)
        if self.metrics is not None:
            if weight is None:
                self.metrics.update_state(y, y_pred)
            else:
                # Keras's compiled metrics ignore sample weights: the padding is left out instead.
                real = lambda t: tf.boolean_mask(t, weight > 0)  # noqa: E731
                self.metrics.update_state(tf.nest.map_structure(real, y), tf.nest.map_structure(real, y_pred))
        if self._per_example is not None:
            values = tf.cast(self._per_example(y, y_pred), tf.float32)
            if weight is not None:
                # A padding example's loss is left out even when it is not finite.
                values = tf.where(weight > 0, values * weight, 0.0)
            loss_sum = tf.reduce_sum(values)
            extra = [tf.cast(tf.reduce_sum(loss), tf.float32) for loss in model.losses]
            if extra:
                loss_sum += count * tf.add_n(extra)
        else:
            loss = model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=weight, training=False)  # pylint: disable=protected-access
            loss = tf.cast(keras.src.losses.loss.unscale_loss_for_distribution(loss), tf.float32)
            # Keras's mean over the batch counts weight-0 examples in its divisor, so the batch's
            # sum is that mean times the padded size. An empty batch adds nothing.
            loss_sum = tf.where(count > 0, loss * size, 0.0)
        return loss_sum, count


def _momentum_schedule(optimizer):
    """Returns the optimizer's momentum schedule (a callable of the step: SGD's momentum or Adam's
    beta_1), or None for a constant."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    for name in ("momentum", "beta_1"):
        momentum = getattr(inner, name, None)
        if callable(momentum):
            return momentum
    return None
