"""Windows out of token splits: epochs, strides, short splits, the fixed val set and the Feistel permutation.

Each test split holds consecutive integers, so a window's first token says where in the split it starts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.data.batches import ValWindows, WindowSampler, feistel_permute, window_length


def make_split(lengths: list[int]) -> list[np.ndarray]:
    """Shards of consecutive uint16 values: token t of the split (all shards end to end) has value t."""
    bounds = np.cumsum([0] + lengths)
    return [np.arange(bounds[i], bounds[i + 1], dtype=np.uint16) for i in range(len(lengths))]


def expected_starts(lengths: list[int], length: int, stride: int) -> list[tuple[int, int]]:
    """Every (shard, offset) a window of length + 1 tokens may start at, worked out independently."""
    return [(s, o) for s, n in enumerate(lengths) for o in range(0, n - length, stride)]


splits = st.lists(st.integers(0, 120), min_size=1, max_size=4).filter(lambda ls: max(ls) >= 2)


@settings(max_examples=120, deadline=None)
@given(lengths=splits, context=st.integers(1, 48), stride=st.integers(1, 9), seed=st.integers(0, 2**31))
def test_an_epoch_visits_every_window_start_once(lengths, context, stride, seed):
    shards = make_split(lengths)
    sampler = WindowSampler(shards, context, stride=stride, seed=seed)
    length = min(context, max(lengths) - 1)
    assert sampler.length == window_length(shards, context) == length
    wanted = expected_starts(lengths, length, stride)
    assert sampler.n_windows == len(wanted) > 0

    ids = sampler.window_ids(0, sampler.n_windows)
    assert sorted(ids.tolist()) == list(range(sampler.n_windows))
    starts = sampler.starts(ids)
    assert sorted(starts) == wanted  # each start exactly once, all inside their shard, on the stride

    x, y = sampler.batch(0, sampler.n_windows)
    assert x.shape == y.shape == (sampler.n_windows, length)
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
    for row, (s, o) in enumerate(starts):
        first = int(shards[s][0]) + o
        assert x[row].tolist() == list(range(first, first + length))
        assert y[row, -1].item() == first + length <= int(shards[s][-1])


@settings(max_examples=60, deadline=None)
@given(lengths=splits, context=st.integers(1, 48), stride=st.integers(1, 9), seed=st.integers(0, 2**31),
       epochs=st.integers(2, 4))
def test_epochs_reorder_the_same_windows(lengths, context, stride, seed, epochs):
    sampler = WindowSampler(make_split(lengths), context, stride=stride, seed=seed)
    n = sampler.n_windows
    orders = [sampler.window_ids(e * n, n).tolist() for e in range(epochs)]
    for order in orders:
        assert sorted(order) == list(range(n))
    if n >= 8:  # 8! orders: two epochs alike would be a broken key schedule, not chance
        assert len({tuple(o) for o in orders}) == epochs
    # one stream, however it is asked for: a batch across an epoch boundary, or window by window
    flat = sum(orders, [])
    position = n - min(n, 3)
    assert sampler.window_ids(position, len(flat) - position).tolist() == flat[position:]
    assert [int(sampler.window_ids(p, 1)[0]) for p in range(len(flat))] == flat
    again = WindowSampler(make_split(lengths), context, stride=stride, seed=seed)
    assert again.window_ids(0, len(flat)).tolist() == flat  # same seed, same order


def test_seeds_give_different_orders():
    shards = make_split([500, 300])
    orders = {tuple(WindowSampler(shards, 16, seed=seed).window_ids(0, 100).tolist()) for seed in range(10)}
    assert len(orders) == 10
    first = WindowSampler(shards, 16, seed=0).window_ids(0, 100)
    assert not np.array_equal(first, np.arange(100))  # shuffled, not in file order


def test_batches_are_addressed_by_position():
    shards = make_split([200, 77])
    sampler = WindowSampler(shards, 8, stride=3, seed=11)
    x1, y1 = sampler.batch(40, 6)
    x2, y2 = WindowSampler(shards, 8, stride=3, seed=11).batch(40, 6)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    far = 10**12 + 5  # a position is one integer, however far into training
    ids = sampler.window_ids(far, 4)
    assert ((0 <= ids) & (ids < sampler.n_windows)).all()
    assert ids.tolist() == [int(sampler.window_ids(far + i, 1)[0]) for i in range(4)]


def test_windows_shrink_to_a_split_shorter_than_the_context():
    shards = make_split([10])
    sampler = WindowSampler(shards, 32)
    assert sampler.length == 9 and sampler.n_windows == 1
    x, y = sampler.batch(0, 3)  # three epochs of the one window
    assert x.tolist() == [list(range(9))] * 3 and y.tolist() == [list(range(1, 10))] * 3

    shards = make_split([5, 12, 3])  # the longest shard sets the length; shorter ones give no window
    sampler = WindowSampler(shards, 64, stride=1)
    assert sampler.length == 11 and sampler.n_windows == 1
    assert sampler.starts(np.array([0])) == [(1, 0)]
    x, y = sampler.batch(0, 1)
    assert x.tolist() == [list(range(5, 16))] and y.tolist() == [list(range(6, 17))]

    shards = make_split([2])  # the smallest split tokenize allows
    x, y = WindowSampler(shards, 1024).batch(0, 2)
    assert x.tolist() == [[0], [0]] and y.tolist() == [[1], [1]]


def test_sampler_reads_memmapped_shards(tmp_path):
    from pipeline.data.shards import read_shard, write_shard

    write_shard(tmp_path / "a.bin", np.arange(1000) % 50000)
    write_shard(tmp_path / "b.bin", np.arange(1000, 1300))
    shards = [read_shard(tmp_path / "a.bin"), read_shard(tmp_path / "b.bin")]
    sampler = WindowSampler(shards, 16, stride=4, seed=3)
    x, y = sampler.batch(0, sampler.n_windows)
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert sorted(x[:, 0].tolist()) == sorted(int(shards[s][o]) for s, o in expected_starts([1000, 300], 16, 4))


# ---------------------------------------------------------------- val windows


@settings(max_examples=80, deadline=None)
@given(lengths=splits, context=st.integers(1, 48), count=st.integers(1, 300))
def test_val_windows_are_fixed_and_evenly_spread(lengths, context, count):
    shards = make_split(lengths)
    first = ValWindows.build(shards, context, count)
    second = ValWindows.build(shards, context, count)
    assert torch.equal(first.x, second.x) and torch.equal(first.y, second.y)

    length = min(context, max(lengths) - 1)
    every = expected_starts(lengths, length, 1)
    assert len(first) == min(count, len(every))
    assert first.x.shape == first.y.shape == (len(first), length)
    assert torch.equal(first.x[:, 1:], first.y[:, :-1])
    # which windows were chosen, by their first token (a split position) mapped back to a window index
    position_to_index = {int(shards[s][0]) + o: i for i, (s, o) in enumerate(every)}
    chosen = [position_to_index[v] for v in first.x[:, 0].tolist()]
    assert chosen == sorted(set(chosen))
    assert chosen[0] == 0
    if len(chosen) > 1:
        assert chosen[-1] == len(every) - 1  # from the first window to the last
        gaps = np.diff(chosen)
        assert gaps.max() - gaps.min() <= 1  # evenly: gaps differ by one at most
    for row, index in enumerate(chosen):
        s, o = every[index]
        assert first.x[row].tolist() == list(range(int(shards[s][0]) + o, int(shards[s][0]) + o + length))


def test_val_windows_take_all_windows_when_few():
    shards = make_split([20])
    val = ValWindows.build(shards, 8, count=1000)
    assert len(val) == 12
    assert val.x[:, 0].tolist() == list(range(12))


# ---------------------------------------------------------------- the permutation


@pytest.mark.parametrize("key", [(0, 0), (1, 0), (0, 1), (12345, 67), (2**31, 999)])
def test_feistel_is_a_bijection_for_many_n(key):
    for n in [*range(1, 260), 1000, 1023, 1024, 1025, 4097, 65535, 65536, 100_003, 1_000_000]:
        values = np.arange(n, dtype=np.int64)
        out = feistel_permute(values, n, key=key)
        assert out.dtype == np.int64 and out.shape == (n,)
        assert np.array_equal(np.sort(out), values), (n, key)
        if n >= 16:
            assert not np.array_equal(out, values), (n, key)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 20_000), seed=st.integers(0, 2**40), epoch=st.integers(0, 10**6))
def test_feistel_bijection_property(n, seed, epoch):
    out = feistel_permute(np.arange(n, dtype=np.int64), n, key=(seed, epoch))
    assert np.array_equal(np.sort(out), np.arange(n))
    # applied to a subset, it agrees with the whole: a window's place does not depend on its batch-mates
    subset = np.arange(0, n, 7, dtype=np.int64)
    assert np.array_equal(feistel_permute(subset, n, key=(seed, epoch)), out[subset])


def test_feistel_keys_give_different_permutations():
    n = 1000
    perms = {tuple(feistel_permute(np.arange(n), n, key=(seed, epoch)).tolist())
             for seed in range(4) for epoch in range(4)}
    assert len(perms) == 16


def test_cached_blocks_give_the_ids_computed_afresh():
    from pipeline.data.batches import BLOCK_POSITIONS as BLOCK

    sampler = WindowSampler(make_split([5000, 3000]), 16, stride=1, seed=5)
    n = sampler.n_windows
    for position, count in [(0, 8), (BLOCK - 3, 8), (2 * BLOCK - 1, 2), (0, BLOCK), (7 * BLOCK + 5, BLOCK),
                            (n - 4, 8), (3 * n - 1, 3), (10**12, 8), (5, BLOCK + 1), (9, 0)]:
        ids = sampler.window_ids(position, count)
        assert np.array_equal(ids, sampler._compute_ids(position, count)), (position, count)
        ids[:] = -1  # the caller's copy: the cache is untouched
        assert np.array_equal(sampler.window_ids(position, count), sampler._compute_ids(position, count))
    assert len(sampler._blocks) <= 4
