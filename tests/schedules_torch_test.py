"""clr_loop's Sequence and Warmup against PyTorch's own SequentialLR, stepped on a dummy optimizer.

PyTorch's `SequentialLR` of `LinearLR` / `ConstantLR` / `CosineAnnealingLR` is the oracle: the same
composite built from clr_loop's `Sequence` / `Warmup` and Keras's own schedules must give the
rate torch's optimizer holds at every step.
"""

import keras
import numpy as np
import pytest

from clr_loop.schedules import Sequence, Warmup, WarmupStableDecay

torch = pytest.importorskip("torch")


def torch_rates(make_schedulers, base_lr, steps):
    """Returns the rate torch's optimizer holds before each of `steps` updates (float64 array)."""
    torch.set_num_threads(1)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    scheduler = make_schedulers(optimizer)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return np.array(rates)


def test_sequence_matches_sequential_lr_of_linear_constant_cosine():
    base, steps = 0.1, 80
    sched = torch.optim.lr_scheduler

    def make(optimizer):
        return sched.SequentialLR(
            optimizer,
            [
                sched.LinearLR(optimizer, start_factor=0.1, end_factor=1.0, total_iters=10),
                sched.ConstantLR(optimizer, factor=0.5, total_iters=1000),
                sched.CosineAnnealingLR(optimizer, T_max=40, eta_min=0.001),
            ],
            milestones=[10, 25],
        )

    expected = torch_rates(make, base, steps)
    ours = Sequence(
        [
            (keras.optimizers.schedules.PolynomialDecay(0.01, 10, end_learning_rate=0.1), 10),
            (0.05, 15),
            (keras.optimizers.schedules.CosineDecay(0.1, 40, alpha=0.01), None),
        ]
    )
    # Up to the cosine's T_max: past it torch's cosine comes back up; Keras's holds the end rate.
    n = 25 + 41
    np.testing.assert_allclose(ours(np.arange(n)), expected[:n], rtol=2e-6, atol=1e-9)
    np.testing.assert_allclose(ours(np.arange(n, steps)), 0.001, rtol=1e-6)


def test_warmup_matches_sequential_lr_of_linear_then_cosine():
    base, warmup, steps = 0.2, 6, 50
    sched = torch.optim.lr_scheduler

    def make(optimizer):
        return sched.SequentialLR(
            optimizer,
            [
                sched.LinearLR(optimizer, start_factor=0.25, end_factor=1.0, total_iters=warmup),
                sched.CosineAnnealingLR(optimizer, T_max=30, eta_min=0.0),
            ],
            milestones=[warmup],
        )

    expected = torch_rates(make, base, steps)
    ours = Warmup(keras.optimizers.schedules.CosineDecay(base, 30), warmup_steps=warmup, start_lr=0.25 * base)
    # Past T_max torch's cosine comes back up; Keras's (and a warmup's) holds the end rate.
    n = warmup + 31
    np.testing.assert_allclose(ours(np.arange(n)), expected[:n], rtol=2e-6, atol=1e-9)


def test_wsd_matches_sequential_lr_of_linear_constant_linear():
    peak, total, warm, decay = 0.1, 40, 5, 10
    sched = torch.optim.lr_scheduler

    def make(optimizer):
        return sched.SequentialLR(
            optimizer,
            [
                sched.LinearLR(optimizer, start_factor=1e-12, end_factor=1.0, total_iters=warm),
                sched.ConstantLR(optimizer, factor=1.0, total_iters=1),
                sched.LinearLR(optimizer, start_factor=1.0, end_factor=0.0, total_iters=decay),
            ],
            milestones=[warm, total - decay],
        )

    expected = torch_rates(make, peak, total)
    ours = WarmupStableDecay(peak, total, warm, decay, decay="linear")
    np.testing.assert_allclose(ours(np.arange(total)), expected, rtol=2e-6, atol=1e-9)
