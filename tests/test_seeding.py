"""transferscope.seeding: one derivation of seeds (SeedSequence) for every random stream,
and the loader's epoch order drawn from it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transferscope.data.tensors import ImageLoader, ImageSet
from transferscope.seeding import derive_seed, numpy_generator, torch_generator


def test_derive_seed_is_the_seed_sequence_word():
    expected = int(np.random.SeedSequence(3, spawn_key=(1, 2, 0)).generate_state(1, np.uint64)[0])
    assert derive_seed(3, 1, 2, 0) == expected
    assert derive_seed(3) == int(np.random.SeedSequence(3).generate_state(1, np.uint64)[0])
    assert 0 <= derive_seed(0, "loader", 7) < 2 ** 64


def test_streams_are_distinct_where_seed_arithmetic_collided():
    assert derive_seed(0, 7919) != derive_seed(1, 0)  # seed * 7919 + epoch: both were 7919
    assert derive_seed(0, 100_003) != derive_seed(1, 0)
    assert derive_seed(0, "loader", 1) != derive_seed(0, "mixup permutation", 1)
    assert derive_seed(0, 1, 2) != derive_seed(0, 2, 1)
    seeds = {derive_seed(seed, epoch) for seed in range(20) for epoch in range(50)}
    assert len(seeds) == 1000


def test_generators_replay_their_stream():
    a, b = torch_generator(5, "noise", 3), torch_generator(5, "noise", 3)
    assert torch.equal(torch.randn(8, generator=a), torch.randn(8, generator=b))
    assert not torch.equal(torch.randn(8, generator=torch_generator(5, "noise", 4)),
                           torch.randn(8, generator=torch_generator(5, "noise", 3)))
    reference = np.random.default_rng(np.random.SeedSequence(5, spawn_key=(3,)))
    assert numpy_generator(5, 3).random(4).tolist() == reference.random(4).tolist()


def test_negative_seeds_and_keys_are_refused():
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        derive_seed(-1)
    with pytest.raises(ValueError, match="stream keys must be non-negative"):
        derive_seed(0, -2)


def _epoch_order(seed: int, epoch: int, n: int = 12) -> list[int]:
    data = ImageSet(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1), torch.arange(n))
    loader = ImageLoader(data, batch_size=n, mean=(0.0,), std=(1.0,), shuffle=True, seed=seed)
    loader.set_epoch(epoch)
    return [int(t) for _, targets in loader for t in targets]


def test_loader_order_comes_from_the_derived_stream():
    assert _epoch_order(4, 2) == torch.randperm(12, generator=torch_generator(4, "loader", 2)).tolist()
    assert _epoch_order(4, 2) == _epoch_order(4, 2)
    assert _epoch_order(0, 100_003) != _epoch_order(1, 0)  # seed * 100_003 + epoch made these one order
