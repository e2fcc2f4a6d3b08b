"""One trial of the experiment: a Config trained and evaluated, as a client of the library's loop.

It builds the Config's model (`clr_loop.experiment.models`: by default the tutorial's CNN), compiles it with
the Config's optimizer (SGD by default) and schedule, the cross-entropy its outputs call for and
accuracy, and trains it on the dataset's in-memory arrays (`clr_loop.experiment.datasets`), or on the
tf.data stream of a TFDS dataset too big for memory (whose iterator the loop checkpoints), with `runner.Run`,
with the Config's augmentation, workdir, step counts and device settings. What is particular to the
experiment stays here: the Config's checks before anything is built, the initial-weights files, and the
workdir's config.json (`clr_loop.experiment.resume`: another configuration is refused, naming each
setting). The process's set-up (threads, virtual CPUs, op determinism, the strategy) is the app's.
"""

import os
import sys

import keras
import tensorflow as tf
from absl import logging

from clr_loop import errors
from clr_loop import checkpointing
from clr_loop.experiment import checks
from clr_loop.experiment import config as config_lib
from clr_loop.experiment import fashion_mnist
from clr_loop.experiment import datasets
from clr_loop import distribute
from clr_loop import inputs
from clr_loop import loop
from clr_loop.experiment import models
from clr_loop.experiment import resume
from clr_loop import optimizers as optimizers_lib
from clr_loop import runner
from clr_loop import runtime
from clr_loop import steps as steps_lib
from clr_loop import workdir as workdir_lib

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "epoch_seconds")


class WeightsError(errors.Error, ValueError):
    """Raised when an initial-weights file cannot be read, written or does not fit the model; names the file.

    `argument` is the Config field the file comes from: "init_weights" (read) or "save_init" (written).
    """

    def __init__(self, message, argument="init_weights"):
        super().__init__(message, argument=argument)


def save_initial_weights(model, path):
    """Writes `model`'s weights to `path` (a Keras `.weights.h5` file) atomically; returns `path`.

    A file that cannot be written raises WeightsError naming `path` (argument "save_init"); the
    temporary file is removed and an earlier file at `path` is left as it was.
    """
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".tmp-{os.getpid()}-{os.path.basename(path)}")
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        model.save_weights(tmp)
        os.replace(tmp, path)
    except Exception as e:  # OS errors, and h5py's own for a file it cannot create
        if os.path.isfile(tmp):
            os.remove(tmp)
        raise WeightsError(f"cannot write initial weights to {path}: {type(e).__name__}: {e}", "save_init") from e
    logging.info("initial weights written to %s", path)
    return path


def load_initial_weights(model, path):
    """Loads `model`'s weights from a `.weights.h5` file; raises WeightsError naming the file on failure."""
    what = fashion_mnist.not_a_regular_file(path)
    if what is not None:
        raise WeightsError(f"initial weights file {path} {what}")
    try:
        model.load_weights(path)
    except Exception as e:  # h5py, Keras shape checks and OS errors all mean "unusable file"
        raise WeightsError(
            f"initial weights file {path} cannot be loaded into the model: {type(e).__name__}: {e}"
        ) from e
    logging.info("initial weights loaded from %s", path)


def make_optimizer(config, plan):
    """Returns the `config.optimizer` whose learning rate is `config`'s schedule (in steps).

    SGD: with `config.uses_cycle_momentum` a `CyclicalMomentumSGD` whose momentum follows the same
    schedule, from `max_momentum` at the low rate to `base_momentum` at the peak; otherwise Keras
    SGD with the constant `config.momentum`. Adam and AdamW: Keras's, with their default betas, or
    with `uses_cycle_momentum` a `CyclicalMomentumAdam` (`CyclicalMomentumAdamW`) whose beta_1
    follows the schedule likewise, as PyTorch cycles it.
    `config.weight_decay` is Keras's decoupled weight decay for each (`w -= lr * weight_decay * w`
    per step, on every trainable variable); unset, there is none, except AdamW's own default.
    """
    if config.mode == "schedule_free":
        return make_schedule_free_optimizer(config, plan)
    schedule = config_lib.make_schedule(config, plan)
    decay = config.weight_decay
    if config.optimizer in ("adam", "adamw"):
        if config.optimizer == "adamw" and decay is None:
            decay = config_lib.ADAMW_WEIGHT_DECAY
        if config.uses_cycle_momentum:
            beta_1 = optimizers_lib.CyclicalMomentum(schedule, config.base_momentum, config.max_momentum)
            if config.optimizer == "adamw":
                return optimizers_lib.CyclicalMomentumAdamW(learning_rate=schedule, beta_1=beta_1, weight_decay=decay)
            return optimizers_lib.CyclicalMomentumAdam(learning_rate=schedule, beta_1=beta_1, weight_decay=decay)
        if config.optimizer == "adamw":
            return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=decay)
        return keras.optimizers.Adam(learning_rate=schedule, weight_decay=decay)
    if config.uses_cycle_momentum:
        momentum = optimizers_lib.CyclicalMomentum(schedule, config.base_momentum, config.max_momentum)
        return optimizers_lib.CyclicalMomentumSGD(learning_rate=schedule, momentum=momentum, weight_decay=decay)
    return keras.optimizers.SGD(learning_rate=schedule, momentum=config.momentum, weight_decay=decay)


