r"""Same-initialisation ablations: train several flagfiles (and seeds) one after another, then compare.

  python -m clr_loop.ablate flags/no_clr.flags flags/triangular2.flags --workdir=runs/ablation
  python -m clr_loop.ablate flags/no_clr.flags flags/triangular2.flags --seeds=1,2,3 --epochs=3

Each run's Config is built exactly as `clr_loop.train` builds it (`cli.config_from_flags` after
parsing `--flagfile=<flagfile>` followed by every other flag given here), and trained by the same
`trainer.Trainer`. The flagfiles may name different datasets and models (`--dataset`, `--model`):
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
    import keras
    import numpy as np
    from absl import app
    from absl import flags
    from absl import logging

    from clr_loop import actions
    from clr_loop import checkpointing
    from clr_loop import cli
    from clr_loop import config as config_lib
    from clr_loop import data as data_lib
    from clr_loop import datasets
    from clr_loop import figures
    from clr_loop import models
    from clr_loop import runtime
    from clr_loop import trainer as trainer_lib

cli.define_training_flags(flags.FLAGS)

DEFAULT_WORKDIR = "runs/ablation"
FINAL_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")
SPREAD = "mean ± sample standard deviation (n-1) over seeds, and min–max"
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
    "seeds", None,
    "Comma-separated seeds: every flagfile runs once per seed; each seed has its own initial weights, "
    "data order and dropout, shared by all flagfiles (default: one run per flagfile at --seed).",
)
flags.DEFINE_bool("figures", True, "Write the comparison figures (needs matplotlib: the clr_loop[plot] extra).")
flags.register_validator("seeds", _check_seeds)


@dataclasses.dataclass(frozen=True)
class Run:
    """One planned training run: its folder `name`, the flagfile and seed it comes from, and its Config."""

    name: str
    flagfile: str
    seed: int
    config: config_lib.Config


def flagfile_stem(flagfile):
    """Returns the run-folder name of a flagfile: its base name without the `.flags` extension."""
    name = os.path.basename(flagfile)
    return os.path.splitext(name)[0] or name


def run_name(flagfile, seed, per_seed):
    """Returns the run's subfolder name: `<flagfile stem>`, or `<flagfile stem>_seed<N>` when per_seed."""
    return f"{flagfile_stem(flagfile)}_seed{seed}" if per_seed else flagfile_stem(flagfile)


def init_weights_path(workdir, seed, per_seed, model_key=None):
    """Returns where a seed's initial weights go: `<workdir>/init.weights.h5` or `init_seed<N>.weights.h5`,
    with `_<model key>` before `.weights.h5` when a `model_key` (from `model_key_name`) is given."""
    stem = f"init_seed{seed}" if per_seed else "init"
    return os.path.join(workdir, f"{stem}_{model_key}.weights.h5" if model_key else f"{stem}.weights.h5")


def data_key(config):
    """Returns the dataset settings of `config` that name its data source (the runs sharing them share one load)."""
    return (config.dataset, config.tfds_data_dir, config.dataset_dir, config.train_split, config.eval_split)


def model_key(config, data):
    """Returns what makes two runs' initial models alike, (model name, image shape, class count, pixel
    dtype): runs of one seed with the same key start from the same weights (nothing else changes a
    seeded model's weights; the per-dataset normalisation statistics are constants, not weights)."""
    return (config.model, tuple(int(d) for d in data.image_shape), int(data.num_classes), data.train.images.dtype.name)


def model_key_name(key):
    """Returns a file-name-safe name of a `model_key`: `<model>_<H>x<W>x<C>_<K>classes_<dtype>`."""
    name, shape, num_classes, dtype = key
    slug = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)
    return f"{slug}_{'x'.join(map(str, shape))}_{num_classes}classes_{dtype}"


def build_model(config, data):
    """Returns the keras.Model `trainer.Trainer` builds for `config` on `data`, after seeding Keras with `config.seed`."""
    keras.utils.set_random_seed(config.seed)
    return models.create(config.model, data.image_shape, data.num_classes, train_images=data.train.images,
                         seed=config.seed).model


def build_initial_weights(config, data, path):
    """Builds the model for `config` (its seed and model) on `data` as `trainer.Trainer` does and saves its
    weights to `path`; returns `path`.

    So the file holds the weights a `clr_loop.train --seed=<seed> --model=... --dataset=...` run starts from.
    """
    return trainer_lib.save_initial_weights(build_model(config, data), path)


def dataset_label(config):
    """Returns the dataset a run names, as the comparison shows it: `--dataset`'s value, with
    `[train_split/eval_split]` after it when those are not train/test."""
    splits = (config.train_split, config.eval_split)
    return config.dataset if splits == ("train", "test") else f"{config.dataset}[{'/'.join(splits)}]"


