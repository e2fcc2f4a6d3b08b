"""Tests for clr_loop.experiment.fashion_mnist: the IDX reader, source selection, TFDS loading, pipelines.

IDX files are written with struct + gzip straight from the format description (here and by
tests/testing.py's idx_bytes and write_idx_files), not with any code from clr_loop. No test
touches the network: TFDS downloads are replaced by a stub or made no-ops by `tfds.testing.mock_data`.
"""

import gzip
import logging
import os
import socket
import struct
import tracemalloc

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from clr_loop.experiment import fashion_mnist as data
from clr_loop import inputs
from testing import idx_bytes, write_idx_files

IMAGES_MAGIC = 0x00000803


def write_gz(path, payload, compresslevel=9):
    path.write_bytes(gzip.compress(payload, compresslevel=compresslevel, mtime=0))


def make_arrays(n, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    return images, labels


def write_idx_dir(directory, n_train=7, n_test=5):
    """Writes the four files of a tiny Fashion-MNIST; returns {name: array written}."""
    arrays = {}
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = make_arrays(n, seed)
    write_idx_files(directory, arrays)
    return arrays


@pytest.fixture(scope="module")
def full_size_dir(tmp_path_factory):
    """Synthetic IDX files with the real sizes (60000 / 10000), so `load` accepts them.

    Example i has pixel (0, 0) = i % 256 and label i % 10; the rest is zero, which keeps
    the files small and quick to write.
    """
    directory = tmp_path_factory.mktemp("full_size")
    for split in ("train", "test"):
        n = data.FULL_SIZE[split]
        images = np.zeros((n, 28, 28), np.uint8)
        images[:, 0, 0] = np.arange(n) % 256
        labels = np.arange(n) % 10
        write_gz(directory / data.IDX_FILES[f"{split}_images"], idx_bytes(images), compresslevel=1)
        write_gz(directory / data.IDX_FILES[f"{split}_labels"], idx_bytes(labels), compresslevel=1)
    return directory


# ---------------------------------------------------------------------------- IDX reader


def test_read_idx_round_trips_values_dtypes_and_shapes(tmp_path):
    images, labels = make_arrays(4, seed=0)
    write_gz(tmp_path / "i.gz", idx_bytes(images))
    write_gz(tmp_path / "l.gz", idx_bytes(labels))

    got_images = data.read_idx(tmp_path / "i.gz", expected_kind="images", expected_count=4)
    got_labels = data.read_idx(tmp_path / "l.gz", expected_kind="labels")

    assert got_images.dtype == np.uint8 and got_images.shape == (4, 28, 28, 1)
    np.testing.assert_array_equal(got_images[..., 0], images)
    assert got_labels.dtype == np.int32 and got_labels.shape == (4,)
    np.testing.assert_array_equal(got_labels, labels)


def test_load_idx_dir_round_trips_all_four_files(tmp_path):
    arrays = write_idx_dir(tmp_path)
    ds = data.load_idx_dir(tmp_path, expect_full_size=False)

    for split_name, split in (("train", ds.train), ("test", ds.test)):
        np.testing.assert_array_equal(split.images[..., 0], arrays[f"{split_name}_images"])
        np.testing.assert_array_equal(split.labels, arrays[f"{split_name}_labels"])
    assert (ds.train.num_examples, ds.test.num_examples) == (7, 5)
    assert str(tmp_path) in ds.source


def test_load_idx_dir_expects_full_size_by_default(tmp_path):
    write_idx_dir(tmp_path)
    with pytest.raises(data.DataError, match="expected 60000") as e:
        data.load_idx_dir(tmp_path)
    assert data.IDX_FILES["train_images"] in str(e.value)


def test_read_idx_checks_expected_count(tmp_path):
    write_gz(tmp_path / "l.gz", idx_bytes(np.arange(3)))
    with pytest.raises(data.DataError, match="holds 3 labels, expected 4"):
        data.read_idx(tmp_path / "l.gz", expected_kind="labels", expected_count=4)


def _images(n=7):
    return make_arrays(n, seed=1)[0]


def _gz(payload):
    return gzip.compress(payload, mtime=0)


def _corrupt_deflate(payload):
    # The first byte after the 10-byte gzip header starts the deflate block header;
    # flipping it on compressible data makes zlib reject the stream.
    z = bytearray(_gz(payload))
    z[10] ^= 0xFF
    return bytes(z)


def _bad_crc(payload):
    z = bytearray(_gz(payload))
    z[-8] ^= 0xFF  # The gzip trailer is CRC32 then size, 4 bytes each.
    return bytes(z)


# (file replaced, its new bytes or None to delete it, expected message parts), by case id.
BAD_FILES = [
    pytest.param("train_images", _gz(idx_bytes(np.arange(7))), ["0x00000801", "expected 0x00000803"], id="wrong_magic"),
    pytest.param("train_images", _gz(b"PK\x03\x04" + bytes(100)), ["not an IDX file"], id="not_idx"),
    pytest.param("train_labels", _gz(idx_bytes(np.arange(7), magic=0x0D01)), ["0x0d", "not 0x08"], id="dtype_code"),
    pytest.param("test_images", _gz(idx_bytes(np.zeros((5, 28, 28, 1)))), ["4 dimension(s)"], id="ndims"),
    pytest.param("train_images", _gz(idx_bytes(_images()))[:-1000], ["truncated"], id="truncated_gzip"),
    pytest.param("train_images", idx_bytes(_images()), ["not a valid gzip file"], id="not_gzip"),
    pytest.param("test_labels", _corrupt_deflate(idx_bytes(np.zeros(5000))), ["corrupt gzip"], id="corrupt_deflate"),
    pytest.param("test_labels", _bad_crc(idx_bytes(np.zeros(5))), ["CRC"], id="bad_crc"),
    pytest.param(
        "train_images", _gz(struct.pack(">III", IMAGES_MAGIC, 7, 28)), ["header truncated"], id="header_truncated"
    ),
    pytest.param(  # 7 * 28 * 28 = 5488 payload bytes promised, 10 cut off.
        "train_images", _gz(idx_bytes(_images())[:-10]), ["payload truncated", "5488", "5478"], id="payload_short"
    ),
    pytest.param(
        "train_labels",
        _gz(idx_bytes(np.arange(7)) + b"\0\0\0"),
        ["trailing bytes after the 7-byte payload"],
        id="trailing_bytes",
    ),
    pytest.param(
        "train_labels",
        _gz(idx_bytes([0, 1, 10, 3, 4, 5, 6])),
        ["outside 0..9", "10 at index 2"],
        id="label_out_of_range",
    ),
    pytest.param("test_images", _gz(idx_bytes(np.zeros((5, 27, 28)))), ["27x28", "expected 28x28"], id="image_27x28"),
    pytest.param("test_labels", _gz(idx_bytes(np.zeros(0))), ["0 labels"], id="zero_count"),
    pytest.param("test_labels", None, ["file not found"], id="missing"),
    pytest.param(
        "train_labels", _gz(idx_bytes(np.arange(6))), ["mismatch", "7 images", "6 labels"], id="count_mismatch"
    ),
]


@pytest.mark.parametrize("replaced, content, parts", BAD_FILES)
def test_bad_files_raise_data_error_naming_file_and_problem(tmp_path, replaced, content, parts):
    write_idx_dir(tmp_path)
    path = tmp_path / data.IDX_FILES[replaced]
    if content is None:
        path.unlink()
    else:
        path.write_bytes(content)

    with pytest.raises(data.DataError) as e:
        data.load_idx_dir(tmp_path, expect_full_size=False)

    message = str(e.value)
    assert str(path) in message
    for part in parts:
        assert part in message


def test_gzip_bomb_is_refused_without_inflating_it(tmp_path):
    # A valid header for 10 images (7840 payload bytes), then 50 MB of zeros: 50 KB compressed.
    path = tmp_path / data.IDX_FILES["train_images"]
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(struct.pack(">IIII", IMAGES_MAGIC, 10, 28, 28))
        zeros = bytes(1 << 20)
        for _ in range(50):
            f.write(zeros)
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(data.DataError, match="trailing bytes after the 7840-byte payload") as e:
            data.read_idx(path, expected_kind="images")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(path) in str(e.value)
    assert peak < 2 << 20  # the payload and gzip's buffers, not the 50 MB


def test_count_mismatch_names_both_files(tmp_path):
    write_idx_dir(tmp_path)
    write_gz(tmp_path / data.IDX_FILES["test_labels"], idx_bytes(np.arange(4)))
    with pytest.raises(data.DataError) as e:
        data.load_idx_dir(tmp_path, expect_full_size=False)
    assert str(tmp_path / data.IDX_FILES["test_images"]) in str(e.value)
    assert str(tmp_path / data.IDX_FILES["test_labels"]) in str(e.value)


def test_missing_directory(tmp_path):
    with pytest.raises(data.DataError, match="directory does not exist") as e:
        data.load_idx_dir(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)
    # A path that exists is named for what it is, not as missing.
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(data.DataError, match=f"^{tmp_path / 'a_file'}: is a file, not a directory of IDX files$"):
        data.load_idx_dir(tmp_path / "a_file")


def test_split_rejects_wrong_dtypes_and_shapes():
    images = np.zeros((3, 28, 28, 1), np.uint8)
    labels = np.zeros(3, np.int32)
    with pytest.raises(ValueError, match="images"):
        data.Split(images=images.astype(np.float32), labels=labels)
    with pytest.raises(ValueError, match="images"):
        data.Split(images=images[..., 0], labels=labels)
    with pytest.raises(ValueError, match="labels"):
        data.Split(images=images, labels=labels.astype(np.int64))
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        data.Split(images=images, labels=labels[:2])


# --------------------------------------------------------------------- source selection


def _fake_source(name):
    split = data.Split(images=np.zeros((1, 28, 28, 1), np.uint8), labels=np.zeros(1, np.int32))
    return data.FashionMnist(train=split, test=split, source=name)


@pytest.fixture
def offline_tfds(monkeypatch, tmp_path):
    """Replaces data.load_tfds: the real check on an empty data dir, a failing download.

    Returns the list of `download` values it was called with, in order.
    """
    real_load_tfds = data.load_tfds
    empty_data_dir = tmp_path / "tfds_empty"
    calls = []

    def fake_load_tfds(data_dir=None, *, download):
        calls.append(download)
        if download:
            raise data.DataError("simulated download failure (tests stay offline)")
        return real_load_tfds(empty_data_dir if data_dir is None else data_dir, download=False)

    monkeypatch.setattr(data, "load_tfds", fake_load_tfds)
    return calls


def test_load_dataset_dir_uses_only_idx_files(monkeypatch, full_size_dir):
    monkeypatch.setattr(data, "load_tfds", lambda *a, **k: pytest.fail("TFDS must not be consulted"))
    ds = data.load(dataset_dir=full_size_dir, tfds_data_dir="/ignored")

    assert ds.source == f"idx files in {full_size_dir}"
    assert (ds.train.num_examples, ds.test.num_examples) == (60000, 10000)
    np.testing.assert_array_equal(ds.train.labels[:12], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1])
    assert ds.test.images[257, 0, 0, 0] == 1  # 257 % 256


