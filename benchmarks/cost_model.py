"""The benchmark's cost model and weights fingerprint: multiply-adds per layer, FLOPs per step, a checksum.

One copy of each for every worker: `layer_macs` counts a Keras model's Conv2D and Dense layers and
the PyTorch peer's Conv2d and Linear layers the same way, `training_flops` turns those counts into
a step's FLOPs, and `weights_checksum` fingerprints a list of weight arrays. Nothing here imports
TensorFlow, Keras or PyTorch at import time (`benchmarks.torch_peer`'s processes must stay free of
TensorFlow): each framework is imported inside the function that reads its model.
"""


def layer_macs(model, image_shape=(1, 28, 28)):
    """Returns [(layer name, forward multiply-adds per example)] of a model's convolutions and dense layers.

    A convolution costs `H_out * W_out * kh * kw * C_in * C_out` multiply-adds (read from its
    output shape) and a dense layer `in * out`. Bias adds, activations, pooling, dropout, the loss
    and the optimizer are left out: they add well under 1% to the arithmetic (they cost memory
    traffic, which the profile shows separately).

    Args:
      model: a built Keras model (its Conv2D and Dense layers, in `model.layers` order, the output
        shape read from the built layer) or a PyTorch `nn.Module` (its Conv2d and Linear modules,
        counted in one forward pass of a single zero image).
      image_shape: the PyTorch model's input shape per example, (C, H, W); unused for Keras.

    Returns:
      A list of (layer name, multiply-adds per example), the first layer first.
    """
    if hasattr(model, "named_modules"):  # a torch.nn.Module
        return _torch_layer_macs(model, image_shape)
    return _keras_layer_macs(model)


def _keras_layer_macs(model):
    import keras  # pylint: disable=import-outside-toplevel

    costs = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            costs.append((layer.name, int(h * w * kh * kw * cin * cout)))
        elif isinstance(layer, keras.layers.Dense):
            cin, cout = layer.kernel.shape
            costs.append((layer.name, int(cin * cout)))
    return costs


def _torch_layer_macs(model, image_shape):
    import torch  # pylint: disable=import-outside-toplevel
    from torch import nn  # pylint: disable=import-outside-toplevel

    costs, hooks = [], []
    for name, layer in model.named_modules():
        if isinstance(layer, nn.Conv2d):

            def conv_hook(module, inputs, output, name=name):
                kh, kw = module.kernel_size
                costs.append(
                    (name, int(output.shape[2] * output.shape[3] * kh * kw * module.in_channels * module.out_channels))
                )

            hooks.append(layer.register_forward_hook(conv_hook))
        elif isinstance(layer, nn.Linear):
            hooks.append(
                layer.register_forward_hook(
                    lambda module, inputs, output, name=name: costs.append(
                        (name, module.in_features * module.out_features)
                    )
                )
            )
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros((1, *image_shape), dtype=torch.uint8))
    model.train(was_training)
    for hook in hooks:
        hook.remove()
    return costs


def training_flops(layer_macs, batch_size, training=True):  # pylint: disable=redefined-outer-name
    """Returns the FLOPs (2 per multiply-add) of one step at `batch_size` from per-example layer MACs.

    A training step is the forward pass, the weight gradients (as many multiply-adds) and the input
    gradients (as many again, except for the first layer, whose input is the data):
    `2 * batch_size * (3 * forward - first)`; eval is `2 * batch_size * forward`.

    Args:
      layer_macs: the forward multiply-adds per example of each Conv2D/Dense layer, the first
        layer first.
      batch_size: examples per step.
      training: a training step (True) or an eval step (False).

    Returns:
      The step's floating-point operations, an int.
    """
    forward = sum(layer_macs)
    if not training:
        return 2 * batch_size * forward
    return 2 * batch_size * (3 * forward - layer_macs[0])


def step_flops(model, batch_size, training=True):
    """Returns the floating-point operations (FLOPs, 2 per multiply-add) of one step of `model`.

    forward = sum of `layer_macs`; a training step adds the weight gradients (as many
    multiply-adds as the forward pass, layer for layer) and the input gradients (the same again,
    except for the first layer, whose input is the data and needs no gradient):
    `FLOPs = 2 * batch_size * (3 * forward - first_layer)`; for eval, `2 * batch_size * forward`.
    For the tutorial's CNN at batch 64: 2 * 64 * (3 * 1,054,976 - 230,400) = 375.6 MFLOP.

    Args:
      model: a built Keras model (or the PyTorch peer's model, see `layer_macs`).
      batch_size: examples per step.
      training: a training step (True) or an eval step (False).

    Returns:
      The step's FLOPs, an int.
    """
    return training_flops([macs for _, macs in layer_macs(model)], batch_size, training)


def weights_checksum(weights):
    """Returns [sum, sum of squares] in float64 of weight arrays: a cheap fingerprint of a model's weights.

    For comparing two runs' weights (two thread settings in two processes, two contenders'
    initial weights).

    Args:
      weights: a list of arrays (`model.get_weights()`, or `[v.numpy() for v in
        model.trainable_variables]`).

    Returns:
      [sum, sum of squares] of all their values, as Python floats.
    """
    import numpy as np  # pylint: disable=import-outside-toplevel

    values = np.concatenate([np.ravel(w).astype(np.float64) for w in weights])
    return [float(values.sum()), float(np.square(values).sum())]
