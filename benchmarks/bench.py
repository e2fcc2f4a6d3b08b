r"""Benchmarks clr_loop's training loop against the tutorial's Keras `model.fit`, on this machine.

  python -m benchmarks.bench                              # the table: (a) fit, (b) the loop, (c) variants
  python -m benchmarks.bench --steps=300 --repeats=3      # a quicker run
  python -m benchmarks.bench --batch_sizes=32,64,128,256,512 --whole_process=3 --profile --out=bench.json
  python -m benchmarks.bench --fit_epoch                  # one tutorial epoch as a whole process
  python -m benchmarks.bench --analyze_profile=runs/profile # per-step breakdown of a profiler trace

Run from the repository root: the benchmark is not part of the installed package.

`--profile` and `--analyze_profile` read the trace with xprof (`pip install -e ".[profile]"`).

Every configuration runs in its own subprocess (same model, data, batch size, schedule and step
count), so thread settings can differ between configurations and the peak RSS that the OS reports
for that process belongs to that configuration alone. Times are medians over the timed repeats,
taken after a warm-up that includes tracing and compilation; "compile" is the first call's time
minus its steps at the steady per-step rate.

This module is the absl app: its flags, `main` (the only reader of FLAGS) and the stages of the
table. The rest lives beside it in benchmarks/: `variants` (what is measured: `Spec` and the lists
of them), `worker` (one configuration built and timed in a worker process), `processes` (the worker
processes, rounds), `whole_process` (the trainer against the tutorial's script, start to exit),
`step_profile` (a step's time by op category), `machine` (CPU, device, versions), `cost_model`
(multiply-adds, FLOPs, the weights checksum), `measure` (CPU time, peak RSS, the per-step summary)
and `report` (the rows derived from the results and the text tables).
"""

import dataclasses
import json
import os
import sys
import tempfile

from benchmarks import machine
from benchmarks import measure
from benchmarks import processes
from benchmarks import report as report_lib
from benchmarks import step_profile
from benchmarks import torch_peer
from benchmarks import variants
from benchmarks import whole_process
from benchmarks import worker
from clr_loop import process

# The start-up tuning of clr_loop's apps (see clr_loop.process): TensorFlow, which checkpointing
# imports, is imported with the collector paused and Keras's matplotlib.pyplot deferred.
with process.gc_paused(), process.deferred_imports():
    from absl import app
    from absl import flags

    from clr_loop import checkpointing

# TensorFlow and Keras are imported inside the functions that use them (the benchmark's modules
# import neither at import time): the parent process only spawns workers and prints tables, and
# nothing at import time may start TensorFlow's runtime before a worker has set its thread pools.

PROGRAM = "python -m benchmarks.bench"
RESULT_PREFIX = measure.RESULT_PREFIX