def test_load_dataset_dir_errors_propagate_without_fallback(monkeypatch, tmp_path, full_size_dir):
    monkeypatch.setattr(data, "load_tfds", lambda *a, **k: pytest.fail("TFDS must not be consulted"))
    with pytest.raises(data.DataError, match="file not found") as e:
        data.load(dataset_dir=tmp_path, debian_dir=full_size_dir)
    assert str(tmp_path / data.IDX_FILES["train_images"]) in str(e.value)


def test_load_auto_falls_back_to_debian_dir(offline_tfds, full_size_dir, caplog):
    caplog.set_level(logging.INFO, logger="absl")
    ds = data.load(debian_dir=full_size_dir)

    assert ds.source == f"idx files in {full_size_dir}"
    assert offline_tfds == [False]  # Prepared TFDS checked first, download never tried.
    assert "skipping TFDS data prepared" in caplog.text
    assert "not prepared" in caplog.text
    assert f"from idx files in {full_size_dir}" in caplog.text


def test_load_auto_prefers_prepared_tfds(monkeypatch, full_size_dir):
    calls = []

    def fake_load_tfds(data_dir=None, *, download):
        calls.append((data_dir, download))
        return _fake_source("prepared tfds")

    monkeypatch.setattr(data, "load_tfds", fake_load_tfds)
    assert data.load(debian_dir=full_size_dir).source == "prepared tfds"
    assert calls == [(None, False)]


