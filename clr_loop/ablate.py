r"""Same-initialisation ablations: train several flagfiles (and seeds) one after another, then compare.

  python -m clr_loop.ablate flags/no_clr.flags flags/triangular2.flags --workdir=runs/ablation
  python -m clr_loop.ablate flags/no_clr.flags flags/triangular2.flags --seeds=1,2,3 --epochs=3

Each run's Config is built exactly as `clr_loop.train` builds it (`cli.config_from_flags` after
parsing `--flagfile=<flagfile>` followed by every other flag given here), and trained by the same
`trial.Trainer`. The flagfiles may name different datasets and models (`--dataset`, `--model`):
each distinct data source (the dataset flags `--dataset`, `--tfds_data_dir`, `--dataset_dir`,
`--train_split`, `--eval_split`) is loaded once and shared by the runs that name it. The ablation
sets four flags of every run itself: `--workdir` (`<workdir>/<flagfile stem>[_seed<N>]`), `--seed`,
`--init_weights` and `--save_init`.

Initial weights. Without --seeds, one model is built from the base seed (`--seed`, default 42) and
saved to `<workdir>/init.weights.h5`; every flagfile trains from it with that seed. With
--seeds=1,2,3, each seed N gets its own `<workdir>/init_seed<N>.weights.h5`, shared by all
flagfiles of that seed, and the seed also drives that run's data order and dropout; so within a seed
the runs differ only by their flagfiles, and across seeds everything random varies. A seed's file
holds the weights that `python -m clr_loop.train --seed=N` would start from. Weights are shared only
among runs of one seed whose model is the same (the same `--model`, image shape, class count and
pixel type): when the flagfiles name several, each such group gets its own file,
`init[_seed<N>]_<model>_<H>x<W>x<C>_<K>classes_<pixel type>.weights.h5`, so two different models each
start from their own seeded weights. `--init_weights=PATH` instead starts every run (all seeds) from
that file, which must then fit every run's model. Each run also saves the weights it actually
started from to `<run>/init.weights.h5` (through the trainer's `--save_init`).

Outputs in --workdir: the run folders, `comparison.md` and `comparison.json` (rewritten after every
run), and `figures/` (loss, accuracy, val_accuracy overlay, and each flagfile's schedule).
"""

import dataclasses
import os
import sys
import time

from clr_loop import console
from clr_loop import process

if __name__ == "__main__":
    console.report_interrupts()  # a Ctrl-C during the imports: one line, no traceback

# An app's start-up tuning (see clr_loop.process) and console (clr_loop.console).
with console.native_start_up_hidden(sys.argv), process.gc_paused(), process.deferred_imports():
    from absl import app
    from absl import flags
    from absl import logging

    from clr_loop import actions
    from clr_loop import checkpointing
    from clr_loop import cli
    from clr_loop import errors
    from clr_loop.experiment import ablation
    from clr_loop.experiment import config as config_lib
    from clr_loop.experiment import fashion_mnist
    from clr_loop.experiment import datasets
    from clr_loop.experiment import figures
    from clr_loop.experiment import resume
    from clr_loop import runtime
    from clr_loop.experiment import trial

cli.define_training_flags(flags.FLAGS)

DEFAULT_WORKDIR = "runs/ablation"
# The ablation sets these per run; given on the command line they are not passed on as overrides.
_OWN_FLAGS = ("seeds", "figures", "workdir", "seed", "init_weights", "save_init")


def parse_seeds(values):
    """Returns the seeds of a `--seeds` list as ints; raises ValueError naming a bad, negative or repeated one."""
    seeds = []
    for value in values:
        try:
            seed = int(str(value).strip())
        except ValueError:
            raise ValueError(f"--seeds must be comma-separated integers, got {','.join(values)!r}") from None
        if not 0 <= seed <= config_lib.MAX_SEED:
            raise ValueError(f"--seeds must be integers in [0, 2**32 - 1], got {seed}")
        if seed in seeds:
            raise ValueError(f"--seeds lists seed {seed} twice")
        seeds.append(seed)
    if not seeds:
        raise ValueError("--seeds must list at least one seed")
    return seeds


def _check_seeds(values):
    if values is None:
        return True
    try:
        parse_seeds(values)
    except ValueError as e:
        raise flags.ValidationError(str(e))
    return True


flags.DEFINE_list(
    "seeds",
    None,
    "Comma-separated seeds: every flagfile runs once per seed; each seed has its own initial weights, "
    "data order and dropout, shared by all flagfiles (default: one run per flagfile at --seed).",
)
flags.DEFINE_bool("figures", True, "Write the comparison figures (needs matplotlib: the clr_loop[plot] extra).")
flags.register_validator("seeds", _check_seeds)