def define_flags():
    """Defines the app's flags. Called only when this module runs as a program: `clr_loop.train`
    defines flags of the same names (`--batch_size`, ...), and both modules are imported together
    by tools and tests."""
    flags.DEFINE_integer("steps", 0, "Timed training steps per repeat (0: one epoch of full batches).")
    flags.DEFINE_integer("batch_size", variants.TUTORIAL_BATCH_SIZE, "Training batch size of the main table.")
    flags.DEFINE_integer("repeats", 3, "Timed repeats per configuration and process (the median is reported).")
    flags.DEFINE_integer("rounds", 1, "Processes per configuration, run interleaved; repeats of all rounds are pooled.")
    flags.DEFINE_list("steps_per_loop", ["1", "10", "100", "937"], "steps_per_loop values for (b).")
    flags.DEFINE_list(
        "batch_sizes", [], "Batch-size sweep (e.g. 32,64,128,256,512) of fit, the default loop and the variants."
    )
    flags.DEFINE_integer(
        "sweep_examples", 0, "Examples per timed repeat in the batch-size sweep (0: one epoch; at least 10 steps)."
    )
    flags.DEFINE_list("configs", [], "Only run training configurations whose name contains one of these strings.")
    flags.DEFINE_bool("eval", True, "Also time the eval loop against Keras evaluate.")
    flags.DEFINE_bool(
        "torch", True, "Add the PyTorch peer's rows (eager, torch.compile) when PyTorch is installed (the bench extra)."
    )
    flags.DEFINE_list(
        "precisions",
        ["float32", "mixed_bfloat16"],
        f"Keras dtype policies of fit and the default loop, of {', '.join(variants.PRECISIONS)}.",
    )
    flags.DEFINE_bool(
        "kernels", True, "Also list the oneDNN kernels (ONEDNN_VERBOSE=1) of a short fit and loop run per precision."
    )
    flags.DEFINE_integer("whole_process", 0, "Also time this many whole-process runs of clr_loop.train vs --fit_epoch.")
    flags.DEFINE_bool("profile", False, "Also profile the default configuration and the fastest variant.")
    flags.DEFINE_enum("data", "auto", ["auto", "random"], "auto: real Fashion-MNIST when it loads, else random data.")
    flags.DEFINE_string("out", None, "Write all results as JSON to this file.")
    flags.DEFINE_bool(
        "grid",
        False,
        "Instead of the main table: Keras fit, the loop on tf.data and the loop on device-resident data, with the trainer's defaults (XLA by jit_compile=auto), for every --batch_sizes (default 64) x --precisions; with --whole_process, the process times too.",
    )
    flags.DEFINE_integer("examples", 0, "--grid: keep only this many examples of each split (quick checks).")
    flags.DEFINE_string(
        "dataset_dir",
        None,
        "Read Fashion-MNIST from the four IDX files in this folder (workers, --fit_epoch and the whole-process runs) instead of --data.",
    )
    flags.DEFINE_bool("fit_epoch", False, "Run the tutorial's fit (with validation) for --fit_epochs epochs and exit.")
    flags.DEFINE_integer("fit_epochs", 1, "Epochs for --fit_epoch.")
    flags.DEFINE_bool(
        "fit_gc_tuned",
        False,
        "--fit_epoch with clr_loop's start-up and exit tuning (clr_loop.process: the garbage collector, the deferred pyplot).",
    )
    flags.DEFINE_string(
        "analyze_profile", None, "Print the per-step breakdown of the profiler trace under this dir and exit."
    )
    flags.DEFINE_integer("analyze_steps", 10, "Steps in the trace given to --analyze_profile.")
    flags.DEFINE_float(
        "analyze_wall_ms", 0.0, "Wall ms per step of that trace (0: the median `train` step event, else busy time)."
    )
    flags.DEFINE_string("worker", None, "Internal: run this JSON Spec in this process and print its result.")
    flags.DEFINE_string("profile_worker", None, "Internal: profile this JSON Spec into --profile_logdir.")
    flags.DEFINE_string("profile_logdir", None, "Internal: where --profile_worker writes its trace.")


FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Options:
    """The table's and the grid's flags, checked (`options_from_flags`)."""

    steps: int
    batch_size: int
    repeats: int
    rounds: int
    steps_per_loop: list
    batch_sizes: list
    sweep_examples: int
    configs: list
    eval: bool
    torch: bool
    precisions: list
    kernels: bool
    whole_process: int
    profile: bool
    out: str
    grid: bool
    examples: int
    dataset_dir: str  # absolute, or None
    data: str  # a Spec's `data`: --data, or "idx:<--dataset_dir>"
    flags: dict  # the flags the report records


def log(message):
    """Prints a progress line to stderr (the tables go to stdout).

    Args:
      message: the line.
    """
    print(message, file=sys.stderr, flush=True)


def _print_result(value):
    print(RESULT_PREFIX + json.dumps(value), flush=True)


def _saver(report_dict, out):
    """Returns save(complete=False): writes `report_dict` as JSON to `out` (nothing when `out` is None),
    after every stage, so that a later stage's failure keeps what was measured."""

    def save(complete=False):
        if out:
            report_dict["complete"] = complete
            checkpointing.write_json_atomic(out, report_dict)

    return save