def make_schedule_free_optimizer(config, plan):
    """Returns `ScheduleFreeSGD` (--optimizer=sgd) or `ScheduleFreeAdamW` (adamw) at the constant
    peak rate `config.max_lr`, warmed up over `plan.warmup_steps` steps.

    SGD's interpolation beta is `config.momentum`, or the reference's 0.9 when that is 0; its weight
    decay `config.weight_decay` or none. AdamW's beta_1 is the reference's 0.9 and its decay
    `config.weight_decay` or Keras AdamW's default, as for --optimizer=adamw.
    """
    decay = config.weight_decay
    if config.optimizer == "adamw":
        decay = config_lib.ADAMW_WEIGHT_DECAY if decay is None else decay
        return optimizers_lib.ScheduleFreeAdamW(
            learning_rate=config.max_lr, warmup_steps=plan.warmup_steps, weight_decay=decay
        )
    return optimizers_lib.ScheduleFreeSGD(
        learning_rate=config.max_lr,
        momentum=config.momentum or config_lib.SCHEDULE_FREE_MOMENTUM,
        warmup_steps=plan.warmup_steps,
        weight_decay=decay or 0.0,
    )


def compile_model(model, config, plan, from_logits=False):
    """Compiles `model` as the tutorial does: `make_optimizer`, sparse categorical cross-entropy on
    its probabilities (on its logits with `from_logits`), and accuracy. Returns the model."""
    loss = (
        keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if from_logits
        else "sparse_categorical_crossentropy"
    )
    model.compile(optimizer=make_optimizer(config, plan), loss=loss, metrics=["accuracy"])
    return model


def check_replicas(config, strategy):
    """Raises config.ConfigError (argument batch_size) when `config.batch_size` (the global batch) is not a
    multiple of `strategy`'s replicas, which each take an equal share of it; returns None otherwise."""
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas == 0:
        return
    devices = ", ".join(_short_device(d) for d in getattr(strategy.extended, "worker_devices", ()))
    lower = config.batch_size - config.batch_size % replicas
    options = " or ".join(f"{{batch_size}}={b}" for b in (lower, lower + replicas) if b > 0)
    raise config_lib.ConfigError(
        config_lib.Problem(
            "batch_size",
            f"{{batch_size}}={config.batch_size} must be a multiple of the {replicas} replicas of "
            f"{{strategy}}={config.strategy}{f' ({devices})' if devices else ''}, e.g. {options}",
        )
    )


def _short_device(name):
    """Returns a device name as `/cpu:0` (`/job:localhost/replica:0/task:0/device:CPU:0` too)."""
    spec = tf.DeviceSpec.from_string(name)
    return f"/{(spec.device_type or '').lower()}:{spec.device_index or 0}"


def check_batch_splits(config, model):
    """Raises config.ConfigError (argument batch_splits) when `config.batch_splits` > 1 asks to compute `model`
    in parts although a layer of it depends on the whole batch (`steps.can_split`); returns None otherwise."""
    if config.batch_splits > 1:
        ok, why = steps_lib.can_split(model)
        if not ok:
            raise config_lib.ConfigError(
                config_lib.Problem(
                    "batch_splits",
                    f"{{batch_splits}}={config.batch_splits} cannot compute {{model}}={config.model} in parts: {why}; "
                    "leave {batch_splits} at 0 (automatic) or 1",
                )
            )


