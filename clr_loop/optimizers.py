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
            raise ValueError(
                f"need 0 <= base_momentum ({base_momentum}) <= max_momentum ({max_momentum}) <= 1"
            )
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
            self.assign_add(
                variable, ops.subtract(ops.multiply(m, momentum), ops.multiply(gradient, learning_rate))
            )
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
    with a cycled `beta_1` (`w -= lr_t * weight_decay * w`, then the Adam update)."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, weight_decay=0.004, name=None, **kwargs):
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, weight_decay=weight_decay, name=name, **kwargs)
