"""What `fit` trains and evaluates on: arrays or datasets, turned into the batches the loop consumes.

Two kinds of training input:

- **Arrays** (numpy arrays or tensors, or dicts/tuples/lists of them for multi-input models) are held
  in memory. Epoch k visits the examples in `epoch_permutation(N, seed, k)` order (a stateless
  shuffle), so the batch at any step is a pure function of (seed, step): a resumed run rebuilds the
  stream at the restored step and needs no iterator state in its checkpoint.
- **A `tf.data.Dataset`** of `(x, y)` batches is used as given, one pass per epoch (Keras's
  meaning); its iterator is checkpointed (tf.data saves iterator state), so a resumed run
  continues the same stream.

Validation data is a tuple of arrays or a Dataset; every example is evaluated once, the last
partial batch included. Bad input raises `InputError` naming what is wrong.
"""

import dataclasses
import inspect
from typing import Any, Optional

import keras
import numpy as np
import tensorflow as tf

from clr_loop import _keras
from clr_loop import errors


# How array batches reach the train step (`clr_loop.runner.resolve_input_mode`): gathered on the
# device inside the compiled loop (`DeviceBatches`), through tf.data (`array_train_dataset`), or
# whichever fits.
INPUT_MODES = ("auto", "device", "pipeline")


class InputError(errors.Error, ValueError):
    """Raised for unusable training or validation input; the message names the culprit."""


def epoch_permutation(num_examples, seed, epoch):
    """Returns the int32 permutation of `range(num_examples)` that orders training epoch `epoch`.

    It is a stateless function of (seed, epoch), so the data order at any step can be rebuilt
    from the step alone, in tf.data or inside a compiled graph.
    """
    key = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.experimental.stateless_shuffle(tf.range(num_examples, dtype=tf.int32), seed=key)


