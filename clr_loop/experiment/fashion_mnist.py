"""Fashion-MNIST sources and the tf.data input pipelines.

Two sources give the same arrays: TensorFlow Datasets (`load_tfds`) and the raw IDX
`.gz` files as the Fashion-MNIST authors publish them (`load_idx_dir`), which Debian's
`dataset-fashion-mnist` package installs in `DEBIAN_DIR`. `load` picks one. The
pipelines (`train_dataset`, `eval_dataset`) keep images as uint8; the model rescales.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import math
import os
import stat
import struct
import zlib
from typing import TYPE_CHECKING, Callable, Literal

from absl import logging
import numpy as np
import tensorflow as tf

from clr_loop import errors
from clr_loop import inputs

# tensorflow_datasets is imported where it is used (`_tfds()`): importing it costs ~0.4 s of a
# run's start-up, and a run that reads the IDX files never needs it.
if TYPE_CHECKING:
    import tensorflow_datasets as tfds

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}

IMAGE_SIZE = 28
NUM_CLASSES = 10
FULL_SIZE = {"train": 60000, "test": 10000}

_TFDS_NAME = "fashion_mnist"
# Element type code 0x08 is "unsigned byte"; the last magic byte is the number of dims.
_IDX_UBYTE = 0x08
_IDX_NDIM = {"images": 3, "labels": 1}
# Rows per chunk when reading a TFDS split into numpy; bounds the temporary tensors.
_TFDS_READ_CHUNK = 10000

_NOT_REGULAR = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
)


def not_a_regular_file(path: str | os.PathLike) -> str | None:
    """Returns None when `path` is a regular file (or a link to one); else what it is instead, as the end of
    a message that names it: "does not exist", "is a directory, not a regular file", "is a character device,
    not a regular file" (/dev/zero, whose reading never ends), "is a broken symbolic link", ...

    Reads nothing but the file's metadata.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "is a broken symbolic link" if os.path.islink(path) else "does not exist"
    except NotADirectoryError:
        return "does not exist (a part of its path is a file, not a directory)"
    except OSError as e:
        return f"cannot be reached ({e.strerror or e})"
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _NOT_REGULAR if test(mode)), "not a regular file")
    return f"is {kind}, not a regular file" if kind != "not a regular file" else "is not a regular file"


