"""The datasets a training run can name, loaded as in-memory image arrays with their shape and class count.

- `fashion_mnist` (the default): the tutorial's sources, in `clr_loop.experiment.fashion_mnist.load`'s order (prepared
  TFDS data, the raw IDX files, a download).
- any TFDS image-classification dataset with `image` and `label` features (`mnist`, `cifar10`,
  `svhn_cropped`, ...): shapes and the class count come from the builder's info.
- `npz:PATH`: a `.npz` file holding `x_train`, `y_train`, `x_test`, `y_test` (and optionally a
  scalar `num_classes`), of at most MAX_CLASSES classes.

Every source that fits gives arrays held in memory (so the data order is a stateless function of the
step and a resume is exact). A TFDS dataset whose splits would take more than `max_in_memory_bytes`
(default: MEMORY_SHARE of the machine's memory) is streamed instead (`StreamedSplit`): its train split
is read through a seeded shuffle buffer of STREAM_SHUFFLE_BUFFER examples, and the loop checkpoints the
tf.data iterator (the buffer's images included, so a checkpoint grows by about
STREAM_SHUFFLE_BUFFER x H x W x C bytes), so a resume is still exact. Every problem raises
`data.DataError` naming the dataset, file or array.
"""

import dataclasses
import os
from typing import Any

from absl import logging
import numpy as np
import tensorflow as tf

from clr_loop import errors
from clr_loop.experiment import fashion_mnist

DataError = fashion_mnist.DataError
DEFAULT = "fashion_mnist"
NPZ_PREFIX = "npz:"
NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
# The in-memory splits may take at most this share of the machine's physical memory.
MEMORY_SHARE = 0.5
# A streamed train split is shuffled through a buffer of this many examples. Its contents are part of
# every checkpoint (tf.data saves the iterator's buffer): 10,000 x H x W x C bytes, 7.8 MB for 28x28x1
# images and 31 MB for 32x32x3 ones (docs/training.md: "Your own experiment"), while still mixing examples from
# many records of a split TFDS shuffled when it prepared it.
STREAM_SHUFFLE_BUFFER = 10_000
# The most classes a dataset may have: a model's last layer holds (features x classes) weights, so a
# label of 2**40 (a corrupt file) would ask for terabytes; ImageNet-21k has 21,841 classes.
MAX_CLASSES = 2**20
# A streamed split's normalisation statistics (mean/std layers) come from its first this many examples.
NORMALIZATION_SAMPLE = 10_000
_READ_CHUNK = 10000


@dataclasses.dataclass(frozen=True)
class ImageSplit:
    """One split in memory: `images` uint8 or float32 [N, H, W, C], `labels` int32 [N] in 0..K-1."""

    images: np.ndarray
    labels: np.ndarray

    @property
    def num_examples(self):
        """The number of examples N (an int)."""
        return len(self.labels)

    @property
    def image_shape(self):
        """The shape of one image, (H, W, C)."""
        return tuple(self.images.shape[1:])


@dataclasses.dataclass(frozen=True)
class StreamedSplit:
    """One TFDS split too big for memory, read as it is consumed: `num_examples` of uint8 images of
    `image_shape` (H, W, C) with int32 labels, from `builder`'s split `split` (`where` names it)."""

    builder: Any
    split: str
    num_examples: int
    image_shape: tuple
    where: str

    def examples(self):
        """Returns the split's `(image uint8 [H, W, C], label int32)` examples in file order (a tf.data.Dataset
        of known cardinality); the files are read unshuffled, so the order is the same on every call."""
        ds = self.builder.as_dataset(split=self.split, shuffle_files=False)
        ds = ds.map(lambda ex: (ex["image"], tf.cast(ex["label"], tf.int32)), num_parallel_calls=tf.data.AUTOTUNE)
        return ds.apply(tf.data.experimental.assert_cardinality(self.num_examples))

    def train_dataset(self, batch_size, seed, shuffle_buffer=STREAM_SHUFFLE_BUFFER):
        """Returns one epoch of `(images, labels)` training batches of `batch_size` (the last partial one
        dropped): the examples through a shuffle buffer of `shuffle_buffer` seeded by `seed` (a new order
        each epoch, i.e. each iterator), batched and prefetched. Checkpointing its iterator saves the
        buffer, so a resumed run continues the same stream."""
        ds = self.examples().shuffle(
            min(int(shuffle_buffer), self.num_examples), seed=seed, reshuffle_each_iteration=True
        )
        return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    def eval_dataset(self, batch_size):
        """Returns the split's `(images, labels)` batches of `batch_size` in file order, every example
        once (the last batch the remainder), prefetched."""
        return self.examples().batch(batch_size).prefetch(tf.data.AUTOTUNE)

    def sample_chunks(self, n=None, chunk=256):
        """Yields the uint8 images of the split's first min(n, N) examples (file order; n defaults to
        NORMALIZATION_SAMPLE) as numpy arrays [<= chunk, H, W, C], so a sample is never held at once."""
        n = NORMALIZATION_SAMPLE if n is None else n
        yield from (x for x, _ in self.examples().take(n).batch(chunk).as_numpy_iterator())