def test_load_auto_downloads_last(monkeypatch, tmp_path):
    calls = []

    def fake_load_tfds(data_dir=None, *, download):
        calls.append(download)
        if not download:
            raise data.DataError("not prepared")
        return _fake_source("downloaded tfds")

    monkeypatch.setattr(data, "load_tfds", fake_load_tfds)
    assert data.load(debian_dir=tmp_path / "no_debian").source == "downloaded tfds"
    assert calls == [False, True]


def test_load_auto_all_failing_lists_attempts_and_remedies(offline_tfds, tmp_path):
    debian_dir = tmp_path / "no_debian"
    with pytest.raises(data.DataError) as e:
        data.load(debian_dir=debian_dir)

    message = str(e.value)
    assert offline_tfds == [False, True]
    assert "not prepared" in message
    assert f"{debian_dir}: directory does not exist" in message
    assert "simulated download failure" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "dataset_dir=/usr/share/datasets/fashion-mnist" in message
    assert "dataset_dir=DIR" in message
    assert "tfds_data_dir=DIR" in message
    for filename in data.IDX_FILES.values():
        assert filename in message


# -------------------------------------------------------------------------------- TFDS


def _check_mock_split(split, n):
    assert split.images.dtype == np.uint8 and split.images.shape == (n, 28, 28, 1)
    assert split.labels.dtype == np.int32 and split.labels.shape == (n,)
    assert split.labels.min() >= 0 and split.labels.max() <= 9


