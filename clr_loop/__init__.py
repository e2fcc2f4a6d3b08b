"""clr_loop: cyclical learning rates and a graph-compiled TensorFlow training loop.

The schedules (`clr_loop.schedules`) are a drop-in replacement for the retired
`tensorflow_addons.optimizers.CyclicalLearningRate` family on TensorFlow 2.16+ / Keras 3.
"""

from clr_loop import process as _process

# This import brings in TensorFlow and Keras: without collections during it, it is ~0.7 s faster,
# and without running matplotlib.pyplot's code for Keras (it runs when first used) 0.15 s more.
with _process.gc_paused(), _process.deferred_imports():
    from clr_loop.schedules import (
        CyclicalLearningRate,
        ExponentialCyclicalLearningRate,
        OneCycle,
        Triangular2CyclicalLearningRate,
        TriangularCyclicalLearningRate,
    )

__all__ = [
    "CyclicalLearningRate",
    "ExponentialCyclicalLearningRate",
    "OneCycle",
    "Triangular2CyclicalLearningRate",
    "TriangularCyclicalLearningRate",
]
__version__ = "0.1.0"