@dataclasses.dataclass(frozen=True)
class ImageData:
    """A dataset's train and test splits, its class count K, its `name` and `source` (where it came from)."""

    train: ImageSplit
    test: ImageSplit
    num_classes: int
    name: str
    source: str

    @property
    def image_shape(self):
        """The shape of one image, (H, W, C)."""
        return tuple(self.train.image_shape)

    @property
    def streamed(self):
        """True when the splits are streamed from TFDS (`StreamedSplit`s), False when they are in memory."""
        return isinstance(self.train, StreamedSplit)


def is_npz(dataset):
    """True when the dataset name is `npz:PATH`."""
    return dataset.startswith(NPZ_PREFIX)


def load(
    dataset=DEFAULT,
    *,
    tfds_data_dir=None,
    dataset_dir=None,
    train_split="train",
    eval_split="test",
    max_in_memory_bytes=None,
):
    """Loads the dataset that `dataset` names (see the module docstring); returns an ImageData
    (a `data.FashionMnist`, which has the same fields, for Fashion-MNIST's own sources).

    `dataset_dir` (raw Fashion-MNIST IDX files) is for `fashion_mnist` only; `tfds_data_dir` is the
    TFDS data dir (downloading there when the data is not prepared). `train_split`/`eval_split`
    are TFDS split names (`train[:90%]` too); Fashion-MNIST with other splits than train/test is
    read through TFDS. A TFDS dataset whose splits take more than `max_in_memory_bytes` is streamed
    (see `load_tfds`). Raises DataError naming the culprit.
    """
    if is_npz(dataset):
        with errors.blaming("dataset"):
            return load_npz(dataset[len(NPZ_PREFIX) :])
    if dataset == DEFAULT and (train_split, eval_split) == ("train", "test"):
        return fashion_mnist.load(tfds_data_dir=tfds_data_dir, dataset_dir=dataset_dir)
    if dataset_dir is not None:
        raise DataError(
            f"dataset {dataset!r} with splits {train_split!r}/{eval_split!r}: the raw IDX files of dataset_dir "
            "hold only Fashion-MNIST's train and test splits",
            argument="dataset_dir",
        )
    return load_tfds(
        dataset,
        data_dir=tfds_data_dir,
        train_split=train_split,
        eval_split=eval_split,
        max_in_memory_bytes=max_in_memory_bytes,
    )


def memory_limit(max_in_memory_bytes=None):
    """Returns the most bytes of images a dataset may take in memory: `max_in_memory_bytes` when given,
    else MEMORY_SHARE of the machine's physical memory (None when that cannot be read: no limit)."""
    if max_in_memory_bytes is not None:
        return max_in_memory_bytes
    try:
        return MEMORY_SHARE * os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def load_tfds(name, *, data_dir=None, train_split="train", eval_split="test", max_in_memory_bytes=None):
    """Loads the TFDS image-classification dataset `name`; returns an ImageData of in-memory
    `ImageSplit`s, or of `StreamedSplit`s when the two splits' uint8 images would take more than
    `memory_limit(max_in_memory_bytes)` bytes.

    The builder's info must have an `image` feature of fixed shape and a `label` class feature;
    the splits must exist. Data not prepared in `data_dir` is downloaded there when `data_dir` is
    given; with TFDS's default data dir a dataset that is not prepared is an error (no download).
    Raises DataError naming the dataset and what is missing.
    """
    tfds = fashion_mnist._tfds()  # pylint: disable=protected-access
    try:
        builder = tfds.builder(name, data_dir=None if data_dir is None else os.fspath(data_dir))
    except Exception as e:  # pylint: disable=broad-except  (TFDS raises its own kinds for unknown names)
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"tfds dataset {name!r}: not a TFDS dataset ({type(e).__name__}: {first_line})", argument="dataset"
        ) from e
    where = f"tfds {name} (data_dir={builder.data_dir})"
    shape, num_classes = _image_features(builder.info.features, tfds, where)
    if not (builder.data_path.exists() and builder.is_prepared()):
        if data_dir is None:
            raise DataError(
                f"{where}: not prepared (no download into the default data dir): prepare it with "
                f"`tfds build {name}`, or name a TFDS data dir to prepare it in"
            )
        fashion_mnist.download_and_prepare(builder, where)
    sizes = {name: info.num_examples for name, info in builder.info.splits.items()}
    _check_splits(where, sizes, (train_split, eval_split))
    counts = {split: _split_size(builder, split) for split in (train_split, eval_split)}
    needed = sum(counts.values()) * int(np.prod(shape))
    limit = memory_limit(max_in_memory_bytes)
    if limit is not None and needed > limit:
        logging.info(
            "%s: its splits take %.2f GiB, more than the %.2f GiB held in memory: streaming them",
            where,
            needed / 2**30,
            limit / 2**30,
        )
        for split, count in counts.items():
            if not count:
                raise DataError(f"{where}: split {split!r} is empty")
        splits = {split: StreamedSplit(builder, split, counts[split], shape, where) for split in counts}
    else:
        splits = {split: _read_tfds_split(builder, split, where, shape, num_classes) for split in counts}
    return ImageData(
        train=splits[train_split], test=splits[eval_split], num_classes=num_classes, name=name, source=where
    )


