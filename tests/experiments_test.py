"""End-to-end tests of the CLI's experiments beyond the tutorial: --dataset, --model, --optimizer, --augment.

Through `clr_loop.train`'s `main` in-process (TFDS datasets under `tfds.testing.mock_data`, npz files,
a user's model), bit-exact resume with each optimizer and augmentation, every bad input named, and TFDS
data over the memory limit streamed (mock_data with a checkpointable source, and real prepared TFDS
files), stopped and resumed bit-identically.
"""

import contextlib
import json
import os
import signal
import textwrap
import zlib

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import app

from clr_loop.experiment import config as config_lib
from clr_loop.experiment import resume
from clr_loop.experiment import fashion_mnist
from clr_loop.experiment import datasets
from clr_loop.experiment import models
from clr_loop.experiment import trial
from clr_loop import runner
from testing import REPO, assert_run_outputs, fake_data, make_config, run_main_in_process, weights
from testing import write_tiny_idx_dir

SMALL = ["--epochs=1", "--batch_size=8", "--steps_per_loop=3", "--eval_batch_size=16"]


def saved_config(workdir):
    return json.load(open(os.path.join(workdir, "config.json")))


def test_cifar10_resnet20_adam_flip_crop_under_mock_data(tmp_path):
    workdir = str(tmp_path / "run")
    with tfds.testing.mock_data(num_examples=80):
        status = run_main_in_process(
            [
                "--dataset=cifar10",
                f"--tfds_data_dir={tmp_path / 'tfds'}",
                "--model=resnet20",
                "--optimizer=adam",
                "--augment=flip_crop",
                "--mode=one_cycle",
                "--weight_decay=1e-4",
                f"--workdir={workdir}",
                *SMALL,
            ]
        )
    assert status == 0
    history = json.load(open(os.path.join(workdir, "history.json")))
    assert len(history["momentum"]) == 1  # Adam's beta_1, cycled for one-cycle
    assert_run_outputs(workdir, epochs=1, extra_keys={"momentum"})
    config = saved_config(workdir)
    assert (config["dataset"], config["model"], config["optimizer"], config["augment"]) == (
        "cifar10",
        "resnet20",
        "adam",
        "flip_crop",
    )
    assert config["resolved"]["steps_per_epoch"] == 10


def test_mnist_with_the_tutorial_cnn_under_mock_data(tmp_path):
    workdir = str(tmp_path / "run")
    with tfds.testing.mock_data(num_examples=40):
        status = run_main_in_process(
            [
                "--dataset=mnist",
                f"--tfds_data_dir={tmp_path / 'tfds'}",
                "--mode=triangular",
                f"--workdir={workdir}",
                *SMALL,
            ]
        )
    assert status == 0
    assert_run_outputs(workdir, epochs=1)
    assert saved_config(workdir)["resolved"]["steps_per_epoch"] == 5


def test_npz_of_float_rgb_images_through_the_cli(tmp_path):
    rng = np.random.default_rng(0)
    path = str(tmp_path / "mine.npz")
    np.savez(
        path,
        x_train=rng.random((32, 16, 16, 3)),
        y_train=np.arange(32) % 3,
        x_test=rng.random((12, 16, 16, 3)),
        y_test=np.arange(12) % 3,
    )
    workdir = str(tmp_path / "run")
    status = run_main_in_process(
        [f"--dataset=npz:{path}", "--optimizer=adamw", "--augment=flip_crop", f"--workdir={workdir}", *SMALL]
    )
    assert status == 0
    assert_run_outputs(workdir, epochs=1)


def checkpoint_tensors(workdir):
    reader = tf.train.load_checkpoint(os.path.join(workdir, "ckpt"))
    return {
        key: reader.get_tensor(key)
        for key in reader.get_variable_to_shape_map()
        if not key.startswith(("run_identity", "run_history", "_CHECKPOINTABLE_OBJECT_GRAPH"))
    }


def history_without_timing(workdir):
    history = json.load(open(os.path.join(workdir, "history.json")))
    history.pop("epoch_seconds")
    return history