def _present_overrides():
    """Returns the flags given on the command line (other than the ablation's own) as `--name=value` strings."""
    found = {}
    for name in list(flags.FLAGS):
        flag = flags.FLAGS[name]
        if flag.present and flag.name not in _OWN_FLAGS:
            found[flag.name] = flag.serialize()
    return list(found.values())


def _config_for_run(flagfile, overrides, forced):
    """Re-parses the flags as `clr_loop.train --flagfile=F <overrides> <forced>` would; returns its Config."""
    argv = ["clr_loop.ablate", f"--flagfile={flagfile}", *overrides, *(f"--{k}={v}" for k, v in forced.items())]
    flags.FLAGS.unparse_flags()
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        raise app.UsageError(f"{flagfile}: {e}") from e
    except UnicodeDecodeError as e:
        raise app.UsageError(cli.undecodable_flagfile(argv[1:], e)) from None
    finally:
        # A failed parse leaves FLAGS unparsed, and absl's app.run reads its own flags (--pdb_post_mortem)
        # on a non-zero exit: reading an unparsed flag there raised a second error.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
    if len(rest) > 1:
        raise app.UsageError(f"{flagfile}: not a flag: {' '.join(rest[1:])}")
    try:
        return cli.config_from_flags(flags.FLAGS)
    except app.UsageError as e:
        raise app.UsageError(f"{flagfile}: {e}") from e


def _history_or_empty(run_dir):
    try:
        return figures.load_history(run_dir)
    except figures.PlotError:
        return {}


def _plan_runs(flagfiles, seeds, per_seed, workdir, shared_init, overrides):
    """Returns a PlannedRun per (seed, flagfile), seed-major, each Config built as `clr_loop.train` builds it,
    with `init_weights` set to `shared_init` or to a placeholder `<workdir>/init[_seed<N>].weights.h5`
    that `_assign_initial_weights` replaces once the data (and so each run's model) is known."""
    runs = []
    for seed in seeds:
        for flagfile in flagfiles:
            name = ablation.run_name(flagfile, seed, per_seed)
            run_dir = os.path.join(workdir, name)
            forced = {
                "workdir": run_dir,
                "seed": seed,
                "init_weights": shared_init or ablation.init_weights_path(workdir, seed, per_seed),
                "save_init": os.path.join(run_dir, "init.weights.h5"),
            }
            runs.append(ablation.PlannedRun(name, flagfile, seed, _config_for_run(flagfile, overrides, forced)))
    return runs


def _assign_initial_weights(runs, data_by_key, workdir, per_seed):
    """Returns (the runs with their initial-weights file, {path: the Config whose model it holds}):
    runs of one seed whose `model_key` agrees share a file; when the runs hold more than one model,
    every file is named by its model (`init_weights_path` with a key)."""
    keys = [ablation.model_key(run.config, data_by_key[ablation.data_key(run.config)]) for run in runs]
    named = len(set(keys)) > 1
    assigned, builds = [], {}
    for run, key in zip(runs, keys):
        path = ablation.init_weights_path(workdir, run.seed, per_seed, ablation.model_key_name(key) if named else None)
        builds.setdefault(path, run.config)
        assigned.append(dataclasses.replace(run, config=dataclasses.replace(run.config, init_weights=path)))
    return assigned, builds


def _refused_runs(runs):
    """Returns one message per run whose folder holds a run of another configuration (as
    `trial.Trainer` would refuse it, unless the run overwrites), naming the run and the settings."""
    problems = []
    for run in runs:
        try:
            conflict = resume.config_conflict(run.config)
        except checkpointing.WorkdirError as e:
            problems.append(f"{run.name}: {e}")
            continue
        if conflict is not None and conflict[1]:
            problems.append(
                f"{run.name}: {run.config.workdir} holds a run with a different configuration ({conflict[0]})"
            )
    return problems


def _output_problems(workdir, runs, make_figures):
    """Returns what keeps the ablation from writing its outputs (one message per path; empty when
    none): `workdir` not a writable folder (it is created), a run folder or the figures folder that is
    not a folder, a comparison file that is not a file."""
    try:
        checkpointing.check_writable(workdir)
    except checkpointing.WorkdirError as e:
        return [str(e)]
    problems = []
    folders = [run.config.workdir for run in runs] + ([os.path.join(workdir, "figures")] if make_figures else [])
    for folder in folders:
        if os.path.exists(folder) and not os.path.isdir(folder):
            problems.append(f"{folder} is in the way: it is not a folder")
    for path in ablation.comparison_paths(workdir):
        if os.path.exists(path) and not os.path.isfile(path):
            problems.append(f"{path} is in the way: it is not a file")
    return problems


