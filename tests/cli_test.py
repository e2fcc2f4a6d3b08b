"""Tests of clr_loop.cli: the training flags on any FlagValues, their defaults, and flag-named errors."""

import dataclasses

import pytest
from absl import app
from absl import flags

from clr_loop import cli
from clr_loop import errors
from clr_loop.experiment import config as config_lib


def parsed(*argv):
    flag_values = flags.FlagValues()
    cli.define_training_flags(flag_values)
    flag_values(["prog", *argv])
    return flag_values


def test_defaults_give_configs_default_run():
    config = cli.config_from_flags(parsed())
    assert config == config_lib.Config(workdir="runs/triangular2")
    # Every Config field but the derived ones has its flag.
    derived = {"profile_steps", "devices", "workdir"}
    assert {f.name for f in dataclasses.fields(config_lib.Config)} - derived <= set(cli.TRAINING_FLAGS)


def test_flags_become_config_values():
    config = cli.config_from_flags(
        parsed(
            "--mode=exp_range",
            "--gamma=0.999",
            "--batch_size=32",
            "--profile_steps=5,8",
            "--devices=/cpu:0,/cpu:1",
            "--strategy=mirrored",
            "--nothree_phase",
            "--cycle_momentum",
        )
    )
    assert (config.mode, config.gamma, config.batch_size) == ("exp_range", 0.999, 32)
    assert config.profile_steps == (5, 8) and config.devices == ("/cpu:0", "/cpu:1")
    assert config.workdir == "runs/exp_range" and config.cycle_momentum is True and config.three_phase is False
    config = cli.config_from_flags(parsed("--mode=piecewise", "--boundaries_epochs=82,123", "--values=0.1,0.01,1e-3"))
    assert config.boundaries_epochs == (82.0, 123.0) and config.values == (0.1, 0.01, 0.001)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--max_lr=1e-5"], r"--max_lr \(1e-05\) must be greater than --initial_lr \(0.0001\)"),
        (["--batch_size=0"], "--batch_size"),
        (["--profile_steps=1,x"], "--profile_steps must be START,STOP"),
        (
            ["--mode=piecewise", "--boundaries_epochs=1,x", "--values=1,2,3"],
            "--boundaries_epochs must be comma-separated numbers",
        ),
        (["--mode=piecewise", "--boundaries_epochs=1,2", "--values=1,2"], "--values needs one rate more"),
    ],
)
def test_bad_values_raise_usage_errors_naming_the_flag(argv, message):
    with pytest.raises(app.UsageError, match=message):
        cli.config_from_flags(parsed(*argv))


def test_a_config_problem_names_the_flag_and_only_the_flag():
    with pytest.raises(app.UsageError) as refused:
        cli.config_from_flags(parsed("--batch_size=0"))
    assert str(refused.value) == "--batch_size must be a positive integer, got 0"
    with pytest.raises(app.UsageError) as refused:
        cli.config_from_flags(parsed("--batch_size=0", "--momentum=1.5"))
    assert str(refused.value).splitlines() == [
        "--batch_size must be a positive integer, got 0",
        "--momentum must be in [0, 1), got 1.5",
    ]


def test_error_message_names_the_argument_as_a_flag_without_reading_the_message():
    from clr_loop import checkpointing
    from clr_loop import inputs

    # The text names no flag and no argument: the flag comes from `argument` alone.
    error = inputs.InputError("the training set (900 MiB) does not fit in /GPU:0's memory", argument="input_mode")
    assert cli.error_message(error) == "--input_mode: the training set (900 MiB) does not fit in /GPU:0's memory"
    assert cli.error_message(errors.Error("something is wrong")) == "something is wrong"
    # Text that once chose a hint chooses nothing now; the attributes do.
    lookalike = checkpointing.WorkdirError("input_mode=x: precision: 'float32' (saved)", starting_over_helps=False)
    assert cli.error_message(lookalike) == "input_mode=x: precision: 'float32' (saved)"
    other_precision = checkpointing.WorkdirError(
        "runs/x holds a run with a different configuration", argument="precision", settings=("precision",)
    )
    assert cli.error_message(other_precision) == (
        "--precision: runs/x holds a run with a different configuration (--precision must be the saved run's to "
        "resume it) (--overwrite starts the run over in the same --workdir; another --workdir keeps it)"
    )
    # A Config problem marks the fields it names: plain names for code, flags for the CLI.
    problem = config_lib.ConfigError(
        config_lib.Problem("batch_size", "{batch_size}=65 must be a multiple of the 2 replicas of {strategy}=mirrored")
    )
    assert problem.argument == "batch_size"
    assert str(problem) == "batch_size=65 must be a multiple of the 2 replicas of strategy=mirrored"
    assert cli.error_message(problem) == "--batch_size=65 must be a multiple of the 2 replicas of --strategy=mirrored"


