r"""The benchmark's PyTorch peer: the tutorial's CNN trained with `torch.optim.SGD` and `CyclicLR`.

  python -m benchmarks.torch_peer --epoch              # the tutorial's epoch with validation, a whole process
  python -m benchmarks.torch_peer --epoch --compile    # the same with the model under torch.compile

Run from the repository root; PyTorch comes with the `bench` extra (`pip install -e ".[bench]"`).
`benchmarks.bench` runs this module's per-step workers (`--worker=<JSON Spec>`, kinds "torch" and
"torch_compile") and its whole-process epochs next to clr_loop's and Keras's.

The model is the tutorial's (`clr_loop.experiment.models.create_model`) layer for layer, in PyTorch's NCHW
layout: uint8 pixels scaled by 1/255, Conv2d(1, 16, 5) + ReLU, MaxPool 2, Conv2d(16, 32, 5) +
ReLU, MaxPool 2, Dropout2d(0.2) (Keras's SpatialDropout2D), global average pooling, Linear(32, 128)
+ ReLU, Linear(128, 10). Weights are Glorot-uniform and biases zero, as Keras initialises them (the
values differ: another random generator). The softmax is folded into the loss
(`F.cross_entropy` on the logits, which is Keras's softmax + sparse categorical cross-entropy).
The optimizer is plain SGD with `CyclicLR(1e-4, 1e-2, step_size_up=2 epochs, mode="triangular2")`
stepped once per batch, the tutorial's schedule. Batches of 64 are drawn from the in-memory tensors
in a fresh seeded permutation per epoch (not tf.data's order, which the comparison does not need).
torch.compile wraps the model (forward and, through AOTAutograd, backward); the optimizer step
stays eager.

Threads: PyTorch's intra-op pool is set to the process's cores (`os.sched_getaffinity`), the
budget TensorFlow's default intra-op pool has in the Keras fit rows, and its inter-op pool is
PyTorch's default.

Nothing here imports TensorFlow or clr_loop (whose package imports TensorFlow): the process is what
a PyTorch user would run. The data come from the Debian IDX files (`read_idx_images`/`labels`) or,
as in `worker.load_data`, random uint8 arrays of the same shapes.
"""

import gzip
import importlib.util
import json
import os
import sys
import time

import numpy as np

from benchmarks import cost_model
from benchmarks import measure

HIDE_ENV = "CLR_BENCH_HIDE_TORCH"
INSTALL = 'python -m pip install -e ".[bench]"'
# The same folder and file names as clr_loop.experiment.fashion_mnist (which imports TensorFlow); bench_test checks them.
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
FULL_SIZE = {"train": 60000, "test": 10000}
SEED = 42
BATCH_SIZE = 64
# The tutorial's schedule (clr_loop.experiment.config.Config's defaults; bench_test checks them): from
# INITIAL_LR up to MAX_LR in STEP_SIZE_EPOCHS epochs and back, the amplitude halving every cycle.
INITIAL_LR = 1e-4
MAX_LR = 1e-2
STEP_SIZE_EPOCHS = 2.0


def torch_status():
    """Returns (available, why not): whether `import torch` would work, without importing it.

    `CLR_BENCH_HIDE_TORCH=1` in the environment hides an installed PyTorch (how the tests run the
    bench as it runs without the extra); `sys.modules["torch"] = None` hides it in one process.
    """
    if os.environ.get(HIDE_ENV):
        return False, f"PyTorch hidden by {HIDE_ENV}={os.environ[HIDE_ENV]}"
    try:
        found = importlib.util.find_spec("torch") is not None
    except (ValueError, ImportError):  # sys.modules["torch"] is None
        found = False
    return (True, "") if found else (False, f"PyTorch is not installed ({INSTALL})")


# ---------------------------------------------------------------------------------------------
# Data


def _read_idx(path, ndim):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[:4], "big")
    if magic != 0x800 + ndim:
        raise ValueError(f"{path}: not an IDX file of {ndim} dimension(s) (magic {magic:#x})")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    values = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if values.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {values.size} payload bytes for header {dims}")
    return values.reshape(dims)


