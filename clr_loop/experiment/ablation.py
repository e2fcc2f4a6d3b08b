"""Same-initialisation ablations' parts that are the experiment's: run names, initial weights, and the comparison.

The app `clr_loop.ablate` plans the runs from its flagfiles and trains them; this module names
their folders and initial-weight files, builds a seed's initial model as `trial.Trainer` does,
summarises each run's history, aggregates the runs of a flagfile over seeds and writes
`comparison.md` and `comparison.json`.
"""

import dataclasses
import os

import keras
import numpy as np

from clr_loop import checkpointing
from clr_loop.experiment import checks
from clr_loop.experiment import config as config_lib
from clr_loop.experiment import datasets
from clr_loop.experiment import models
from clr_loop.experiment import trial

FINAL_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")
SPREAD = "mean ± sample standard deviation (n-1) over seeds, and min–max"


@dataclasses.dataclass(frozen=True)
class PlannedRun:
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
    """Returns the keras.Model `trial.Trainer` builds for `config` on `data`, after seeding Keras with `config.seed`.

    Raises config.ConfigError for a Config whose values cannot run (`checks.check`)."""
    checks.check(config)
    keras.utils.set_random_seed(config.seed)
    return models.create(
        config.model, data.image_shape, data.num_classes, train_images=data.train.images, seed=config.seed
    ).model


def build_initial_weights(config, data, path):
    """Builds the model for `config` (its seed and model) on `data` as `trial.Trainer` does and saves its
    weights to `path`; returns `path`.

    So the file holds the weights a `clr_loop.train --seed=<seed> --model=... --dataset=...` run starts from.
    """
    return trial.save_initial_weights(build_model(config, data), path)


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
        out.append(
            {
                "flagfile": flagfile,
                "name": flagfile_stem(flagfile),
                "dataset": members[0].get("dataset", datasets.DEFAULT),
                "model": members[0].get("model", "tutorial_cnn"),
                "seeds": [m["seed"] for m in members],
                "n": len(members),
                "final": {key: _spread([m["final"][key] for m in members]) for key in FINAL_KEYS},
                "best": {
                    key: _spread([m[f"best_{key}"]["value"] for m in members]) for key in ("val_loss", "val_accuracy")
                },
                "seconds": {
                    "wall": _spread([m["wall_seconds"] for m in members]),
                    "epochs": _spread([m["epoch_seconds_sum"] for m in members]),
                },
            }
        )
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
            spreads = [group["final"][key] for key in FINAL_KEYS] + [
                group["best"][key] for key in ("val_loss", "val_accuracy")
            ]
            cells = [_spread_cell(s) for s in spreads] + [_spread_cell(group["seconds"]["wall"], digits=0, unit=" s")]
            lines.append(
                f"| {group['flagfile']} | {group['n']} | "
                + " | ".join(cells)
                + f" | {_cell(group.get('dataset'))} | {_cell(group.get('model'))} |"
            )
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
