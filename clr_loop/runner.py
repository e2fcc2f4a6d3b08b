"""`Run`: one training run's state and its train and eval calls (orbit's runner; Keras's Trainer).

A Run checks the model against its input, builds the compiled steps (`clr_loop.steps`) and the
inner loops (`clr_loop.inner_loop`), owns the input iterators (tf.data or `inputs.DeviceBatches`),
the schedule-free averaging (training at y, validation at x with recomputed BatchNormalization
statistics) and, with a workdir, its `workdir.Workdir`. `clr_loop.loop` drives it.
"""

import contextlib

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from clr_loop import _keras
from clr_loop import actions
from clr_loop import augment as augment_lib
from clr_loop import bn_stats
from clr_loop import distribute
from clr_loop import inner_loop
from clr_loop import inputs
from clr_loop import runtime
from clr_loop import steps as steps_lib
from clr_loop import workdir as workdir_lib

# "auto" of `fit`'s input modes (see `resolve_input_mode`) places a training set on a GPU when it
# takes at most this share of the memory TensorFlow reports for the GPU (the rest is the model's,
# its activations' and the optimizer's), or of FALLBACK_DEVICE_BYTES when it reports none.
DEVICE_MEMORY_SHARE = 0.25
FALLBACK_DEVICE_BYTES = 4 * 2**30

# Training batches a schedule-free run's BatchNormalization statistics are recomputed on at x
# before each evaluation and at the end of fit (see `clr_loop.bn_stats`).
BN_RECOMPUTE_BATCHES = 50


