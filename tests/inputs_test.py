"""clr_loop.inputs: the array batch stream against numpy's own slicing, and the stream's positioning."""

import numpy as np
import pytest
import tensorflow as tf

from clr_loop import inputs


def arrays(n=10):
    x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    return inputs.Arrays.from_user(x, np.arange(n, dtype=np.int32), "x")


def batches(dataset, count):
    return [(bx.numpy(), by.numpy()) for bx, by in dataset.take(count)]


@pytest.mark.parametrize("n, batch, drop, expected", [(10, 4, False, 3), (10, 4, True, 2), (8, 4, True, 2), (3, 4, False, 1)])
def test_steps_per_epoch_by_hand(n, batch, drop, expected):
    assert inputs.steps_per_epoch(n, batch, drop) == expected


def test_unshuffled_stream_is_numpy_slicing_with_the_partial_batch_last():
    data = arrays(10)
    got = batches(inputs.array_train_dataset(data, 4, seed=0, shuffle=False, drop_remainder=False), 6)
    ids = [0, 4, 8, 0, 4, 8]  # two epochs of batches [0:4], [4:8], [8:10]
    for (bx, by), start in zip(got, ids):
        stop = min(start + 4, 10)
        np.testing.assert_array_equal(by, np.arange(start, stop))
        np.testing.assert_array_equal(bx, data.x[start:stop])


def test_each_shuffled_epoch_is_a_permutation_and_epochs_differ():
    data = arrays(10)
    got = batches(inputs.array_train_dataset(data, 5, seed=3, drop_remainder=False), 4)
    first, second = np.concatenate([b[1] for b in got[:2]]), np.concatenate([b[1] for b in got[2:]])
    assert sorted(first) == sorted(second) == list(range(10))
    assert not np.array_equal(first, second)
    for bx, by in got:  # x rows travel with their targets
        np.testing.assert_array_equal(bx, data.x[by])


@pytest.mark.parametrize("start", [0, 1, 3, 5])
def test_a_stream_started_at_a_step_is_the_full_stream_from_that_batch(start):
    data = arrays(10)
    full = batches(inputs.array_train_dataset(data, 4, seed=9, drop_remainder=False), 8)
    late = batches(inputs.array_train_dataset(data, 4, seed=9, drop_remainder=False, start_step=start), 8 - start)
    for (ax, ay), (bx, by) in zip(full[start:], late):
        np.testing.assert_array_equal(ay, by)
        np.testing.assert_array_equal(ax, bx)


def test_eval_dataset_visits_every_example_once_in_order():
    data = arrays(10)
    got = [by.numpy() for _, by in inputs.array_eval_dataset(data, 4)]
    assert [len(b) for b in got] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(got), np.arange(10))


def test_dict_inputs_of_different_lengths_name_both():
    with pytest.raises(inputs.InputError, match=r"x\['a'\] holds 5 examples but x\['b'\] holds 4"):
        inputs.Arrays.from_user({"a": np.zeros((5, 2)), "b": np.zeros((4, 2))}, np.zeros(5), "x")


def test_an_infinite_dataset_is_refused():
    ds = tf.data.Dataset.from_tensor_slices((np.zeros((4, 2)), np.zeros(4))).batch(2).repeat()
    with pytest.raises(inputs.InputError, match="infinite"):
        inputs.check_dataset(ds)