def test_fashion_mnist_as_npz_trains_bit_identically(tmp_path):
    idx_dir = write_tiny_idx_dir(str(tmp_path / "idx"))
    fm = fashion_mnist.load_idx_dir(idx_dir, expect_full_size=False)
    assert fm.train.labels.max() == 9  # K inferred from the file is the tutorial's 10
    path = str(tmp_path / "fm.npz")
    np.savez(
        path,
        x_train=fm.train.images[..., 0],
        y_train=fm.train.labels,
        x_test=fm.test.images[..., 0],
        y_test=fm.test.labels,
    )
    common = ["--mode=one_cycle", "--epochs=2", "--batch_size=16", "--steps_per_loop=4", "--eval_batch_size=20"]
    assert run_main_in_process([f"--dataset_dir={idx_dir}", f"--workdir={tmp_path / 'idx_run'}", *common]) == 0
    assert run_main_in_process([f"--dataset=npz:{path}", f"--workdir={tmp_path / 'npz_run'}", *common]) == 0
    reference, got = checkpoint_tensors(str(tmp_path / "idx_run")), checkpoint_tensors(str(tmp_path / "npz_run"))
    assert sorted(reference) == sorted(got)
    for key in reference:
        assert np.array_equal(reference[key], got[key]), key
    assert history_without_timing(str(tmp_path / "idx_run")) == history_without_timing(str(tmp_path / "npz_run"))