def _train_run(run, data):
    """Trains one run; returns (comparison row, the Interrupted exception or None)."""
    start = time.perf_counter()
    interrupted = None
    try:
        cli.make_deterministic(run.config)
        history = trial.Trainer(run.config, data).train()
        status = "ok"
    except actions.Interrupted as e:
        interrupted, status = e, "interrupted"
    except errors.Error as e:
        print(f"error: {run.name}: {cli.error_message(e)}", file=sys.stderr)
        status = "diverged" if isinstance(e, actions.TrainingDiverged) else "failed"
    if status != "ok":
        history = _history_or_empty(run.config.workdir)
    row = {
        "name": run.name,
        "flagfile": run.flagfile,
        "seed": run.seed,
        "dataset": ablation.dataset_label(run.config),
        "model": run.config.model,
        "data_source": data.source,
        "workdir": run.config.workdir,
        "init_weights": run.config.init_weights,
        "status": status,
        **ablation.summarize_history(history),
        "wall_seconds": time.perf_counter() - start,
        "epoch_seconds_sum": float(sum(history.get("epoch_seconds", []))),
    }
    return row, interrupted


def _write_figures(runs, rows, workdir, data_by_key):
    """Writes the history figures of the runs that finished an epoch and each flagfile's schedule (on
    the training-set size of its own dataset); returns the paths."""
    figure_dir = os.path.join(workdir, "figures")
    done = [run for run, row in zip(runs, rows) if row["epochs"] > 0]
    paths = []
    if done:
        paths += figures.plot_histories(
            [r.config.workdir for r in done],
            figure_dir,
            labels=[r.name for r in done],
            groups=[ablation.flagfile_stem(r.flagfile) for r in done],
        )
    for flagfile in dict.fromkeys(r.flagfile for r in runs):
        config = next(r.config for r in runs if r.flagfile == flagfile)
        path = os.path.join(figure_dir, f"schedule_{ablation.flagfile_stem(flagfile)}.png")
        paths.append(figures.plot_schedule(config, path, data_by_key[ablation.data_key(config)].train.num_examples))
    return paths