def _image_features(features, tfds, where):
    """Returns ((H, W, C), K) from a builder's features; raises DataError naming what is missing."""
    names = sorted(features.keys()) if hasattr(features, "keys") else []
    for key in ("image", "label"):
        if key not in names:
            raise DataError(
                f"{where}: has no {key!r} feature (its features: {', '.join(names) or 'none'}); "
                "an image-classification dataset needs 'image' and 'label'"
            )
    image, label = features["image"], features["label"]
    if not isinstance(image, tfds.features.Image):
        raise DataError(f"{where}: feature 'image' is a {type(image).__name__}, not an Image")
    if not isinstance(label, tfds.features.ClassLabel):
        raise DataError(f"{where}: feature 'label' is a {type(label).__name__}, not a ClassLabel")
    shape = tuple(image.shape)
    if len(shape) != 3 or any(d is None for d in shape):
        raise DataError(f"{where}: images have no fixed shape ({list(shape)}); every image must be H x W x C")
    return shape, int(label.num_classes)


def _check_splits(where, sizes, splits):
    """Raises DataError when one of `splits` is not among the builder's (`sizes`: split name -> examples;
    empty when the builder has no metadata, as under mock_data)."""
    for split in splits:
        if sizes and split.split("[")[0] not in sizes:
            raise DataError(f"{where}: has no split {split!r} (its splits: {', '.join(sorted(sizes))})")


def _split_size(builder, split):
    """Returns the number of examples in `split` (slices such as `train[:50%]` too): from the builder's
    metadata when it has them, else the dataset's cardinality, else by counting its examples."""
    try:
        return int(builder.info.splits[split].num_examples)
    except Exception:  # pylint: disable=broad-except  (no metadata, as under mock_data)
        pass
    ds = builder.as_dataset(split=split, shuffle_files=False)
    cardinality = int(ds.cardinality())
    if cardinality >= 0:
        return cardinality
    return int(ds.reduce(np.int64(0), lambda count, _: count + 1))


def _read_tfds_split(builder, split, where, shape, num_classes):
    """Reads one TFDS split into an ImageSplit, checking the image shape and the label range."""
    # Chunks, not batch_size=-1: see `data._read_tfds_split`.
    ds = builder.as_dataset(split=split).map(lambda ex: (ex["image"], ex["label"])).batch(_READ_CHUNK)
    chunks = list(ds.as_numpy_iterator())
    if not chunks:
        raise DataError(f"{where}: split {split!r} is empty")
    images = np.concatenate([x for x, _ in chunks])
    labels = np.concatenate([y for _, y in chunks])
    if images.dtype != np.uint8 or images.shape[1:] != shape:
        raise DataError(
            f"{where}: split {split!r} images are {images.dtype} {list(images.shape)}, "
            f"expected uint8 [N, {', '.join(map(str, shape))}]"
        )
    _check_labels(labels, f"{where} split {split!r}", num_classes)
    return ImageSplit(images=images, labels=labels.astype(np.int32))