class Run:
    """One training run of a compiled model on its input: the compiled steps and loops, the input
    iterators, the schedule-free averaging and (with a workdir) its `workdir.Workdir`.

    `clr_loop.loop.fit` builds one and trains it with `clr_loop.loop.train`; code that drives the
    loop itself calls `run_steps` and `validate` (the Fashion-MNIST trainer and the tests do).

    Args:
        model: a compiled Keras model.
        train_input: the `inputs.TrainInput` (arrays or a Dataset, batch size, steps per epoch).
        val: `(val_arrays, val_dataset)`, at most one of them not None (`inputs.make_fit_inputs`).
        seed: the data-order (and augmentation) seed, or None (the workdir's, else a drawn one).
        epochs: the epochs to train.
        steps_per_loop: the steps per compiled call.
        jit_compile: "auto", True or False.
        batch_splits: parts per batch (0: automatic; `runtime.resolve_batch_splits`).
        workdir: the run's folder, or None.
        checkpoint_every_steps: a checkpoint every that many steps (0: at epoch ends only).
        keep_checkpoints: how many checkpoints to keep.
        log_every_steps: a TensorBoard point every that many steps.
        profile_steps: `(start, stop)` of the profiler window, or None.
        max_steps: a cap on the total steps, or None.
        validation_batch_size: the batch size of validation arrays.
        run_config: a JSON-safe dict of the caller's settings in the run identity, or None.
        run_config_differences: how a checkpoint's recorded `run_config` is compared with this
            run's (`workdir.identity_differences`'s `config_differences`); None: key by key.
        run_files: {file name: JSON value} written into the workdir once its checks pass.
        augment: None, a name in `augment.AUGMENTS` or a function `(x, step) -> x`.
        bn_recompute_batches: the batches a schedule-free run's BatchNormalization statistics are
            recomputed on.
        input_mode: "auto", "device" or "pipeline" (`resolve_input_mode`).
        initial_epoch: the epoch a run without a workdir starts counting from.
        validation_freq: `model.fit`'s `validation_freq`.

    Raises:
        inputs.InputError: input that does not fit the model, the strategy or the other arguments.
        ValueError: an uncompiled model, or a batch size the replicas do not divide.

    Example:
        >>> run = Run(model, inputs.make_train_input(x, y, 32), (None, None), seed=0, epochs=1,
        ...           steps_per_loop=10, jit_compile=False, batch_splits=1, workdir=None,
        ...           checkpoint_every_steps=0, keep_checkpoints=1, log_every_steps=10,
        ...           profile_steps=None, max_steps=None, validation_batch_size=32)
        >>> window = run.run_steps(10)
    """

    def __init__(
        self,
        model,
        train_input,
        val,
        *,
        seed,
        epochs,
        steps_per_loop,
        jit_compile,
        batch_splits,
        workdir,
        checkpoint_every_steps,
        keep_checkpoints,
        log_every_steps,
        profile_steps,
        max_steps,
        validation_batch_size,
        run_config=None,
        run_config_differences=None,
        run_files=None,
        augment=None,
        bn_recompute_batches=BN_RECOMPUTE_BATCHES,
        input_mode="auto",
        initial_epoch=0,
        validation_freq=1,
    ):
        steps_lib.check_compiled(model)
        spec = (
            train_input.dataset.element_spec
            if train_input.dataset is not None
            else inputs.element_spec_of(train_input.arrays)
        )
        inputs.check_fits_model(model, spec, "x")
        if isinstance(augment, str) and augment not in augment_lib.AUGMENTS:
            raise inputs.InputError(
                f"augment must be one of {', '.join(augment_lib.AUGMENTS)} or a function (x, step) -> x, got {augment!r}",
                argument="augment",
            )
        if isinstance(augment, str) and augment != "none":
            _check_images(spec[0], augment)
        if val[0] is not None:
            inputs.check_fits_model(model, inputs.element_spec_of(val[0]), "validation_data")
        elif val[1] is not None:
            inputs.check_fits_model(model, val[1].element_spec, "validation_data")
        _build(model, spec)
        self.model = model
        self.input = train_input
        self.val_arrays, self.val_dataset = val
        self.epochs = epochs
        self.steps_per_loop = steps_per_loop
        self.workdir = workdir
        self.checkpoint_every_steps = checkpoint_every_steps
        self.keep_checkpoints = keep_checkpoints
        self.log_every_steps = log_every_steps
        self.profile_steps = profile_steps
        self.validation_batch_size = validation_batch_size
        self.strategy = model.distribute_strategy
        self.replicas = self.strategy.num_replicas_in_sync
        self.is_chief = distribute.is_chief(self.strategy)
        self.seed = _resolve_seed(seed, workdir)
        if self.replicas > 1 and not train_input.drop_remainder and distribute.worker_count(self.strategy) > 1:
            raise inputs.InputError(
                "a multi-worker run needs drop_remainder=True: each worker reads its own slices of every "
                "global batch, which an epoch's last partial batch does not divide into"
            )
        if train_input.batch_size is not None and train_input.batch_size % self.replicas:
            raise ValueError(
                f"batch_size={train_input.batch_size} (the global batch) must be divisible by the "
                f"{self.replicas} replicas of the model's strategy"
            )
        if self.replicas > 1 and train_input.arrays is not None and not train_input.drop_remainder:
            last = train_input.arrays.num_examples % train_input.batch_size
            if 0 < last < self.replicas:
                raise inputs.InputError(
                    f"batch_size={train_input.batch_size} leaves {last} example(s) for each epoch's last batch, "
                    f"fewer than the {self.replicas} replicas of the model's strategy: a replica would train on "
                    "an empty batch, which TensorFlow's kernels cannot run; choose a batch_size that divides the "
                    f"{train_input.arrays.num_examples} examples or leaves at least {self.replicas}"
                )
        self.input_mode = resolve_input_mode(input_mode, train_input, self.strategy)
        self.jit_compile = runtime.resolve_jit_compile(jit_compile)
        if self.jit_compile and not distribute.xla_allowed(self.strategy):
            logging.warning(
                "XLA is off: TensorFlow's distribution cannot compile across %d CPU replicas", self.replicas
            )
            self.jit_compile = False
        self.splits, why = runtime.resolve_batch_splits(
            batch_splits, model, train_input.batch_size, self.replicas, self.jit_compile
        )
        if why:
            logging.info("batch splitting off: %s", why)
        self.total_steps = None
        if train_input.steps_per_epoch is not None:
            self.total_steps = epochs * train_input.steps_per_epoch
            if max_steps:
                self.total_steps = min(self.total_steps, max_steps)
        self.max_steps = max_steps
        if profile_steps is not None and self.total_steps is not None and profile_steps[0] >= self.total_steps:
            raise inputs.InputError(
                f"profile_steps={tuple(profile_steps)} starts at or after the run's last step ({self.total_steps}): "
                "no trace would be written"
            )
        self.run_config = run_config
        self.run_files = dict(run_files or {})
        # The workdir's owner: its files and checkpoints. Every checkpoint also holds what the run is
        # (checked before a checkpoint is restored) and its history up to the last epoch end.
        self.store = (
            workdir_lib.Workdir(
                workdir,
                self.strategy,
                keep_checkpoints=keep_checkpoints,
                run_files=self.run_files,
                config_differences=run_config_differences,
            )
            if workdir
            else None
        )
        self.optimizer = model.optimizer
        with self.strategy.scope():
            if not self.optimizer.built:  # a second build adds a second set of its variables
                self.optimizer.build(model.trainable_variables)
            self.state = inner_loop.EpochState()
        # The run's position, in steps: the optimizer's iterations, except under loss scaling
        # (mixed_float16), whose skipped steps do not advance them but do consume a batch.
        self.loss_scaled = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
        self.step_counter = self.state.steps if self.loss_scaled else self.optimizer.iterations
        # Without a workdir a call trains on from where the model is, as model.fit does: its steps
        # count from `initial_epoch`'s first step, whatever `optimizer.iterations` says.
        self.step_offset = 0
        if not workdir:
            self.step_offset = int(self.step_counter.numpy()) - initial_epoch * (train_input.steps_per_epoch or 0)
            self.state.epoch.assign(initial_epoch)
        self.validation_freq = validation_freq
        self.batch_hook_every = None  # set by fit when a callback has batch hooks
        self.steps = steps_lib.Steps(
            model,
            jit_compile=self.jit_compile,
            splits=self.splits,
            fuse_update=distribute.is_default(self.strategy),
            augment=augment_lib.make(augment, self.seed),
            padded_eval=self.replicas > 1,
        )
        self.metrics = self.steps.metrics
        # The NaN guard's weights, checked again before every save (the step checks them after its update).
        self.guarded_weights = [v for v in model.trainable_variables if tf.as_dtype(v.dtype).is_floating]
        self.train_loop = inner_loop.make_train_loop(
            self.steps.train_step, self.state, self.strategy, until_exhausted=train_input.dataset is not None
        )
        self.evaluate = inner_loop.make_evaluate(self.steps.eval_step, model, self.strategy)
        self.data_holder = tf.Module()
        self.iterator = None
        # A schedule-free optimizer (one with swap_to_x/swap_to_y): training at y, eval and the end at x.
        inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        self.schedule_free = inner if callable(getattr(inner, "swap_to_x", None)) else None
        if (
            isinstance(bn_recompute_batches, bool)
            or not isinstance(bn_recompute_batches, (int, np.integer))
            or bn_recompute_batches < 0
        ):
            raise inputs.InputError(
                f"bn_recompute_batches must be an integer >= 0, got {bn_recompute_batches!r}",
                argument="bn_recompute_batches",
            )
        self.bn_recompute_batches = int(bn_recompute_batches)
        self._recompute_bn = bn_stats.Recompute(model, self.strategy, _keras.seed_generator_states(model))
        # A Dataset's batches for the recompute are drawn once, here, before any training iterator: an
        # iterator made later would draw one more shuffle of a reshuffling Dataset at a point a
        # resumed run does not repeat, changing the order of the epochs after it.
        self._bn_batches = None
        if (
            self.schedule_free is not None
            and self._recompute_bn.layers
            and self.bn_recompute_batches
            and train_input.dataset is not None
        ):
            self._bn_batches = list(train_input.dataset.take(self.bn_recompute_batches))
        self.device_batches = None
        if self.input_mode == "device":
            self.device_batches = inputs.DeviceBatches(
                train_input.arrays,
                train_input.batch_size,
                self.seed,
                shuffle=train_input.shuffle,
                drop_remainder=train_input.drop_remainder,
            )
        self.profiler = actions.Profiler(workdir, profile_steps)
        # Multi-worker runs with a workdir (where signals are caught): at every chunk end all workers
        # vote on whether any of them got a signal.
        self.signals = actions.StopSignals(self.strategy, vote=bool(workdir))

    @property
    def step(self):
        """The number of steps run so far (int): the optimizer's iterations plus, under loss
        scaling, the steps it skipped."""
        return int(self.step_counter.numpy()) - self.step_offset

    def locked(self):
        """A context holding the workdir's lock (`workdir.locked`; the chief's only, since all
        workers of a cluster share the workdir)."""
        return workdir_lib.locked(self.workdir, self.is_chief)

    def run_steps(self, num_steps):
        """Runs up to `num_steps` training steps in one compiled call from the current position.

        Args:
            num_steps: the most steps to run (fewer when the data or a non-finite step ends the call).

        Returns:
            The inner loop's window (see `inner_loop.make_train_loop`): a dict of tensors.

        Example:
            >>> window = run.run_steps(100)
            >>> int(window["steps"]), bool(window["finite"])
        """
        if self.iterator is None:
            self.iterator = self.iterator_at(self.step)
        return self.train_loop(self.iterator, tf.constant(num_steps, tf.int32))

    def validate(self, callbacks=None):
        """Evaluates the validation data (at x for a schedule-free run).

        With `callbacks` (a CallbackList) their test batch hooks are called every
        `model.steps_per_execution` batches, as in `model.fit`.

        The compiled metrics are shared with training (as in Keras); their training state is put
        back afterwards, so an epoch cut short by `max_steps` checkpoints its own train metrics.

        Args:
            callbacks: a `keras.callbacks.CallbackList` whose test batch hooks to call, or None.

        Returns:
            `({"loss", metric names...}: float, example count)`.
        """
        variables = list(self.model.metrics_variables)
        saved = [v.numpy() for v in variables]
        try:
            with self.at_average():
                if callbacks is None:
                    return self.evaluate(self.val_dataset_distributed())
                every = max(1, int(getattr(self.model, "steps_per_execution", 1) or 1))
                return self.evaluate(self.val_dataset_distributed(), callbacks, every, self.val_batches())
        finally:
            for variable, value in zip(variables, saved):
                variable.assign(value)

    # Schedule-free optimizers ------------------------------------------------------------------

    @contextlib.contextmanager
    def at_average(self):
        """A context in which a schedule-free run's model holds x, with BatchNormalization statistics
        recomputed there (`recompute_bn`); y and y's statistics are back, bit for bit, after it. A
        no-op for other optimizers."""
        if self.schedule_free is None:
            yield
            return
        stats = bn_stats.moving_statistics(self.model)
        saved = [v.numpy() for v in stats]
        with self.schedule_free.at_average():
            try:
                self.recompute_bn()
                yield
            finally:
                for variable, value in zip(stats, saved):
                    variable.assign(value)

    def finish_at_average(self):
        """Leaves a schedule-free run's model at x with BatchNormalization statistics for x (what
        `fit` returns with, so model.save after fit saves x); a no-op for other optimizers."""
        if self.schedule_free is not None and not self.schedule_free.at_x:
            self.schedule_free.swap_to_x()
            self.recompute_bn()

    def recompute_bn(self):
        """Recomputes the BatchNormalization moving statistics for the weights the model holds now, on
        up to `bn_recompute_batches` training batches (the last ones trained on, for arrays; for a
        Dataset its first ones, drawn once when the Run was made); returns how many it used (0 without BatchNormalization layers)."""
        if not self._recompute_bn.layers or not self.bn_recompute_batches:
            return 0
        n = self.bn_recompute_batches
        if self.input.dataset is not None:
            batches = self._bn_batches
            if self.replicas > 1 and batches:
                ds = tf.data.Dataset.from_tensors(batches[0])
                for batch in batches[1:]:
                    ds = ds.concatenate(tf.data.Dataset.from_tensors(batch))
                batches = self.strategy.experimental_distribute_dataset(ds)
        else:
            n = min(n, self.step)
            # The batches themselves, also in device mode (whose gather would move the training position).
            iterator = self._pipeline_iterator_at(self.step - n)
            batches = (next(iterator) for _ in range(n))
        return self._recompute_bn(batches)

    # Input -------------------------------------------------------------------------------------

    def iterator_at(self, step):
        """Returns the train iterator positioned at `step` (arrays), or a fresh one (a Dataset: a
        checkpoint restore then positions it)."""
        if self.device_batches is not None:
            return self.device_batches.at(step)
        return self._pipeline_iterator_at(step)

    def _pipeline_iterator_at(self, step):
        """Returns a tf.data iterator of the training batches from `step` on (arrays), or a fresh one (a Dataset)."""
        if self.input.dataset is not None:
            iterator = iter(
                self.strategy.experimental_distribute_dataset(self.input.dataset)
                if self.replicas > 1
                else self.input.dataset
            )
            self.data_holder.iterator = iterator
            return iterator
        total = self.replicas
        arrays, batch, seed = self.input.arrays, self.input.batch_size, self.seed
        if total > 1 and not self.input.drop_remainder:
            # An epoch's last partial batch cannot be cut into equal slices: on one worker, TF's
            # distribution splits each global batch across the replicas (the last one unevenly).
            global_batches = inputs.array_train_dataset(
                arrays, batch, seed, shuffle=self.input.shuffle, drop_remainder=False, start_step=step
            )
            return iter(self.strategy.experimental_distribute_dataset(global_batches))

        def dataset_fn(context):
            local = total // context.num_input_pipelines
            return inputs.array_train_dataset(
                arrays,
                batch,
                seed,
                shuffle=self.input.shuffle,
                drop_remainder=self.input.drop_remainder,
                start_step=step,
                replicas=(context.input_pipeline_id * local, local, total),
            )

        return iter(self.strategy.distribute_datasets_from_function(dataset_fn))

    def val_batches(self):
        """The number of validation batches, or None when a Dataset's length is unknown."""
        if self.val_dataset is None:
            return -(-self.val_arrays.num_examples // self.validation_batch_size)
        n = int(self.val_dataset.cardinality())
        return n if n >= 0 else None

    def val_dataset_distributed(self):
        """Returns the validation data as the eval loop consumes it (distributed over the replicas)."""
        if self.val_dataset is not None:
            ds = self.val_dataset
            if self.replicas == 1:
                return ds
            # Padded so that no replica is handed an empty part of a short last batch.
            return self.strategy.experimental_distribute_dataset(inputs.pad_batches(ds, self.replicas))
        per_replica = -(-self.validation_batch_size // self.replicas)
        arrays, total = self.val_arrays, self.replicas
        if total == 1:
            return self.strategy.distribute_datasets_from_function(
                lambda _: inputs.array_eval_dataset(arrays, per_replica)
            )

        def dataset_fn(context):
            local = total // context.num_input_pipelines
            return inputs.array_eval_dataset(
                arrays, per_replica, replicas=(context.input_pipeline_id * local, local, total)
            )

        # Every replica gets its own examples and the same number of batches, so no worker
        # waits in a collective for a batch another one does not have.
        return self.strategy.distribute_datasets_from_function(dataset_fn)

    # Workdir -----------------------------------------------------------------------------------

    def trackables(self):
        """Returns what a checkpoint holds, by key: the model, optimizer, epoch state, dropout RNG,
        metrics, the workdir's records, a Dataset's iterator and, under loss scaling, the steps run."""
        items = {
            "model": self.model,
            "optimizer": self.optimizer,
            "epoch_state": self.state.trackables(),
            "rng": _keras.seed_generator_states(self.model),
            "metrics": list(self.model.metrics_variables),
            **self.store.records(),
        }
        if self.input.dataset is not None:
            items["data"] = self.data_holder
        if self.loss_scaled:
            items["steps_run"] = self.state.steps
        return items

    def restore(self):
        """Opens the workdir and restores its latest checkpoint (`workdir.Workdir.resume`); returns
        the saved history (or {}).

        Raises:
            checkpointing.WorkdirError: the workdir holds another run (batch size, data size, seed or
                the model's variables differ; see `workdir.run_identity`) or a history without
                checkpoints.
            checkpointing.CheckpointError: checkpoints exist but none can be read.
        """
        identity = workdir_lib.run_identity(self.model, self.input, self.seed, self.run_config)

        def make_iterator():
            # The iterator must exist before a restore can fill in its state.
            self.iterator = self.iterator_at(0)

        return self.store.resume(
            identity,
            self.trackables,
            self.step_counter,
            position=lambda: (self.step, int(self.state.epoch.numpy())),
            prepare=make_iterator if self.input.dataset is not None else None,
            check_restored=self._restored_weights_problem,
        )

    def save(self):
        """Checkpoints the state at the current step (`workdir.Workdir.save`); returns the path, or None
        without a workdir.

        Raises:
            TrainingDiverged: a trainable weight is not finite (the loop checks them after every
                call; a callback may have set them since); nothing is saved.
        """
        if self.store is None or self.store.checkpoints is None:
            return None
        actions.check_saved_weights(self.non_finite_weights(), self.step, self.store.last_checkpoint)
        return self.store.save()

    def non_finite_weights(self):
        """Returns the paths (without Keras's numbers) of the trainable weights that hold a NaN or an
        Inf; an empty list when none do."""
        return [workdir_lib.unnumbered(v.path) for v in self.guarded_weights if not np.all(np.isfinite(np.asarray(v)))]

    def _restored_weights_problem(self):
        """For `RunCheckpoints.restore_latest`: None, or why the weights just restored cannot be resumed
        (a checkpoint that an earlier version saved after its rate or update went non-finite)."""
        bad = self.non_finite_weights()
        return f"holds non-finite weights ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})" if bad else None


def resolve_input_mode(input_mode, train_input, strategy):
    """Returns "device" or "pipeline": how the training batches of `train_input` reach the step.

    Args:
        input_mode: "auto", "device" or "pipeline" (`inputs.INPUT_MODES`).
        train_input: the run's `inputs.TrainInput`.
        strategy: the model's `tf.distribute.Strategy`.

    Returns:
        "device" or "pipeline".

    Raises:
        inputs.InputError: an unknown `input_mode`, or "device" where it cannot run.

    Example:
        >>> resolve_input_mode("auto", inputs.make_train_input(x, y, 32), tf.distribute.get_strategy())
        'device'

    "device" (`inputs.DeviceBatches`) needs in-memory arrays and the default strategy (one
    replica); asked for otherwise it raises InputError naming why. "auto" picks "device" for
    arrays under the default strategy when the set fits: on a GPU when it takes at most
    `DEVICE_MEMORY_SHARE` of the memory TensorFlow reports for it (`runtime.accelerator_memory_bytes`;
    `FALLBACK_DEVICE_BYTES` when it reports none), on a CPU always (the arrays are in host memory
    already, and there the in-loop gather measured no slower than tf.data: docs/performance.md).
    Anything else picks "pipeline" (tf.data): a Dataset (a streamed one too) is used as given.
    """
    if input_mode not in inputs.INPUT_MODES:
        raise inputs.InputError(
            f"input_mode must be one of {', '.join(map(repr, inputs.INPUT_MODES))}, got {input_mode!r}",
            argument="input_mode",
        )
    if input_mode == "pipeline":
        return "pipeline"
    why_not = None
    if train_input.arrays is None:
        why_not = "the training input is a tf.data.Dataset, which is used as given (pass arrays)"
    elif not distribute.is_default(strategy):
        why_not = (
            f"it runs under the default strategy only (one replica), and the model's is "
            f"{type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s)"
        )
    if why_not:
        if input_mode == "device":
            raise inputs.InputError(
                f"input_mode='device' needs in-memory arrays on one device: {why_not}", argument="input_mode"
            )
        return "pipeline"
    if input_mode == "device" or not runtime.accelerator_present():
        return "device"
    size = inputs.array_bytes(train_input.arrays)
    limit = DEVICE_MEMORY_SHARE * (runtime.accelerator_memory_bytes() or FALLBACK_DEVICE_BYTES)
    if size > limit:
        logging.info(
            "input_mode auto: the %.0f MiB training set is more than %.0f MiB of the device's memory: "
            "feeding it through tf.data",
            size / 2**20,
            limit / 2**20,
        )
        return "pipeline"
    return "device"


def _check_images(spec, augment):
    """Raises InputError unless `spec` (the training inputs' element spec) is one batch of [B, H, W, C] images."""
    if not isinstance(spec, tf.TensorSpec) or spec.shape.rank != 4:
        raise inputs.InputError(
            f"augment={augment!r} needs x to be one array of images [N, H, W, C], got {spec}", argument="augment"
        )


def _resolve_seed(seed, workdir):
    """Returns the data-order seed: `seed`, else the one a workdir's run recorded, else one drawn from numpy's
    global generator (which `keras.utils.set_random_seed` seeds)."""
    if seed is not None:
        return int(seed)
    if workdir:
        recorded = workdir_lib.recorded_seed(workdir)
        if recorded is not None:
            return recorded
    # numpy's global generator, so keras.utils.set_random_seed makes a shuffled run reproducible.
    return int(np.random.randint(0, 2**62))


def _build(model, spec):
    """Builds the model, its compiled loss and metrics symbolically from a batch spec (as Keras fit
    does before its first step), under the model's strategy."""
    with model.distribute_strategy.scope():
        _keras.symbolic_build(model, spec)