def summarize_history(history):
    """Returns a run's summary from its history dict: `epochs`, `final` metrics and the best val metrics.

    `final` holds the last epoch's loss, accuracy, val_loss and val_accuracy (per-example means);
    `best_val_loss` / `best_val_accuracy` hold the minimum / maximum and the epoch it was reached
    (counted from 1; the first such epoch on ties). An empty history gives `epochs` 0 and Nones.
    """
    epochs = len(history.get("val_loss", []))
    if epochs == 0:
        return {"epochs": 0, "final": None, "best_val_loss": None, "best_val_accuracy": None}
    val_loss = np.asarray(history["val_loss"], dtype=np.float64)
    val_accuracy = np.asarray(history["val_accuracy"], dtype=np.float64)
    loss_at, accuracy_at = int(np.argmin(val_loss)), int(np.argmax(val_accuracy))
    return {
        "epochs": epochs,
        "final": {key: float(history[key][-1]) for key in FINAL_KEYS},
        "best_val_loss": {"value": float(val_loss[loss_at]), "epoch": loss_at + 1},
        "best_val_accuracy": {"value": float(val_accuracy[accuracy_at]), "epoch": accuracy_at + 1},
    }


def _spread(values):
    """Returns {mean, std (sample, n-1; None for one value), min, max} of a list of numbers (float64)."""
    values = np.array(values, dtype=np.float64)
    return {
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if len(values) > 1 else None,
        "min": float(values.min()),
        "max": float(values.max()),
    }


def aggregate_by_flagfile(rows):
    """Returns, per flagfile (in first-appearance order), the spread of the final and best metrics over its runs.

    Only runs with status "ok" count. Each entry holds `flagfile`, `name` (its stem), its
    `dataset` and `model` (the first run's; a flagfile names one each), `seeds`, `n`, `final`:
    for each of FINAL_KEYS the `mean`, `std` (sample standard deviation, n-1; None for one run),
    `min` and `max`; `best`: the same for `val_loss` (each run's lowest) and `val_accuracy` (each
    run's highest); and `seconds`: the same for `wall` (the command's time per run) and `epochs`
    (the sum of each run's per-epoch times), in seconds.
    """
    groups = {}
    for row in rows:
        if row["status"] == "ok":
            groups.setdefault(row["flagfile"], []).append(row)
    out = []
    for flagfile, members in groups.items():
        out.append({
            "flagfile": flagfile,
            "name": flagfile_stem(flagfile),
            "dataset": members[0].get("dataset", datasets.DEFAULT),
            "model": members[0].get("model", "tutorial_cnn"),
            "seeds": [m["seed"] for m in members],
            "n": len(members),
            "final": {key: _spread([m["final"][key] for m in members]) for key in FINAL_KEYS},
            "best": {key: _spread([m[f"best_{key}"]["value"] for m in members]) for key in ("val_loss", "val_accuracy")},
            "seconds": {"wall": _spread([m["wall_seconds"] for m in members]),
                        "epochs": _spread([m["epoch_seconds_sum"] for m in members])},
        })
    return out


def _fmt(value, digits=4):
    return "–" if value is None else f"{value:.{digits}f}"


def _cell(text):
    """Returns `text` for a markdown table cell (`|` escaped; – for None)."""
    return "–" if text is None else str(text).replace("|", "\\|")


def _spread_cell(spread, digits=4, unit=""):
    """Returns a markdown cell for a `_spread`: "mean ± std (min–max)<unit>" (no ± for one run)."""
    f = lambda x: f"{x:.{digits}f}"  # noqa: E731
    std = "" if spread["std"] is None else f" ± {f(spread['std'])}"
    return f"{f(spread['mean'])}{std} ({f(spread['min'])}–{f(spread['max'])}){unit}"


def _best(entry):
    return "–" if entry is None else f"{entry['value']:.4f} ({entry['epoch']})"


