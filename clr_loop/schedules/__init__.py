"""Cyclical learning-rate schedules for Keras 3, a drop-in for `tfa.optimizers.CyclicalLearningRate`.

Every schedule maps a step (a Python int, a numpy array of steps, or a float/int32/int64 tensor such as
`optimizer.iterations`) to a learning rate (float32, or for the CLR family the dtype of
`initial_learning_rate` as in TFA), and works inside `tf.function(jit_compile=True)`.

Precision: TensorFlow Addons computed the position inside a cycle as `step / step_size - 2 * cycle + 1`
in float32, which loses about three digits by step 10^4 when step_size is small. Here the position is
computed with integer arithmetic (int64 steps and whole step sizes) or float64, and powers such as
`gamma ** step` as `exp(step * log(gamma))` in float64, so float32 results stay within about 1e-6
relative of a float64 reference up to step 10^7.

Serialization: schedules are registered with Keras, under clr_loop's names and, for the CLR family,
TFA's (`Addons>CyclicalLearningRate`, ...), so models saved with TFA load. A named mode's config holds
only JSON values (the mode's *name*); a custom `scale_fn` is saved as Keras saves a Lambda layer's
function (see `clr_loop.scale_fns`).

The classes are defined in the modules of this package, by role: `cyclical` (the CLR family),
`one_cycle` (`OneCycle`), `compose` (`Warmup`, `Sequence`, `WarmupStableDecay`) and `_common`
(shared helpers). Import them from here, `clr_loop.schedules`, which is also their `__module__` (so
Keras's saved configs name this module, as before the split).
"""

from clr_loop.schedules.compose import (
    WARMUP_SHAPES,
    WSD_DECAYS,
    Sequence,
    Warmup,
    WarmupStableDecay,
)
from clr_loop.schedules.cyclical import (
    MODES,
    SCALE_MODES,
    TFA_NAMES,
    CyclicalLearningRate,
    ExponentialCyclicalLearningRate,
    ScaleFunction,
    Triangular2CyclicalLearningRate,
    TriangularCyclicalLearningRate,
)
from clr_loop.schedules.one_cycle import ANNEAL_STRATEGIES, OneCycle

__all__ = [
    "ANNEAL_STRATEGIES",
    "MODES",
    "SCALE_MODES",
    "TFA_NAMES",
    "WARMUP_SHAPES",
    "WSD_DECAYS",
    "CyclicalLearningRate",
    "ExponentialCyclicalLearningRate",
    "OneCycle",
    "ScaleFunction",
    "Sequence",
    "Triangular2CyclicalLearningRate",
    "TriangularCyclicalLearningRate",
    "Warmup",
    "WarmupStableDecay",
]