def options_from_flags():
    """Returns the table's `Options` from FLAGS, checked before anything runs.

    Returns:
      The Options.

    Raises:
      app.UsageError: a flag's value is out of range, or --out or --dataset_dir is not a folder.
    """
    try:
        steps_per_loop = [int(v) for v in FLAGS.steps_per_loop]
        batch_sizes = [int(v) for v in FLAGS.batch_sizes]
    except ValueError as e:
        raise app.UsageError(f"--steps_per_loop and --batch_sizes take integers: {e}")
    if min(steps_per_loop + batch_sizes + [FLAGS.repeats, FLAGS.rounds, FLAGS.batch_size]) < 1 or FLAGS.steps < 0:
        raise app.UsageError(
            "--steps_per_loop, --batch_sizes, --repeats, --rounds, --batch_size must be positive; --steps >= 0"
        )

    unknown = [p for p in FLAGS.precisions if p not in variants.PRECISIONS]
    if unknown or not FLAGS.precisions:
        raise app.UsageError(f"--precisions: unknown {unknown}; choose from {', '.join(variants.PRECISIONS)}")

    if FLAGS.out:
        out_dir = os.path.dirname(os.path.abspath(FLAGS.out))
        if not os.path.isdir(out_dir) or not os.access(out_dir, os.W_OK):
            raise app.UsageError(f"--out={FLAGS.out}: {out_dir} is not a writable directory")
    if FLAGS.examples < 0:
        raise app.UsageError(f"--examples must be >= 0, got {FLAGS.examples}")
    if FLAGS.dataset_dir and not os.path.isdir(FLAGS.dataset_dir):
        raise app.UsageError(f"--dataset_dir={FLAGS.dataset_dir} is not a folder")
    dataset_dir = os.path.abspath(FLAGS.dataset_dir) if FLAGS.dataset_dir else None
    return Options(
        steps=FLAGS.steps,
        batch_size=FLAGS.batch_size,
        repeats=FLAGS.repeats,
        rounds=FLAGS.rounds,
        steps_per_loop=steps_per_loop,
        batch_sizes=batch_sizes,
        sweep_examples=FLAGS.sweep_examples,
        configs=list(FLAGS.configs),
        eval=FLAGS.eval,
        torch=FLAGS.torch,
        precisions=list(FLAGS.precisions),
        kernels=FLAGS.kernels,
        whole_process=FLAGS.whole_process,
        profile=FLAGS.profile,
        out=FLAGS.out,
        grid=FLAGS.grid,
        examples=FLAGS.examples,
        dataset_dir=dataset_dir,
        data=variants.IDX_PREFIX + dataset_dir if dataset_dir else FLAGS.data,
        flags={
            k: FLAGS[k].value
            for k in ("steps", "batch_size", "repeats", "rounds", "steps_per_loop", "batch_sizes", "data", "precisions")
        },
    )


# ---------------------------------------------------------------------------------------------
# --fit_epoch and --analyze_profile: one job, then exit


def fit_epoch_main(argv, epochs, dataset_dir, gc_tuned):
    """The `--fit_epoch` app: the tutorial's fit for `epochs` epochs with validation, in this process.

    Args:
      argv: the app's arguments (unused).
      epochs: --fit_epochs.
      dataset_dir: --dataset_dir (None: the data `clr_loop.train` loads).
      gc_tuned: run as clr_loop's apps run their main (`clr_loop.process.app_main`).

    Returns:
      The exit status, 0.
    """

    def run_fit(argv):
        del argv
        from clr_loop.experiment import fashion_mnist  # pylint: disable=import-outside-toplevel

        data = fashion_mnist.load(dataset_dir=dataset_dir) if dataset_dir else None
        result = whole_process.fit_epoch(epochs, data=data)
        print(f"fit: {result['fit_s']:.1f} s for {epochs} epoch(s) incl. validation; set-up {result['setup_s']:.1f} s")
        return 0

    # The tuned variant runs as clr_loop's apps run their main (clr_loop.process.app_main).
    return (process.app_main(run_fit) if gc_tuned else run_fit)(argv)


def analyze_profile_main(logdir, steps, wall_ms):
    """The `--analyze_profile` app: prints the per-step breakdown of the profiler trace under `logdir`.

    Args:
      logdir: a profiler log dir (or its run folder).
      steps: the steps in the trace.
      wall_ms: wall ms per step (0: the median "train" step event, else the busy time).

    Returns:
      The exit status, 0.
    """
    events = step_profile.trace_events_from_logdir(logdir)
    wall = wall_ms or step_profile.step_wall_ms(events)
    breakdown = step_profile.profile_breakdown(events, steps, wall or 0.0)
    if not wall:
        breakdown["wall_ms_per_step"] = breakdown["busy_ms_per_step"]
    breakdown["name"] = logdir
    print(step_profile.format_profile(breakdown))
    return 0


# ---------------------------------------------------------------------------------------------
# --grid


