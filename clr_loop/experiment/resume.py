"""Which of a Config's settings a run may change when it resumes, and the workdir's config.json.

A run's checkpoints record the settings that define its numbers (`defining_settings`); the library's
loop compares them with the resuming run's through `describe_config_differences`, and the trial
refuses a workdir whose config.json describes another run (`config_conflict`). Settings added to the
Config after runs were first written compare as the value those runs had (`ADDED_SETTINGS`).
"""

import os

from clr_loop import checkpointing
from clr_loop import workdir
from clr_loop.experiment import config as config_lib

# Settings that may change between a run and its resumption: they steer the plumbing (where
# files go, how often to log or save, how long to run), not the numbers the run computes.
RESUMABLE_CHANGES = frozenset(
    {
        "workdir",
        "steps_per_loop",
        "log_every_steps",
        "max_steps",
        "epochs",
        "profile_steps",
        "checkpoint_every_steps",
        "keep_checkpoints",
        "overwrite",
        "tfds_data_dir",
        "dataset_dir",
        "save_init",
        "init_weights",
        "eval_batch_size",
        "strategy",
        "devices",
        "virtual_cpus",
        "cluster_timeout",
        # How a batch is computed (one part per core on a CPU, one on a GPU): a run may move
        # between machines; only the dropout masks' draws change. Runs written before the
        # setting existed have no such key and resume too.
        "batch_splits",
        # Where the batches are gathered (on the device or through tf.data): the same batches.
        "input_mode",
    }
)
# Settings added after runs were first written, with the value a run written before them had: a
# config.json without the key compares as that value, so such a run resumes under the defaults.
ADDED_SETTINGS = {
    "dataset": "fashion_mnist",
    "train_split": "train",
    "eval_split": "test",
    "model": "tutorial_cnn",
    "optimizer": "sgd",
    "weight_decay": None,
    "augment": "none",
    "boundaries_epochs": None,
    "values": None,
    "warmup_epochs": 0.0,
    "final_lr": None,
    "t_mul": None,
    "m_mul": None,
    "decay_epochs": None,
    "decay_fraction": None,
    "decay_shape": None,
    "precision": "float32",
}


def defining_settings(config):
    """Returns the settings of a config dict that define the numbers a run computes: all but the
    plumbing ones of `RESUMABLE_CHANGES` (where files go, logging, devices), keeping `epochs`,
    which a one_cycle schedule depends on. A checkpoint records these as its run's identity, so the
    same run in another workdir records the same bytes."""
    return {k: v for k, v in config.items() if k not in RESUMABLE_CHANGES or k == "epochs"}


def config_differences(saved, current):
    """Returns the names of settings that differ between two config dicts and forbid resuming.

    `epochs` may only change when the schedule does not depend on it (not one_cycle, cosine, wsd). A key of
    `ADDED_SETTINGS` missing from either dict compares as the value runs had before it existed.
    """
    free = set(RESUMABLE_CHANGES)
    if {current.get("mode"), saved.get("mode")} & set(config_lib.SPANNING_MODES):
        free.discard("epochs")
    keys = (set(saved) | set(current)) - free - {"resolved"}
    return sorted(k for k in keys if _setting(saved, k) != _setting(current, k))


def describe_differences(saved, current, names):
    """Returns a one-line description `name: saved (saved) vs now (now)` of each setting in `names`,
    a setting added since a run was written compared as its old value (`ADDED_SETTINGS`)."""
    return workdir.describe_settings(saved, current, names, _setting)


def _setting(values, key):
    """Returns setting `key` of a config dict, or for a missing key of ADDED_SETTINGS its old value."""
    return values.get(key, ADDED_SETTINGS.get(key))


def describe_config_differences(saved, current):
    """Returns why the run settings `current` cannot resume a run of `saved` (both `defining_settings`
    dicts): one `the configuration (name: saved (saved) vs now (now), ...)` line, or an empty list
    when it may resume. The loop calls it (`runner.Run`'s `run_config_differences`) to compare a
    checkpoint's recorded settings with the run's; the line is the library's
    (`workdir.settings_differences`), with this module's rules for which settings count."""
    return workdir.settings_differences(saved, current, config_differences(saved, current), _setting)


# Settings every config.json that clr_loop wrote holds (the Config's first fields).
CONFIG_JSON_KEYS = ("mode", "epochs", "batch_size", "seed")


def config_json_problem(value):
    """Returns None when `value` (a parsed config.json) is a run configuration as clr_loop writes it,
    else why not (a str): a user's own config.json is never taken for a run's."""
    if not isinstance(value, dict):
        return f"it holds a JSON {type(value).__name__}, not a dict"
    missing = [key for key in CONFIG_JSON_KEYS if key not in value]
    return f"it has no {', '.join(missing)}" if missing else None


def config_conflict(config):
    """Compares `config` with the configuration in its workdir's config.json.

    Returns None when they agree, when there is no config.json, or with `overwrite`; else
    (description, binding, names): each differing setting as `name: saved (saved) vs now (now)`,
    whether the workdir holds saved state (a checkpoint or a history) that the difference forbids
    resuming, and the differing settings' names (a tuple). Raises WorkdirError naming a config.json that cannot be read or that clr_loop did not write.
    """
    path = os.path.join(config.workdir, "config.json")
    if config.overwrite or not os.path.exists(path):
        return None
    saved = checkpointing.read_json(path, "run configuration")
    why = config_json_problem(saved)
    if why is not None:
        raise checkpointing.WorkdirError(
            f"run configuration {path} is not one clr_loop wrote ({why}); refusing to replace it: move it away, or "
            "use another workdir",
            starting_over_helps=False,
        )
    current = config.to_json_dict()
    differing = config_differences(saved, current)
    if not differing:
        return None
    binding = checkpointing.has_checkpoint(config.workdir) or os.path.exists(
        os.path.join(config.workdir, "history.json")
    )
    return describe_differences(saved, current, differing), binding, tuple(differing)
