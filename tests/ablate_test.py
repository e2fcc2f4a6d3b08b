"""Tests of clr_loop.ablate: same initial weights (checked on the weights), the comparison, figures, errors."""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
from absl import app
from absl import flags
from absl.testing import flagsaver

from clr_loop import ablate
from clr_loop.experiment import ablation
from clr_loop.experiment import fashion_mnist
from clr_loop.experiment import datasets
from clr_loop.experiment import models
from clr_loop.experiment import figures
from clr_loop import train
from clr_loop.experiment import trial
from testing import REPO, assert_one_line_usage_error, npz_arrays, write_npz, write_tiny_idx_dir

N_TRAIN, N_TEST = 96, 40
# Every run: 96 // 16 = 6 steps per epoch, 2 epochs; no XLA, to keep the test in seconds.
COMMON = [
    "--epochs=2",
    "--batch_size=16",
    "--eval_batch_size=16",
    "--steps_per_loop=3",
    "--log_every_steps=3",
    "--jit_compile=false",
]


@pytest.fixture
def setup(tmp_path):
    """Two tiny flagfiles (plain SGD and triangular2) and a tiny IDX data folder."""
    (tmp_path / "sgd.flags").write_text("# plain SGD\n--mode=none\n--lr=0.05\n--workdir=/nonexistent/ignored\n")
    (tmp_path / "clr.flags").write_text("--mode=triangular2\n--initial_lr=1e-3\n--max_lr=0.1\n--step_size_epochs=1\n")
    return {
        "flagfiles": [str(tmp_path / "sgd.flags"), str(tmp_path / "clr.flags")],
        "data": write_tiny_idx_dir(str(tmp_path / "idx"), n_train=N_TRAIN, n_test=N_TEST),
        "workdir": str(tmp_path / "abl"),
    }


def run_ablate(argv):
    """Parses `argv` as the app would and runs `ablate.main`; returns its exit status."""
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        rest = flags.FLAGS(["clr_loop.ablate", *argv])
        return ablate.main(rest)


@pytest.fixture
def starting_weights(monkeypatch):
    """Records, per run folder, the model's weights at the moment `Trainer.train` is called."""
    captured = {}
    original = trial.Trainer.train

    def train_and_record(self):
        captured[self.config.workdir] = [w.numpy().copy() for w in self.model.weights]
        return original(self)

    monkeypatch.setattr(trial.Trainer, "train", train_and_record)
    return captured


def file_weights(path):
    """Returns the weights stored in a .weights.h5 file, read into a fresh model."""
    model = models.create_model()
    model.load_weights(path)
    return [w.numpy().copy() for w in model.weights]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def differs(a, b):
    return any(not np.array_equal(x, y) for x, y in zip(a, b))