def steps_per_epoch(num_examples, batch_size, drop_remainder=True):
    """Returns the number of batches (steps) in one epoch of `num_examples` at `batch_size`.

    `num_examples // batch_size` with `drop_remainder` (the last partial batch is dropped), else
    `ceil(num_examples / batch_size)`. Raises InputError for a non-positive batch size, and for
    an epoch of zero steps (fewer examples than one batch when dropping the remainder).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}", argument="batch_size")
    steps = num_examples // batch_size if drop_remainder else -(-num_examples // batch_size)
    if steps == 0:
        raise InputError(
            f"{num_examples} examples are fewer than one batch of {batch_size} (the last partial batch is dropped)"
        )
    return steps


def _as_array(value, where):
    if isinstance(value, (tf.Tensor, tf.Variable)):
        value = value.numpy()
    if isinstance(value, tf.RaggedTensor) or isinstance(value, tf.SparseTensor):
        raise InputError(f"{where}: ragged and sparse tensors are not supported; pass a dense array")
    try:
        array = np.asarray(value)
    except Exception as e:  # pylint: disable=broad-except  (numpy raises many kinds here)
        raise InputError(f"{where}: cannot be read as an array ({type(e).__name__}: {e})") from e
    if array.dtype == object and array.size and all(isinstance(v, (str, bytes)) for v in array.flat):
        array = array.astype(bytes if isinstance(next(iter(array.flat)), bytes) else str)
    if array.dtype == object:
        raise InputError(f"{where}: holds Python objects (dtype object), not numbers")
    if array.ndim == 0:
        raise InputError(f"{where}: is a scalar; it needs a first (example) dimension")
    return array


def _flatten_with_names(structure, name):
    """Returns [(name, leaf)] for a nested dict/tuple/list of arrays, names like `x['image']`."""
    if isinstance(structure, dict):
        out = []
        for key in structure:
            out.extend(_flatten_with_names(structure[key], f"{name}[{key!r}]"))
        return out
    if isinstance(structure, (tuple, list)):
        out = []
        for i, item in enumerate(structure):
            out.extend(_flatten_with_names(item, f"{name}[{i}]"))
        return out
    return [(name, structure)]


@dataclasses.dataclass(frozen=True)
class Arrays:
    """In-memory examples: `x` and `y` as nested structures of numpy arrays with one first dimension.

    Build it with `Arrays.from_user(x, y, what)`, which checks that every array has the same number
    of examples (naming the two that differ) and that there is at least one.
    """

    x: Any
    y: Any
    num_examples: int
    sample_weight: Any = None

    @property
    def parts(self):
        """The arrays as Keras packs a batch: `(x,)` without targets, `(x, y)`, or `(x, y, sample_weight)`."""
        if self.y is None:
            return (self.x,)
        if self.sample_weight is None:
            return (self.x, self.y)
        return (self.x, self.y, self.sample_weight)

    def take(self, index):
        """Returns the Arrays of the examples at `index` (a slice or index array)."""
        pick = lambda a: a[index]  # noqa: E731
        parts = tf.nest.map_structure(pick, self.parts)
        n = len(tf.nest.flatten(parts)[0])
        return Arrays(parts[0], parts[1] if len(parts) > 1 else None, n, parts[2] if len(parts) > 2 else None)

    @classmethod
    def from_user(cls, x, y, what="x", sample_weight=None, need_y=True):
        """Returns Arrays for `x`, `y` (None allowed unless `need_y`) and `sample_weight` (None, or
        one weight per example); raises InputError naming the culprit for bad input."""
        if x is None:
            raise InputError(f"{what} is None: pass the inputs (arrays or a tf.data.Dataset)")
        y_name = "y" if what == "x" else f"{what} targets"
        if y is None and need_y:
            raise InputError(f"{y_name} is None: the targets are needed to compute the model's compiled loss")
        if y is None and sample_weight is not None:
            raise InputError("sample_weight needs targets y")
        lengths = {}
        x_arrays = _convert(x, what, lengths)
        y_arrays = None if y is None else _convert(y, y_name, lengths)
        weights = None if sample_weight is None else _convert(sample_weight, "sample_weight", lengths)
        first = next(iter(lengths))
        for n, length in lengths.items():
            if length != lengths[first]:
                raise InputError(
                    f"{first} holds {lengths[first]} examples but {n} holds {length}: every input and "
                    "target needs one entry per example"
                )
        if lengths[first] == 0:
            raise InputError(f"{what} is empty: there are no examples to train on")
        return cls(x=x_arrays, y=y_arrays, num_examples=lengths[first], sample_weight=weights)


def _convert(structure, name, lengths):
    """Returns `structure` (dicts, tuples, lists) with numpy arrays as leaves, lists as tuples;
    records each leaf's example count in `lengths` under its name (like `x['image']`)."""
    if isinstance(structure, dict):
        return {k: _convert(v, f"{name}[{k!r}]", lengths) for k, v in structure.items()}
    if isinstance(structure, (list, tuple)):
        return tuple(_convert(v, f"{name}[{i}]", lengths) for i, v in enumerate(structure))
    array = _as_array(structure, name)
    lengths[name] = len(array)
    return array