def comparison_markdown(result):
    """Returns the comparison as markdown: the command, one row per run, and per-flagfile spreads over seeds."""
    lines = [
        "# Ablation comparison",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Initial weights: {result['init_note']} Losses and accuracies are per-example means; "
        "val metrics are over the whole test split; epochs count from 1. Wall time is this command's "
        "time for the run (graph tracing included; less for a resumed run); epoch time is the sum of the "
        "run's per-epoch train + eval times in its history.json.",
        "",
        "| run | seed | status | epochs | final loss | final accuracy | final val_loss | final val_accuracy "
        "| best val_loss (epoch) | best val_accuracy (epoch) | wall time | epoch time (sum) | dataset | model |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["runs"]:
        final = row["final"] or dict.fromkeys(FINAL_KEYS)
        lines.append(
            f"| {row['name']} | {row['seed']} | {row['status']} | {row['epochs']} | "
            + " | ".join(_fmt(final[key]) for key in FINAL_KEYS)
            + f" | {_best(row['best_val_loss'])} | {_best(row['best_val_accuracy'])} | {row['wall_seconds']:.0f} s"
            + f" | {row['epoch_seconds_sum']:.0f} s | {_cell(row.get('dataset'))} | {_cell(row.get('model'))} |"
        )
    if result["by_flagfile"] and any(group["n"] > 1 for group in result["by_flagfile"]):
        lines += [
            "",
            f"## Over seeds: {SPREAD}",
            "",
            "Final: the last epoch's value; best: each run's lowest val_loss and highest val_accuracy; "
            "time: the command's wall time per run.",
            "",
            "| flagfile | runs | final loss | final accuracy | final val_loss | final val_accuracy "
            "| best val_loss | best val_accuracy | wall time | dataset | model |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for group in result["by_flagfile"]:
            spreads = [group["final"][key] for key in FINAL_KEYS] + [group["best"][key] for key in ("val_loss", "val_accuracy")]
            cells = [_spread_cell(s) for s in spreads] + [_spread_cell(group["seconds"]["wall"], digits=0, unit=" s")]
            lines.append(f"| {group['flagfile']} | {group['n']} | " + " | ".join(cells)
                         + f" | {_cell(group.get('dataset'))} | {_cell(group.get('model'))} |")
    return "\n".join(lines) + "\n"


def comparison_paths(workdir):
    """Returns the paths of the comparison files in `workdir`: (`comparison.json`, `comparison.md`)."""
    return os.path.join(workdir, "comparison.json"), os.path.join(workdir, "comparison.md")


def write_comparison(workdir, result):
    """Writes `comparison.json` and `comparison.md` into `workdir`, each atomically; returns both paths.

    An OSError propagates with any earlier file left as it was.
    """
    json_path, md_path = comparison_paths(workdir)
    checkpointing.write_json_atomic(json_path, result)
    checkpointing.write_text_atomic(md_path, comparison_markdown(result))
    return json_path, md_path


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
    """Returns a Run per (seed, flagfile), seed-major, each Config built as `clr_loop.train` builds it,
    with `init_weights` set to `shared_init` or to a placeholder `<workdir>/init[_seed<N>].weights.h5`
    that `_assign_initial_weights` replaces once the data (and so each run's model) is known."""
    runs = []
    for seed in seeds:
        for flagfile in flagfiles:
            name = run_name(flagfile, seed, per_seed)
            run_dir = os.path.join(workdir, name)
            forced = {
                "workdir": run_dir,
                "seed": seed,
                "init_weights": shared_init or init_weights_path(workdir, seed, per_seed),
                "save_init": os.path.join(run_dir, "init.weights.h5"),
            }
            runs.append(Run(name, flagfile, seed, _config_for_run(flagfile, overrides, forced)))
    return runs


def _assign_initial_weights(runs, data_by_key, workdir, per_seed):
    """Returns (the runs with their initial-weights file, {path: the Config whose model it holds}):
    runs of one seed whose `model_key` agrees share a file; when the runs hold more than one model,
    every file is named by its model (`init_weights_path` with a key)."""
    keys = [model_key(run.config, data_by_key[data_key(run.config)]) for run in runs]
    named = len(set(keys)) > 1
    assigned, builds = [], {}
    for run, key in zip(runs, keys):
        path = init_weights_path(workdir, run.seed, per_seed, model_key_name(key) if named else None)
        builds.setdefault(path, run.config)
        assigned.append(dataclasses.replace(run, config=dataclasses.replace(run.config, init_weights=path)))
    return assigned, builds


def _refused_runs(runs):
    """Returns one message per run whose folder holds a run of another configuration (as
    `trainer.Trainer` would refuse it, unless the run overwrites), naming the run and the settings."""
    problems = []
    for run in runs:
        try:
            conflict = trainer_lib.config_conflict(run.config)
        except checkpointing.WorkdirError as e:
            problems.append(f"{run.name}: {e}")
            continue
        if conflict is not None and conflict[1]:
            problems.append(f"{run.name}: {run.config.workdir} holds a run with a different configuration ({conflict[0]})")
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
    for path in comparison_paths(workdir):
        if os.path.exists(path) and not os.path.isfile(path):
            problems.append(f"{path} is in the way: it is not a file")
    return problems


def _train_run(run, data):
    """Trains one run; returns (comparison row, the Interrupted exception or None)."""
    start = time.perf_counter()
    interrupted = None
    try:
        history = trainer_lib.Trainer(run.config, data).train()
        status = "ok"
    except actions.Interrupted as e:
        interrupted, status = e, "interrupted"
    except cli.training_errors() as e:
        print(f"error: {run.name}: {cli.error_message(e)}", file=sys.stderr)
        status = "diverged" if isinstance(e, actions.TrainingDiverged) else "failed"
    if status != "ok":
        history = _history_or_empty(run.config.workdir)
    row = {
        "name": run.name,
        "flagfile": run.flagfile,
        "seed": run.seed,
        "dataset": dataset_label(run.config),
        "model": run.config.model,
        "data_source": data.source,
        "workdir": run.config.workdir,
        "init_weights": run.config.init_weights,
        "status": status,
        **summarize_history(history),
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
            [r.config.workdir for r in done], figure_dir,
            labels=[r.name for r in done], groups=[flagfile_stem(r.flagfile) for r in done],
        )
    for flagfile in dict.fromkeys(r.flagfile for r in runs):
        config = next(r.config for r in runs if r.flagfile == flagfile)
        path = os.path.join(figure_dir, f"schedule_{flagfile_stem(flagfile)}.png")
        paths.append(figures.plot_schedule(config, path, data_by_key[data_key(config)].train.num_examples))
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
    if len({flagfile_stem(f) for f in flagfiles}) != len(flagfiles):
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
        print("error: nothing was run or written; --overwrite starts those runs over, another --workdir keeps them",
              file=sys.stderr)
        return 1
    # Thread pools are per process and fixed once TensorFlow runs an op, so they are set here,
    # before the first one, for the runs' batch splitting when all runs split alike.
    splits = {trainer_lib.resolve_batch_splits(run.config) for run in runs}
    if len(splits) == 1:
        runtime.configure_threads(splits.pop())
    else:
        logging.info("the runs split their batches differently (%s): TensorFlow's default thread pools", sorted(splits))
    data_by_key = {}
    try:
        if make_figures:
            figures.require_matplotlib()
        for run in runs:
            key = data_key(run.config)
            if key not in data_by_key:
                config = run.config
                data_by_key[key] = datasets.load(config.dataset, tfds_data_dir=config.tfds_data_dir,
                                                 dataset_dir=config.dataset_dir, train_split=config.train_split,
                                                 eval_split=config.eval_split)
        if shared_init:
            checked = set()
            for run in runs:
                data = data_by_key[data_key(run.config)]
                key = model_key(run.config, data)
                if key not in checked:
                    checked.add(key)
                    trainer_lib.load_initial_weights(build_model(run.config, data), shared_init)
    except (figures.PlotError, trainer_lib.WeightsError, data_lib.DataError, models.ModelError) as e:
        print(f"error: {cli.error_message(e)}", file=sys.stderr)
        return 1
    problems = []
    for run in runs:
        try:
            data_lib.steps_per_epoch(data_by_key[data_key(run.config)].train.num_examples, run.config.batch_size)
        except data_lib.DataError as e:
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
                build_initial_weights(config, data_by_key[data_key(config)], path)
        except (trainer_lib.WeightsError, models.ModelError) as e:
            print(f"error: {cli.error_message(e)}", file=sys.stderr)
            return 1
        names = ", ".join(f"`{os.path.basename(path)}` (seed {config.seed})" for path, config in builds.items())
        if len(builds) == len(seeds):
            init_note = f"all runs of a seed start from the same weights: {names}."
        else:
            init_note = ("runs of a seed with the same model (model, image shape, class count, pixel type) start "
                         "from the same weights; runs of different models each start from their own seeded "
                         f"weights, as `clr_loop.train --seed=N` builds them: {names}.")
    result = {
        "command": command,
        "workdir": workdir,
        "seeds": seeds if per_seed else None,
        "init_note": init_note,
        "spread": SPREAD,
        "data": [data.source for data in data_by_key.values()],
        "runs": [],
        "by_flagfile": [],
    }
    for i, run in enumerate(runs):
        print(f"== run {i + 1}/{len(runs)}: {run.name} ({run.flagfile}, seed {run.seed}) in {run.config.workdir}", flush=True)
        row, interrupted = _train_run(run, data_by_key[data_key(run.config)])
        result["runs"].append(row)
        result["by_flagfile"] = aggregate_by_flagfile(result["runs"])
        try:
            json_path, md_path = write_comparison(workdir, result)
        except OSError as e:
            print(f"error: cannot write the comparison in {workdir}: {e}", file=sys.stderr)
            return 1
        if interrupted is not None:
            print(f"stopped: {interrupted}; the comparison so far is in {md_path}", file=sys.stderr)
            return 128 + interrupted.signum
    print(comparison_markdown(result))
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