def grid_main(specs, rounds, whole_runs, out, dataset_dir):
    """The `--grid` app: runs `specs`, then the whole-process runs; prints the tables and writes the JSON.

    Runs `specs` (`processes.run_grid`), then `whole_runs` whole-process runs of the trainer and the
    tutorial's script (`whole_process.whole_process`, one epoch with validation each); writes the
    JSON to `out` after every worker. The whole-process runs are the trainer's default and the
    tutorial's script only (not the start-up-tuned script: the grid is for a machine where time is
    short). What was measured is kept when a worker or process fails.

    Args:
      specs: `variants.grid_specs`'s list.
      rounds: runs of each spec, interleaved.
      whole_runs: whole-process runs of each process (0: none).
      out: the JSON file (None: none).
      dataset_dir: the IDX folder of the whole-process runs (None: their default data).

    Returns:
      The exit status: 0, or 1 when any worker or process failed.
    """
    report = {**report_lib.report_header(sys.argv[1:], PROGRAM), "grid": [], "complete": False}

    def save(results=None, complete=False):
        if results is not None:
            report["grid"] = results
        report["complete"] = complete
        if out:
            checkpointing.write_json_atomic(out, report)

    results = processes.run_grid(specs, rounds, log, save=save)
    measured = [r for r in results if "error" not in r]
    report["device"] = measured[0]["device"] if measured else machine.device_description()
    report["data"] = measured[0]["data"] if measured else None
    save(results)
    print(f"\n{report['device']}; TensorFlow {report['versions']['tensorflow']}, Keras {report['versions']['keras']}")
    print(f"data: {report['data']}; {rounds} round(s)\n")
    print(report_lib.format_grid_table(results))
    print(
        "\nx fit: the same batch size and precision's fit ms/step over this row's (above 1: faster); "
        "XLA: what jit_compile=auto resolved to; compile s: the first call's time beyond its steps"
    )
    failed = len(results) - len(measured)
    if whole_runs:
        try:
            report["whole_process"] = whole_process.whole_process(
                whole_runs,
                tempfile.mkdtemp(prefix="clr_bench_train_"),
                log=log,
                dataset_dir=dataset_dir,
                names=("train", "fit"),
            )
        except (RuntimeError, TimeoutError) as e:
            report["whole_process"] = {"error": str(e)[-3000:]}
            print(f"\nwhole process: failed: {str(e).strip().splitlines()[0] if str(e).strip() else repr(e)}")
            failed += 1
        else:
            print(report_lib.format_whole_process(report["whole_process"], whole_runs, speedups=False))
    save(complete=failed == 0)
    if out:
        print(f"\nwrote {out}")
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------
# The table: (a) fit, (b) the loop, (c) the variants, (p) PyTorch; then the optional stages


def table_specs(options, torch_ok):
    """Returns the main table's training configurations: `variants.training_specs`, narrowed by --configs.

    With --configs, fit (every precision) and the PyTorch peer stay: the rows the others are
    compared with.

    Args:
      options: the checked flags.
      torch_ok: whether the PyTorch rows run.

    Returns:
      A list of `variants.Spec`.

    Raises:
      app.UsageError: --configs matches no loop configuration (the names are listed).
    """
    specs = variants.training_specs(
        options.batch_size,
        options.steps,
        options.repeats,
        options.steps_per_loop,
        options.data,
        precisions=options.precisions,
        torch=torch_ok,
    )
    if not options.configs:
        return specs
    chosen = [
        s
        for s in specs
        if s.kind == "fit"
        and s.jit == "auto"
        or s.kind in variants.TORCH_KINDS
        or any(c in s.name for c in options.configs)
    ]
    if not any(s.kind == "loop" for s in chosen):
        names = "\n  ".join(s.name for s in specs)
        raise app.UsageError(
            f"--configs={','.join(options.configs)} matches no loop configuration; the names are:\n  {names}"
        )
    return chosen


