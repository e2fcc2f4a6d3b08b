"""Tests for clr_loop.experiment.datasets: npz files, TFDS datasets under mock_data, and every bad one named."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from clr_loop.experiment import fashion_mnist
from clr_loop.experiment import datasets
from testing import npz_arrays, write_npz


def test_npz_of_uint8_hw_images_gets_a_channel_and_its_class_count(tmp_path):
    arrays = npz_arrays()
    loaded = datasets.load("npz:" + write_npz(tmp_path / "d.npz", **arrays))
    assert loaded.image_shape == (6, 5, 1) and loaded.num_classes == 4
    assert loaded.train.images.dtype == np.uint8 and loaded.train.labels.dtype == np.int32
    np.testing.assert_array_equal(loaded.train.images[..., 0], arrays["x_train"])
    np.testing.assert_array_equal(loaded.test.labels, arrays["y_test"])
    assert loaded.train.num_examples == 30 and loaded.test.num_examples == 10


def test_npz_of_float_nhwc_images_and_n1_labels_and_declared_classes(tmp_path):
    arrays = npz_arrays(shape=(4, 4, 3))
    arrays = dict(
        arrays,
        x_train=arrays["x_train"] / 255.0,
        x_test=arrays["x_test"] / 255.0,
        y_train=arrays["y_train"][:, None],
        num_classes=np.int64(7),
    )
    loaded = datasets.load_npz(write_npz(tmp_path / "f.npz", **arrays))
    assert loaded.train.images.dtype == np.float32 and loaded.image_shape == (4, 4, 3)
    assert loaded.num_classes == 7 and loaded.train.labels.shape == (30,)


def _bad(arrays, **changes):
    arrays = dict(arrays, **changes)
    return {k: v for k, v in arrays.items() if v is not None}


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(y_test=None), r"missing array\(s\) y_test"),
        (dict(y_train=np.arange(29) % 4), r"x_train holds 30 images but y_train 29 labels"),
        (dict(y_train=np.arange(30) * 0.5), r"y_train: dtype float64; labels must be integers"),
        (
            dict(y_test=np.array([0, 1, 2, 3, 4, 0, 1, 2, 3, 0])),
            r"y_test: 1 label\(s\) outside 0..3 \(K=4 from the largest y_train label \+ 1\), the first 4 at index 4",
        ),
        (dict(y_train=np.arange(30) % 4 - 1), r"y_train: 8 label\(s\) outside"),
        (dict(x_train=np.full((30, 6, 5), np.nan)), r"x_train: 900 NaN or infinite pixel\(s\), the first in image 0"),
        (
            dict(
                x_test=np.zeros((10, 6)),
            ),
            r"x_test: shape \[10, 6\], expected images",
        ),
        (
            dict(x_test=np.zeros((10, 6, 4), np.uint8)),
            r"x_train images are \[6, 5, 1\] but x_test images are \[6, 4, 1\]",
        ),
        (dict(x_train=np.full((30, 6, 5), 300)), r"x_train: integer pixels must be in 0..255"),
        (dict(y_train=np.zeros((30, 4), np.int64)), r"y_train: shape \[30, 4\], expected labels \[N\]"),
        (dict(num_classes=np.float32(3.5)), r"num_classes must be a positive integer scalar"),
        # A label of 2**40 - 1 meant a [128, 2**40] weight, an OOM traceback.
        (
            dict(y_train=np.where(np.arange(30) == 7, 2**40 - 1, np.arange(30) % 4)),
            r"y_train: the largest label, 1099511627775 at index 7, means 1099511627776 classes \(the largest y_train "
            r"label \+ 1\), more than the 1048576 a model here can have",
        ),
        (
            dict(num_classes=np.int64(2**40)),
            r"num_classes is 1099511627776, more than the 1048576 a model here can have",
        ),
    ],
)
def test_every_npz_problem_names_the_file_and_the_array(tmp_path, change, message):
    path = write_npz(tmp_path / "bad.npz", **_bad(npz_arrays(), **change))
    with pytest.raises(fashion_mnist.DataError, match=message) as e:
        datasets.load("npz:" + path)
    assert path in str(e.value)


def test_unreadable_npz_files_are_named(tmp_path):
    missing = str(tmp_path / "nope.npz")
    with pytest.raises(fashion_mnist.DataError, match="nope.npz: does not exist"):
        datasets.load_npz(missing)
    # A path that exists but is not a file says what it is ("file not found" before).
    folder = tmp_path / "folder.npz"
    folder.mkdir()
    with pytest.raises(fashion_mnist.DataError, match=f"^{folder}: is a directory, not a regular file$"):
        datasets.load_npz(str(folder))
    with pytest.raises(fashion_mnist.DataError, match="^/dev/null: is a character device, not a regular file$"):
        datasets.load("npz:/dev/null")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip at all")
    with pytest.raises(fashion_mnist.DataError, match="garbage.npz: not a readable .npz file"):
        datasets.load_npz(str(garbage))
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(fashion_mnist.DataError, match="single.npy: holds one array, not a .npz archive"):
        datasets.load_npz(str(single))
    objects = tmp_path / "objects.npz"
    np.savez(objects, **dict(npz_arrays(), x_train=np.array([None] * 30, dtype=object)))
    with pytest.raises(fashion_mnist.DataError, match="objects.npz: array x_train cannot be read"):
        datasets.load_npz(str(objects))


@pytest.mark.parametrize(
    "name,shape,classes", [("cifar10", (32, 32, 3), 10), ("mnist", (28, 28, 1), 10), ("cifar100", (32, 32, 3), 100)]
)
def test_tfds_datasets_take_shape_and_classes_from_the_builder(tmp_path, name, shape, classes):
    with tfds.testing.mock_data(num_examples=12):
        loaded = datasets.load(name, tfds_data_dir=str(tmp_path))
    assert loaded.image_shape == shape and loaded.num_classes == classes
    assert loaded.train.images.dtype == np.uint8 and loaded.train.num_examples == 12
    assert loaded.train.labels.dtype == np.int32 and loaded.train.labels.max() < classes


def test_a_tfds_dataset_without_image_and_label_is_named(tmp_path):
    with tfds.testing.mock_data(num_examples=2):
        with pytest.raises(
            fashion_mnist.DataError, match=r"tfds imdb_reviews .*has no 'image' feature \(its features: label, text\)"
        ):
            datasets.load("imdb_reviews", tfds_data_dir=str(tmp_path))


def test_an_unknown_tfds_name_is_named():
    with pytest.raises(fashion_mnist.DataError, match=r"tfds dataset 'no_such_dataset_xyz': not a TFDS dataset"):
        datasets.load("no_such_dataset_xyz")


def test_a_dataset_not_prepared_offline_is_named_without_a_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(
        fashion_mnist.DataError, match=r"tfds cifar10 .*not prepared \(no download into the default data dir\)"
    ):
        datasets.load("cifar10")
    assert not os.listdir(tmp_path) or not any(os.scandir(tmp_path / "cifar10"))


def test_unknown_split_is_named():
    with pytest.raises(fashion_mnist.DataError, match=r"tfds x: has no split 'validation' \(its splits: test, train\)"):
        datasets._check_splits("tfds x", {"train": 10, "test": 5}, ("train", "validation"))
    datasets._check_splits("tfds x", {"train": 10, "test": 5}, ("train[:50%]", "test"))
    datasets._check_splits("tfds x", {}, ("anything", "test"))  # no metadata (mock_data)


def test_idx_files_have_no_other_splits(tmp_path):
    with pytest.raises(fashion_mnist.DataError, match="hold only Fashion-MNIST's train and test splits"):
        datasets.load("fashion_mnist", dataset_dir=str(tmp_path), train_split="train[:50%]")


def test_the_memory_limit_is_the_argument_or_a_share_of_physical_memory(monkeypatch):
    assert datasets.memory_limit(1234) == 1234 and datasets.memory_limit(0) == 0
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert datasets.memory_limit() == datasets.MEMORY_SHARE * physical
    monkeypatch.setattr(datasets, "MEMORY_SHARE", 0.25)
    assert datasets.memory_limit() == physical / 4