def test_load_tfds_under_mock_data(tmp_path):
    with tfds.testing.mock_data(num_examples=6):
        ds = data.load_tfds(tmp_path, download=True)
    _check_mock_split(ds.train, 6)
    _check_mock_split(ds.test, 6)
    assert ds.source.startswith("tfds fashion_mnist")


def test_load_with_tfds_data_dir_under_mock_data(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "load_idx_dir", lambda *a, **k: pytest.fail("IDX must not be consulted"))
    with tfds.testing.mock_data(num_examples=3):
        ds = data.load(tfds_data_dir=tmp_path)
    _check_mock_split(ds.train, 3)
    assert ds.source.startswith("tfds")


def test_load_tfds_without_download_needs_prepared_data(tmp_path):
    with pytest.raises(data.DataError, match="not prepared") as e:
        data.load_tfds(tmp_path, download=False)
    assert str(tmp_path) in str(e.value)


def test_load_tfds_wraps_download_failure_and_removes_its_leftovers(tmp_path, monkeypatch):
    cause = ConnectionError("no route to host")
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "other.tmp.1").write_text("not this attempt's")

    def failing_download(self, *args, **kwargs):
        # What TFDS leaves when the network goes mid-download.
        (tmp_path / "fashion_mnist" / "incomplete.1D7JIX_3.0.1").mkdir(parents=True)
        (tmp_path / "downloads" / "fashion_mnist").mkdir()
        (tmp_path / "downloads" / "fashion_mnist" / "t10k-images.gz.tmp.64dc7191").mkdir()  # TFDS's download folder
        (tmp_path / "downloads" / "fashion_mnist" / "t10k-images.gz.tmp.64dc7191" / "t10k-images.gz").write_bytes(b"12")
        raise cause

    monkeypatch.setattr(
        socket, "getaddrinfo", lambda host, port, *a, **k: [(socket.AF_INET, 0, 0, "", ("192.0.2.1", 0))]
    )
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", failing_download)
    with pytest.raises(data.DataError, match="download_and_prepare failed: ConnectionError: no route") as e:
        data.load_tfds(tmp_path, download=True)
    assert e.value.__cause__ is cause
    assert str(tmp_path) in str(e.value)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["downloads", "downloads/other.tmp.1"]