class DataError(errors.Error):
    """Raised when a data source is missing or malformed.

    The message names the file, directory or source and says what is wrong, so it can be
    shown to the user as is.
    """


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of Fashion-MNIST held in memory as numpy arrays.

    `images` is uint8 with shape [N, 28, 28, 1] and raw pixel values 0..255; `labels` is
    int32 with shape [N] and class ids 0..9. The constructor checks dtypes and shapes and
    raises ValueError on a mismatch (a programming error; bad files raise DataError
    before a Split is built).
    """

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 1):
            raise ValueError(
                f"images must be uint8 [N, {IMAGE_SIZE}, {IMAGE_SIZE}, 1], got "
                f"{self.images.dtype} {list(self.images.shape)}"
            )
        if self.labels.dtype != np.int32 or self.labels.ndim != 1:
            raise ValueError(f"labels must be int32 [N], got {self.labels.dtype} {list(self.labels.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    @property
    def num_examples(self) -> int:
        """The number of examples N in this split (an int)."""
        return len(self.labels)

    @property
    def arrays(self) -> inputs.Arrays:
        """This split as `clr_loop.inputs.Arrays` (x: the images, y: the labels), for the loop."""
        return inputs.Arrays(x=self.images, y=self.labels, num_examples=self.num_examples)


@dataclasses.dataclass(frozen=True)
class FashionMnist:
    """The train and test splits plus `source`, a human-readable note of where they came from.

    `num_classes`, `image_shape` and `name` are those of `clr_loop.experiment.datasets.ImageData`, so the
    trainer takes either.
    """

    train: Split
    test: Split
    source: str

    num_classes = NUM_CLASSES
    image_shape = (IMAGE_SIZE, IMAGE_SIZE, 1)
    name = _TFDS_NAME


def read_idx(
    path: str | os.PathLike,
    *,
    expected_kind: Literal["images", "labels"],
    expected_count: int | None = None,
) -> np.ndarray:
    """Reads one gzip-compressed IDX file of Fashion-MNIST images or labels.

    Returns uint8 images of shape [N, 28, 28, 1] for `expected_kind="images"` or int32
    labels of shape [N] with values 0..9 for `"labels"`. The file must be big-endian IDX
    with magic 0x00000803 (images: count, 28, 28) or 0x00000801 (labels: count), hold at
    least one example, and, when `expected_count` is given, exactly that many. Any problem
    (missing file, bad gzip, wrong magic, wrong shape, payload size not matching the
    header, labels out of range) raises DataError naming `path`. At most the header's
    payload size plus one byte is decompressed, so a file that inflates to more (a gzip
    bomb) is refused without holding it in memory.
    """
    if expected_kind not in _IDX_NDIM:
        raise ValueError(f"expected_kind must be 'images' or 'labels', got {expected_kind!r}")
    path = os.fspath(path)
    with _gzip_errors(path):
        with gzip.open(path, "rb") as f:
            dims = _read_idx_header(f, path, expected_kind, expected_count)
            # The header gives the payload's exact size: read at most one byte more, so a file
            # that decompresses to far more (a gzip bomb) costs no more memory than a good one.
            # Fewer bytes than asked means the stream's end was read, and with it the gzip trailer
            # (its CRC and length checked).
            expected_len = math.prod(dims)
            data = _read_at_most(f, expected_len + 1)
    if len(data) < expected_len:
        raise DataError(
            f"{path}: payload truncated: header {list(dims)} needs {expected_len} bytes, file has {len(data)}"
        )
    if len(data) > expected_len:
        raise DataError(f"{path}: trailing bytes after the {expected_len}-byte payload for header {list(dims)}")

    values = np.frombuffer(data, dtype=np.uint8)
    if expected_kind == "images":
        return values.reshape(dims[0], IMAGE_SIZE, IMAGE_SIZE, 1)
    _check_label_range(values, path)
    return values.astype(np.int32)


def load_idx_dir(directory: str | os.PathLike, *, expect_full_size: bool = True) -> FashionMnist:
    """Loads Fashion-MNIST from a directory holding the four IDX `.gz` files of `IDX_FILES`.

    Returns a FashionMnist whose `source` names the directory. With `expect_full_size`
    the splits must have exactly 60000 (train) and 10000 (test) examples; tests pass
    False to load tiny generated files. Raises DataError naming the directory or file
    for a missing directory, any bad file (see `read_idx`), or an image/label count
    mismatch within a split. This is how the Debian package's files are read: their gzip
    headers differ from the authors' downloads (no stored file name), so TFDS's checksum
    validation rejects them although the contents are identical.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        if os.path.exists(directory):
            raise DataError(f"{directory}: is a file, not a directory of IDX files")
        raise DataError(f"{directory}: directory does not exist")
    splits = {}
    for split in ("train", "test"):
        count = FULL_SIZE[split] if expect_full_size else None
        images_path = os.path.join(directory, IDX_FILES[f"{split}_images"])
        labels_path = os.path.join(directory, IDX_FILES[f"{split}_labels"])
        images = read_idx(images_path, expected_kind="images", expected_count=count)
        labels = read_idx(labels_path, expected_kind="labels", expected_count=count)
        if len(images) != len(labels):
            raise DataError(
                f"{split} split count mismatch: {images_path} holds {len(images)} images "
                f"but {labels_path} holds {len(labels)} labels"
            )
        splits[split] = Split(images=images, labels=labels)
    return FashionMnist(train=splits["train"], test=splits["test"], source=f"idx files in {directory}")


def load_tfds(data_dir: str | os.PathLike | None = None, *, download: bool) -> FashionMnist:
    """Loads Fashion-MNIST through TensorFlow Datasets, fully into memory.

    Returns a FashionMnist whose `source` names the TFDS data directory. `data_dir=None`
    means TFDS's default (`~/tensorflow_datasets` or `$TFDS_DATA_DIR`). If the data is not
    prepared there, `download=False` raises DataError, and `download=True` downloads and
    prepares it (a DataError carrying the cause if that fails; offline, at once: see
    `download_and_prepare`). Works under `tfds.testing.mock_data`, which fakes the
    examples and makes the download a no-op (so call it with `download=True` there).
    """
    if not download:
        # Without TFDS's import and builder (~0.7 s): no dataset folder means nothing prepared.
        folder = _tfds_dataset_folder(data_dir)
        if folder is not None and not os.path.isdir(folder):
            raise DataError(f"tfds {_TFDS_NAME} (data_dir={folder}): not prepared, and download is off")
    tfds = _tfds()
    builder = tfds.builder(_TFDS_NAME, data_dir=None if data_dir is None else os.fspath(data_dir))
    where = f"tfds {_TFDS_NAME} (data_dir={builder.data_dir})"
    # is_prepared() logs a misleading "no dataset_info.json" warning for a missing
    # directory, which the automatic source selection would print on every fresh machine.
    if not (builder.data_path.exists() and builder.is_prepared()):
        if not download:
            raise DataError(f"{where}: not prepared, and download is off")
        download_and_prepare(builder, where)
    splits = {split: _read_tfds_split(builder, split, where) for split in ("train", "test")}
    return FashionMnist(train=splits["train"], test=splits["test"], source=where)