def planned_batch_splits(config, replicas=1):
    """Returns how many parts each batch of the tutorial's CNN is computed in (see `steps.Steps`).

    `config.batch_splits` when positive. For 0 (automatic): `runtime.auto_batch_splits` for the
    CPU's cores on a one-replica run without a GPU or TPU, without XLA (an XLA cluster runs the
    parts one after the other, so splitting only shrinks its ops) and without loss scaling; else 1. Reads only the
    physical devices, so the app can call it before TensorFlow starts and size the thread pools.
    """
    if config.batch_splits:
        return config.batch_splits
    if config.model != "tutorial_cnn":
        return 1  # ResNet-20's batch norm depends on the whole batch; a user's model is unknown here
    if config.precision == "mixed_float16":
        return 1  # loss scaling: see runtime.resolve_batch_splits
    if replicas > 1 or config.strategy != "default" or config.virtual_cpus:
        return 1
    if config.jit_compile == "true" or runtime.accelerator_present():
        return 1
    return runtime.auto_batch_splits(config.batch_size)


def normalization(data):
    """Returns `models.create`'s normalisation keyword for `data`: `train_images`, all of them, for data in
    memory; for streamed data (`datasets.StreamedSplit`) `stats`, the (mean, std) of its first
    `datasets.NORMALIZATION_SAMPLE` examples in file order, read only if the model normalises: one
    bounded pass instead of one over the whole split (TFDS shuffles a split's examples when it
    prepares it, so they are a fair sample)."""
    if getattr(data, "streamed", False):
        return {"stats": lambda: models.channel_stats(data.train.sample_chunks())}
    return {"train_images": data.train.images}


def make_inputs(config, data):
    """Returns `(train_input, validation)` for `runner.Run`: batches of the in-memory arrays (the last
    partial training batch dropped), or for streamed data the TFDS train split as a tf.data.Dataset
    (seeded shuffle buffer, `config.batch_size` batches, remainder dropped; the loop checkpoints its
    iterator) and the eval split as batches of `config.eval_batch_size`."""
    if getattr(data, "streamed", False):
        return (
            inputs.make_train_input(
                data.train.train_dataset(config.batch_size, config.seed), None, None, drop_remainder=True
            ),
            inputs.make_validation(data.test.eval_dataset(config.eval_batch_size), config.eval_batch_size),
        )
    return (
        inputs.make_train_input(data.train.images, data.train.labels, config.batch_size, drop_remainder=True),
        inputs.make_validation((data.test.images, data.test.labels), config.eval_batch_size),
    )