def load_npz(path):
    """Loads a `.npz` file holding `x_train`, `y_train`, `x_test`, `y_test`; returns an ImageData.

    Images may be uint8 (kept) or float (as float32, which must be finite), or integers in 0..255
    (as uint8), of shape [N, H, W, C] or [N, H, W] (one channel added); both splits' images must have
    the same shape. Labels are integers of shape [N] or [N, 1]. K is the file's scalar `num_classes`
    when it holds one, else the largest training label plus one; every label must be in 0..K-1.
    Raises DataError naming the file and the array for any problem.
    """
    path = os.fspath(path)
    if not path:
        raise DataError("npz: no file named (npz:PATH)")
    what = fashion_mnist.not_a_regular_file(path)
    if what is not None:
        raise DataError(f"{path}: {what}")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as e:  # pylint: disable=broad-except  (zipfile, pickle and OS errors alike)
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: holds one array, not a .npz archive of {', '.join(NPZ_ARRAYS)}")
    with archive:
        missing = [name for name in NPZ_ARRAYS if name not in archive.files]
        if missing:
            raise DataError(
                f"{path}: missing array(s) {', '.join(missing)} (it holds: "
                f"{', '.join(archive.files) or 'nothing'}; needs {', '.join(NPZ_ARRAYS)})"
            )
        arrays = {name: _npz_array(archive, name, path) for name in NPZ_ARRAYS}
        declared = _npz_array(archive, "num_classes", path) if "num_classes" in archive.files else None
    images = {split: _npz_images(arrays[f"x_{split}"], f"{path}: x_{split}") for split in ("train", "test")}
    if images["train"].shape[1:] != images["test"].shape[1:]:
        raise DataError(
            f"{path}: x_train images are {list(images['train'].shape[1:])} but x_test images are "
            f"{list(images['test'].shape[1:])}"
        )
    labels = {split: _npz_labels(arrays[f"y_{split}"], f"{path}: y_{split}") for split in ("train", "test")}
    for split in ("train", "test"):
        if len(images[split]) != len(labels[split]):
            raise DataError(
                f"{path}: x_{split} holds {len(images[split])} images but y_{split} {len(labels[split])} labels"
            )
    if declared is not None:
        if declared.ndim != 0 or declared.dtype.kind not in "iu" or int(declared) < 1:
            raise DataError(
                f"{path}: num_classes must be a positive integer scalar, got {declared.dtype} {declared.tolist()!r}"
            )
        num_classes, why = int(declared), "the file's num_classes"
        if num_classes > MAX_CLASSES:
            raise DataError(f"{path}: num_classes is {num_classes}, more than the {MAX_CLASSES} a model here can have")
    else:
        num_classes, why = int(labels["train"].max()) + 1, "the largest y_train label + 1"
        if num_classes > MAX_CLASSES:
            at = int(np.argmax(labels["train"]))
            raise DataError(
                f"{path}: y_train: the largest label, {num_classes - 1} at index {at}, means {num_classes} "
                f"classes ({why}), more than the {MAX_CLASSES} a model here can have (labels are class "
                "ids 0..K-1)"
            )
    for split in ("train", "test"):
        _check_labels(labels[split], f"{path}: y_{split}", num_classes, why)
    logging.info(
        "dataset from %s: %d train / %d test images %s, %d classes",
        path,
        len(labels["train"]),
        len(labels["test"]),
        list(images["train"].shape[1:]),
        num_classes,
    )
    return ImageData(
        train=ImageSplit(images["train"], labels["train"].astype(np.int32)),
        test=ImageSplit(images["test"], labels["test"].astype(np.int32)),
        num_classes=num_classes,
        name=NPZ_PREFIX + path,
        source=f"npz file {path}",
    )


def _npz_array(archive, name, path):
    try:
        return archive[name]
    except Exception as e:  # pylint: disable=broad-except  (object arrays, corrupt members)
        raise DataError(f"{path}: array {name} cannot be read ({type(e).__name__}: {e})") from e


def _npz_images(x, where):
    """Returns images as uint8 or float32 [N, H, W, C]; raises DataError naming `where`."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(f"{where}: shape {list(x.shape)}, expected images [N, H, W, C] or [N, H, W]")
    if len(x) == 0:
        raise DataError(f"{where}: holds no images")
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x)
        if bad.any():
            first = np.unravel_index(np.flatnonzero(bad)[0], x.shape)
            raise DataError(
                f"{where}: {int(bad.sum())} NaN or infinite pixel(s), the first in image {first[0]} "
                f"at {list(first[1:])}"
            )
        return x.astype(np.float32)
    if x.dtype.kind in "iu":
        if x.min() < 0 or x.max() > 255:
            raise DataError(f"{where}: integer pixels must be in 0..255 (uint8), found {x.min()}..{x.max()}")
        return x.astype(np.uint8)
    raise DataError(f"{where}: dtype {x.dtype}; images must be uint8 or float")


def _npz_labels(y, where):
    """Returns labels as int64 [N]; raises DataError naming `where`."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{where}: shape {list(y.shape)}, expected labels [N] (or [N, 1])")
    if y.dtype.kind not in "iu":
        raise DataError(f"{where}: dtype {y.dtype}; labels must be integers 0..K-1 (class ids, not one-hot or floats)")
    if len(y) == 0:
        raise DataError(f"{where}: holds no labels")
    return y.astype(np.int64)


def _check_labels(labels, where, num_classes, why="the dataset's class count"):
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise DataError(
            f"{where}: {bad.size} label(s) outside 0..{num_classes - 1} (K={num_classes} from {why}), "
            f"the first {labels[bad[0]]} at index {bad[0]}"
        )