def test_load_tfds_offline_fails_at_once_naming_the_host(tmp_path, monkeypatch):
    """Offline, TFDS retried every file's name lookup for 207 s."""

    def no_address(host, port, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_address)
    monkeypatch.setattr(
        tfds.core.DatasetBuilder,
        "download_and_prepare",
        lambda self, *a, **k: pytest.fail("the download must not start"),
    )
    with pytest.raises(
        data.DataError,
        match=r"not prepared, and it cannot be downloaded: no address for "
        r"fashion-mnist\.s3-website\.eu-central-1\.amazonaws\.com \(no network\?\)",
    ):
        data.load(tfds_data_dir=tmp_path)
    assert not any("incomplete" in p.name for p in tmp_path.rglob("*"))


# --------------------------------------------------------------------------- pipelines


def indexed_split(n):
    """A split whose example i has pixel (0, 0) = i and label i % 10, to track examples."""
    images = np.zeros((n, 28, 28, 1), np.uint8)
    images[:, 0, 0, 0] = np.arange(n)
    return data.Split(images=images, labels=(np.arange(n) % 10).astype(np.int32))


def take_ids(ds, num_batches):
    """Returns the example ids of the first `num_batches` batches, one array per batch."""
    ids = []
    for images, labels in ds.take(num_batches).as_numpy_iterator():
        batch_ids = images[:, 0, 0, 0].astype(np.int64)
        np.testing.assert_array_equal(labels, batch_ids % 10)  # Images stay paired with labels.
        ids.append(batch_ids)
    return ids


def test_steps_per_epoch():
    assert data.steps_per_epoch(60000, 128) == 468  # 60000 = 468 * 128 + 96
    assert data.steps_per_epoch(10, 5) == 2
    with pytest.raises(data.DataError, match="fewer than one batch"):
        data.steps_per_epoch(3, 5)
    with pytest.raises(ValueError, match="positive"):
        data.steps_per_epoch(10, 0)


def test_train_dataset_batches_are_uint8_images_and_int32_labels():
    ds = data.train_dataset(indexed_split(12), batch_size=4, seed=0)
    images_spec, labels_spec = ds.element_spec
    assert images_spec == tf.TensorSpec([4, 28, 28, 1], tf.uint8)
    assert labels_spec == tf.TensorSpec([4], tf.int32)
    assert ds.cardinality() == tf.data.INFINITE_CARDINALITY


def test_train_dataset_each_epoch_is_a_fresh_permutation():
    n, batch_size = 20, 5
    batches = take_ids(data.train_dataset(indexed_split(n), batch_size, seed=3), 3 * 4)
    epochs = [np.concatenate(batches[k * 4 : (k + 1) * 4]) for k in range(3)]

    for epoch in epochs:
        np.testing.assert_array_equal(np.sort(epoch), np.arange(n))
    assert not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(epochs[1], epochs[2])