def test_ablation_with_seeds_starts_each_seeds_runs_from_identical_weights(
    setup, starting_weights, monkeypatch, capsys
):
    loads = []
    load = fashion_mnist.load
    monkeypatch.setattr(fashion_mnist, "load", lambda **kw: loads.append(kw) or load(**kw))
    status = run_ablate(
        [*setup["flagfiles"], f"--workdir={setup['workdir']}", "--seeds=3,4", f"--dataset_dir={setup['data']}", *COMMON]
    )
    assert status == 0
    assert len(loads) == 1
    work = setup["workdir"]
    names = ["sgd_seed3", "clr_seed3", "sgd_seed4", "clr_seed4"]
    assert sorted(starting_weights) == sorted(os.path.join(work, n) for n in names)

    for seed in (3, 4):
        init = file_weights(os.path.join(work, f"init_seed{seed}.weights.h5"))
        for stem in ("sgd", "clr"):
            run_dir = os.path.join(work, f"{stem}_seed{seed}")
            assert_same(starting_weights[run_dir], init)
            assert_same(file_weights(os.path.join(run_dir, "init.weights.h5")), init)
            config = json.load(open(os.path.join(run_dir, "config.json")))
            # The run's own settings come from its flagfile, the shared ones from the command line,
            # and its workdir and seed from the ablation.
            assert (config["mode"], config["epochs"], config["seed"]) == (
                "none" if stem == "sgd" else "triangular2",
                2,
                seed,
            )
            assert config["workdir"] == run_dir
        # The seed's file holds what a `clr_loop.train --seed=N` model starts from (no --init_weights).
        keras.utils.set_random_seed(seed)
        assert_same([w.numpy() for w in models.create_model(seed=seed).weights], init)
    assert differs(
        file_weights(os.path.join(work, "init_seed3.weights.h5")),
        file_weights(os.path.join(work, "init_seed4.weights.h5")),
    )

    comparison = json.load(open(os.path.join(work, "comparison.json")))
    assert [r["name"] for r in comparison["runs"]] == names
    for row in comparison["runs"]:
        history = json.load(open(os.path.join(work, row["name"], "history.json")))
        assert row["status"] == "ok" and row["epochs"] == 2
        assert row["final"] == {k: history[k][-1] for k in ("loss", "accuracy", "val_loss", "val_accuracy")}
        assert row["best_val_loss"]["value"] == min(history["val_loss"])
        assert row["wall_seconds"] > 0
    sgd = comparison["by_flagfile"][0]
    assert sgd["flagfile"] == setup["flagfiles"][0] and sgd["seeds"] == [3, 4]
    finals = [r["final"]["val_loss"] for r in comparison["runs"] if r["flagfile"] == sgd["flagfile"]]
    assert sgd["final"]["val_loss"]["mean"] == pytest.approx((finals[0] + finals[1]) / 2)
    assert sgd["final"]["val_loss"]["std"] == pytest.approx(abs(finals[0] - finals[1]) / np.sqrt(2))

    markdown = open(os.path.join(work, "comparison.md")).read()
    for name in names:
        assert f"| {name} |" in markdown
    assert f"| {setup['flagfiles'][1]} | 2 |" in markdown
    out = capsys.readouterr().out
    pngs = [line for line in out.splitlines() if line.endswith(".png")]
    assert [os.path.basename(p) for p in pngs] == [*figures.HISTORY_FIGURES, "schedule_sgd.png", "schedule_clr.png"]
    for path in pngs:
        assert os.path.getsize(path) > 1000

    # The same ablation with a setting its run folders were not trained with is refused before
    # anything is written: the comparison, its figures and the runs stay exactly as they are.
    before = files_under(work)
    status = run_ablate(
        [
            *setup["flagfiles"],
            f"--workdir={work}",
            "--seeds=3,4",
            f"--dataset_dir={setup['data']}",
            *COMMON,
            "--momentum=0.5",
        ]
    )
    assert status == 1
    err = capsys.readouterr().err
    for name in names:
        assert f"error: {name}: {os.path.join(work, name)} holds a run with a different configuration" in err
    assert "momentum: 0.0 (saved) vs 0.5 (now)" in err and "--overwrite" in err
    assert files_under(work) == before