def load_arrays(choice="auto", examples=0, directory=DEBIAN_DIR):
    """Returns ((train_x, train_y, test_x, test_y), description): uint8 [N, 28, 28, 1] images, int32 labels.

    "auto" reads the four IDX files in `directory` when they are there; otherwise (or for
    "random") the random arrays `worker.load_data` makes (the same generator, seed and order).
    `examples` > 0 keeps the first that many examples of each split.
    """
    arrays = None
    if choice == "auto" and all(os.path.exists(os.path.join(directory, f)) for f in IDX_FILES.values()):
        arrays = []
        for split in ("train", "test"):
            arrays.append(_read_idx(os.path.join(directory, IDX_FILES[f"{split}_images"]), 3)[..., None])
            arrays.append(_read_idx(os.path.join(directory, IDX_FILES[f"{split}_labels"]), 1).astype(np.int32))
        description = f"real Fashion-MNIST (idx files in {directory})"
    if arrays is None:
        rng = np.random.default_rng(SEED)
        arrays = []
        for split in ("train", "test"):
            n = min(FULL_SIZE[split], examples) if examples else FULL_SIZE[split]
            arrays.append(rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8))
            arrays.append(rng.integers(0, 10, n).astype(np.int32))
        why = "requested" if choice == "random" else "no Fashion-MNIST IDX files"
        description = f"random uint8 data ({why})"
    if examples:
        arrays = [a[:examples] for a in arrays]
        description += f", first {examples} examples of each split"
    return tuple(arrays), description


# ---------------------------------------------------------------------------------------------
# Model, schedule, steps


def set_threads(cores=None):
    """Sets PyTorch's intra-op pool to `cores` (default: this process's cores); returns (inter-op, intra-op)."""
    import torch  # pylint: disable=import-outside-toplevel

    cores = cores or len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    return torch.get_num_interop_threads(), torch.get_num_threads()


