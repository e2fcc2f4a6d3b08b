"""What the benchmark measures: one configuration (`Spec`) and the lists of them that make its tables.

`Spec` is one configuration, run in its own worker process; `training_specs` is the main table
((a) Keras fit, (b) clr_loop's loop as the trainer builds it, (c) its variants, (p) the PyTorch
peer), `eval_specs` the eval table, `kernel_specs` the short runs whose oneDNN kernels are listed,
`grid_specs` the `--grid` table, and `split_threads` the batch parts and thread pools the trainer
resolves on a CPU, which the variants reproduce. Nothing here imports TensorFlow.
"""

import dataclasses
import json


# The tutorial's values; the trainer's Config defaults are the same.
TUTORIAL_BATCH_SIZE = 64
SEED = 42
MATMUL_SIZE = 2048
# The PyTorch peer's kinds and their rows' names.
TORCH_KINDS = {"torch": "(p) PyTorch eager", "torch_compile": "(p) PyTorch torch.compile"}
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
# A Spec's `data` "idx:DIR" reads the four Fashion-MNIST IDX files in DIR (`worker.load_data`).
IDX_PREFIX = "idx:"


@dataclasses.dataclass(frozen=True)
class Spec:
    """One benchmark configuration, run in its own process.

    `kind` is "fit" (Keras `model.fit`, the tutorial's way), "loop" (clr_loop's compiled loop),
    "eval_loop" (clr_loop's eval loop over the test split), "fit_eval" (Keras `model.evaluate`
    at the training batch size, what `fit` runs as validation) or "matmul" (the machine's
    float32 matmul rate). `jit` is a `--jit_compile` value ("auto", "true", "false"); `input` is
    the loop's `input_mode`: "pipeline" (tf.data, clr_loop.experiment.fashion_mnist.train_dataset's order) or "device"
    (the whole training set on the device, each batch gathered inside the compiled loop). `splits` is the
    trainer's `--batch_splits` (each batch computed as that many parts side by side; 0: the
    trainer's automatic choice, 1: no splitting). `inter_op` and `intra_op` are TensorFlow
    thread-pool sizes; 0 and 0 mean what the trainer's app sets (`runtime.configure_threads`: one
    inter-op thread per part and the cores shared among them when it splits, else TensorFlow's
    default of one per core); "fit" always runs on TensorFlow's defaults, as the tutorial
    does. `virtual_cpus` > 0 runs the trainer's
    `--strategy=mirrored --virtual_cpus=N` (one replica per virtual CPU). `examples` > 0 keeps
    only that many examples of each split (for quick checks and tests). `precision` is a Keras
    dtype policy ("float32", "mixed_bfloat16", "mixed_float16") set as the worker's global policy
    before the model is built (for "fit" and "loop": clr_loop's loop trains the model in the
    policy it was built with). Kinds "torch" and "torch_compile" are the PyTorch peer
    (`benchmarks.torch_peer`, eager and under torch.compile), run in a process without TensorFlow.
    """

    kind: str
    batch_size: int = TUTORIAL_BATCH_SIZE
    steps: int = 0
    repeats: int = 3
    steps_per_loop: int = 100
    jit: str = "auto"
    input: str = "pipeline"
    inter_op: int = 0
    intra_op: int = 0
    splits: int = 0
    virtual_cpus: int = 0
    eval_batch_size: int = 1000
    data: str = "auto"
    examples: int = 0
    precision: str = "float32"
    label: str = ""

    @property
    def name(self):
        """A short, unique, human-readable name (the table's first column)."""
        if self.label:
            return self.label
        precision = "" if self.precision == "float32" else f" {self.precision}"
        if self.kind in TORCH_KINDS:
            return TORCH_KINDS[self.kind] + precision
        if self.kind in ("fit", "fit_eval", "matmul"):
            return self.kind + ("" if self.jit == "auto" else f" jit={self.jit}") + precision
        parts = [self.kind, self.input, f"xla={self.jit}"] if self.kind == "loop" else [self.kind, f"xla={self.jit}"]
        if self.kind == "loop":
            parts.append(f"spl={self.steps_per_loop}")
        if self.splits and self.kind != "fit":
            parts.append(f"split={self.splits}")
        if self.virtual_cpus:
            parts.append(f"mirrored vcpus={self.virtual_cpus}")
        if self.inter_op or self.intra_op:
            parts.append(f"threads={self.inter_op}x{self.intra_op}")
        return " ".join(parts) + precision

    def to_json(self):
        """Returns the spec as a JSON string (how the parent hands it to a worker)."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text):
        """Returns the Spec that `to_json` wrote."""
        return cls(**json.loads(text))


def training_specs(batch_size, steps, repeats, steps_per_loop_list, data, precisions=("float32",), torch=False):
    """Returns the training configurations of one table: (a) fit, (b) the loop, (c) the variants, (p) PyTorch.

    (b) is clr_loop's loop as the trainer builds it by default (automatic batch splitting and the
    thread pools that go with it) fed by tf.data, with XLA off and on, for each steps_per_loop.
    (c) is the same loop without splitting on TensorFlow's default threads (the plain loop) and
    with one inter-op thread (ops one at a time, each using every core), the trainer's own data
    parallelism (`--strategy=mirrored --virtual_cpus=N`) on the split threads, and the loop with
    its training set on the device (`input_mode="device"`) instead of tf.data. Each of `precisions` other than float32 adds fit and the
    default loop (XLA off) under that Keras dtype policy; `torch` adds the PyTorch peer, eager and
    under torch.compile.

    Args:
      batch_size: the training batch size.
      steps: timed steps per repeat (0: one epoch of full batches).
      repeats: timed repeats per worker.
      steps_per_loop_list: the steps_per_loop values of (b).
      data: a Spec's `data` ("auto", "random" or "idx:DIR").
      precisions: Keras dtype policies; each but float32 adds fit and the default loop under it.
      torch: add the PyTorch peer's rows.

    Returns:
      A list of `Spec`, (a) fit first.
    """
    common = dict(batch_size=batch_size, steps=steps, repeats=repeats, data=data)
    specs = [Spec("fit", label="(a) fit", **common), Spec("fit", jit="true", label="(a) fit jit=true", **common)]
    for jit in ("false", "true"):
        for spl in steps_per_loop_list:
            specs.append(Spec("loop", steps_per_loop=spl, jit=jit, **common))
    specs.append(Spec("loop", steps_per_loop=100, jit="false", splits=1, **common))
    specs.append(Spec("loop", steps_per_loop=100, jit="false", splits=1, inter_op=1, **common))
    split = split_threads(batch_size)
    if split:
        mirrored = dict(virtual_cpus=split["splits"], inter_op=split["inter_op"], intra_op=split["intra_op"])
        specs.append(Spec("loop", steps_per_loop=100, jit="false", **mirrored, **common))
    for spl in sorted({100, max(steps_per_loop_list)}):
        specs.append(Spec("loop", steps_per_loop=spl, jit="false", input="device", **common))
    specs.append(Spec("loop", steps_per_loop=100, jit="false", input="device", splits=1, **common))
    for precision in precisions:
        if precision != "float32":
            specs.append(Spec("fit", label=f"(a) fit {precision}", precision=precision, **common))
            specs.append(Spec("loop", steps_per_loop=100, jit="false", precision=precision, **common))
    if torch:
        specs += [Spec(kind, **common) for kind in TORCH_KINDS]
    return specs


def split_threads(batch_size, cores=None):
    """Returns {"splits", "inter_op", "intra_op"} as the trainer resolves them on a CPU, or {} for no splitting.

    The trainer's automatic choice (`runtime.auto_batch_splits`: one part per core, at least 32
    examples each, dividing the batch) and the pools `runtime.thread_pool_sizes` gives it.

    Args:
      batch_size: the training batch size.
      cores: the CPU cores (None: `runtime.cpu_cores()`).

    Returns:
      {"splits", "inter_op", "intra_op"}, or {} when the trainer would not split.
    """
    from clr_loop import runtime  # pylint: disable=import-outside-toplevel

    cores = cores or runtime.cpu_cores()
    splits = runtime.auto_batch_splits(batch_size, cores)
    if splits < 2:
        return {}
    inter_op, intra_op = runtime.thread_pool_sizes(splits, cores)
    return {"splits": splits, "inter_op": inter_op, "intra_op": intra_op}


def eval_specs(batch_size, repeats, data):
    """Returns the eval configurations: clr_loop's eval loop (as the trainer runs it; XLA on; unsplit) and Keras `evaluate`.

    Args:
      batch_size: the training batch size (Keras `evaluate`'s batch).
      repeats: timed passes per worker.
      data: a Spec's `data`.

    Returns:
      A list of four `Spec`, Keras `evaluate` ("fit_eval") last.
    """
    common = dict(batch_size=batch_size, repeats=repeats, data=data)
    return [
        Spec("eval_loop", jit="false", **common),
        Spec("eval_loop", jit="true", **common),
        Spec("eval_loop", jit="false", splits=1, **common),
        Spec("fit_eval", **common),
    ]


def kernel_specs(precisions, data="auto"):
    """Returns the short runs whose oneDNN kernels are listed: Keras fit and clr_loop's default loop
    (XLA off) per precision, 5 steps of batch 64 on 640 examples.

    Args:
      precisions: Keras dtype policies.
      data: a Spec's `data`.

    Returns:
      A list of `Spec`, fit then the loop per precision.
    """
    common = dict(steps=5, repeats=1, data=data, examples=640)
    specs = []
    for precision in precisions:
        specs.append(Spec("fit", precision=precision, **common))
        specs.append(Spec("loop", jit="false", steps_per_loop=5, precision=precision, **common))
    return specs


GRID_CONTENDERS = (
    ("fit", "pipeline", "(a) fit"),
    ("loop", "pipeline", "loop tf.data"),
    ("loop", "device", "loop device"),
)


def grid_specs(batch_sizes, precisions, steps, repeats, data, examples=0):
    """Returns the `--grid` configurations: for each precision, then each batch size, Keras's `fit`
    (its own `jit_compile="auto"`), and clr_loop's loop as the trainer builds it by default (XLA
    by `jit_compile="auto"`, 100 steps per loop, automatic batch splitting) fed by tf.data and by
    device-resident data (`input_mode="device"`). The first precision and batch size come first, so
    a run cut short keeps the rows that matter most.

    Args:
      batch_sizes: the batch sizes.
      precisions: Keras dtype policies.
      steps: timed steps per repeat (0: one epoch).
      repeats: timed repeats per worker.
      data: a Spec's `data`.
      examples: keep only this many examples of each split (0: all).

    Returns:
      A list of `Spec`, `len(GRID_CONTENDERS)` per (precision, batch size).
    """
    specs = []
    for precision in precisions:
        for batch in batch_sizes:
            common = dict(
                batch_size=batch, steps=steps, repeats=repeats, data=data, examples=examples, precision=precision
            )
            for kind, input_mode, label in GRID_CONTENDERS:
                specs.append(Spec(kind, input=input_mode, label=f"{label} b={batch} {precision}", **common))
    return specs