def test_a_user_model_through_module_function(tmp_path, monkeypatch):
    (tmp_path / "cli_models.py").write_text(
        textwrap.dedent("""
        import keras

        def tiny(input_shape, num_classes):
            return keras.Sequential([keras.Input(input_shape), keras.layers.Rescaling(1 / 255),
                                     keras.layers.Flatten(), keras.layers.Dense(num_classes)])
        tiny.outputs = "logits"
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    idx_dir = write_tiny_idx_dir(str(tmp_path / "idx"))
    workdir = str(tmp_path / "run")
    assert (
        run_main_in_process([f"--dataset_dir={idx_dir}", "--model=cli_models:tiny", f"--workdir={workdir}", *SMALL])
        == 0
    )
    assert_run_outputs(workdir, epochs=1)
    reader = tf.train.load_checkpoint(os.path.join(workdir, "ckpt"))
    assert any(list(shape) == [784, 10] for shape in reader.get_variable_to_shape_map().values())


@pytest.mark.parametrize(
    "overrides",
    [
        dict(optimizer="sgd", momentum=0.9),
        dict(optimizer="sgd", mode="one_cycle"),  # cyclical momentum
        dict(optimizer="adam", weight_decay=1e-3),
        dict(optimizer="adamw", mode="one_cycle"),  # cyclical beta_1
    ],
    ids=["sgd", "sgd_cyclical_momentum", "adam", "adamw_one_cycle"],
)
def test_resume_with_augmentation_is_bit_exact_with_each_optimizer(tmp_path, overrides):
    overrides = dict(overrides, augment="flip_crop")
    data = fake_data(num_train=96, num_test=20)
    straight = trial.Trainer(make_config(tmp_path / "straight", max_steps=5, **overrides), data)
    straight.train()
    trial.Trainer(make_config(tmp_path / "resumed", max_steps=2, **overrides), data).train()
    resumed = trial.Trainer(make_config(tmp_path / "resumed", max_steps=5, **overrides), data)
    resumed.train()
    assert resumed.run.step == straight.run.step == 5
    for a, b in zip(weights(straight.model), weights(resumed.model)):
        assert np.array_equal(a, b)
    for a, b in zip(straight.optimizer.variables, resumed.optimizer.variables):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert history_without_timing(str(tmp_path / "straight" / "run")) == history_without_timing(
        str(tmp_path / "resumed" / "run")
    )


def test_augmentation_changes_training_and_the_default_adds_nothing(tmp_path):
    data = fake_data(num_train=64, num_test=20)
    plain = trial.Trainer(make_config(tmp_path / "a", max_steps=2), data)
    assert plain.run.steps.augment is None
    plain.train()
    augmented = trial.Trainer(make_config(tmp_path / "b", max_steps=2, augment="flip_crop"), data)
    augmented.train()
    assert any(not np.array_equal(a, b) for a, b in zip(weights(plain.model), weights(augmented.model)))


def test_optimizers_and_weight_decay_are_keras_own():
    plan = config_lib.plan_steps(config_lib.Config(), 640)
    adamw = trial.make_optimizer(config_lib.Config(optimizer="adamw"), plan)
    assert type(adamw).__name__ == "AdamW" and adamw.weight_decay == config_lib.ADAMW_WEIGHT_DECAY
    adam = trial.make_optimizer(config_lib.Config(optimizer="adam", weight_decay=0.01), plan)
    assert type(adam).__name__ == "Adam" and adam.weight_decay == 0.01
    sgd = trial.make_optimizer(config_lib.Config(), plan)
    assert type(sgd).__name__ == "SGD" and sgd.weight_decay is None
    # mode none keeps --lr, whatever the optimizer.
    assert float(
        trial.make_optimizer(config_lib.Config(mode="none", optimizer="adam", lr=0.003), plan).learning_rate
    ) == pytest.approx(0.003)


def test_a_run_from_before_the_experiment_settings_resumes_under_their_defaults():
    old = {key: value for key, value in config_lib.Config().to_json_dict().items() if key not in resume.ADDED_SETTINGS}
    assert resume.config_differences(old, config_lib.Config().to_json_dict()) == []
    differing = resume.config_differences(old, config_lib.Config(model="resnet20", augment="flip_crop").to_json_dict())
    assert differing == ["augment", "model"]
    assert set(resume.ADDED_SETTINGS) <= set(config_lib.Config().to_json_dict())
    for key, value in resume.ADDED_SETTINGS.items():
        assert getattr(config_lib.Config(), key) == value


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--optimizer=adamw", "--momentum=0.9"], "--momentum is SGD's"),
        (["--weight_decay=-1"], "--weight_decay must be a number >= 0"),
        (["--model=vgg16"], "--model must be one of tutorial_cnn, resnet20 or module.path:function"),
        (["--dataset="], "--dataset must name a dataset"),
        (["--dataset=npz:"], "--dataset=npz:PATH needs the path"),
        (
            ["--dataset=cifar10", "--dataset_dir=/tmp"],
            "--dataset_dir (the raw Fashion-MNIST IDX files) needs --dataset=fashion_mnist",
        ),
        (["--dataset=npz:a.npz", "--tfds_data_dir=/tmp"], "--tfds_data_dir is for TFDS datasets"),
        (["--dataset=npz:a.npz", "--eval_split=validation"], "--train_split/--eval_split are for TFDS datasets"),
    ],
)
def test_bad_experiment_flags_are_named(tmp_path, argv, message):
    with pytest.raises(app.UsageError) as e:
        run_main_in_process([*argv, f"--workdir={tmp_path / 'run'}"])
    assert message in str(e.value)
    assert not os.path.exists(tmp_path / "run")


def test_bad_datasets_and_models_exit_1_naming_them_before_writing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    npz = str(tmp_path / "bad.npz")
    np.savez(npz, x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.zeros(4, np.int64))
    idx_dir = write_tiny_idx_dir(str(tmp_path / "idx"))
    cases = [
        (["--dataset=no_such_dataset_xyz"], "tfds dataset 'no_such_dataset_xyz': not a TFDS dataset"),
        (["--dataset=cifar10"], "not prepared (no download into the default data dir)"),
        ([f"--dataset=npz:{npz}"], f"{npz}: missing array(s) x_test, y_test"),
        ([f"--dataset=npz:{tmp_path / 'absent.npz'}"], "absent.npz: does not exist"),
        (
            [f"--dataset_dir={idx_dir}", "--model=no_such_module_xyz:build"],
            "--model: model no_such_module_xyz:build: cannot import",
        ),
    ]
    for argv, message in cases:
        workdir = tmp_path / "run"
        assert run_main_in_process([*argv, f"--workdir={workdir}", *SMALL]) == 1, argv
        err = capsys.readouterr().err
        assert "error: " in err and message in err, (argv, err)
        assert not os.path.exists(workdir), argv


@pytest.mark.parametrize(
    "name,dataset,model,mode",
    [
        ("cifar10_resnet20_baseline.flags", "cifar10", "resnet20", "piecewise"),
        ("cifar10_resnet20_one_cycle.flags", "cifar10", "resnet20", "one_cycle"),
        ("mnist_one_cycle.flags", "mnist", "tutorial_cnn", "one_cycle"),
    ],
)
def test_each_new_flagfile_parses_and_trains_under_mock_data(tmp_path, name, dataset, model, mode):
    # Real CIFAR-10 and MNIST cannot be downloaded here: the flagfile's own settings, on 40 mock
    # examples per split, for 3 steps (the epochs, boundaries and schedule stay the flagfile's).
    workdir = str(tmp_path / "run")
    with tfds.testing.mock_data(num_examples=40):
        status = run_main_in_process(
            [
                f"--flagfile={os.path.join(REPO, 'flags', name)}",
                f"--tfds_data_dir={tmp_path / 'tfds'}",
                f"--workdir={workdir}",
                "--max_steps=3",
                "--batch_size=8",
                "--eval_batch_size=16",
                "--steps_per_loop=3",
                "--jit_compile=false",
            ]
        )
    assert status == 0
    config = saved_config(workdir)
    assert (config["dataset"], config["model"], config["mode"]) == (dataset, model, mode)
    assert config["resolved"]["total_steps"] == 3 and config["resolved"]["steps_per_epoch"] == 5
    history = json.load(open(os.path.join(workdir, "history.json")))
    assert len(history["val_accuracy"]) == 1 and np.isfinite(history["val_loss"]).all()
    if mode == "piecewise":
        assert config["resolved"]["boundaries"] == [82 * 5, 123 * 5]
        assert history["lr"] == pytest.approx([0.1])  # before the first boundary
        assert (config["momentum"], config["weight_decay"]) == (0.9, 1e-3)


# Streaming: a TFDS dataset over the memory limit --------------------------------------------------

STREAM_N = {"train": 44, "test": 12}  # 44 // 8 = 5 steps an epoch (4 examples dropped), eval 12 + 0


def fake_tfds_split(split, shape):
    """The mock source of one split: seeded uint8 images and int64 labels, the same in every process."""
    rng = np.random.default_rng(zlib.crc32(split.encode()))
    n = STREAM_N[split]
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


def _fake_as_dataset(builder, split, **kwargs):
    # A checkpointable source, as TFDS's TFRecord reader is (mock_data's own generator is not).
    images, labels = fake_tfds_split(split, builder.info.features["image"].shape)
    return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})


@contextlib.contextmanager
def streamed_tfds(monkeypatch):
    """TFDS under mock_data with `fake_tfds_split`'s examples, and a memory limit of 0 bytes, so every
    TFDS dataset is streamed."""
    monkeypatch.setattr(datasets, "MEMORY_SHARE", 0.0)
    with tfds.testing.mock_data(num_examples=STREAM_N["train"], as_dataset_fn=_fake_as_dataset):
        yield


def test_a_tfds_dataset_over_the_memory_limit_is_streamed(tmp_path, monkeypatch):
    with streamed_tfds(monkeypatch):
        in_memory = datasets.load("cifar10", tfds_data_dir=str(tmp_path), max_in_memory_bytes=10**9)
        streamed = datasets.load("cifar10", tfds_data_dir=str(tmp_path))
        assert not in_memory.streamed and streamed.streamed
        assert (streamed.image_shape, streamed.num_classes) == ((32, 32, 3), 10)
        assert (streamed.train.num_examples, streamed.test.num_examples) == (44, 12)
        images, labels = fake_tfds_split("train", (32, 32, 3))
        np.testing.assert_array_equal(in_memory.train.images, images)
        # Eval: every example once, in order, the last batch the remainder.
        batches = list(streamed.test.eval_dataset(5).as_numpy_iterator())
        assert [len(y) for _, y in batches] == [5, 5, 2]
        test_images, test_labels = fake_tfds_split("test", (32, 32, 3))
        np.testing.assert_array_equal(np.concatenate([x for x, _ in batches]), test_images)
        np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), test_labels)
        # Train: 5 full batches of distinct examples an epoch, a new order each epoch, the same stream
        # for the same seed.
        ds = streamed.train.train_dataset(8, seed=3)
        epochs = [list(ds.as_numpy_iterator()) for _ in range(2)]
        again = list(streamed.train.train_dataset(8, seed=3).as_numpy_iterator())
        np.testing.assert_array_equal(np.concatenate([x for x, _ in again]), np.concatenate([x for x, _ in epochs[0]]))
        orders = []
        for epoch in epochs:
            assert [x.shape for x, _ in epoch] == [(8, 32, 32, 3)] * 5 and epoch[0][1].dtype == np.int32
            x = np.concatenate([x for x, _ in epoch])
            # Which source example each one is (the random images are distinct).
            index = [int(np.flatnonzero((images == image).all(axis=(1, 2, 3)))[0]) for image in x]
            assert len(set(index)) == 40
            np.testing.assert_array_equal(np.concatenate([y for _, y in epoch]), labels[index])
            orders.append(index)
        assert orders[0] != orders[1] and orders[0] != sorted(orders[0])
        chunks = list(streamed.train.sample_chunks(7, chunk=3))
        assert [len(c) for c in chunks] == [3, 3, 1]
        np.testing.assert_array_equal(np.concatenate(chunks), images[:7])


STREAM_FLAGS = [
    "--dataset=cifar10",
    "--epochs=3",
    "--batch_size=8",
    "--steps_per_loop=2",
    "--eval_batch_size=5",
    "--mode=triangular",
    "--step_size_epochs=1",
    "--deterministic",
]


def run_streamed(tmp_path, monkeypatch, workdir, *extra):
    """Runs the app's `main` on mock cifar10, streamed; returns (status, whether it trained on a Dataset)."""
    paths = []
    make_inputs = trial.make_inputs

    def spy(config, data):
        made = make_inputs(config, data)
        paths.append(made[0].dataset is not None and made[1][1] is not None)
        return made

    monkeypatch.setattr(trial, "make_inputs", spy)
    with streamed_tfds(monkeypatch):
        status = run_main_in_process(
            [f"--tfds_data_dir={tmp_path / 'tfds'}", f"--workdir={workdir}", *STREAM_FLAGS, *extra]
        )
    return status, paths == [True]


def numeric_checkpoint_tensors(workdir):
    """The checkpoint's numeric tensors but its save counter (the iterator's state is a variant, which the
    reader cannot return; a stopped run saves more often)."""
    reader = tf.train.load_checkpoint(os.path.join(workdir, "ckpt"))
    return {
        key: reader.get_tensor(key)
        for key, dtype in reader.get_variable_to_dtype_map().items()
        if (dtype.is_floating or dtype.is_integer)
        and not key.startswith(("run_identity", "run_history", "save_counter"))
    }


def test_a_streamed_tfds_run_trains_through_main_with_its_iterator_checkpointed(tmp_path, monkeypatch):
    workdir = str(tmp_path / "run")
    built, create = [], models.create
    monkeypatch.setattr(models, "create", lambda *args, **kwargs: built.append(create(*args, **kwargs)) or built[-1])
    monkeypatch.setattr(datasets, "NORMALIZATION_SAMPLE", 20)
    status, streamed = run_streamed(tmp_path, monkeypatch, workdir, "--model=resnet20", "--epochs=1")
    assert status == 0 and streamed
    assert_run_outputs(workdir, epochs=1)
    assert saved_config(workdir)["resolved"]["steps_per_epoch"] == 5
    reader = tf.train.load_checkpoint(os.path.join(workdir, "ckpt"))
    assert any(key.startswith("data/") for key in reader.get_variable_to_shape_map())
    # The normalisation layer holds the mean of the first NORMALIZATION_SAMPLE training images.
    images, _ = fake_tfds_split("train", (32, 32, 3))
    layer = built[0].model.get_layer("normalize")
    np.testing.assert_allclose(
        np.asarray(layer.mean).ravel(), images[:20].astype(np.float64).mean(axis=(0, 1, 2)), rtol=1e-6
    )


@pytest.fixture
def streamed_reference(tmp_path, monkeypatch):
    workdir = str(tmp_path / "reference")
    status, streamed = run_streamed(tmp_path, monkeypatch, workdir)
    assert status == 0 and streamed
    return workdir


def assert_same_run(workdir, reference):
    expected, got = numeric_checkpoint_tensors(reference), numeric_checkpoint_tensors(workdir)
    assert sorted(expected) == sorted(got)
    for key in expected:
        assert np.array_equal(expected[key], got[key]), key
    assert history_without_timing(workdir) == history_without_timing(reference)


@pytest.mark.parametrize("stop", [7, 5], ids=["mid_epoch", "epoch_end"])
def test_a_streamed_run_stopped_by_max_steps_then_resumed_is_bit_identical(
    tmp_path, monkeypatch, streamed_reference, stop
):
    workdir = str(tmp_path / "run")
    assert run_streamed(tmp_path, monkeypatch, workdir, f"--max_steps={stop}")[0] == 0
    assert run_streamed(tmp_path, monkeypatch, workdir)[0] == 0
    assert_same_run(workdir, streamed_reference)


def test_a_streamed_run_stopped_by_sigterm_then_resumed_is_bit_identical(tmp_path, monkeypatch, streamed_reference):
    run_steps = runner.Run.run_steps
    sent = []

    def then_sigterm(run, num_steps):
        window = run_steps(run, num_steps)
        if run.step >= 7 and not sent:
            sent.append(run.step)
            os.kill(os.getpid(), signal.SIGTERM)  # handled between loops, as from outside
        return window

    monkeypatch.setattr(runner.Run, "run_steps", then_sigterm)
    workdir = str(tmp_path / "run")
    assert run_streamed(tmp_path, monkeypatch, workdir)[0] == 128 + signal.SIGTERM
    assert sent == [7] and tf.train.latest_checkpoint(os.path.join(workdir, "ckpt")).endswith("ckpt-7")  # mid-epoch
    monkeypatch.setattr(runner.Run, "run_steps", run_steps)
    assert run_streamed(tmp_path, monkeypatch, workdir)[0] == 0
    assert_same_run(workdir, streamed_reference)


class ClrLoopTinyImages(tfds.core.GeneratorBasedBuilder):
    """A tiny image-classification dataset prepared offline into real TFDS files (TFRecords)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {"image": tfds.features.Image(shape=(28, 28, 1)), "label": tfds.features.ClassLabel(num_classes=10)}
            ),
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in STREAM_N}

    def _generate_examples(self, split):
        images, labels = fake_tfds_split(split, (28, 28, 1))
        for i, (image, label) in enumerate(zip(images, labels)):
            yield i, {"image": image, "label": int(label)}


def test_a_streamed_run_from_prepared_tfds_files_resumes_bit_identically(tmp_path, monkeypatch):
    """The real TFDS reader (TFRecord files, not mock_data's source): streamed, stopped, resumed exactly."""
    data_dir = str(tmp_path / "tfds")
    ClrLoopTinyImages(data_dir=data_dir).download_and_prepare()
    monkeypatch.setattr(datasets, "MEMORY_SHARE", 0.0)
    half = datasets.load("clr_loop_tiny_images", tfds_data_dir=data_dir, train_split="train[:50%]")
    assert half.streamed and half.train.num_examples == 22 and half.test.num_examples == 12
    flags = [f"--tfds_data_dir={data_dir}", *STREAM_FLAGS, "--dataset=clr_loop_tiny_images"]
    reference, workdir = str(tmp_path / "reference"), str(tmp_path / "run")
    assert run_main_in_process([*flags, f"--workdir={reference}"]) == 0
    assert run_main_in_process([*flags, f"--workdir={workdir}", "--max_steps=7"]) == 0
    assert run_main_in_process([*flags, f"--workdir={workdir}"]) == 0
    assert saved_config(workdir)["resolved"]["steps_per_epoch"] == 5
    reader = tf.train.load_checkpoint(os.path.join(workdir, "ckpt"))
    assert any(key.startswith("data/") for key in reader.get_variable_to_shape_map())
    assert_same_run(workdir, reference)
