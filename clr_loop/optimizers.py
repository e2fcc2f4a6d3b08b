"""SGD whose momentum, and Adam whose beta_1, follows a schedule evaluated inside the compiled step (cyclical momentum).

Keras 3's `SGD` takes only a float momentum. Smith's one-cycle policy, and PyTorch's
`CyclicLR(cycle_momentum=True)` / `OneCycleLR`, move the momentum opposite to the learning rate:
high (`max_momentum`) where the rate is low, low (`base_momentum`) at the rate's peak.
`CyclicalMomentumSGD` keeps SGD's update rule exactly and reads its momentum from a
`CyclicalMomentum` schedule at `optimizer.iterations` on every step, the way Keras reads a
`LearningRateSchedule`, so it works inside `tf.function(jit_compile=True)` with no Python per step.
`CyclicalMomentumAdam` and `CyclicalMomentumAdamW` do the same for Adam's and AdamW's `beta_1`,
with PyTorch's bias correction (or the exact one of a time-varying beta). The classes are registered with Keras and their `get_config` holds only JSON values.
"""

import contextlib
import numbers

import keras
from keras import ops

_PACKAGE = "clr_loop"
# CyclicalMomentumAdam's bias corrections of a scheduled beta_1: PyTorch's, or the exact product.
BIAS_CORRECTIONS = ("current", "product")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CyclicalMomentum:
    """The momentum that goes with a clr_loop learning-rate schedule: `schedule.momentum(step, base, max)`.

    Calling it with a step (a Python int, numpy array or int/float tensor such as
    `optimizer.iterations`) returns a float32 momentum in `[base_momentum, max_momentum]`:
    `max_momentum` where the schedule's rate is at its low end and `base_momentum` at its (scaled)
    peak, with PyTorch's values for the same schedule (`CyclicLR(cycle_momentum=True)`,
    `OneCycleLR`). `schedule` is any schedule with such a `momentum` method
    (`clr_loop.schedules.CyclicalLearningRate` and its subclasses, `OneCycle`); steps are optimizer
    steps. `get_config` stores the schedule as a nested Keras config, so it round-trips through JSON.

    Args:
        schedule: a schedule with a `momentum(step, base_momentum, max_momentum)` method.
        base_momentum: the momentum at the schedule's peak rate, in [0, max_momentum].
        max_momentum: the momentum at its low rate, in [base_momentum, 1].

    Returns:
        A callable of the step, for `CyclicalMomentumSGD(momentum=...)` or `CyclicalMomentumAdam(beta_1=...)`.

    Raises:
        ValueError: `schedule` has no `momentum` method, or not `0 <= base_momentum <= max_momentum <= 1`.

    Example:
        >>> from clr_loop.optimizers import CyclicalMomentum
        >>> from clr_loop.schedules import OneCycle
        >>> momentum = CyclicalMomentum(OneCycle(0.1, total_steps=100), base_momentum=0.85, max_momentum=0.95)
        >>> [round(float(momentum(t)), 6) for t in (0, 29, 99)]  # high, low at the peak rate, high again
        [0.95, 0.85, 0.95]
    """

    def __init__(self, schedule, base_momentum=0.85, max_momentum=0.95):
        if not callable(getattr(schedule, "momentum", None)):
            raise ValueError(
                f"schedule must have a momentum(step, base_momentum, max_momentum) method (a clr_loop "
                f"CyclicalLearningRate or OneCycle), got {schedule!r}"
            )
        for name, value in (("base_momentum", base_momentum), ("max_momentum", max_momentum)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        if not 0 <= base_momentum <= max_momentum <= 1:
            raise ValueError(f"need 0 <= base_momentum ({base_momentum}) <= max_momentum ({max_momentum}) <= 1")
        self.schedule = schedule
        self.base_momentum = float(base_momentum)
        self.max_momentum = float(max_momentum)

    def __call__(self, step):
        return self.schedule.momentum(step, self.base_momentum, self.max_momentum)

    def get_config(self):
        """Returns a JSON-safe dict: the nested schedule config and the two momentum bounds."""
        return {
            "schedule": keras.saving.serialize_keras_object(self.schedule),
            "base_momentum": self.base_momentum,
            "max_momentum": self.max_momentum,
        }

    @classmethod
    def from_config(cls, config):
        """Returns a CyclicalMomentum from `get_config` output (the schedule is deserialized too)."""
        config = dict(config)
        config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(**config)


class _ScheduledSetting:
    """`get_config`/`from_config` for a Keras optimizer whose setting `_SCHEDULED` (SGD's momentum,
    Adam's beta_1) may be a schedule: it is saved as a nested Keras config, so the config stays JSON."""

    _SCHEDULED = None

    def get_config(self):
        """Returns a JSON-safe dict: the Keras optimizer's config, a scheduled setting as a nested Keras config."""
        config = super().get_config()
        if callable(getattr(self, self._SCHEDULED)):
            config[self._SCHEDULED] = keras.saving.serialize_keras_object(getattr(self, self._SCHEDULED))
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        """Returns an optimizer (without state) from `get_config` output."""
        config = dict(config)
        if isinstance(config.get(cls._SCHEDULED), dict):
            config[cls._SCHEDULED] = keras.saving.deserialize_keras_object(
                config[cls._SCHEDULED], custom_objects=custom_objects
            )
        return super().from_config(config, custom_objects=custom_objects)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CyclicalMomentumSGD(_ScheduledSetting, keras.optimizers.SGD):
    """Keras SGD with momentum, where the momentum may be a schedule of the step (`CyclicalMomentum`).

    The update is Keras SGD's, with `momentum_t = momentum(iterations)` read on every step, for
    `iterations` before the update (the same step the learning-rate schedule sees):
    `v = momentum_t * v - lr_t * g; w += v`, or with `nesterov=True`,
    `w += momentum_t * v - lr_t * g` after the same velocity update. `momentum` is a float in
    [0, 1] (then this is plain Keras SGD, except that the velocity always exists) or a
    Keras-serializable callable of the step such as `CyclicalMomentum`. The velocity variables are
    always created (named as Keras SGD names them), so checkpoints hold them from the first step.

    Args:
        learning_rate: a float or a Keras `LearningRateSchedule`, as Keras SGD's.
        momentum: a float in [0, 1] or a Keras-serializable callable of the step (`CyclicalMomentum`).
        nesterov: whether to use Nesterov momentum.
        name: the optimizer's name.
        **kwargs: Keras optimizer arguments (`clipnorm`, `weight_decay`, ...).

    Raises:
        ValueError: `momentum` is neither a float in [0, 1] nor callable.

    Example:
        >>> import keras
        >>> from clr_loop.optimizers import CyclicalMomentum, CyclicalMomentumSGD
        >>> from clr_loop.schedules import OneCycle
        >>> schedule = OneCycle(0.1, total_steps=100)
        >>> optimizer = CyclicalMomentumSGD(schedule, momentum=CyclicalMomentum(schedule, 0.85, 0.95))
        >>> w = keras.Variable([1.0])
        >>> _ = optimizer.apply_gradients([(keras.ops.ones((1,)), w)])
        >>> round(float(w.numpy()[0]), 6)  # w - lr(0) * g, with lr(0) = 0.1 / 25
        0.996
    """

    _SCHEDULED = "momentum"

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, name=None, **kwargs):
        # Keras SGD accepts only a float momentum; the real one is set right after.
        super().__init__(learning_rate=learning_rate, momentum=0.0, nesterov=nesterov, name=name, **kwargs)
        if callable(momentum):
            self.momentum = momentum
        elif isinstance(momentum, numbers.Real) and not isinstance(momentum, bool) and 0 <= momentum <= 1:
            self.momentum = float(momentum)
        else:
            raise ValueError(f"momentum must be a float in [0, 1] or a schedule of the step, got {momentum!r}")

    def build(self, variables):
        """Creates the iteration counter and one velocity variable per model variable (zeros)."""
        if self.built:
            return
        # Skips SGD.build, which creates velocities only for a non-zero float momentum.
        super(keras.optimizers.SGD, self).build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum")

    def current_momentum(self):
        """Returns the momentum (float32 scalar tensor) that the next update uses: its value at `iterations`."""
        if callable(self.momentum):
            # The same counter Keras hands the learning-rate schedule.
            return ops.cast(self.momentum(self._iterations), "float32")
        return ops.convert_to_tensor(self.momentum, "float32")

    def update_step(self, gradient, variable, learning_rate):
        """Applies one momentum-SGD update to `variable` with the momentum at the current step."""
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        momentum = ops.cast(self.current_momentum(), variable.dtype)
        m = self.momentums[self._get_variable_index(variable)]
        self.assign(m, ops.subtract(ops.multiply(m, momentum), ops.multiply(gradient, learning_rate)))
        if self.nesterov:
            self.assign_add(variable, ops.subtract(ops.multiply(m, momentum), ops.multiply(gradient, learning_rate)))
        else:
            self.assign_add(variable, m)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CyclicalMomentumAdam(_ScheduledSetting, keras.optimizers.Adam):
    """Keras Adam whose `beta_1` may be a schedule of the step (`CyclicalMomentum`), as PyTorch cycles it.

    PyTorch's `OneCycleLR`/`CyclicLR(cycle_momentum=True)` and fastai's one-cycle cycle an Adam-family
    optimizer's `beta_1` as SGD's momentum is cycled. With `beta_1_t = beta_1(iterations)` read on
    every step (for `iterations` before the update, the step the rate schedule sees), the first
    moment is `m = beta_1_t * m + (1 - beta_1_t) * g` and the update is Keras Adam's,
    `w -= lr_t * sqrt(1 - beta_2**t) / c_t * m / (sqrt(v) + epsilon)`. The bias correction `c_t` is
    `bias_correction="current"` (the default): `1 - beta_1_t**t`, PyTorch's and fastai's, so a
    PyTorch run's trajectory carries over; or `"product"`: `1 - prod(beta_1_1 .. beta_1_t)`, the
    exact correction for a time-varying beta (kept per model variable as a checkpointed scalar).
    For a constant `beta_1` both are Keras Adam. `weight_decay` is Keras's decoupled decay
    (`w -= lr_t * weight_decay * w` before the update), which is PyTorch's AdamW; see
    `CyclicalMomentumAdamW`. Note Keras adds `epsilon` to `sqrt(v)` and PyTorch to
    `sqrt(v / (1 - beta_2**t))`: pass PyTorch's `epsilon=1e-8` and the two differ only where
    `sqrt(v)` is near epsilon.

    Args:
        learning_rate: a float or a Keras `LearningRateSchedule`.
        beta_1: a float in [0, 1) or a Keras-serializable callable of the step (`CyclicalMomentum`).
        bias_correction: "current" or "product" (see above).
        name: the optimizer's name.
        **kwargs: Keras Adam's other arguments (`beta_2`, `epsilon`, `amsgrad`, `weight_decay`, ...).

    Raises:
        ValueError: `beta_1` is neither a float in [0, 1) nor callable, or unknown `bias_correction`.

    Example:
        >>> import keras
        >>> from clr_loop.optimizers import CyclicalMomentum, CyclicalMomentumAdam
        >>> from clr_loop.schedules import OneCycle
        >>> beta_1 = CyclicalMomentum(OneCycle(1e-3, total_steps=100), base_momentum=0.85, max_momentum=0.95)
        >>> optimizer = CyclicalMomentumAdam(1e-3, beta_1=beta_1)
        >>> w = keras.Variable([1.0])
        >>> _ = optimizer.apply_gradients([(keras.ops.ones((1,)), w)])
        >>> round(float(w.numpy()[0]), 6)  # Adam's first step moves by the rate
        0.999
    """

    _SCHEDULED = "beta_1"

    def __init__(self, learning_rate=0.001, beta_1=0.9, bias_correction="current", name=None, **kwargs):
        super().__init__(learning_rate=learning_rate, beta_1=0.9, name=name, **kwargs)
        if callable(beta_1):
            self.beta_1 = beta_1
        elif isinstance(beta_1, numbers.Real) and not isinstance(beta_1, bool) and 0 <= beta_1 < 1:
            self.beta_1 = float(beta_1)
        else:
            raise ValueError(f"beta_1 must be a float in [0, 1) or a schedule of the step, got {beta_1!r}")
        if bias_correction not in BIAS_CORRECTIONS:
            raise ValueError(f"bias_correction must be one of {', '.join(BIAS_CORRECTIONS)}, got {bias_correction!r}")
        self.bias_correction = bias_correction

    def build(self, var_list):
        """Creates Adam's variables and, with `bias_correction="product"`, per model variable the running product of beta_1 (ones)."""
        if self.built:
            return
        super().build(var_list)
        if self.bias_correction == "product":
            self._beta_1_products = [
                self.add_variable((), initializer="ones", dtype=variable.dtype, name="beta_1_product")
                for variable in var_list
            ]

    def get_config(self):
        """Returns a JSON-safe dict: Keras Adam's config, `beta_1` (a nested config when scheduled) and `bias_correction`."""
        return {**super().get_config(), "bias_correction": self.bias_correction}

    def current_beta_1(self):
        """Returns the beta_1 (float32 scalar tensor) that the next update uses: its value at `iterations`."""
        if callable(self.beta_1):
            return ops.cast(self.beta_1(self._iterations), "float32")
        return ops.convert_to_tensor(self.beta_1, "float32")

    def update_step(self, gradient, variable, learning_rate):
        """Applies one Adam update to `variable` with beta_1 at the current step and its bias correction."""
        index = self._get_variable_index(variable)
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        beta_1 = ops.cast(self.current_beta_1(), variable.dtype)
        local_step = ops.cast(self.iterations + 1, variable.dtype)
        beta_2_power = ops.power(ops.cast(self.beta_2, variable.dtype), local_step)
        if self.bias_correction == "product":
            product = ops.multiply(self._beta_1_products[index], beta_1)
            self.assign(self._beta_1_products[index], product)
        else:
            product = ops.power(beta_1, local_step)
        m = self._momentums[index]
        v = self._velocities[index]
        alpha = lr * ops.sqrt(1 - beta_2_power) / (1 - product)
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))
        if self.amsgrad:
            v_hat = self._velocity_hats[index]
            self.assign(v_hat, ops.maximum(v_hat, v))
            v = v_hat
        self.assign_sub(variable, ops.divide(ops.multiply(m, alpha), ops.add(ops.sqrt(v), self.epsilon)))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CyclicalMomentumAdamW(CyclicalMomentumAdam):
    """`CyclicalMomentumAdam` with Keras AdamW's default decoupled `weight_decay=0.004`: PyTorch's `AdamW`
    with a cycled `beta_1` (`w -= lr_t * weight_decay * w`, then the Adam update).

    Args:
        learning_rate: a float or a Keras `LearningRateSchedule`.
        beta_1: a float in [0, 1) or a Keras-serializable callable of the step (`CyclicalMomentum`).
        weight_decay: the decoupled weight decay.
        name: the optimizer's name.
        **kwargs: `CyclicalMomentumAdam`'s other arguments (`bias_correction`, `beta_2`, ...).

    Raises:
        ValueError: as `CyclicalMomentumAdam`.

    Example:
        >>> import keras
        >>> from clr_loop.optimizers import CyclicalMomentumAdamW
        >>> optimizer = CyclicalMomentumAdamW(1e-3, weight_decay=0.5)
        >>> w = keras.Variable([1.0])
        >>> _ = optimizer.apply_gradients([(keras.ops.ones((1,)), w)])
        >>> round(float(w.numpy()[0]), 6)  # decay (1e-3 * 0.5 * w), then Adam's step (1e-3)
        0.9985
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, weight_decay=0.004, name=None, **kwargs):
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, weight_decay=weight_decay, name=name, **kwargs)


class _ScheduleFree(keras.optimizers.Optimizer):
    """The schedule-free method (Defazio et al. 2024, "The Road Less Scheduled", Algorithm 1) for a
    base step `_direction` (the gradient for SGD, Adam's normalised gradient for AdamW).

    The model variables hold `y = beta * x + (1 - beta) * z`, where gradients are taken. Per step
    `t` (0-based `iterations` before the update), with `lr_t = learning_rate(t) * min(1, (t + 1) /
    warmup_steps)` (the reference's linear warmup; no warmup for 0), `lr_max` the largest `lr_t` so
    far, `weight = lr_max ** weight_lr_power` (the reference's default 2, with r = 0) and `c` its share
    of the running `weight_sum`: `x <- (1 - c) x + c z_new` with `z_new = z - lr_t * d` and `d` the
    direction plus `weight_decay * y` (decoupled decay at y, as the reference). `x` is not stored:
    `swap_to_x` moves the model variables to it for evaluation and saving, `swap_to_y` back.
    The state (`z`, `weight_sum`, `lr_max`, whether the variables hold x) is made of optimizer
    variables, so checkpoints and `.keras` files keep it.
    """

    _BETA = None  # the constructor argument naming the interpolation beta

    def __init__(self, learning_rate, beta, weight_decay=0.0, warmup_steps=0, weight_lr_power=2.0, name=None, **kwargs):
        for key in ("use_ema", "gradient_accumulation_steps"):
            if kwargs.get(key):
                raise ValueError(f"{type(self).__name__} does not support {key} (its averaging is its own)")
        super().__init__(learning_rate=learning_rate, weight_decay=None, name=name, **kwargs)
        if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0 < beta < 1:
            raise ValueError(f"{self._BETA} must be a float in (0, 1), got {beta!r}")
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, numbers.Real) or not weight_decay >= 0:
            raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, numbers.Integral) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
        if isinstance(weight_lr_power, bool) or not isinstance(weight_lr_power, numbers.Real) or weight_lr_power < 0:
            raise ValueError(f"weight_lr_power must be a number >= 0, got {weight_lr_power!r}")
        self.beta = float(beta)
        # Kept under Keras's name (so exclude_from_weight_decay applies), but applied at y here,
        # not by Keras's own decay (see `_apply_weight_decay`).
        self.weight_decay = float(weight_decay)
        self.warmup_steps = int(warmup_steps)
        self.weight_lr_power = float(weight_lr_power)

    def build(self, variables):
        """Creates `z` per model variable (a copy of it) and the scalar state: weight_sum, lr_max, at_x."""
        if self.built:
            return
        super().build(variables)
        self._z = self.add_optimizer_variables(variables, "z")
        for z, variable in zip(self._z, variables):
            self.assign(z, variable)

        def scalar(name, value):
            return self.add_variable(
                (),
                initializer=keras.initializers.Constant(value),
                dtype="float32",
                aggregation="only_first_replica",
                name=name,
            )

        self._weight_sum = scalar("weight_sum", 0.0)
        self._lr_max = scalar("lr_max", -1.0)
        # 1.0 while the model variables hold x (after swap_to_x), 0.0 while they hold y.
        self._at_x = scalar("at_x", 0.0)

    def _apply_weight_decay(self, variables):
        del variables  # applied at y inside the update, as the reference does

    def _get_current_learning_rate(self):
        # The rate a step uses, warmup included: Keras hands it to `update_step`, and clr_loop
        # logs it (the value for `iterations` before the update).
        lr = super()._get_current_learning_rate()
        if not self.warmup_steps:
            return lr
        step = ops.cast(self._iterations, "float32")
        return ops.cast(lr, "float32") * ops.minimum(1.0, (step + 1.0) / float(self.warmup_steps))

    def _weights(self, learning_rate):
        """Returns (lr_max, weight_sum, c) for this step from the state before it (not assigned)."""
        lr = ops.cast(learning_rate, "float32")
        lr_max = ops.maximum(self._lr_max, lr)
        weight = ops.power(lr_max, self.weight_lr_power)
        weight_sum = self._weight_sum + weight
        c = ops.where(weight_sum > 0, weight / ops.where(weight_sum > 0, weight_sum, 1.0), 0.0)
        return lr_max, weight_sum, c

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        super()._backend_update_step(grads, trainable_variables, learning_rate)
        # After every variable's update has read the old values (program order orders them).
        lr_max, weight_sum, _ = self._weights(learning_rate)
        self.assign(self._lr_max, lr_max)
        self.assign(self._weight_sum, weight_sum)

    def _direction(self, gradient, variable, index):
        raise NotImplementedError

    def update_step(self, gradient, variable, learning_rate):
        """Applies one schedule-free step to `variable` (holding y) and its `z`."""
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        _, _, c = self._weights(learning_rate)
        c = ops.cast(c, dtype)
        gradient = ops.cast(gradient, dtype)
        z = self._z[index]
        # At the first step z is y (initial weights set after `build` are caught too).
        z_old = ops.where(self._iterations == 0, variable, z)
        d = self._direction(gradient, variable, index)
        if self.weight_decay and self._use_weight_decay(variable):
            d = d + ops.cast(self.weight_decay, dtype) * variable
        beta = ops.cast(self.beta, dtype)
        # y_new = beta x_new + (1 - beta) z_new with x_new = (1 - c) x + c z_new, x = (y - (1 - beta) z) / beta.
        self.assign(variable, variable + c * (z_old - variable) + lr * (beta * (1 - c) - 1) * d)
        self.assign(z, z_old - lr * d)

    def _swap(self, variables, to_x):
        at_x = bool(self._at_x.numpy())
        if at_x == to_x:
            return
        if variables is None:
            variables = self._trainable_variables
        if int(self._iterations.numpy()) > 0:
            beta = self.beta
            for variable in variables:
                z = self._z[self._get_variable_index(variable)]
                # x = (y - (1 - beta) z) / beta ; y = beta x + (1 - beta) z (the reference's lerps).
                weight = 1 - 1 / beta if to_x else 1 - beta
                variable.assign(variable + ops.cast(weight, variable.dtype) * (z - variable))
        self._at_x.assign(1.0 if to_x else 0.0)

    def swap_to_x(self, variables=None):
        """Moves the model variables (default: those the optimizer was built with) from y to the
        averaged point x, for evaluation or saving; no-op if they hold x already. Returns None."""
        self._swap(variables, True)

    def swap_to_y(self, variables=None):
        """Moves the model variables back from x to y, where training continues; no-op at y. Returns None."""
        self._swap(variables, False)

    @property
    def at_x(self):
        """True while the model variables hold x (after `swap_to_x`), False while they hold y."""
        return bool(self._at_x.numpy()) if self.built else False

    @contextlib.contextmanager
    def at_average(self, variables=None):
        """A context in which the model variables hold x; after it they hold exactly (bit for bit) what
        they held before: y is copied to the host and put back, not recomputed from x, so
        evaluating at x does not change training."""
        if self.at_x:
            yield
            return
        if variables is None:
            variables = self._trainable_variables
        saved = [v.numpy() for v in variables]
        self.swap_to_x(variables)
        try:
            yield
        finally:
            for variable, value in zip(variables, saved):
                variable.assign(value)
            self._at_x.assign(0.0)

    def get_config(self):
        """Returns a JSON-safe dict: Keras's optimizer config plus beta, warmup_steps, weight_lr_power."""
        config = super().get_config()
        config.update(
            {
                self._BETA: self.beta,
                "weight_decay": self.weight_decay,
                "warmup_steps": self.warmup_steps,
                "weight_lr_power": self.weight_lr_power,
            }
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ScheduleFreeSGD(_ScheduleFree):
    """Schedule-free SGD (the reference's `SGDScheduleFree`): the direction is the gradient at y.

    `momentum` is the interpolation beta (reference default 0.9); `learning_rate` a float or a
    Keras schedule of the step; `warmup_steps` linear warmup from lr/warmup_steps; `weight_decay`
    added as `weight_decay * y` to the gradient. Call `swap_to_x` before evaluating or saving (clr_loop.fit
    does), or evaluate inside `at_average()`.

    Args:
        learning_rate: a float or a Keras `LearningRateSchedule`.
        momentum: the interpolation beta, in (0, 1).
        weight_decay: a number >= 0.
        warmup_steps: an integer >= 0 (0: no warmup).
        weight_lr_power: the power of the largest rate so far in each step's averaging weight, >= 0.
        name: the optimizer's name.
        **kwargs: Keras optimizer arguments (`clipnorm`, ...) but `use_ema`, `gradient_accumulation_steps`.

    Raises:
        ValueError: naming an argument out of range, or `use_ema` / `gradient_accumulation_steps`.

    Example:
        >>> import keras
        >>> from clr_loop.optimizers import ScheduleFreeSGD
        >>> optimizer = ScheduleFreeSGD(0.5, warmup_steps=2)
        >>> w = keras.Variable([1.0])
        >>> _ = [optimizer.apply_gradients([(keras.ops.ones((1,)), w)]) for _ in range(3)]  # 3 steps
        >>> round(float(w.numpy()[0]), 6)  # y, where the gradients are taken
        0.05
        >>> with optimizer.at_average():  # x, the point to evaluate
        ...     round(float(w.numpy()[0]), 6)
        0.083333
        >>> round(float(w.numpy()[0]), 6), optimizer.at_x  # back at y
        (0.05, False)
    """

    _BETA = "momentum"

    def __init__(
        self,
        learning_rate=1.0,
        momentum=0.9,
        weight_decay=0.0,
        warmup_steps=0,
        weight_lr_power=2.0,
        name=None,
        **kwargs,
    ):
        super().__init__(
            learning_rate,
            momentum,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            weight_lr_power=weight_lr_power,
            name=name,
            **kwargs,
        )

    @property
    def momentum(self):
        return self.beta

    def _direction(self, gradient, variable, index):
        return gradient


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ScheduleFreeAdamW(_ScheduleFree):
    """Schedule-free AdamW (the reference's `AdamWScheduleFree`): the direction is
    `g / (sqrt(v / (1 - beta_2**t)) + epsilon)` with `v` Adam's second moment (the reference's bias
    correction; there is no first moment, `beta_1` is the interpolation beta), plus
    `weight_decay * y`.

    Args:
        learning_rate: a float or a Keras `LearningRateSchedule`.
        beta_1: the interpolation beta, in (0, 1).
        beta_2: the decay of the second moment, in [0, 1).
        epsilon: a number >= 0.
        weight_decay: a number >= 0.
        warmup_steps: an integer >= 0 (0: no warmup).
        weight_lr_power: the power of the largest rate so far in each step's averaging weight, >= 0.
        name: the optimizer's name.
        **kwargs: Keras optimizer arguments, as `ScheduleFreeSGD`.

    Raises:
        ValueError: naming the argument that is out of range.

    Example:
        >>> import keras
        >>> from clr_loop.optimizers import ScheduleFreeAdamW
        >>> optimizer = ScheduleFreeAdamW(0.01)
        >>> w = keras.Variable([1.0])
        >>> _ = [optimizer.apply_gradients([(keras.ops.ones((1,)), w)]) for _ in range(3)]  # 3 steps
        >>> optimizer.swap_to_x()  # for evaluating or saving
        >>> round(float(w.numpy()[0]), 6), optimizer.at_x
        (0.98, True)
        >>> optimizer.swap_to_y()  # to train on
    """

    _BETA = "beta_1"

    def __init__(
        self,
        learning_rate=0.0025,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        weight_decay=0.0,
        warmup_steps=0,
        weight_lr_power=2.0,
        name=None,
        **kwargs,
    ):
        super().__init__(
            learning_rate,
            beta_1,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            weight_lr_power=weight_lr_power,
            name=name,
            **kwargs,
        )
        if isinstance(beta_2, bool) or not isinstance(beta_2, numbers.Real) or not 0 <= beta_2 < 1:
            raise ValueError(f"beta_2 must be a float in [0, 1), got {beta_2!r}")
        if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not epsilon >= 0:
            raise ValueError(f"epsilon must be a number >= 0, got {epsilon!r}")
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)

    @property
    def beta_1(self):
        return self.beta

    def build(self, variables):
        """Creates z, the scalar state and Adam's second moment per variable (zeros)."""
        if self.built:
            return
        super().build(variables)
        self._velocities = self.add_optimizer_variables(variables, "velocity")

    def _direction(self, gradient, variable, index):
        dtype = variable.dtype
        v = self._velocities[index]
        beta_2 = ops.cast(self.beta_2, dtype)
        self.assign(v, beta_2 * v + (1 - beta_2) * ops.square(gradient))
        correction = 1 - ops.power(beta_2, ops.cast(self._iterations + 1, dtype))
        return gradient / (ops.sqrt(v / correction) + ops.cast(self.epsilon, dtype))

    def get_config(self):
        config = super().get_config()
        config.update({"beta_2": self.beta_2, "epsilon": self.epsilon})
        return config