def files_under(folder):
    """Returns {path: (bytes, modification time in ns)} of every file under `folder`."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            found[path] = (open(path, "rb").read(), os.stat(path).st_mtime_ns)
    return found


def test_given_init_weights_start_every_run_and_match_a_plain_train_run(setup, starting_weights, tmp_path):
    custom = str(tmp_path / "custom.weights.h5")
    keras.utils.set_random_seed(1234)
    trial.save_initial_weights(models.create_model(seed=1234), custom)
    work = setup["workdir"]
    status = run_ablate(
        [
            *setup["flagfiles"],
            f"--workdir={work}",
            f"--init_weights={custom}",
            "--seed=7",
            "--nofigures",
            f"--dataset_dir={setup['data']}",
            *COMMON,
        ]
    )
    assert status == 0
    expected = file_weights(custom)
    for stem in ("sgd", "clr"):
        assert_same(starting_weights[os.path.join(work, stem)], expected)
    # With its own file, the ablation builds none; without --seeds the folders carry no seed suffix.
    assert sorted(os.listdir(work)) == ["clr", "comparison.json", "comparison.md", "sgd"]
    markdown = open(os.path.join(work, "comparison.md")).read()
    assert "| sgd | 7 | ok | 2 |" in markdown and "over seeds" not in markdown

    # The same flags through `clr_loop.train` give the same numbers: one trainer, not a copy.
    alone = str(tmp_path / "alone")
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        rest = flags.FLAGS(
            [
                "clr_loop.train",
                f"--flagfile={setup['flagfiles'][1]}",
                f"--workdir={alone}",
                f"--init_weights={custom}",
                "--seed=7",
                f"--dataset_dir={setup['data']}",
                *COMMON,
            ]
        )
        assert train.main(rest) == 0
    ablated = json.load(open(os.path.join(work, "clr", "history.json")))
    single = json.load(open(os.path.join(alone, "history.json")))
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        np.testing.assert_allclose(ablated[key], single[key], rtol=1e-5, err_msg=key)


def test_a_diverging_run_is_reported_and_the_others_still_run(setup, tmp_path, capsys):
    boom = tmp_path / "boom.flags"
    boom.write_text("--mode=none\n--lr=1e9\n")
    work = setup["workdir"]
    status = run_ablate(
        [
            str(boom),
            setup["flagfiles"][0],
            f"--workdir={work}",
            "--nofigures",
            f"--dataset_dir={setup['data']}",
            *COMMON,
        ]
    )
    assert status == 1
    rows = json.load(open(os.path.join(work, "comparison.json")))["runs"]
    assert [(r["name"], r["status"]) for r in rows] == [("boom", "diverged"), ("sgd", "ok")]
    assert rows[0]["final"] is None and rows[1]["epochs"] == 2
    assert "| boom | 42 | diverged | 0 | – |" in open(os.path.join(work, "comparison.md")).read()
    err = capsys.readouterr().err
    assert re.search(r"error: boom: non-finite (loss|weights)", err) and "1 of 2 runs failed: boom" in err


def test_summaries_against_hand_computed_values():
    history = {
        "loss": [2.0, 1.0, 0.8],
        "accuracy": [0.2, 0.6, 0.7],
        "val_loss": [1.5, 0.7, 0.9],
        "val_accuracy": [0.4, 0.75, 0.75],
    }
    summary = ablation.summarize_history(history)
    assert summary["epochs"] == 3
    assert summary["final"] == {"loss": 0.8, "accuracy": 0.7, "val_loss": 0.9, "val_accuracy": 0.75}
    assert summary["best_val_loss"] == {"value": 0.7, "epoch": 2}
    assert summary["best_val_accuracy"] == {"value": 0.75, "epoch": 2}  # the first epoch of a tie
    rows = [
        {
            "flagfile": "a.flags",
            "seed": s,
            "status": "ok",
            "final": {"loss": v, "accuracy": 0.5, "val_loss": v, "val_accuracy": 0.5},
            "best_val_loss": {"value": v - 0.1, "epoch": 2},
            "best_val_accuracy": {"value": 1 - v, "epoch": 3},
            "wall_seconds": 10 * s,
            "epoch_seconds_sum": 9.0,
        }
        for s, v in ((1, 0.5), (2, 0.7), (3, 0.9))
    ] + [{"flagfile": "a.flags", "seed": 4, "status": "diverged", "final": None}]
    (group,) = ablation.aggregate_by_flagfile(rows)
    assert group["n"] == 3 and group["seeds"] == [1, 2, 3]
    # mean 0.7; sample std sqrt((0.04 + 0 + 0.04) / 2) = 0.2.
    assert group["final"]["loss"] == pytest.approx({"mean": 0.7, "std": 0.2, "min": 0.5, "max": 0.9})
    assert group["final"]["accuracy"]["std"] == 0.0
    assert group["best"]["val_loss"] == pytest.approx({"mean": 0.6, "std": 0.2, "min": 0.4, "max": 0.8})
    assert group["best"]["val_accuracy"] == pytest.approx({"mean": 0.3, "std": 0.2, "min": 0.1, "max": 0.5})
    # Wall times 10, 20, 30 s: mean 20, sample std 10.
    assert group["seconds"]["wall"] == pytest.approx({"mean": 20.0, "std": 10.0, "min": 10.0, "max": 30.0})
    assert group["seconds"]["epochs"]["std"] == 0.0
    markdown = ablation.comparison_markdown({"command": "c", "init_note": "n", "runs": [], "by_flagfile": [group]})
    assert (
        "| a.flags | 3 | 0.7000 ± 0.2000 (0.5000–0.9000) | 0.5000 ± 0.0000 (0.5000–0.5000) | 0.7000 ± 0.2000 "
        "(0.5000–0.9000) | 0.5000 ± 0.0000 (0.5000–0.5000) | 0.6000 ± 0.2000 (0.4000–0.8000) | 0.3000 ± 0.2000 "
        "(0.1000–0.5000) | 20 ± 10 (10–30) s |"
    ) in markdown


@pytest.mark.parametrize(
    "value, message",
    [("1,x", "comma-separated integers"), ("-1", r"in \[0, 2\*\*32 - 1\]"), ("1,2,1", "seed 1 twice")],
)
def test_bad_seeds_are_a_flag_error(value, message):
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        with pytest.raises(flags.IllegalFlagValueError, match=message):
            flags.FLAGS(["clr_loop.ablate", "a.flags", f"--seeds={value}"])


def test_bad_inputs_stop_before_anything_is_written(setup, tmp_path):
    work = setup["workdir"]
    bad = str(tmp_path / "bad.flags")
    with open(bad, "w") as f:
        f.write("--mode=triangular2\n--max_lr=1e-5\n")
    cases = [
        ([setup["flagfiles"][0], str(tmp_path / "nope.flags")], "flagfile .*nope.flags does not exist"),
        ([setup["flagfiles"][0], bad], r"bad.flags: --max_lr \(1e-05\) must be greater than --initial_lr"),
        ([setup["flagfiles"][0], setup["flagfiles"][0]], "distinct names"),
        ([setup["flagfiles"][0], "--save_init=x.weights.h5"], "--save_init is set by the ablation"),
        ([setup["flagfiles"][0], "--seed=1", "--seeds=2"], "not both"),
    ]
    for argv, message in cases:
        with pytest.raises(app.UsageError, match=message):
            run_ablate([*argv, f"--workdir={work}", f"--dataset_dir={setup['data']}"])
    assert not os.path.exists(work)


def run_ablate_cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    return subprocess.run(
        [sys.executable, "-m", "clr_loop.ablate", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def test_cli_bad_flagfiles_exit_1_with_one_line_naming_them(tmp_path):
    work = tmp_path / "abl"
    result = run_ablate_cli("flags/no_clr.flags", "flags/missing.flags", f"--workdir={work}")
    assert_one_line_usage_error(result, "flagfile flags/missing.flags does not exist")
    # A device is named as one ("flagfile not found" before), and never read.
    result = run_ablate_cli("flags/no_clr.flags", "/dev/zero", str(tmp_path), f"--workdir={work}")
    assert_one_line_usage_error(
        result,
        "flagfile /dev/zero is a character device, not a regular file; "
        f"flagfile {tmp_path} is a directory, not a regular file",
    )
    # A flagfile to compare that is not UTF-8 text: one message naming it, the byte at fault.
    latin1 = tmp_path / "latin1.flags"
    latin1.write_bytes("--mode=none\n# caf\u00e9\n".encode("latin-1"))
    result = run_ablate_cli("flags/no_clr.flags", str(latin1), f"--workdir={work}")
    assert_one_line_usage_error(result, f"flagfile {latin1} is not utf-8 text", "0xe9 at offset 17")
    assert not work.exists()


def test_a_non_utf8_flagfile_nested_in_a_compared_one_is_named(setup, tmp_path):
    latin1 = tmp_path / "latin1.flags"
    latin1.write_bytes(b"--lr=0.1\n# \xff\n")
    outer = tmp_path / "outer.flags"
    outer.write_text(f"--mode=none\n--flagfile={latin1}\n")
    with pytest.raises(app.UsageError, match=f"^flagfile {latin1} is not utf-8 text .*0xff at offset 11"):
        run_ablate([setup["flagfiles"][0], str(outer), f"--workdir={setup['workdir']}"])
    assert not os.path.exists(setup["workdir"])


@pytest.fixture
def no_training(monkeypatch):
    """Makes `Trainer.train` fail the test if the ablation gets as far as training."""
    monkeypatch.setattr(trial.Trainer, "train", lambda self, **kw: pytest.fail("a run was trained"))


def test_an_unwritable_workdir_is_refused_before_any_run(setup, tmp_path, capsys, no_training):
    (tmp_path / "a_file").write_text("in the way")
    work = tmp_path / "a_file" / "abl"
    status = run_ablate([*setup["flagfiles"], f"--workdir={work}", f"--dataset_dir={setup['data']}", *COMMON])
    assert status == 1
    assert f"error: workdir {work} is not a writable folder" in capsys.readouterr().err


def test_a_batch_larger_than_the_data_is_refused_before_any_run(setup, capsys, no_training):
    status = run_ablate(
        [
            *setup["flagfiles"],
            f"--workdir={setup['workdir']}",
            f"--dataset_dir={setup['data']}",
            *COMMON,
            "--batch_size=100",
        ]
    )
    assert status == 1
    err = capsys.readouterr().err
    assert "error: sgd: 96 examples are fewer than one batch of 100" in err and "error: clr: " in err
    assert not os.path.exists(setup["workdir"])


def test_output_paths_in_the_way_are_refused_before_any_run(setup, capsys, no_training):
    work = setup["workdir"]
    os.makedirs(os.path.join(work, "comparison.md"))
    open(os.path.join(work, "figures"), "w").close()
    status = run_ablate([*setup["flagfiles"], f"--workdir={work}", f"--dataset_dir={setup['data']}", *COMMON])
    assert status == 1
    err = capsys.readouterr().err
    assert f"error: {os.path.join(work, 'comparison.md')} is in the way: it is not a file" in err
    assert f"error: {os.path.join(work, 'figures')} is in the way: it is not a folder" in err
    assert sorted(os.listdir(work)) == ["comparison.md", "figures"]


def test_empty_workdir_is_refused(setup, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(app.UsageError, match="--workdir must not be empty"):
        run_ablate([*setup["flagfiles"], "--workdir="])
    assert not os.path.exists(tmp_path / "runs")


def test_an_ablation_across_datasets_and_models_matches_each_run_trained_alone(
    tmp_path, starting_weights, monkeypatch, capsys
):
    # Two runs of the tutorial CNN on one npz dataset (loaded once, one initial model) and a ResNet-20 run
    # on another (float RGB images, 3 classes, its own seeded weights), with different epoch counts.
    cnn_data = write_npz(tmp_path / "gray.npz", **npz_arrays(n_train=32, n_test=12, shape=(28, 28), classes=10))
    rgb = npz_arrays(n_train=32, n_test=12, shape=(8, 8, 3), classes=3, seed=1)
    rgb_data = write_npz(
        tmp_path / "rgb.npz", **{**rgb, "x_train": rgb["x_train"] / 255.0, "x_test": rgb["x_test"] / 255.0}
    )
    small = "--batch_size=8\n--eval_batch_size=8\n--steps_per_loop=2\n--log_every_steps=2\n--jit_compile=false\n"
    (tmp_path / "cnn_sgd.flags").write_text(f"--dataset=npz:{cnn_data}\n--mode=none\n--lr=0.05\n--epochs=2\n{small}")
    (tmp_path / "cnn_1cycle.flags").write_text(
        f"--dataset=npz:{cnn_data}\n--mode=one_cycle\n--max_lr=0.1\n--epochs=2\n{small}"
    )
    (tmp_path / "resnet.flags").write_text(
        f"--dataset=npz:{rgb_data}\n--model=resnet20\n--optimizer=adam\n"
        f"--mode=triangular\n--max_lr=0.01\n--step_size_epochs=1\n--epochs=3\n{small}"
    )
    flagfiles = [str(tmp_path / f"{stem}.flags") for stem in ("cnn_sgd", "resnet", "cnn_1cycle")]
    loads = []
    load_npz = datasets.load_npz
    monkeypatch.setattr(datasets, "load_npz", lambda path: loads.append(path) or load_npz(path))
    work = str(tmp_path / "abl")
    assert run_ablate([*flagfiles, f"--workdir={work}", "--seed=5"]) == 0
    assert sorted(loads) == sorted([cnn_data, rgb_data])  # each data source loaded once

    comparison = json.load(open(os.path.join(work, "comparison.json")))
    rows = {row["name"]: row for row in comparison["runs"]}
    assert [(r["name"], r["dataset"], r["model"], r["epochs"]) for r in comparison["runs"]] == [
        ("cnn_sgd", f"npz:{cnn_data}", "tutorial_cnn", 2),
        ("resnet", f"npz:{rgb_data}", "resnet20", 3),
        ("cnn_1cycle", f"npz:{cnn_data}", "tutorial_cnn", 2),
    ]
    assert [(g["name"], g["dataset"], g["model"]) for g in comparison["by_flagfile"]] == [
        ("cnn_sgd", f"npz:{cnn_data}", "tutorial_cnn"),
        ("resnet", f"npz:{rgb_data}", "resnet20"),
        ("cnn_1cycle", f"npz:{cnn_data}", "tutorial_cnn"),
    ]
    markdown = open(os.path.join(work, "comparison.md")).read()
    assert "| dataset | model |" in markdown and "own seeded weights" in markdown
    for name, row in rows.items():
        assert f"| {name} | 5 | ok | {row['epochs']} |" in markdown
        assert f" s | npz:{cnn_data if name != 'resnet' else rgb_data} | {row['model']} |" in markdown

    # The CNN runs share one initial model; ResNet-20 has its own file.
    cnn_init = os.path.join(work, "init_tutorial_cnn_28x28x1_10classes_uint8.weights.h5")
    resnet_init = os.path.join(work, "init_resnet20_8x8x3_3classes_float32.weights.h5")
    assert rows["cnn_sgd"]["init_weights"] == rows["cnn_1cycle"]["init_weights"] == cnn_init
    assert rows["resnet"]["init_weights"] == resnet_init and os.path.isfile(resnet_init)
    assert_same(starting_weights[os.path.join(work, "cnn_sgd")], starting_weights[os.path.join(work, "cnn_1cycle")])
    assert_same(starting_weights[os.path.join(work, "cnn_sgd")], file_weights(cnn_init))

    # Figures of runs with different datasets and epoch counts, and each flagfile's schedule.
    pngs = [line for line in capsys.readouterr().out.splitlines() if line.endswith(".png")]
    assert [os.path.basename(p) for p in pngs] == [
        *figures.HISTORY_FIGURES,
        "schedule_cnn_sgd.png",
        "schedule_resnet.png",
        "schedule_cnn_1cycle.png",
    ]
    assert all(os.path.getsize(p) > 1000 for p in pngs)

    # The oracle: each run trained alone by `clr_loop.train --flagfile=F --seed=5` (its own fresh
    # seeded model, no initial-weights file) gives the same history.
    for flagfile in flagfiles:
        stem = ablation.flagfile_stem(flagfile)
        alone = str(tmp_path / "alone" / stem)
        with flagsaver.flagsaver():
            flags.FLAGS.unparse_flags()
            rest = flags.FLAGS(["clr_loop.train", f"--flagfile={flagfile}", f"--workdir={alone}", "--seed=5"])
            assert train.main(rest) == 0
        ablated = json.load(open(os.path.join(work, stem, "history.json")))
        single = json.load(open(os.path.join(alone, "history.json")))
        assert sorted(ablated) == sorted(single)
        for key in sorted(set(single) - {"epoch_seconds"}):
            np.testing.assert_allclose(ablated[key], single[key], rtol=1e-5, err_msg=f"{stem}: {key}")


def test_given_init_weights_that_do_not_fit_one_runs_model_are_refused_before_anything_is_written(
    setup, tmp_path, capsys, no_training
):
    custom = str(tmp_path / "cnn.weights.h5")
    keras.utils.set_random_seed(1)
    trial.save_initial_weights(models.create_model(seed=1), custom)  # the tutorial CNN's, 28x28x1
    rgb = write_npz(tmp_path / "rgb.npz", **npz_arrays(n_train=32, n_test=8, shape=(8, 8, 3), classes=3))
    resnet = tmp_path / "resnet.flags"
    resnet.write_text(f"--dataset=npz:{rgb}\n--model=resnet20\n")
    cnn = tmp_path / "cnn.flags"
    cnn.write_text(f"--mode=none\n--dataset_dir={setup['data']}\n")
    work = tmp_path / "abl"
    status = run_ablate([str(cnn), str(resnet), f"--workdir={work}", f"--init_weights={custom}", *COMMON])
    assert status == 1
    err = capsys.readouterr().err
    assert f"error: --init_weights: initial weights file {custom} cannot be loaded into the model" in err
    assert not work.exists()