def array_train_dataset(arrays, batch_size, seed, *, shuffle=True, drop_remainder=True, start_step=0, replicas=None):
    """Returns an endless tf.data.Dataset of `(x, y)` training batches of `arrays`, from `start_step`.

    Epoch k is `steps_per_epoch(N, batch_size, drop_remainder)` batches in the order
    `epoch_permutation(N, seed, k)` (or `range(N)` without `shuffle`); without `drop_remainder`
    its last batch holds the remaining examples. The stream is a pure function of (seed, step):
    `start_step=s` yields exactly what the stream from step 0 yields from its s-th batch on.

    For data parallelism, `replicas=(first, count, total)` cuts every global batch into `total`
    equal per-replica slices and yields the slices of replicas `first .. first+count-1` in order,
    one element each: what one input pipeline of a `tf.distribute` strategy hands its local
    replicas (then `drop_remainder` must be True, so the slices are equal).
    """
    n = arrays.num_examples
    steps = steps_per_epoch(n, batch_size, drop_remainder)
    first_epoch, skip = divmod(int(start_step), steps)
    first, count, total = replicas or (0, 1, 1)
    if batch_size % total or not 0 <= first < first + count <= total or (total > 1 and not drop_remainder):
        raise ValueError(f"cannot cut batches of {batch_size} into replicas {replicas}")

    # tf.data would run autograph's source transformation on these functions (0.1 s of start-up);
    # they have no Python control flow to convert.
    @tf.autograph.experimental.do_not_convert
    def epoch_batches(epoch):
        perm = epoch_permutation(n, seed, epoch) if shuffle else tf.range(n, dtype=tf.int32)
        if drop_remainder:
            perm = perm[: steps * batch_size]
            # [step, replica, example]: this pipeline keeps its replicas' slices of every batch.
            slices = tf.reshape(perm, [steps, total, batch_size // total])[:, first : first + count]
            return tf.data.Dataset.from_tensor_slices(tf.reshape(slices, [steps * count, batch_size // total]))
        return tf.data.Dataset.from_tensor_slices(perm).batch(batch_size)

    # The arrays are the cache: they are already in memory, and gathering batches from them by
    # index keeps the order computable from the step.
    data = tf.nest.map_structure(tf.constant, arrays.parts)

    @tf.autograph.experimental.do_not_convert
    def gather(idx):
        return tf.nest.map_structure(lambda a: tf.gather(a, idx), data)

    ds = tf.data.Dataset.counter(first_epoch).flat_map(epoch_batches).skip(skip * count)
    ds = ds.apply(tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY))
    ds = ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def array_bytes(arrays):
    """Returns the bytes the training arrays `arrays` (an Arrays) take: the sum of their leaves' nbytes."""
    return int(sum(a.nbytes for a in tf.nest.flatten(arrays.parts)))


class DeviceBatches:
    """The training batches of `arrays` gathered on the device, inside the compiled loop: device-resident data.

    The whole training set is placed on `device` once ("/GPU:0" when a GPU is present, else
    "/CPU:0"); `next()`, called while the loop traces, returns the ops that gather the `(x, y)`
    batch at the current `position` (a step number, int64 variable) and advance it by one, so no
    tf.data iterator, thread or host-to-device copy runs per step. `at(step)` positions it (a
    resume; the position counts batches trained on, which is also right where a LossScaleOptimizer's
    skipped steps leave `optimizer.iterations` behind) and returns it. The
    batches are exactly `array_train_dataset`'s (one replica): step s is batch `s % steps_per_epoch`
    of epoch `s // steps_per_epoch` in `epoch_permutation(N, seed, epoch)` order (`range(N)`
    without `shuffle`), the last one holding the remainder without `drop_remainder`; their static
    shapes are the pipeline's too (the batch dimension is `batch_size` with `drop_remainder`, else
    None). The epoch's permutation is kept in a variable and recomputed only when the epoch changes;
    it is a pure function of (seed, epoch), so it needs no checkpoint. Raises InputError when the
    set does not fit in the device's memory.
    """

    def __init__(self, arrays, batch_size, seed, *, shuffle=True, drop_remainder=True, device=None):
        self.num_examples = n = arrays.num_examples
        self.batch_size = int(batch_size)
        self.steps_per_epoch = steps_per_epoch(n, batch_size, drop_remainder)
        self.seed = seed
        self.shuffle = shuffle
        self.drop_remainder = drop_remainder
        if device is None:
            device = "/GPU:0" if tf.config.list_logical_devices("GPU") else "/CPU:0"
        self.device = device
        try:
            with tf.device(device):
                place = lambda a: tf.identity(tf.constant(a))  # noqa: E731
                self.data = tf.nest.map_structure(place, arrays.parts)
        except tf.errors.ResourceExhaustedError as e:
            raise InputError(
                f"input_mode='device': the training set ({array_bytes(arrays) / 2**20:.0f} MiB) does not fit in "
                f"{device}'s memory; feed it through tf.data (input_mode='pipeline' or 'auto')",
                argument="input_mode",
            ) from e
        with tf.device(device):
            self._perm = tf.Variable(tf.zeros([n], tf.int32), trainable=False, name="device_batches_perm")
            self._perm_epoch = tf.Variable(tf.constant(-1, tf.int64), trainable=False, name="device_batches_epoch")
        self.position = tf.Variable(tf.constant(0, tf.int64), trainable=False, name="device_batches_position")

    def at(self, step):
        """Positions the batches at `step` (the next `next()` gathers that step's batch); returns self."""
        self.position.assign(step)
        return self

    def __iter__(self):
        return self

    def _order(self, epoch):
        if not self.shuffle:
            return tf.range(self.num_examples, dtype=tf.int32)

        def refresh():
            self._perm.assign(epoch_permutation(self.num_examples, self.seed, epoch))
            self._perm_epoch.assign(epoch)
            return tf.constant(True)

        tf.cond(tf.not_equal(self._perm_epoch.read_value(), epoch), refresh, lambda: tf.constant(False))
        return self._perm.read_value()

    def __next__(self):
        with tf.name_scope("device_batches"), tf.device(self.device):
            step = self.position.read_value()
            self.position.assign_add(1)  # after the read: ordered by the function's automatic control dependencies
            epoch = step // self.steps_per_epoch
            start = tf.cast(step % self.steps_per_epoch, tf.int32) * self.batch_size
            if self.drop_remainder:
                size = self.batch_size  # static: every batch is whole
            else:
                size = tf.minimum(self.batch_size, self.num_examples - start)
            idx = tf.slice(self._order(epoch), tf.reshape(start, [1]), tf.reshape(size, [1]))
            gather = lambda a: tf.gather(a, idx)  # noqa: E731
            return tf.nest.map_structure(gather, self.data)


def array_eval_dataset(arrays, batch_size, replicas=None):
    """Returns a finite, unshuffled tf.data.Dataset of batches holding every example once.

    Without `replicas` it yields `(x, y)` batches of `batch_size` examples in order, the last one
    the remainder. For data parallelism, `replicas=(first, count, total)` gives replica r of `total`
    the examples r, r + total, r + 2 * total, ... in batches of `batch_size`, and every replica the
    same number of batches, `ceil(ceil(N / total) / batch_size)`, so all replicas run the same
    number of eval steps and together see every example exactly once. It then yields
    `(x, y, weight)` (`(x, y, sample_weight, weight)` for arrays with sample weights): a replica
    left with no example for a step (it has fewer examples than another) gets one copy of example 0
    with weight 0 instead of an empty batch, which some kernels cannot run (oneDNN's AVX-512
    convolution); `weight`, the padding mask, is 1.0 for every real example.
    It yields, step by step, one batch for each of replicas `first .. first + count - 1` in order:
    what one input pipeline of a `tf.distribute` strategy hands its local replicas.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if replicas is None:
        ds = tf.data.Dataset.from_tensor_slices(arrays.parts)
        return ds.cache().batch(batch_size).prefetch(tf.data.AUTOTUNE)
    first, count, total = replicas
    if not 0 <= first < first + count <= total:
        raise ValueError(
            f"replicas must be (first, count, total) with 0 <= first < first + count <= total, got {replicas}"
        )
    n = arrays.num_examples
    steps = -(-(-(-n // total)) // batch_size)
    data = tf.nest.map_structure(tf.constant, arrays.parts)

    @tf.autograph.experimental.do_not_convert
    def batch(k):
        step, replica = k // count, first + k % count
        start = replica + step * batch_size * total
        idx = tf.range(start, tf.minimum(tf.constant(n, tf.int64), start + batch_size * total), total)
        filler = tf.zeros([tf.maximum(1 - tf.size(idx), 0)], tf.int64)
        weight = tf.concat([tf.ones(tf.shape(idx), tf.float32), tf.zeros(tf.shape(filler), tf.float32)], 0)
        idx = tf.concat([idx, filler], 0)
        gather = lambda a: tf.gather(a, idx)  # noqa: E731
        return (*tf.nest.map_structure(gather, data), weight)

    return tf.data.Dataset.range(steps * count).map(batch).prefetch(tf.data.AUTOTUNE)


def pad_batches(dataset, multiple):
    """Returns `dataset`'s batches (`(x,)`, `(x, y)` or `(x, y, sample_weight)`) with a padding mask
    appended, `(..., weight)`, each padded to a multiple of `multiple` examples (at least
    `multiple`) with weight-0 copies of its first example.

    A `tf.distribute` strategy splits a global batch over its replicas; padded, no replica gets an
    empty batch, and the mask keeps the padding out of every sum. The mask is kept apart from the
    user's sample weights, since Keras counts a weight-0 example in a loss's divisor and in the
    unweighted metrics.
    """

    @tf.autograph.experimental.do_not_convert
    def pad(*element):
        size = tf.shape(tf.nest.flatten(element)[0], out_type=tf.int64)[0]
        padded = tf.maximum(-(-size // multiple) * multiple, multiple)
        idx = tf.concat([tf.range(size), tf.zeros([padded - size], tf.int64)], 0)
        weight = tf.cast(tf.range(padded) < size, tf.float32)
        gather = lambda a: tf.gather(a, idx)  # noqa: E731
        return (*tf.nest.map_structure(gather, element), weight)

    return dataset.map(pad)


def check_dataset(dataset, what="x"):
    """Checks that `dataset` yields `(x, y)` batches; returns its number of batches or None (unknown).

    Raises InputError naming `what` for a dataset whose elements are not `(x, y)` pairs (sample
    weights are not supported), one that looks unbatched (scalar targets), and an infinite one
    (an epoch is one pass over the dataset).
    """
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or not 1 <= len(spec) <= 3:
        shape = type(spec).__name__ if not isinstance(spec, tuple) else f"a tuple of {len(spec)}"
        raise InputError(
            f"{what}: a tf.data.Dataset must yield x, (x,), (x, y) or (x, y, sample_weight) batches, but it yields {shape}"
        )
    for name, leaf in _flatten_with_names(spec[1] if len(spec) > 1 else (), f"{what} targets"):
        if isinstance(leaf, tf.TensorSpec) and leaf.shape.rank == 0:
            raise InputError(f"{what}: {name} are scalars: the dataset is not batched; call .batch(batch_size) on it")
    cardinality = int(dataset.cardinality())
    if cardinality == tf.data.INFINITE_CARDINALITY:
        raise InputError(f"{what}: the dataset is infinite; an epoch is one pass over it, so it must end")
    if cardinality == 0:
        raise InputError(f"{what}: the dataset is empty")
    return None if cardinality < 0 else cardinality


def check_fits_model(model, element_spec, what):
    """Raises InputError when the inputs of `element_spec` (an `(x, y)` spec) do not fit `model`'s inputs.

    Checks the rank and the known non-batch dimensions of each input against `model.inputs`
    (for a model whose input shapes are known; otherwise nothing is checked).
    """
    inputs = getattr(model, "inputs", None)
    try:
        model_inputs = list(inputs) if inputs else []
    except (AttributeError, ValueError):
        model_inputs = []
    if not model_inputs:
        return
    given = [leaf for _, leaf in _flatten_with_names(element_spec[0], what)]
    if len(given) != len(model_inputs):
        raise InputError(f"{what}: the model takes {len(model_inputs)} input(s), but the data holds {len(given)}")
    if isinstance(element_spec[0], dict):
        return  # dict inputs are matched to the model's inputs inside Keras
    for (name, spec), tensor in zip(_flatten_with_names(element_spec[0], what), model_inputs):
        expected = tuple(tensor.shape)
        shape = tuple(spec.shape)
        if len(shape) == len(expected) - 1 and expected[-1] == 1:
            continue  # Keras adds the last dimension of 1 (rank-1 x for Input((1,)))
        if len(shape) != len(expected) or any(
            e is not None and s is not None and e != s for s, e in zip(shape[1:], expected[1:])
        ):
            raise InputError(
                f"{name}: batches of shape {list(shape)} do not fit the model's input of shape {list(expected)}"
                + (" (is the dataset batched?)" if len(shape) == len(expected) - 1 else "")
            )


def element_spec_of(arrays, batch_size=None):
    """Returns the `(x, y)` TensorSpec structure of batches of `arrays` (batch dimension `batch_size`)."""

    def spec(a):
        return tf.TensorSpec((batch_size,) + a.shape[1:], tf.string if a.dtype.kind in "USO" else tf.as_dtype(a.dtype))

    return tf.nest.map_structure(spec, arrays.parts)


@dataclasses.dataclass(frozen=True)
class TrainInput:
    """The training input of a run: `arrays` (in memory) or `dataset` (batches as given).

    `steps_per_epoch` is known for arrays and for a dataset of known cardinality, else None (it is
    found in the first epoch). `num_examples` is the arrays' example count, None for a dataset.
    """

    arrays: Optional[Arrays]
    dataset: Optional[tf.data.Dataset]
    batch_size: Optional[int]
    steps_per_epoch: Optional[int]
    shuffle: bool
    drop_remainder: bool

    @property
    def num_examples(self):
        """The number of training examples (arrays), or None for a dataset."""
        return self.arrays.num_examples if self.arrays is not None else None


def make_train_input(x, y, batch_size, *, shuffle=True, drop_remainder=False):
    """Returns the TrainInput for `fit`'s `x`, `y` and `batch_size`; raises InputError for bad input.

    A `tf.data.Dataset` `x` must yield `(x, y)` batches and `y` must be None; `batch_size` must
    then be None (the dataset is batched already). Arrays need `y` and take `batch_size`
    (default 32, as `model.fit`).
    """
    if isinstance(x, tf.data.Dataset):
        if y is not None:
            raise InputError("y must be None when x is a tf.data.Dataset (the dataset yields (x, y) batches)")
        if batch_size is not None:
            raise InputError("batch_size must be None when x is a tf.data.Dataset (the dataset is batched already)")
        steps = check_dataset(x, "x")
        return TrainInput(None, x, None, steps, shuffle, drop_remainder)
    if isinstance(x, (tf.distribute.DistributedDataset, tf.data.Iterator)) or hasattr(x, "__next__"):
        raise InputError(
            f"x is a {type(x).__name__}: pass arrays or a tf.data.Dataset (iterators and generators cannot be resumed)"
        )
    batch_size = 32 if batch_size is None else batch_size
    arrays = Arrays.from_user(x, y, "x")
    steps = steps_per_epoch(arrays.num_examples, batch_size, drop_remainder)
    return TrainInput(arrays, None, batch_size, steps, shuffle, drop_remainder)


def make_validation(validation_data, batch_size):
    """Returns `(arrays, dataset)` for `fit`'s `validation_data` (one of them None), or (None, None).

    A tuple `(x_val, y_val)` becomes Arrays (evaluated in batches of `batch_size`); a Dataset must
    yield `(x, y)` batches. Anything else, or arrays of mismatched lengths, raises InputError naming
    `validation_data`.
    """
    if validation_data is None:
        return None, None
    if isinstance(validation_data, tf.data.Dataset):
        validation_data = _as_tuple_dataset(validation_data)
        check_dataset(validation_data, "validation_data")
        return None, validation_data
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
        raise InputError(
            "validation_data must be a tuple (x_val, y_val) or (x_val, y_val, val_sample_weight), or a "
            "tf.data.Dataset of batches"
        )
    if batch_size < 1:
        raise InputError(
            f"validation_batch_size must be a positive integer, got {batch_size!r}", argument="validation_batch_size"
        )
    weights = validation_data[2] if len(validation_data) == 3 else None
    return Arrays.from_user(validation_data[0], validation_data[1], "validation_data x", sample_weight=weights), None


def _as_tuple_dataset(dataset):
    """Returns `dataset` with every element a tuple ((x,), (x, y) or (x, y, sample_weight)), as
    Keras unpacks it: a dataset of bare `x` elements is mapped to `(x,)`."""
    if isinstance(dataset.element_spec, tuple):
        return dataset
    return dataset.map(lambda *element: element if len(element) > 1 else (element[0],))


def _to_dataset(x, what, workdir):
    """Returns a tf.data.Dataset of batches for a `keras.utils.PyDataset` or a Python generator
    `x` (through Keras's own adapters), or None for any other `x`. With a workdir they are
    refused: their position cannot be checkpointed."""
    if isinstance(x, keras.utils.PyDataset):
        kind, to_dataset = "a keras.utils.PyDataset", _keras.py_dataset_to_tf_dataset
    elif inspect.isgenerator(x):
        kind, to_dataset = "a Python generator", _keras.generator_to_tf_dataset
    else:
        return None
    if workdir:
        raise InputError(
            f"{what} is {kind}, whose position a checkpoint cannot hold: pass arrays or a "
            "tf.data.Dataset to train with a workdir"
        )
    return _as_tuple_dataset(to_dataset(x))


def make_fit_inputs(
    model,
    x,
    y,
    batch_size,
    *,
    shuffle=True,
    drop_remainder=False,
    validation_split=0.0,
    validation_data=None,
    sample_weight=None,
    class_weight=None,
    validation_batch_size=None,
    validation_steps=None,
    workdir=None,
):
    """Returns `(TrainInput, (val_arrays, val_dataset))` for `fit`'s arguments, as `model.fit` reads them.

    `x` is arrays (with `y`, or without for a model whose loss needs no targets), a
    `tf.data.Dataset`, a `keras.utils.PyDataset` or a generator (the last two without a workdir).
    `sample_weight` (one weight per example) or `class_weight` ({class: weight}, turned into sample
    weights from `y` as Keras does) weigh the training loss. `validation_split` takes the last
    fraction of the arrays, before any shuffling, as validation data (with their sample weights);
    `validation_data` is `(x, y)`, `(x, y, sample_weight)` or a Dataset; `validation_steps` caps
    the validation batches. Raises InputError naming the argument for bad input.
    """
    if class_weight is not None and sample_weight is not None:
        raise InputError("pass class_weight or sample_weight, not both (as model.fit)")
    if class_weight is not None and not isinstance(class_weight, dict):
        raise InputError(f"class_weight must be a dict {{class index: weight}}, got {type(class_weight).__name__}")
    converted = _to_dataset(x, "x", workdir)
    if converted is not None:
        x = converted
    if isinstance(x, tf.data.Dataset):
        if validation_split:
            raise InputError("validation_split needs arrays x (as model.fit): pass validation_data for a Dataset")
        if sample_weight is not None or class_weight is not None:
            raise InputError(
                "sample_weight and class_weight need arrays x: a Dataset yields (x, y, sample_weight) itself"
            )
        train_input = make_train_input(
            _as_tuple_dataset(x), y, batch_size, shuffle=shuffle, drop_remainder=drop_remainder
        )
    else:
        need_y = _keras.compiled_loss(model) is not None
        if isinstance(x, (tf.distribute.DistributedDataset, tf.data.Iterator)) or hasattr(x, "__next__"):
            raise InputError(
                f"x is a {type(x).__name__}: pass arrays, a tf.data.Dataset, a keras.utils.PyDataset or a generator"
            )
        batch_size = 32 if batch_size is None else batch_size
        if class_weight is not None:
            if y is None or isinstance(y, (dict, list, tuple)):
                raise InputError("class_weight needs one array of targets y (a model with one output), as in model.fit")
            sample_weight = _keras.class_weight_to_sample_weights(_as_array(y, "y"), class_weight)
        arrays = Arrays.from_user(x, y, "x", sample_weight=sample_weight, need_y=need_y)
        if validation_split:
            split_at = int(np.floor(arrays.num_examples * (1.0 - validation_split)))
            if split_at in (0, arrays.num_examples):
                raise InputError(
                    f"validation_split={validation_split} leaves no training or no validation example "
                    f"of the {arrays.num_examples}"
                )
            if validation_data is None:
                validation_data = arrays.take(slice(split_at, None))
            arrays = arrays.take(slice(0, split_at))
        steps = steps_per_epoch(arrays.num_examples, batch_size, drop_remainder)
        train_input = TrainInput(arrays, None, batch_size, steps, shuffle, drop_remainder)
    val_batch = validation_batch_size or train_input.batch_size or 32
    if isinstance(validation_data, Arrays):
        val = (validation_data, None)
    else:
        converted = _to_dataset(validation_data, "validation_data", None)
        val = make_validation(converted if converted is not None else validation_data, val_batch)
    if validation_steps is not None:
        arrays, dataset = val
        if arrays is not None:
            dataset = array_eval_dataset(arrays, val_batch)
        if dataset is not None:
            val = (None, dataset.take(validation_steps))
    return train_input, val