def training_stage(report, specs, options, notes):
    """Runs the training and eval configurations and the matmul rate; prints the training tables.

    Adds "device", "data", "matmul", "matmul_peak_gflops", "training" and "precision" to `report`.

    Args:
      report: the JSON report so far.
      specs: the training configurations (`table_specs`).
      options: the checked flags.
      notes: the lines printed under the heading (the CPU features, the PyTorch rows').

    Returns:
      (eval results without ratios, the best matmul GFLOP/s).
    """
    matmul = []
    training = processes.run_specs(specs, options.rounds, log, matmul=matmul)
    evals = (
        processes.run_specs(variants.eval_specs(options.batch_size, options.repeats, options.data), options.rounds, log)
        if options.eval
        else []
    )
    matmul.append(processes.run_spec_in_subprocess(variants.Spec("matmul", repeats=3)))
    peak = max(m["gflops_best"] for m in matmul)
    report.update(device=matmul[0]["device"], data=training[0]["data"], matmul=matmul, matmul_peak_gflops=peak)
    report["training"] = report_lib.add_ratios(training, training[0], peak)
    print(f"\n{report['device']}; TensorFlow {report['versions']['tensorflow']}, Keras {report['versions']['keras']}")
    print(
        f"data: {report['data']}; batch {options.batch_size}, {training[0]['steps']} steps per repeat, "
        f"{options.repeats} repeats x {options.rounds} round(s); {training[0]['flops_per_step'] / 1e6:.1f} MFLOP per training step"
    )
    print(
        f"matmul {variants.MATMUL_SIZE}^2 float32: best {peak:.1f} GFLOP/s (medians {', '.join(format(m['gflops'], '.1f') for m in matmul)})"
    )
    for line in notes[:-1]:
        print(line)
    print(notes[-1] + "\n")
    print(report_lib.format_training_table(report["training"]))
    print(
        "\n* the trainer's default configuration; x(a): (a)'s ms/step divided by this one's (above 1: faster);"
        " cpu ms: process CPU time per step (all threads); %peak: GFLOP/s over the best matmul rate;"
        " parts/threads: batch parts per step / inter-op x intra-op pool sizes (0: TensorFlow's default)"
    )
    report["precision"] = report_lib.precision_rows(report["training"])
    if report["precision"]:
        print("\nprecision (Keras dtype policy set in the worker before the model is built)\n")
        print(report_lib.format_precision_table(report["precision"]))
    return evals, peak


def kernels_stage(report, options):
    """Lists the oneDNN kernels of a short fit and loop run per precision; adds "kernels" to `report`.

    Args:
      report: the JSON report so far.
      options: the checked flags.
    """
    report["kernels"] = processes.run_kernel_specs(variants.kernel_specs(options.precisions, options.data), log)
    print(
        "\nwhich kernels ran: oneDNN primitive executions (kind, implementation:ISA, source dtype) in a 5-step run, ONEDNN_VERBOSE=1\n"
    )
    print(report_lib.format_kernels(report["kernels"]))


def _fastest_float32_loop(training):
    return min(
        (r for r in training if r["spec"]["kind"] == "loop" and r["spec"]["precision"] == "float32"),
        key=lambda r: r["ms_per_step"],
    )