def load(
    *,
    tfds_data_dir: str | os.PathLike | None = None,
    dataset_dir: str | os.PathLike | None = None,
    debian_dir: str | os.PathLike = DEBIAN_DIR,
) -> FashionMnist:
    """Loads Fashion-MNIST from the source the arguments select; returns a FashionMnist.

    With `dataset_dir`, only the four IDX files there are used (any size, with a warning
    when it is not 60000/10000) and their errors propagate; it takes precedence over `tfds_data_dir`. With
    `tfds_data_dir`, TFDS data there is used, downloading it if needed. With neither,
    sources are tried in order: TFDS data already prepared in the default data dir (no
    download), the raw IDX files in `debian_dir`, then a TFDS download. The chosen
    source, and why earlier ones were skipped, is logged. If none works, one DataError
    lists every failure and the ways to provide the data.
    """
    if dataset_dir is not None:
        if tfds_data_dir is not None:
            logging.warning("dataset_dir=%s given, so tfds_data_dir=%s is ignored", dataset_dir, tfds_data_dir)
        # A user's folder may hold a subset or a variant of the dataset; only the format is enforced.
        with errors.blaming("dataset_dir"):
            data = load_idx_dir(dataset_dir, expect_full_size=False)
        sizes = (data.train.num_examples, data.test.num_examples)
        if sizes != (FULL_SIZE["train"], FULL_SIZE["test"]):
            logging.warning("%s holds %d train / %d test examples, not the full 60000 / 10000", dataset_dir, *sizes)
        logging.info("Fashion-MNIST from %s", data.source)
        return data
    if tfds_data_dir is not None:
        with errors.blaming("tfds_data_dir"):
            data = load_tfds(tfds_data_dir, download=True)
        logging.info("Fashion-MNIST from %s", data.source)
        return data

    debian_dir = os.fspath(debian_dir)
    # Cheap local sources first; the download goes last because offline it only fails
    # after minutes of retries.
    candidates: list[tuple[str, Callable[[], FashionMnist]]] = [
        ("TFDS data prepared in the default data dir", lambda: load_tfds(download=False)),
        (f"raw IDX files in {debian_dir}", lambda: load_idx_dir(debian_dir)),
        ("TFDS download into the default data dir", lambda: load_tfds(download=True)),
    ]
    failures = []
    for description, attempt in candidates:
        try:
            data = attempt()
        except DataError as e:
            logging.info("Fashion-MNIST: skipping %s: %s", description, e)
            failures.append(f"  {len(failures) + 1}. {description}: {e}")
            continue
        logging.info("Fashion-MNIST from %s", data.source)
        return data
    raise DataError(_no_source_message(failures))


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Returns `num_examples // batch_size`, the steps of an epoch whose last partial batch is
    dropped (`inputs.steps_per_epoch`); raises DataError when that is zero, ValueError for a
    non-positive batch size."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    try:
        return inputs.steps_per_epoch(num_examples, batch_size)
    except inputs.InputError as e:
        raise DataError(str(e), argument="batch_size") from e


def train_dataset(split: Split, batch_size: int, seed: int, start_step: int = 0, replicas=None) -> tf.data.Dataset:
    """Returns the endless training stream of `split`'s (images, labels) batches from `start_step`,
    as the trainer consumes it: `inputs.array_train_dataset` with the last partial batch of every
    epoch dropped (see there for the order and `replicas`)."""
    return inputs.array_train_dataset(
        split.arrays, batch_size, seed, drop_remainder=True, start_step=start_step, replicas=replicas
    )


def eval_dataset(split: Split, batch_size: int, replicas=None) -> tf.data.Dataset:
    """Returns `split`'s (images, labels) in order, in batches of `batch_size` (the last holds the
    remainder): `inputs.array_eval_dataset` (see there for `replicas`)."""
    return inputs.array_eval_dataset(split.arrays, batch_size, replicas=replicas)


epoch_permutation = inputs.epoch_permutation


# Decompressed bytes read per call while reading a payload (bounds the temporary buffers).
_READ_CHUNK = 1 << 24