def test_train_dataset_drops_partial_batch_within_each_epoch():
    n, batch_size, epochs = 23, 5, 6  # 4 full batches per epoch, 3 examples dropped.
    steps = 23 // 5
    batches = take_ids(data.train_dataset(indexed_split(n), batch_size, seed=1), steps * epochs)

    assert all(len(b) == batch_size for b in batches)
    seen = set()
    for k in range(epochs):
        epoch = np.concatenate(batches[k * steps : (k + 1) * steps])
        assert len(set(epoch.tolist())) == steps * batch_size  # No example twice in an epoch.
        seen.update(epoch.tolist())
    # Reshuffling changes which examples fall in the dropped remainder.
    assert seen == set(range(n))


def test_train_dataset_order_is_fixed_by_seed():
    split = indexed_split(16)
    first = np.concatenate(take_ids(data.train_dataset(split, 4, seed=7), 8))
    again = np.concatenate(take_ids(data.train_dataset(split, 4, seed=7), 8))
    other = np.concatenate(take_ids(data.train_dataset(split, 4, seed=8), 8))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_train_dataset_rejects_split_smaller_than_a_batch():
    with pytest.raises(inputs.InputError, match="fewer than one batch"):
        data.train_dataset(indexed_split(3), batch_size=4, seed=0)


def test_eval_dataset_covers_every_example_once_in_order():
    ds = data.eval_dataset(indexed_split(23), batch_size=5)
    images_spec, labels_spec = ds.element_spec
    assert images_spec == tf.TensorSpec([None, 28, 28, 1], tf.uint8)
    assert labels_spec == tf.TensorSpec([None], tf.int32)
    assert ds.cardinality() == 5  # ceil(23 / 5)

    batches = take_ids(ds, 100)
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(np.concatenate(batches), np.arange(23))


# ------------------------------------------------------------------ the real Debian files


@pytest.mark.skipif(
    not all(os.path.exists(os.path.join(data.DEBIAN_DIR, f)) for f in data.IDX_FILES.values()),
    reason=f"dataset-fashion-mnist is not installed in {data.DEBIAN_DIR}",
)
def test_debian_files_load_fully():
    ds = data.load_idx_dir(data.DEBIAN_DIR)
    assert ds.train.images.shape == (60000, 28, 28, 1)
    assert ds.test.images.shape == (10000, 28, 28, 1)
    # Fashion-MNIST is balanced: each class has 6000 train and 1000 test examples.
    np.testing.assert_array_equal(np.bincount(ds.train.labels, minlength=10), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.test.labels, minlength=10), [1000] * 10)


def test_train_dataset_from_start_step_continues_the_same_stream():
    """Resuming rebuilds the input at a step; it must yield exactly what the unbroken stream yields."""
    split = indexed_split(20)
    unbroken = take_ids(data.train_dataset(split, batch_size=4, seed=3), 17)
    for start in (0, 3, 5, 12):
        resumed = take_ids(data.train_dataset(split, batch_size=4, seed=3, start_step=start), 17 - start)
        assert [ids.tolist() for ids in resumed] == [ids.tolist() for ids in unbroken[start:]]


def test_train_and_eval_datasets_per_replica():
    """The trainer's streams for 2 replicas: train slices are the halves of the one-replica batches;
    eval gives replica r the examples r, r + 2, ... in the same number of batches each."""
    split = indexed_split(23)
    whole = take_ids(data.train_dataset(split, 4, seed=2), 10)
    halves = [take_ids(data.train_dataset(split, 4, seed=2, replicas=(r, 1, 2)), 10) for r in range(2)]
    for step in range(10):
        np.testing.assert_array_equal(np.concatenate([halves[0][step], halves[1][step]]), whole[step])
    evals = [
        take_ids(data.eval_dataset(split, 5, replicas=(r, 1, 2)).map(lambda x, y, w: (x, y)), 100) for r in range(2)
    ]
    assert [len(b) for b in evals[0]] == [5, 5, 2] and [len(b) for b in evals[1]] == [5, 5, 1]
    for r in range(2):
        np.testing.assert_array_equal(np.concatenate(evals[r]), np.arange(r, 23, 2))