def sweep_stage(report, options, peak):
    """Runs the batch-size sweep (fit, the default loop and the fastest float32 loop per batch size).

    Adds "sweep" to `report` and prints its table.

    Args:
      report: the JSON report with its "training" rows.
      options: the checked flags (--batch_sizes, --sweep_examples, --repeats, --rounds).
      peak: the best matmul GFLOP/s.
    """
    fastest = _fastest_float32_loop(report["training"])
    sweep_specs = []
    for batch in options.batch_sizes:
        steps = max(10, options.sweep_examples // batch) if options.sweep_examples else 0
        common = dict(batch_size=batch, steps=steps, repeats=options.repeats, data=options.data)
        sweep_specs.append(variants.Spec("fit", label=f"(a) fit b={batch}", **common))
        sweep_specs.append(variants.Spec("loop", label=f"default loop b={batch}", **common))
        sweep_specs.append(
            variants.Spec(**{**fastest["spec"], **common, "label": f"fastest: {fastest['name']} b={batch}"})
        )
    sweep = processes.run_specs(sweep_specs, options.rounds, log)
    for index in range(0, len(sweep), 3):
        report_lib.add_ratios(sweep[index : index + 3], sweep[index], peak)
    report["sweep"] = sweep
    print("\nbatch-size sweep\n")
    print(report_lib.format_training_table(sweep))


def profile_stage(report, save):
    """Profiles the trainer's default configuration and the fastest float32 loop, each in a worker.

    Both run at 100 steps per loop: when the fastest differs from the default only in its loop
    length, it is the same configuration and is profiled once. Adds "profile" to `report`.

    Args:
      report: the JSON report with its "training" rows.
      save: called after every profile.
    """
    fastest = _fastest_float32_loop(report["training"])
    default = next((r for r in report["training"] if r.get("is_trainer_default")), fastest)
    report["profile"] = []
    specs = [variants.Spec(**{**result["spec"], "steps_per_loop": 100}) for result in (default, fastest)]
    for spec in {spec.name: spec for spec in specs}.values():
        logdir = tempfile.mkdtemp(prefix="clr_bench_profile_")
        log(f"profiling {spec.name} into {logdir} ...")
        breakdown = processes.profile_in_subprocess(spec, logdir)
        report["profile"].append(breakdown)
        print("\n" + step_profile.format_profile(breakdown))
        save()


def table_main(options):
    """The main table's app: (a) fit, (b) the loop, (c) the variants, (p) PyTorch, then the optional stages.

    Prints the tables and writes the JSON to --out after every stage (`complete` is true at the end).

    Args:
      options: the checked flags.

    Returns:
      The exit status, 0.
    """
    torch_ok, torch_why = torch_peer.torch_status() if options.torch else (False, "--torch=false")
    features = machine.cpu_features()
    report = {
        **report_lib.report_header(sys.argv[1:], PROGRAM),
        "cpu_features": features,
        "torch": {"available": torch_ok, "skipped_because": torch_why or None},
        "flags": options.flags,
    }
    torch_line = (
        "PyTorch rows: eager and torch.compile (benchmarks.torch_peer; torch intra-op threads = the process's cores)"
        if torch_ok
        else f"PyTorch rows skipped: {torch_why}"
    )
    log(features["line"])
    log(torch_line)
    save = _saver(report, options.out)

    evals, peak = training_stage(report, table_specs(options, torch_ok), options, [features["line"], torch_line])
    save()
    if options.kernels:
        kernels_stage(report, options)
    if evals:
        report["eval"] = report_lib.add_ratios(evals, evals[-1], peak)
        print("\neval: one pass over the 10,000 test examples\n")
        print(report_lib.format_eval_table(report["eval"]))
    save()
    if options.batch_sizes:
        sweep_stage(report, options, peak)
        save()
    if options.profile:
        profile_stage(report, save)
    if options.whole_process:
        workdir = tempfile.mkdtemp(prefix="clr_bench_train_")
        report["whole_process"] = whole_process.whole_process(
            options.whole_process, workdir, log=log, torch=torch_ok, dataset_dir=options.dataset_dir
        )
        print(report_lib.format_whole_process(report["whole_process"], options.whole_process))
    report["side_by_side"] = report_lib.side_by_side(report["training"], report.get("whole_process"))
    save()
    print(
        "\nside by side: per step (batch 64) and whole process (one epoch with validation); peak RSS of the"
        " whole-process run (ru_maxrss of the child)\n"
    )
    print(report_lib.format_side_by_side(report["side_by_side"]))
    if not torch_ok:
        print(torch_line)
    if options.out:
        save(complete=True)
        print(f"\nwrote {options.out}")
    return 0


# ---------------------------------------------------------------------------------------------
# main


def main(argv):
    """Runs the app that the flags choose: a worker, --fit_epoch, --analyze_profile, --grid or the table.

    Args:
      argv: the arguments absl left (only the program's name is accepted).

    Returns:
      The exit status.

    Raises:
      app.UsageError: a bad flag or argument, before anything runs.
    """
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.worker:
        _print_result(worker.run_spec(variants.Spec.from_json(FLAGS.worker)))
        return 0
    if FLAGS.profile_worker:
        _print_result(step_profile.profile_spec(variants.Spec.from_json(FLAGS.profile_worker), FLAGS.profile_logdir))
        return 0
    if FLAGS.fit_epoch:
        return fit_epoch_main(argv, FLAGS.fit_epochs, FLAGS.dataset_dir, FLAGS.fit_gc_tuned)
    if FLAGS.profile or FLAGS.analyze_profile:
        try:  # before anything runs, not after half an hour of benchmarks
            step_profile.trace_converter()
        except ImportError as e:
            raise app.UsageError(f"--{'profile' if FLAGS.profile else 'analyze_profile'}: {e}")
    if FLAGS.analyze_profile:
        return analyze_profile_main(FLAGS.analyze_profile, FLAGS.analyze_steps, FLAGS.analyze_wall_ms)
    options = options_from_flags()
    if options.grid:
        specs = variants.grid_specs(
            options.batch_sizes or [options.batch_size],
            options.precisions,
            options.steps,
            options.repeats,
            options.data,
            options.examples,
        )
        return grid_main(specs, options.rounds, options.whole_process, options.out, options.dataset_dir)
    return table_main(options)


if __name__ == "__main__":
    define_flags()
    app.run(main)