def make_model(seed=SEED):
    """Returns the tutorial's CNN as a `torch.nn.Sequential` (see the module docstring), initialised from `seed`."""
    import torch  # pylint: disable=import-outside-toplevel
    from torch import nn  # pylint: disable=import-outside-toplevel

    class Rescale(nn.Module):
        """uint8 NCHW pixels to float32 in [0, 1] (Keras's Rescaling(1/255))."""

        def forward(self, x):
            return x.float() * (1.0 / 255.0)

    torch.manual_seed(seed)
    model = nn.Sequential(
        Rescale(),
        nn.Conv2d(1, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Dropout2d(0.2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )
    for layer in model:
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    return model


def make_optimizer(model, steps_per_epoch, initial_lr=INITIAL_LR, max_lr=MAX_LR, step_size_epochs=STEP_SIZE_EPOCHS):
    """Returns (SGD optimizer, CyclicLR triangular2 scheduler) at the tutorial's rates, stepped per batch.

    The half cycle is `round(step_size_epochs * steps_per_epoch)` steps, as clr_loop's plan
    computes it; momentum cycling is off (plain SGD has none).
    """
    import torch  # pylint: disable=import-outside-toplevel

    optimizer = torch.optim.SGD(model.parameters(), lr=initial_lr)
    scheduler = torch.optim.lr_scheduler.CyclicLR(
        optimizer,
        base_lr=initial_lr,
        max_lr=max_lr,
        step_size_up=max(1, round(step_size_epochs * steps_per_epoch)),
        mode="triangular2",
        cycle_momentum=False,
    )
    return optimizer, scheduler


def to_tensors(images, labels):
    """Returns (uint8 NCHW images, int64 labels) as torch tensors from the numpy arrays."""
    import torch  # pylint: disable=import-outside-toplevel

    x = torch.from_numpy(np.transpose(images, (0, 3, 1, 2)).copy())
    return x, torch.from_numpy(labels.astype(np.int64))


def make_train_step(model, optimizer, scheduler, compile_model=False):
    """Returns (step(x, y) -> loss tensor, the module it calls): one SGD step and one schedule step.

    With `compile_model`, the module is `torch.compile(model)` (compiled on the first call).
    """
    import torch  # pylint: disable=import-outside-toplevel
    import torch.nn.functional as F  # pylint: disable=import-outside-toplevel

    forward = torch.compile(model) if compile_model else model

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(forward(x), y)
        loss.backward()
        optimizer.step()
        scheduler.step()
        return loss

    return step, forward


def batches(x, y, batch_size, seed, drop_remainder):
    """Yields (images, labels) batches forever: each epoch a fresh permutation from a `seed`ed generator."""
    import torch  # pylint: disable=import-outside-toplevel

    generator = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    end = n - n % batch_size if drop_remainder else n
    while True:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, end, batch_size):
            idx = perm[start : start + batch_size]
            yield x[idx], y[idx]


def evaluate(forward, x, y, batch_size):
    """Returns (mean loss, accuracy) of `forward` over (x, y) at `batch_size`, in eval mode without gradients."""
    import torch  # pylint: disable=import-outside-toplevel
    import torch.nn.functional as F  # pylint: disable=import-outside-toplevel

    forward.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            logits = forward(x[start : start + batch_size])
            target = y[start : start + batch_size]
            loss += float(F.cross_entropy(logits, target, reduction="sum"))
            correct += int((logits.argmax(1) == target).sum())
    forward.train()
    return loss / x.shape[0], correct / x.shape[0]


# ---------------------------------------------------------------------------------------------
# Per-step worker (a bench Spec of kind "torch" or "torch_compile")


def time_steps(spec, cores=None):
    """Times the PyTorch step for a bench Spec (as a dict) in this process; returns bench's result dict.

    As `worker.time_loop` times clr_loop: the first `min(100, steps)` steps are timed on their own
    (with torch.compile: the compilation), a warm-up of at least 20 steps follows, then each of
    `repeats` repeats runs `steps` steps (0: one epoch of full batches) and ends by reading the
    loss back. A torch.compile that fails gives a result with "error" (why) and no times.
    `cores` sizes PyTorch's intra-op pool (`set_threads`).
    """
    import torch  # pylint: disable=import-outside-toplevel

    threads = set_threads(cores)
    (train_x, train_y, _, _), description = load_arrays(spec["data"], spec["examples"])
    batch = spec["batch_size"]
    full = len(train_x) // batch
    steps = min(spec["steps"], full) if spec["steps"] > 0 else full
    model = make_model()
    optimizer, scheduler = make_optimizer(model, -(-FULL_SIZE["train"] // batch))
    macs = cost_model.layer_macs(model)
    step, _ = make_train_step(model, optimizer, scheduler, compile_model=spec["kind"] == "torch_compile")
    x, y = to_tensors(train_x, train_y)
    stream = batches(x, y, batch, SEED, drop_remainder=True)
    common = {
        "threads": list(threads),
        "data": description,
        "torch": torch.__version__,
        "splits_resolved": 1,
        "layer_macs": macs,
    }

    def run(n):
        loss = None
        for _ in range(n):
            loss = step(*next(stream))
        return float(loss.detach())

    first = min(100, steps)
    start = time.perf_counter()
    try:
        run(first)
    except Exception as e:  # pylint: disable=broad-except  # torch.compile's failures have many types
        return {
            **common,
            "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:500],
        }
    first_call_s = time.perf_counter() - start
    run(max(20, min(steps, 100)))
    wall, cpu = [], []
    for _ in range(spec["repeats"]):
        start, cpu_start = time.perf_counter(), measure.cpu_seconds()
        last_loss = run(steps)
        wall.append(time.perf_counter() - start)
        cpu.append(measure.cpu_seconds() - cpu_start)
    flops = cost_model.training_flops([m for _, m in macs], batch)
    result = measure.summary(batch, wall, cpu, steps, first_call_s, first, flops)
    result.update(common, last_loss=last_loss, jit_resolved=spec["kind"] == "torch_compile")
    return result


# ---------------------------------------------------------------------------------------------
# Whole process: the tutorial's epoch with validation


def run_epochs(epochs=1, compile_model=False, data="auto", examples=0, log=print, cores=None):
    """Trains the tutorial's CNN for `epochs` epochs with a validation pass after each; returns a dict.

    Every epoch covers the whole training split at batch 64 (the last batch partial, as Keras
    fit does) and is followed by the loss and accuracy on the test split at the same batch size
    (what fit's `validation_data` does). Returns {"fit_s", "setup_s", "history": {"loss",
    "val_loss", "val_accuracy"}, "threads", "data"}. `cores` sizes PyTorch's intra-op pool.
    """
    start = time.perf_counter()
    threads = set_threads(cores)
    (train_x, train_y, test_x, test_y), description = load_arrays(data, examples)
    model = make_model()
    optimizer, scheduler = make_optimizer(model, -(-len(train_x) // BATCH_SIZE))
    step, forward = make_train_step(model, optimizer, scheduler, compile_model)
    x, y = to_tensors(train_x, train_y)
    vx, vy = to_tensors(test_x, test_y)
    steps = -(-len(train_x) // BATCH_SIZE)
    stream = batches(x, y, BATCH_SIZE, SEED, drop_remainder=False)
    setup = time.perf_counter() - start
    history = {"loss": [], "val_loss": [], "val_accuracy": []}
    for epoch in range(epochs):
        total = 0.0
        for _ in range(steps):
            total += float(step(*next(stream)).detach())
        val_loss, val_acc = evaluate(forward, vx, vy, BATCH_SIZE)
        history["loss"].append(total / steps)
        history["val_loss"].append(val_loss)
        history["val_accuracy"].append(val_acc)
        log(f"epoch {epoch + 1}/{epochs}: loss {total / steps:.4f} val_loss {val_loss:.4f} val_accuracy {val_acc:.4f}")
    return {
        "fit_s": time.perf_counter() - start - setup,
        "setup_s": setup,
        "history": history,
        "threads": list(threads),
        "data": description,
    }


def main(argv):
    """The module's command line (see the module docstring); returns the exit status."""
    import argparse  # pylint: disable=import-outside-toplevel

    parser = argparse.ArgumentParser(prog="python -m benchmarks.torch_peer", description=__doc__.split("\n")[0])
    parser.add_argument("--epoch", action="store_true", help="Run the tutorial's epochs with validation and exit.")
    parser.add_argument("--epochs", type=int, default=1, help="Epochs for --epoch.")
    parser.add_argument("--compile", action="store_true", help="Put the model under torch.compile.")
    parser.add_argument("--data", choices=["auto", "random"], default="auto")
    parser.add_argument("--examples", type=int, default=0, help="Keep this many examples of each split.")
    parser.add_argument("--worker", help="Internal: time this JSON bench Spec and print its result.")
    args = parser.parse_args(argv)
    available, why = torch_status()
    if not available:
        print(f"python -m benchmarks.torch_peer: {why}", file=sys.stderr)
        return 2
    if args.epochs < 1 or args.examples < 0:
        parser.error("--epochs must be positive and --examples >= 0")
    if args.worker:
        result = time_steps(json.loads(args.worker))
        result["peak_rss_mb"] = measure.peak_rss_mb()
        print(measure.RESULT_PREFIX + json.dumps(result), flush=True)
        return 0
    if not args.epoch:
        parser.error("nothing to do: give --epoch (or --worker)")
    result = run_epochs(args.epochs, args.compile, args.data, args.examples)
    print(
        f"torch{' compile' if args.compile else ''}: {result['fit_s']:.1f} s for {args.epochs} epoch(s) incl. validation;"
        f" set-up {result['setup_s']:.1f} s; threads {result['threads']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
