"""clr_loop: cyclical learning rates and a graph-compiled TensorFlow training loop.

The schedules (`clr_loop.schedules`) are a drop-in replacement for the retired
`tensorflow_addons.optimizers.CyclicalLearningRate` family on TensorFlow 2.16+ / Keras 3;
`clr_loop.fit` trains a compiled Keras model with the graph-compiled loop.

Importing the package imports nothing else and changes nothing outside it: each public name is
loaded from its module on first access (PEP 562), so `import clr_loop` does not import TensorFlow.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for type checkers and BUILD's deps; at run time `__getattr__` imports them
    from clr_loop.loop import fit
    from clr_loop.schedules import (
        CyclicalLearningRate,
        ExponentialCyclicalLearningRate,
        OneCycle,
        Sequence,
        Triangular2CyclicalLearningRate,
        TriangularCyclicalLearningRate,
        Warmup,
        WarmupStableDecay,
    )

# Public name -> the module that defines it.
_EXPORTS = {
    "CyclicalLearningRate": "clr_loop.schedules",
    "ExponentialCyclicalLearningRate": "clr_loop.schedules",
    "OneCycle": "clr_loop.schedules",
    "Sequence": "clr_loop.schedules",
    "Warmup": "clr_loop.schedules",
    "WarmupStableDecay": "clr_loop.schedules",
    "Triangular2CyclicalLearningRate": "clr_loop.schedules",
    "TriangularCyclicalLearningRate": "clr_loop.schedules",
    "fit": "clr_loop.loop",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name):
    """Returns the public attribute `name`, importing its module on first use (then cached here)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
