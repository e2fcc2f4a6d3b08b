"""Whole-process epochs: `python -m clr_loop.train` against the tutorial's `model.fit` script, start to exit.

`whole_process` times the processes of `whole_process_commands` (the trainer, the tutorial as a
script, the same with clr_loop's start-up tuning, and the PyTorch peer's epoch) with the OS's
wall time, CPU time and peak RSS of each (`processes.run_process`); `fit_epoch` is the tutorial's epoch
that the script runs (`python -m benchmarks.bench --fit_epoch`).
"""

import os
import statistics
import sys
import tempfile
import time

from benchmarks import processes
from benchmarks import variants


def fit_epoch(epochs=1, batch_size=variants.TUTORIAL_BATCH_SIZE, data=None):
    """Runs the tutorial end to end in this process and returns {"fit_s", "setup_s", "history"} (seconds).

    Loads the same data as `clr_loop.train` (`data.load()`, unless `data` is given), builds the
    same model and CLR schedule, compiles as the tutorial does and runs `fit(x_train, y_train,
    batch_size, epochs, validation_data=(x_test, y_test))` with one line per epoch (verbose=2).

    Args:
      epochs: epochs to fit.
      batch_size: the training batch size.
      data: a `FashionMnist` (None: `fashion_mnist.load()`).

    Returns:
      {"fit_s": fit's seconds, "setup_s": the set-up's, "history": Keras's history dict}.
    """
    import keras  # pylint: disable=import-outside-toplevel

    from clr_loop.experiment import config as config_lib  # pylint: disable=import-outside-toplevel
    from clr_loop.experiment import fashion_mnist  # pylint: disable=import-outside-toplevel
    from clr_loop.experiment import models  # pylint: disable=import-outside-toplevel
    from clr_loop.experiment import trial  # pylint: disable=import-outside-toplevel

    start = time.perf_counter()
    data = data if data is not None else fashion_mnist.load()
    config = config_lib.Config(epochs=epochs, batch_size=batch_size, seed=variants.SEED)
    keras.utils.set_random_seed(variants.SEED)
    model = models.create_model(seed=variants.SEED)
    optimizer = trial.make_optimizer(config, config_lib.plan_steps(config, data.train.num_examples))
    model.compile(loss="sparse_categorical_crossentropy", optimizer=optimizer, metrics=["accuracy"])
    setup = time.perf_counter() - start
    history = model.fit(
        data.train.images,
        data.train.labels,
        batch_size=batch_size,
        epochs=epochs,
        validation_data=(data.test.images, data.test.labels),
        verbose=2,
    )
    return {"fit_s": time.perf_counter() - start - setup, "setup_s": setup, "history": history.history}


# The tutorial as a script: TensorFlow and Keras imported first, plainly (this module's own
# imports would pause the garbage collector for them), then the fit epoch of `--fit_epoch`.
TUTORIAL_SCRIPT = (
    "import tensorflow as tf\n"
    "from tensorflow import keras\n"
    "import runpy\n"
    "runpy.run_module('benchmarks.bench', run_name='__main__', alter_sys=True)\n"
)


def whole_process_commands(epochs=1, torch=False, dataset_dir=None):
    """Returns {name: (argv, description)} of the processes `whole_process` times.

    "train" is `python -m clr_loop.train --mode=triangular2 --epochs=N` (a fresh --workdir is
    added per run). "fit" is the tutorial's epoch as the tutorial's script would run it
    (`TUTORIAL_SCRIPT`, then `fit_epoch`). "fit_gc_tuned" is the same epoch with the start-up
    and exit tuning clr_loop's apps use (`clr_loop.process`), to separate what the training
    loop gains from what the process tuning gains. With `torch`, "torch" and "torch_compile" are
    the PyTorch peer's epoch with validation (`python -m benchmarks.torch_peer --epoch`, eager and
    with `--compile`), in processes without TensorFlow. With `dataset_dir` (a folder of the four
    Fashion-MNIST IDX files), the trainer and the tutorial's epoch read their data from there.

    Args:
      epochs: epochs per process.
      torch: add the PyTorch peer's processes.
      dataset_dir: a folder of the four IDX files (None: each process's default data).

    Returns:
      {name: (argv, description)}.
    """
    data = [f"--dataset_dir={dataset_dir}"] if dataset_dir else []
    fit = ["--fit_epoch", f"--fit_epochs={epochs}", *data]
    commands = {
        "train": (
            [sys.executable, "-m", "clr_loop.train", "--mode=triangular2", f"--epochs={epochs}", *data],
            f"python -m clr_loop.train --mode=triangular2 --epochs={epochs}",
        ),
        "fit": (
            [sys.executable, "-c", TUTORIAL_SCRIPT, *fit],
            f"tutorial script: fit {epochs} epoch(s) with validation",
        ),
        "fit_gc_tuned": (
            [sys.executable, "-m", "benchmarks.bench", *fit, "--fit_gc_tuned"],
            "the same, with clr_loop's start-up/exit tuning (clr_loop.process)",
        ),
    }
    if torch:
        peer = [sys.executable, "-m", "benchmarks.torch_peer", "--epoch", f"--epochs={epochs}"]
        commands["torch"] = (peer, f"PyTorch eager: {epochs} epoch(s) with validation")
        commands["torch_compile"] = (peer + ["--compile"], f"PyTorch torch.compile: {epochs} epoch(s) with validation")
    return commands