class Trainer:
    """The experiment for one Config: builds and compiles its model, then trains it with
    `clr_loop.loop` on the dataset's arrays (or its stream: `make_inputs`), with `config.workdir` as the
    run directory.

    Build it with a Config and loaded data (`clr_loop.experiment.datasets.load`'s: an ImageData or a
    `clr_loop.experiment.fashion_mnist.FashionMnist`) and optionally a `model` (then compiled for probabilities), then call `train()`,
    which checks the workdir's configuration, writes `config.save_init` (once the checks pass),
    resumes from its last checkpoint when there is one and returns the history dict (per-epoch lists under `HISTORY_KEYS`). `run` is the
    `runner.Run` that does the work.
    """

    def __init__(self, config, data, *, model=None, strategy=None):
        checks.check(config)  # a Config built in code is refused, naming its field, before anything is built
        self.config = config
        self.data = data
        self.strategy = strategy or tf.distribute.get_strategy()
        self.replicas = self.strategy.num_replicas_in_sync
        self.is_chief = distribute.is_chief(self.strategy)
        check_replicas(config, self.strategy)
        self.plan = config_lib.plan_steps(config, data.train.num_examples)
        # The Config's seed is its model's: Keras's initialisers and layers draw their default
        # seeds from Keras's global seed. (Op determinism is the process's: the apps set it.)
        keras.utils.set_random_seed(config.seed)
        with self.strategy.scope():
            if model is None:
                with runtime.precision(config.precision):  # the global policy is restored after
                    built = models.create(
                        config.model, data.image_shape, data.num_classes, seed=config.seed, **normalization(data)
                    )
                model, from_logits = built.model, built.from_logits
            else:
                from_logits = False
            self.model = model
            check_batch_splits(config, model)
            if config.init_weights:
                load_initial_weights(self.model, config.init_weights)
            compile_model(self.model, config, self.plan, from_logits=from_logits)
        self.optimizer = self.model.optimizer
        self.run = runner.Run(
            self.model,
            *make_inputs(config, data),
            seed=config.seed,
            epochs=config.epochs,
            steps_per_loop=config.steps_per_loop,
            jit_compile=runtime.resolve_jit_compile(config.jit_compile),
            batch_splits=planned_batch_splits(config, self.replicas),
            workdir=config.workdir,
            checkpoint_every_steps=config.checkpoint_every_steps,
            keep_checkpoints=config.keep_checkpoints,
            log_every_steps=config.log_every_steps,
            profile_steps=config.profile_steps,
            max_steps=config.max_steps or None,
            validation_batch_size=config.eval_batch_size,
            run_config=resume.defining_settings(config.to_json_dict()),
            run_config_differences=resume.describe_config_differences,
            augment=config.augment,
            input_mode=config.input_mode,
        )
        # config.json, with the resolved step plan; written once the workdir's checks pass.
        self.run.run_files["config.json"] = {
            **config.to_json_dict(),
            "resolved": _plan_dict(self.plan, self.run.jit_compile, self.run.splits),
        }
        self.jit_compile = self.run.jit_compile
        self.splits = self.run.splits

    def _check_workdir(self):
        """Refuses a workdir holding another configuration (naming each differing setting) and clears
        it with `overwrite` (chief only); `runner.Run` writes config.json once its own checks pass."""
        config = self.config
        checkpointing.check_writable(config.workdir)
        if not self.is_chief:
            if config.overwrite:  # its own checkpoints, which it would otherwise resume from
                checkpointing.clear_run_outputs(workdir_lib.worker_folder(config.workdir, self.strategy))
            return
        if config.overwrite:
            checkpointing.clear_run_outputs(config.workdir, {"config.json": resume.config_json_problem})
        conflict = resume.config_conflict(config)
        if conflict is not None:
            described, binding, differing = conflict
            if binding:
                raise checkpointing.WorkdirError(
                    f"{config.workdir} holds a run with a different configuration ({described}). "
                    "Use another workdir, or overwrite to start over.",
                    argument=differing[0] if len(differing) == 1 else "workdir",
                    settings=differing,
                )
            # A run that failed before its first checkpoint saved nothing a new one could lose.
            print(
                f"note: {config.workdir}/config.json is from a run that saved no checkpoint ({described}); "
                "replacing it",
                flush=True,
            )

    def train(self, callbacks=None, verbose=None):
        """Trains to the plan's total steps, resuming from the workdir; returns the history dict.

        `callbacks` and `verbose` are `fit`'s (default verbose: a progress bar on a terminal, one
        line per epoch otherwise).

        Raises actions.TrainingDiverged when a step is non-finite (the last good checkpoint is kept),
        actions.Interrupted after SIGTERM/SIGINT (once the state is saved), WorkdirError or
        CheckpointError for an unusable workdir, and WeightsError when `save_init` cannot be written.
        """
        if verbose is None:
            verbose = 1 if sys.stdout.isatty() else 2  # a bar on a terminal, epoch lines in a log
        with self.run.locked():
            self._check_workdir()
            if self.config.save_init and self.is_chief:
                # After the workdir's checks, so a refused run writes nothing; still the initial
                # weights: fit restores a checkpoint and trains only after this.
                save_initial_weights(self.model, self.config.save_init)
            history = loop.train(self.run, callbacks=callbacks, verbose=verbose)
        return {
            **{key: history.history.get(key, []) for key in HISTORY_KEYS if key != "epoch_seconds"},
            "epoch_seconds": history.epoch_seconds,
        }


def _plan_dict(plan, jit_compile, batch_splits):
    boundaries = {} if plan.boundaries is None else {"boundaries": list(plan.boundaries)}
    warmup = {"warmup_steps": plan.warmup_steps} if plan.warmup_steps else {}
    decay = {} if plan.decay_steps is None else {"decay_steps": plan.decay_steps}
    return {
        **boundaries,
        **warmup,
        **decay,
        "steps_per_epoch": plan.steps_per_epoch,
        "total_steps": plan.total_steps,
        "step_size": plan.step_size,
        "step_size_down": plan.step_size_down,
        "jit_compile": jit_compile,
        "batch_splits": batch_splits,
    }


def train_and_evaluate(config, data=None, strategy=None):
    """Loads the data (unless given), trains and evaluates `config`'s run; returns the history dict.

    `strategy` defaults to the current one. The process's set-up (thread pools, virtual CPUs, op
    determinism, a multi-worker strategy, which must exist before TensorFlow runs any op) is the
    caller's: the train app makes it with `clr_loop.cli.set_up_process`.

    Raises config.ConfigError for a Config whose values cannot run (`checks.check`), before the
    data is loaded; see `Trainer.train` for the errors of the run.
    """
    checks.check(config)
    if data is None:
        data = datasets.load(
            config.dataset,
            tfds_data_dir=config.tfds_data_dir,
            dataset_dir=config.dataset_dir,
            train_split=config.train_split,
            eval_split=config.eval_split,
        )
    return Trainer(config, data, strategy=strategy).train()