def _read_idx_header(f, path: str, expected_kind: str, expected_count: int | None) -> tuple[int, ...]:
    """Reads and checks the IDX header at the start of the open file `f`; returns its dims (count first).

    Raises DataError naming `path` for a wrong magic number, a truncated header, images that are
    not 28x28, a count of 0, or a count other than `expected_count` (when given).
    """
    ndim = _IDX_NDIM[expected_kind]
    expected_magic = (_IDX_UBYTE << 8) | ndim
    head = f.read(4)
    if len(head) < 4:
        raise DataError(f"{path}: too short for an IDX header ({len(head)} bytes after gunzip)")
    (magic,) = struct.unpack(">I", head)
    found_code, found_ndim = (magic >> 8) & 0xFF, magic & 0xFF
    if magic >> 16 != 0:
        problem = "not an IDX file"
    elif found_code != _IDX_UBYTE:
        problem = f"element type code 0x{found_code:02x} is not 0x08 (unsigned byte)"
    elif found_ndim != ndim:
        problem = f"{found_ndim} dimension(s), but {expected_kind} files have {ndim}"
    else:
        problem = None
    if problem:
        raise DataError(
            f"{path}: wrong magic number 0x{magic:08x}, expected 0x{expected_magic:08x} for {expected_kind} ({problem})"
        )
    header_len = 4 + 4 * ndim
    rest = f.read(header_len - 4)
    if len(rest) < header_len - 4:
        raise DataError(f"{path}: IDX header truncated ({4 + len(rest)} bytes, need {header_len})")
    dims = struct.unpack(f">{ndim}I", rest)
    if expected_kind == "images" and dims[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{path}: images are {dims[1]}x{dims[2]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
    if dims[0] == 0:
        raise DataError(f"{path}: header says the file holds 0 {expected_kind}")
    if expected_count is not None and dims[0] != expected_count:
        raise DataError(f"{path}: holds {dims[0]} {expected_kind}, expected {expected_count}")
    return dims


def _read_at_most(f, limit: int) -> bytearray:
    """Returns the next bytes of the open file `f`, up to `limit` of them (fewer at its end), read in chunks."""
    data = bytearray()
    while len(data) < limit:
        chunk = f.read(min(_READ_CHUNK, limit - len(data)))
        if not chunk:
            break
        data += chunk
    return data


@contextlib.contextmanager
def _gzip_errors(path: str):
    """Turns the errors of reading the gzip file `path` inside the block into DataErrors saying why."""
    try:
        yield
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except gzip.BadGzipFile as e:
        raise DataError(f"{path}: not a valid gzip file ({e})") from e
    except EOFError as e:
        raise DataError(f"{path}: gzip stream truncated ({e})") from e
    except zlib.error as e:
        raise DataError(f"{path}: corrupt gzip data ({e})") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from e


def _check_label_range(labels: np.ndarray, where: str) -> None:
    """Raises DataError naming `where` if any label is outside 0..NUM_CLASSES-1."""
    bad = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
    if bad.size:
        raise DataError(
            f"{where}: {bad.size} label(s) outside 0..{NUM_CLASSES - 1}, first {labels[bad[0]]} at index {bad[0]}"
        )


def _tfds():
    import tensorflow_datasets  # pylint: disable=import-outside-toplevel

    return tensorflow_datasets


def download_and_prepare(builder, where: str) -> None:
    """Runs `builder.download_and_prepare()` (a TFDS DatasetBuilder's); raises DataError naming `where`
    when it fails.

    Offline, TFDS retries each file for minutes (urllib3's back-off after each failed name lookup),
    so when none of the hosts of the builder's download URLs (`builder.url_infos`) has an address,
    this fails at once instead, naming them. A failed attempt's leftovers in the builder's data dir
    (`incomplete.*` folders, `*.tmp.*` download folders, and the folders it created that stay empty) are
    removed. Under `tfds.testing.mock_data`, whose download does nothing, no host is looked up.
    """
    tfds = _tfds()
    mocked = getattr(tfds.core.DatasetBuilder.download_and_prepare, "__module__", "").startswith(
        "tensorflow_datasets.testing"
    )
    if not mocked:
        hosts = _download_hosts(builder)
        unresolved = [host for host in hosts if not _resolves(host)]
        if hosts and len(unresolved) == len(hosts):
            raise DataError(
                f"{where}: not prepared, and it cannot be downloaded: no address for "
                f"{', '.join(unresolved)} (no network?)"
            )
    roots = [
        os.fspath(builder.data_dir_root / builder.name),
        os.path.join(os.fspath(builder.data_dir_root), "downloads"),
    ]
    before = {root: _tree(root) for root in roots}
    try:
        builder.download_and_prepare()
    # Download failures surface from requests, urllib3, TFDS checksum checks and the
    # file system alike; all mean "no data from this source".
    except Exception as e:  # pylint: disable=broad-except
        for root in roots:
            _remove_leftovers(root, before[root])
        raise DataError(f"{where}: download_and_prepare failed: {type(e).__name__}: {e}") from e


def _download_hosts(builder) -> list[str]:
    """Returns the host names of `builder`'s download URLs (sorted; [] when it lists none)."""
    from urllib.parse import urlsplit  # pylint: disable=import-outside-toplevel

    try:
        urls = builder.url_infos or {}
    except Exception:  # pylint: disable=broad-except  (a builder without a checksums file)
        return []
    return sorted({urlsplit(url).hostname for url in urls if urlsplit(url).hostname})


def _resolves(host: str) -> bool:
    """True when the name `host` has an address (a name lookup, no connection)."""
    import socket  # pylint: disable=import-outside-toplevel

    try:
        return bool(socket.getaddrinfo(host, None))
    except (OSError, UnicodeError):
        return False


def _tree(root: str) -> set[str]:
    """Returns the paths under `root` (folders and files; empty when it does not exist)."""
    paths = set()
    for folder, dirs, files in os.walk(root):
        paths.add(folder)
        paths.update(os.path.join(folder, name) for name in dirs + files)
    return paths


def _remove_leftovers(root: str, before: set[str]) -> None:
    """Removes what a failed TFDS download left under `root` that was not in `before`: `incomplete.*`
    folders, `*.tmp.*` download folders and files, then the new folders left empty (deepest first)."""
    import shutil  # pylint: disable=import-outside-toplevel

    new = sorted(_tree(root) - before, key=len, reverse=True)
    for path in new:
        name = os.path.basename(path)
        if not (name.startswith("incomplete.") or ".tmp." in name or name.endswith(".incomplete")):
            continue
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.remove(path)
        except OSError:
            pass
    for path in new:
        try:
            if os.path.isdir(path) and not os.listdir(path):
                os.rmdir(path)
        except OSError:
            pass


def _tfds_dataset_folder(data_dir: str | os.PathLike | None) -> str | None:
    """Returns the local folder TFDS keeps Fashion-MNIST in for `data_dir` (None: TFDS's default,
    `$TFDS_DATA_DIR` or `~/tensorflow_datasets`), or None for a remote one (`gs://...`)."""
    if data_dir is None:
        data_dir = os.environ.get("TFDS_DATA_DIR") or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")
    data_dir = os.fspath(data_dir)
    if "://" in data_dir:
        return None
    return os.path.join(data_dir, _TFDS_NAME)


def _read_tfds_split(builder: tfds.core.DatasetBuilder, split: str, where: str) -> Split:
    """Reads one TFDS split into a Split, checking shapes and label range."""
    # Not `batch_size=-1`: TFDS 4.9 then batches by info.splits.total_num_examples, which
    # is 0 under mock_data (no metadata in the pip package), so it batches by
    # sys.maxsize and the process aborts in C++. Chunks work for real and mock data.
    ds = builder.as_dataset(split=split, as_supervised=True).batch(_TFDS_READ_CHUNK)
    chunks = list(_tfds().as_numpy(ds))
    if not chunks:
        raise DataError(f"{where}: split {split!r} is empty")
    images = np.concatenate([image for image, _ in chunks])
    labels = np.concatenate([label for _, label in chunks])
    if images.dtype != np.uint8 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 1):
        raise DataError(
            f"{where}: split {split!r} images are {images.dtype} {list(images.shape)}, "
            f"expected uint8 [N, {IMAGE_SIZE}, {IMAGE_SIZE}, 1]"
        )
    _check_label_range(labels, f"{where} split {split!r}")
    return Split(images=images, labels=labels.astype(np.int32))


def _no_source_message(failures: list[str]) -> str:
    """Returns the error text for `load` when every automatic source failed."""
    files = ", ".join(IDX_FILES.values())
    return "\n".join(
        [
            "No Fashion-MNIST data found. Tried, in order:",
            *failures,
            "Ways to provide the data:",
            f"  * apt-get install dataset-fashion-mnist: installs the raw files in {DEBIAN_DIR},"
            f" found automatically (or pass dataset_dir={DEBIAN_DIR}).",
            f"  * dataset_dir=DIR: a directory holding the four IDX files {files}.",
            "  * tfds_data_dir=DIR: a TFDS data dir with fashion_mnist already prepared,"
            " or network access so TFDS can download it there.",
        ]
    )