def main(argv):
    """The app: checks every input, loads each data source once, trains each run, writes the comparison and figures.

    Returns the exit status: 0, 1 when an input is unusable or a run failed, 128 + signal when
    interrupted (re-running the same command continues).
    """
    console.show_library_logs()
    flagfiles = argv[1:]
    if not flagfiles:
        raise app.UsageError("give at least one flagfile: python -m clr_loop.ablate A.flags B.flags [--seeds=1,2,3]")
    # Each, and the flagfiles it names, as parse_flags checks the command line's: a regular file of text,
    # not too big (absl reads /dev/zero without end).
    problems = [problem for problem in (cli.flagfile_problem([f"--flagfile={f}"]) for f in flagfiles) if problem]
    if problems:
        raise app.UsageError("; ".join(problems))
    if len({ablation.flagfile_stem(f) for f in flagfiles}) != len(flagfiles):
        raise app.UsageError(f"flagfiles need distinct names (their run folders): {', '.join(flagfiles)}")
    FLAGS = flags.FLAGS
    if FLAGS["save_init"].present:
        raise app.UsageError("--save_init is set by the ablation itself: each run writes <run>/init.weights.h5")
    if FLAGS["seed"].present and FLAGS.seeds is not None:
        raise app.UsageError("give --seed (one seed) or --seeds (several), not both")
    if FLAGS.workdir is not None and not FLAGS.workdir.strip():
        raise app.UsageError(f"--workdir must not be empty (leave it out for the default, {DEFAULT_WORKDIR})")
    workdir = FLAGS.workdir or DEFAULT_WORKDIR
    per_seed = FLAGS.seeds is not None
    seeds = parse_seeds(FLAGS.seeds) if per_seed else [FLAGS.seed]
    shared_init = FLAGS.init_weights
    make_figures = FLAGS.figures
    overrides = _present_overrides()
    command = " ".join(
        ["python -m clr_loop.ablate", *flagfiles, f"--workdir={workdir}"]
        + ([f"--seeds={','.join(map(str, seeds))}"] if per_seed else [])
        + ([f"--init_weights={shared_init}"] if shared_init else [])
        + ([] if make_figures else ["--nofigures"])
        + overrides
    )
    # Re-parsing the flags per run resets them, so everything read from FLAGS is read above.
    runs = _plan_runs(flagfiles, seeds, per_seed, workdir, shared_init, overrides)
    # A run its folder would refuse is found before anything is written: the last good
    # comparison and its figures stay as they are.
    refused = _refused_runs(runs)
    if refused:
        for problem in refused:
            print(f"error: {problem}", file=sys.stderr)
        print(
            "error: nothing was run or written; --overwrite starts those runs over, another --workdir keeps them",
            file=sys.stderr,
        )
        return 1
    # Thread pools are per process and fixed once TensorFlow runs an op, so they are set here,
    # before the first one, for the runs' batch splitting when all runs split alike.
    splits = {trial.planned_batch_splits(run.config) for run in runs}
    if len(splits) == 1:
        runtime.configure_threads(splits.pop())
    else:
        logging.info("the runs split their batches differently (%s): TensorFlow's default thread pools", sorted(splits))
    data_by_key = {}
    try:
        if make_figures:
            figures.require_matplotlib()
        for run in runs:
            key = ablation.data_key(run.config)
            if key not in data_by_key:
                config = run.config
                data_by_key[key] = datasets.load(
                    config.dataset,
                    tfds_data_dir=config.tfds_data_dir,
                    dataset_dir=config.dataset_dir,
                    train_split=config.train_split,
                    eval_split=config.eval_split,
                )
        if shared_init:
            checked = set()
            for run in runs:
                data = data_by_key[ablation.data_key(run.config)]
                key = ablation.model_key(run.config, data)
                if key not in checked:
                    checked.add(key)
                    trial.load_initial_weights(ablation.build_model(run.config, data), shared_init)
    except errors.Error as e:
        print(f"error: {cli.error_message(e)}", file=sys.stderr)
        return 1
    problems = []
    for run in runs:
        try:
            fashion_mnist.steps_per_epoch(
                data_by_key[ablation.data_key(run.config)].train.num_examples, run.config.batch_size
            )
        except fashion_mnist.DataError as e:
            problems.append(f"{run.name}: {e}")
    problems = problems or _output_problems(workdir, runs, make_figures)
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1

    if shared_init:
        init_note = f"every run starts from `{shared_init}`."
    else:
        runs, builds = _assign_initial_weights(runs, data_by_key, workdir, per_seed)
        try:
            for path, config in builds.items():
                ablation.build_initial_weights(config, data_by_key[ablation.data_key(config)], path)
        except errors.Error as e:
            print(f"error: {cli.error_message(e)}", file=sys.stderr)
            return 1
        names = ", ".join(f"`{os.path.basename(path)}` (seed {config.seed})" for path, config in builds.items())
        if len(builds) == len(seeds):
            init_note = f"all runs of a seed start from the same weights: {names}."
        else:
            init_note = (
                "runs of a seed with the same model (model, image shape, class count, pixel type) start "
                "from the same weights; runs of different models each start from their own seeded "
                f"weights, as `clr_loop.train --seed=N` builds them: {names}."
            )
    result = {
        "command": command,
        "workdir": workdir,
        "seeds": seeds if per_seed else None,
        "init_note": init_note,
        "spread": ablation.SPREAD,
        "data": [data.source for data in data_by_key.values()],
        "runs": [],
        "by_flagfile": [],
    }
    for i, run in enumerate(runs):
        print(
            f"== run {i + 1}/{len(runs)}: {run.name} ({run.flagfile}, seed {run.seed}) in {run.config.workdir}",
            flush=True,
        )
        row, interrupted = _train_run(run, data_by_key[ablation.data_key(run.config)])
        result["runs"].append(row)
        result["by_flagfile"] = ablation.aggregate_by_flagfile(result["runs"])
        try:
            json_path, md_path = ablation.write_comparison(workdir, result)
        except OSError as e:
            print(f"error: cannot write the comparison in {workdir}: {e}", file=sys.stderr)
            return 1
        if interrupted is not None:
            print(f"stopped: {interrupted}; the comparison so far is in {md_path}", file=sys.stderr)
            return 128 + interrupted.signum
    print(ablation.comparison_markdown(result))
    print(md_path)
    print(json_path)
    if make_figures:
        try:
            for path in _write_figures(runs, result["runs"], workdir, data_by_key):
                print(path)
        except figures.PlotError as e:
            print(f"error: the figures: {e}", file=sys.stderr)
            return 1
    failed = [row["name"] for row in result["runs"] if row["status"] != "ok"]
    if failed:
        print(f"error: {len(failed)} of {len(runs)} runs failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    logging.info("ablation of %d runs done in %s", len(runs), workdir)
    return 0


def run():
    """Console-script entry point: parses flags and runs `main`."""
    console.report_interrupts()
    app.run(process.app_main(main), flags_parser=cli.parse_flags)


if __name__ == "__main__":
    run()
