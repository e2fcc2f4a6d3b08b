"""BatchNormalization moving statistics recomputed for the weights a model holds now.

A schedule-free optimizer trains at one point (y) and evaluates at another (x, the average). The
moving mean and variance that BatchNormalization layers kept while training belong to y; before
evaluating at x they are recomputed there: the model runs forward in training mode (no gradients,
no update) on a number of training batches, and the statistics become the plain average of those
batches' statistics (each layer's momentum is `i / (i + 1)` on the i-th batch, from 0), as the
schedule-free reference's documentation recommends. Dropout's random state is put back after, so
the recomputation does not change what training draws next.
"""

import keras
import tensorflow as tf

from clr_loop import _keras


def batch_norm_layers(model):
    """Returns the model's BatchNormalization layers (nested ones included), in layer order."""
    return [
        layer
        for layer in _keras.flatten_layers(model, include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


def moving_statistics(model):
    """Returns the moving mean and variance variables of every BatchNormalization layer of `model`."""
    return [v for layer in batch_norm_layers(model) for v in (layer.moving_mean, layer.moving_variance)]


class Recompute:
    """`Recompute(model, strategy)(batches)` sets the model's BatchNormalization moving statistics to
    the average of their batch statistics over `batches` (an iterable of `(x, y)` (or `(x,)`, `(x, y, w)`) batches, distributed
    for `strategy` when it has several replicas) and returns how many batches it used (0 leaves them
    as they were). `rng_states` are variables (dropout's seed generators) restored afterwards."""

    def __init__(self, model, strategy, rng_states=()):
        self.model = model
        self.strategy = strategy
        self.layers = batch_norm_layers(model)
        self.rng_states = list(rng_states)
        self._momentum = None
        self._forward = None

    def _build(self):
        self._momentum = tf.Variable(0.0, trainable=False, name="bn_recompute_momentum")
        model = self.model

        def replica_forward(x):
            if _keras.call_has_training_arg(model):
                model(x, training=True)
            else:
                model(x)
            return tf.constant(0)

        # One trace for every batch size (an epoch's last partial batch too).
        @tf.function(autograph=False, reduce_retracing=True)
        def forward(x):
            self.strategy.run(replica_forward, args=(x,))

        self._forward = forward

    def __call__(self, batches):
        if not self.layers:
            return 0
        if self._forward is None:
            self._build()
        momenta = [layer.momentum for layer in self.layers]
        rng = [v.numpy() for v in self.rng_states]
        used = 0
        try:
            for layer in self.layers:
                # Bypasses Keras's attribute tracking: a temporary, not part of the layer's state.
                object.__setattr__(layer, "momentum", self._momentum)
            for batch in batches:  # (x,), (x, y) or (x, y, sample_weight)
                self._momentum.assign(used / (used + 1.0))
                self._forward(batch[0])
                used += 1
        finally:
            for layer, momentum in zip(self.layers, momenta):
                object.__setattr__(layer, "momentum", momentum)
            for variable, value in zip(self.rng_states, rng):
                variable.assign(value)
        return used