def test_defining_twice_on_the_same_flag_values_adds_nothing():
    flag_values = flags.FlagValues()
    cli.define_training_flags(flag_values)
    cli.define_training_flags(flag_values)
    assert sorted(flag_values) == sorted(cli.TRAINING_FLAGS)


def test_a_flag_another_module_defined_is_a_duplicate():
    flag_values = flags.FlagValues()
    flags.DEFINE_integer("batch_size", 3, "The caller's own.", flag_values=flag_values)
    with pytest.raises(flags.DuplicateFlagError, match="batch_size"):
        cli.define_training_flags(flag_values)


def test_undecodable_flagfile_is_found_through_nested_flagfiles(tmp_path):
    good, bad = tmp_path / "good.flags", tmp_path / "bad.flags"
    bad.write_bytes(b"--epochs=2\n--lr=\xff\n")
    good.write_text(f"# includes the bad one\n--flagfile={bad}\n")
    flag_values = flags.FlagValues()
    cli.define_training_flags(flag_values)
    with pytest.raises(UnicodeDecodeError) as e:  # absl's own error names no file
        flag_values(["prog", "--mode=none", "--flagfile", str(good)])
    message = cli.undecodable_flagfile(["--mode=none", "--flagfile", str(good)], e.value)
    assert message == f"flagfile {bad} is not utf-8 text (invalid start byte: byte 0xff at offset 16)"


def test_error_message_points_to_overwrite_only_where_starting_over_helps(tmp_path):
    from clr_loop import checkpointing

    other_run = checkpointing.WorkdirError("runs/x holds a run with a different configuration (lr: 0.1 vs 0.2)")
    assert cli.error_message(other_run).endswith(
        "(--overwrite starts the run over in the same --workdir; another --workdir keeps it)"
    )
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(checkpointing.WorkdirError) as unwritable:
        checkpointing.check_writable(str(blocked / "run"))
    assert "--overwrite" not in cli.error_message(unwritable.value)
    assert issubclass(checkpointing.WorkdirError, errors.Error) and issubclass(
        checkpointing.CheckpointError, errors.Error
    )


def test_flagfiles_that_are_not_regular_files_or_too_big_are_named_before_absl_reads_them(tmp_path, capsys):
    """`--flagfile=/dev/zero` grew without bound (3 GB in 16 s); a folder was
    "not found". Each is one line naming the flagfile, nested ones too, and nothing is read past the limit."""
    big = tmp_path / "big.flags"
    big.write_text("--mode=none\n" + "#" * cli.MAX_FLAGFILE_BYTES + "\n")
    outer = tmp_path / "outer.flags"
    outer.write_text("--mode=none\n--flagfile=/dev/zero\n")
    cases = [
        ("/dev/zero", "flagfile /dev/zero is a character device, not a regular file"),
        (str(tmp_path), f"flagfile {tmp_path} is a directory, not a regular file"),
        (str(tmp_path / "missing.flags"), f"flagfile {tmp_path / 'missing.flags'} does not exist"),
        (
            str(big),
            f"flagfile {big} is {cli.MAX_FLAGFILE_BYTES + 13} bytes, more than a flagfile may have "
            f"({cli.MAX_FLAGFILE_BYTES})",
        ),
        (str(outer), "flagfile /dev/zero is a character device, not a regular file"),
    ]
    for path, message in cases:
        assert cli.flagfile_problem([f"--flagfile={path}"]) == message
        with pytest.raises(SystemExit) as exit_info:
            cli.parse_flags(["prog", "--flagfile", path])
        assert exit_info.value.code == 1
        assert (
            capsys.readouterr().err
            == f"FATAL Flags parsing error: {message}\nPass --helpshort or --helpfull to see help on flags.\n"
        )
    assert cli.flagfile_problem(["--flagfile=flags/smoke.flags", "--mode=none"]) is None


def test_a_cluster_error_about_an_argument_names_its_flag():
    """`--devices=/cpu:0,/cpu:0` is one line naming --devices."""
    from clr_loop import distribute

    error = distribute.ClusterError("devices /cpu:0, /cpu:0 name /cpu:0 more than once", "devices")
    assert cli.error_message(error) == "--devices: devices /cpu:0, /cpu:0 name /cpu:0 more than once"
    assert cli.error_message(distribute.ClusterError("TF_CONFIG is not valid")) == "TF_CONFIG is not valid"