def whole_process(runs, workdir, epochs=1, log=print, torch=False, dataset_dir=None, names=None):
    """Times the `whole_process_commands` as processes, `runs` times each, alternating.

    Each train run gets a fresh folder under `workdir`. Returns {"commands": {name: description},
    name: [per-run {"wall_s", "cpu_s", "peak_rss_mb"}], "medians": {name: {...}, "speedup_wall":
    fit / train, "speedup_wall_vs_tuned_fit": fit_gc_tuned / train, and with `torch`
    "speedup_wall_vs_torch" (torch / train) and "speedup_wall_vs_torch_compile"}, "errors": {name:
    why}}} with the OS's wall time, CPU time and peak RSS of every process (`run_process`). A
    PyTorch process that fails is left out of the medians with its reason in "errors" (after its
    first failure it is not run again); any other failure raises RuntimeError. `dataset_dir` is
    `whole_process_commands`'s; `names` keeps only those commands besides "train" and "fit" (and
    the speed-ups of those measured).

    Args:
      runs: runs of each process.
      workdir: the folder the trainer's workdirs are made in.
      epochs: epochs per process.
      log: prints a progress line.
      torch: add the PyTorch peer's processes.
      dataset_dir: see `whole_process_commands`.
      names: the commands to run besides "train" and "fit" (None: all).

    Returns:
      The dict above.
    """
    commands = whole_process_commands(epochs, torch=torch, dataset_dir=dataset_dir)
    if names:  # only these (the trainer and the tutorial's script are always among them)
        commands = {name: command for name, command in commands.items() if name in {"train", "fit", *names}}
    measured = {name: [] for name in commands}
    errors = {}
    for index in range(runs):
        for name, (argv, description) in commands.items():
            if name in errors:
                continue
            log(f"[whole process {index + 1}/{runs}] {description}")
            # A fresh workdir per run: the trainer would otherwise resume from the previous run.
            extra = [f"--workdir={os.path.join(workdir, f'{name}{index}')}"] if name == "train" else []
            # PyTorch's processes each get an empty Inductor cache: torch.compile compiles as on a first run.
            env = (
                {"TORCHINDUCTOR_CACHE_DIR": tempfile.mkdtemp(prefix="clr_bench_inductor_")}
                if name.startswith("torch")
                else None
            )
            proc = processes.run_process(argv + extra, env=env)
            if proc["rc"] != 0:
                why = f"{description} failed (exit {proc['rc']}):\n{proc['stderr'][-3000:]}"
                if not name.startswith("torch"):
                    raise RuntimeError(why)
                errors[name] = (proc["stderr"].strip().splitlines() or [f"exit {proc['rc']}"])[-1][:300]
                continue
            measured[name].append({k: proc[k] for k in ("wall_s", "cpu_s", "peak_rss_mb")})
    medians = {
        name: {k: statistics.median(run[k] for run in runs_) for k in ("wall_s", "cpu_s", "peak_rss_mb")}
        for name, runs_ in measured.items()
        if runs_
    }
    train_s = medians["train"]["wall_s"]
    medians["speedup_wall"] = medians["fit"]["wall_s"] / train_s
    if "fit_gc_tuned" in medians:
        medians["speedup_wall_vs_tuned_fit"] = medians["fit_gc_tuned"]["wall_s"] / train_s
    for name in ("torch", "torch_compile"):
        if name in medians:
            medians[f"speedup_wall_vs_{name}"] = medians[name]["wall_s"] / train_s
    return {
        "commands": {k: description for k, (_, description) in commands.items()},
        **measured,
        "medians": medians,
        "errors": errors,
    }
