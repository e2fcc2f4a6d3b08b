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


@pytest.mark.parametrize(
    "n, batch, drop, expected", [(10, 4, False, 3), (10, 4, True, 2), (8, 4, True, 2), (3, 4, False, 1)]
)
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


@pytest.mark.parametrize("first, local, total", [(0, 1, 2), (1, 1, 2), (0, 2, 4), (2, 2, 4), (0, 4, 4)])
def test_each_replica_trains_on_its_own_slice_of_the_global_batch(first, local, total):
    """replicas=(first, local, total): element k of the stream is replica first + k % local's slice of
    global batch k // local, i.e. numpy's slice [r * b/total : (r + 1) * b/total] of that batch of the
    same permutation; across a full epoch and into the next, from any start step."""
    data, batch, seed, n = arrays(20), 8, 5, 20
    steps = n // batch  # 2 per epoch, the remainder of 4 dropped
    per = batch // total
    for start in (0, 1, 3):
        got = batches(
            inputs.array_train_dataset(data, batch, seed, start_step=start, replicas=(first, local, total)),
            (5 - start) * local,
        )
        for k, (bx, by) in enumerate(got):
            step, replica = start + k // local, first + k % local
            perm = inputs.epoch_permutation(n, seed, step // steps).numpy()
            global_batch = perm[(step % steps) * batch : (step % steps + 1) * batch]
            np.testing.assert_array_equal(by, global_batch[replica * per : (replica + 1) * per])
            np.testing.assert_array_equal(bx, data.x[by])


def test_the_replicas_slices_are_disjoint_and_make_up_the_global_batch():
    data, batch, seed = arrays(20), 8, 7
    whole = batches(inputs.array_train_dataset(data, batch, seed), 4)
    pipelines = [batches(inputs.array_train_dataset(data, batch, seed, replicas=(w, 1, 2)), 4) for w in range(2)]
    for step in range(4):
        slices = [pipelines[w][step][1] for w in range(2)]
        assert not set(slices[0]) & set(slices[1])
        np.testing.assert_array_equal(np.concatenate(slices), whole[step][1])


def real_batches(dataset):
    """The `(x, y)` of a weighted eval stream's batches without their padding, checking that no
    batch is empty and that padding (weight 0) only ever stands in for an empty batch."""
    out = []
    for bx, by, w in dataset:
        w = w.numpy()
        assert len(by) >= 1 and set(np.unique(w)) <= {0.0, 1.0}
        if w.min() == 0.0:
            assert w.tolist() == [0.0]  # one stand-in example for a replica with none left
        out.append((bx.numpy()[w > 0], by.numpy()[w > 0]))
    return out


@pytest.mark.parametrize("n, batch, total", [(10, 4, 2), (10, 3, 4), (3, 4, 4), (37, 5, 2), (37, 128, 2), (37, 6, 2)])
def test_eval_replicas_cover_every_example_once_in_equal_numbers_of_batches(n, batch, total):
    """Every example in exactly one replica's batches; every replica the same number of batches
    (ceil(ceil(n / total) / batch), hand-computed from the sizes); the per-pipeline counts sum to n.
    No replica is ever handed an empty batch (oneDNN's AVX-512 convolution cannot run one): a
    replica with nothing left for a step gets one weight-0 example instead."""
    data = arrays(n)
    expected_steps = -(-(-(-n // total)) // batch)
    seen, per_replica = [], []
    for r in range(total):
        got = real_batches(inputs.array_eval_dataset(data, batch, replicas=(r, 1, total)))
        assert len(got) == expected_steps and all(len(by) <= batch for _, by in got)
        for bx, by in got:
            np.testing.assert_array_equal(bx, data.x[by])
        labels = np.concatenate([by for _, by in got])
        np.testing.assert_array_equal(labels, np.arange(r, n, total))  # the oracle: numpy's strided slice
        per_replica.append(len(labels))
        seen.extend(labels)
    assert sorted(seen) == list(range(n)) and sum(per_replica) == n
    # One pipeline holding all replicas interleaves them step by step, the same batches.
    together = [by for _, by in real_batches(inputs.array_eval_dataset(data, batch, replicas=(0, total, total)))]
    assert len(together) == expected_steps * total
    for k, by in enumerate(together):
        np.testing.assert_array_equal(
            by, np.arange(k % total, n, total)[(k // total) * batch : (k // total + 1) * batch]
        )


def test_a_replica_with_no_example_left_gets_one_weight_0_example():
    """3 examples over 4 replicas: replica 3 has none; it is handed example 0 with weight 0."""
    ((bx, by, w),) = list(inputs.array_eval_dataset(arrays(3), 4, replicas=(3, 1, 4)))
    assert by.numpy().tolist() == [0] and w.numpy().tolist() == [0.0]


@pytest.mark.parametrize("size, multiple, padded", [(5, 2, 6), (1, 2, 2), (4, 2, 4), (1, 4, 4), (7, 3, 9)])
def test_pad_batches_pads_to_a_multiple_with_weight_0_copies(size, multiple, padded):
    """A global batch of `size` becomes `padded` = max(multiple, ceil(size / multiple) * multiple)
    examples (hand-computed), the real ones first with weight 1, then copies of the first with weight 0."""
    x = np.arange(size * 2, dtype=np.float32).reshape(size, 2)
    y = np.arange(size, dtype=np.int32) + 10
    ((bx, by, w),) = list(inputs.pad_batches(tf.data.Dataset.from_tensors((x, y)), multiple))
    assert by.numpy().tolist() == list(range(10, 10 + size)) + [10] * (padded - size)
    assert w.numpy().tolist() == [1.0] * size + [0.0] * (padded - size)
    np.testing.assert_array_equal(bx.numpy()[:size], x)


def test_pad_batches_keeps_the_users_sample_weights_apart_from_the_padding_mask():
    """A weight-0 example of the user's stays an example (Keras counts it in a loss's divisor)."""
    x = np.arange(3, dtype=np.float32)[:, None]
    y = np.arange(3, dtype=np.int32)
    sw = np.array([1.0, 0.0, 2.0], np.float32)
    ((bx, by, bw, mask),) = list(inputs.pad_batches(tf.data.Dataset.from_tensors((x, y, sw)), 2))
    assert bw.numpy().tolist() == [1.0, 0.0, 2.0, 1.0] and mask.numpy().tolist() == [1.0, 1.0, 1.0, 0.0]
    assert by.numpy().tolist() == [0, 1, 2, 0]


def test_eval_counts_per_worker_sum_to_the_total():
    """Two workers of two replicas each (pipelines (0, 2, 4) and (2, 2, 4)): 10,001 examples split 5,001 / 5,000."""
    data = arrays(10001)
    counts = [
        int(sum(w.numpy().sum() for _, _, w in inputs.array_eval_dataset(data, 256, replicas=(k * 2, 2, 4))))
        for k in range(2)
    ]
    assert counts == [5001, 5000]
