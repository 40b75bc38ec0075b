"""Seeds derived from a base seed and stream keys, so that every source of randomness
(the data order of an epoch, mixup's draws, noise at a grid point) has its own
reproducible, independent stream.

``derive_seed(seed, *keys)`` is ``numpy.random.SeedSequence(seed, spawn_key=keys)``'s
first 64-bit word. Unlike ``seed * 7919 + epoch`` it never maps two streams to one
seed (there, seed 0 at epoch 7919 is seed 1 at epoch 0). String keys name a purpose
(``"shuffle"``, ``"mixup"``) so that two consumers of one seed draw different streams.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def _word(key: int | str) -> int:
    """A stream key as a non-negative integer: ints as they are, strings by SHA-256."""
    if isinstance(key, str):
        return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")
    if key < 0:
        raise ValueError(f"stream keys must be non-negative integers or strings, got {key}")
    return int(key)


def _sequence(seed: int, keys: tuple[int | str, ...]) -> np.random.SeedSequence:
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    return np.random.SeedSequence(seed, spawn_key=tuple(_word(key) for key in keys))


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 64-bit seed for the stream ``keys`` of ``seed``.

    Parameters
    ----------
    seed
        The base seed (a run's or an analysis's ``seed``), non-negative.
    *keys
        Non-negative integers (epoch, grid index, …) and/or strings naming the purpose.

    Returns
    -------
    int
        In ``[0, 2**64)``; equal arguments give equal seeds, different ones independent
        streams (``SeedSequence(seed, spawn_key=keys)``).
    """
    return int(_sequence(seed, keys).generate_state(1, np.uint64)[0])


def torch_generator(seed: int, *keys: int | str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed` ``(seed, *keys)``."""
    return torch.Generator().manual_seed(derive_seed(seed, *keys))


def numpy_generator(seed: int, *keys: int | str) -> np.random.Generator:
    """A NumPy ``Generator`` (PCG64) on the stream ``(seed, *keys)`` of :func:`derive_seed`."""
    return np.random.default_rng(_sequence(seed, keys))
