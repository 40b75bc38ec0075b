"""BlockShuffle (Sec. 3.1 of Neyshabur et al. 2020): one fixed permutation of b x b
blocks (or of all C*H*W scalars for "*") per seed, the same for every image of every
batch and split; checked against a per-image float64 NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transferscope.config import DataConfig
from transferscope.data.domain import block_shuffle_for
from transferscope.data.shuffle import BlockShuffle

INT_SIZES = [1, 2, 4, 8]
ALL_SIZES = INT_SIZES + ["*"]


def images(n: int = 5, c: int = 3, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    """Random floats: every value distinct (almost surely), so matches are unambiguous."""
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def blocks_of(image: torch.Tensor, b: int) -> torch.Tensor:
    """(C, H, W) -> (H/b * W/b, C, b, b), blocks in row-major order."""
    c, h, w = image.shape
    return image.reshape(c, h // b, b, w // b, b).permute(1, 3, 0, 2, 4).reshape(-1, c, b, b)


def reference_shuffle(x: np.ndarray, shuffle: BlockShuffle) -> np.ndarray:
    """Per-image loop over output blocks. The object's index says, for each output
    position, which input position it reads; the top-left pixel of each output block
    names the input block copied there whole (all channels, inner layout kept)."""
    n, c, h, w = x.shape
    index = shuffle.index(c, h, w).numpy()
    out = np.empty_like(x)
    for i in range(n):
        if shuffle.block_size == "*":
            out[i] = x[i].reshape(-1)[index].reshape(c, h, w)
            continue
        b = shuffle.block_size
        for row in range(0, h, b):
            for col in range(0, w, b):
                source = index[row * w + col]
                src_row, src_col = divmod(int(source), w)
                out[i, :, row:row + b, col:col + b] = x[i, :, src_row:src_row + b, src_col:src_col + b]
    return out


@pytest.mark.parametrize("block_size", ALL_SIZES)
def test_is_a_permutation_of_each_image(block_size):
    x = images()
    out = BlockShuffle(block_size, seed=3)(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out.flatten(1).sort(1).values, x.flatten(1).sort(1).values)
    assert not torch.equal(out, x)
    if block_size != "*":  # blocks keep their channels: each channel is permuted within itself
        assert torch.equal(out.flatten(2).sort(2).values, x.flatten(2).sort(2).values)


@pytest.mark.parametrize("block_size", INT_SIZES)
def test_blocks_move_whole(block_size):
    x = images(n=3)
    out = BlockShuffle(block_size, seed=1)(x)
    for image_in, image_out in zip(x, out):
        inputs = blocks_of(image_in, block_size).flatten(1)
        outputs = blocks_of(image_out, block_size).flatten(1)
        # matches[k, j]: output block k equals input block j (channels and layout included)
        matches = (outputs[:, None, :] == inputs[None, :, :]).all(2)
        assert torch.equal(matches.sum(1), torch.ones(len(outputs), dtype=torch.long))
        source = matches.float().argmax(1)
        assert torch.equal(source.sort().values, torch.arange(len(inputs)))
        assert not torch.equal(source, torch.arange(len(inputs)))


def test_star_permutes_across_channels():
    x = torch.arange(3, dtype=torch.float64).view(1, 3, 1, 1).expand(2, 3, 8, 8).clone()  # channel c holds c
    out = BlockShuffle("*", seed=0)(x)
    for channel in range(3):
        assert set(out[0, channel].unique().tolist()) == {0.0, 1.0, 2.0}
    index = BlockShuffle("*", seed=0).index(3, 8, 8)
    assert torch.equal(index.sort().values, torch.arange(3 * 8 * 8))


@pytest.mark.parametrize("block_size", ALL_SIZES)
def test_one_permutation_for_every_image_form_and_object(block_size):
    x = images(n=4)
    x[1] = x[0] + 1.0  # image 1 is image 0 shifted: the same permutation keeps the shift
    shuffle = BlockShuffle(block_size, seed=7)
    out = shuffle(x)
    assert torch.equal(out[1], out[0] + 1.0)
    for i in range(len(x)):
        assert torch.equal(shuffle(x[i]), out[i])  # (C, H, W) form
        assert torch.equal(shuffle(x[i:i + 1])[0], out[i])
    assert torch.equal(BlockShuffle(block_size, seed=7)(x), out)  # a second object: e.g. the test split's
    assert torch.equal(BlockShuffle(block_size, seed=7)(x[2:]), out[2:])


def test_train_and_test_loaders_share_the_permutation(toy_domain):
    config = DataConfig(image_size=16, block_size=4, shuffle_seed=5)
    reference = BlockShuffle(4, seed=5)
    mean = torch.tensor(toy_domain.mean).view(1, -1, 1, 1)
    std = torch.tensor(toy_domain.std).view(1, -1, 1, 1)
    for split in ("train", "test"):
        loader = toy_domain.loader(split, 50, block_shuffle=block_shuffle_for(config))
        x, _ = next(iter(loader))
        raw = toy_domain.split(split).images[:50]
        assert torch.allclose(x, reference((raw.float() / 255 - mean) / std), atol=1e-6)


@pytest.mark.parametrize("block_size", ALL_SIZES)
def test_different_seeds_differ(block_size):
    x = images(n=2)
    assert not torch.equal(BlockShuffle(block_size, seed=0)(x), BlockShuffle(block_size, seed=1)(x))


def test_block_as_large_as_the_image_is_the_identity():
    x = images(n=2)
    assert torch.equal(BlockShuffle(16, seed=4)(x), x)
    assert block_shuffle_for(DataConfig(image_size=16, block_size=16)) is None
    assert block_shuffle_for(DataConfig(image_size=16)) is None
    assert block_shuffle_for(DataConfig(image_size=16, block_size=4, shuffle_seed=2)).seed == 2


def test_block_size_must_divide_the_image():
    with pytest.raises(ValueError, match=r"block size 5 does not divide the image size 16x16.*1, 2, 4, 8, 16"):
        BlockShuffle(5)(images(n=1))
    with pytest.raises(ValueError, match=r"does not divide the image size 8x12"):
        BlockShuffle(8)(images(n=1, h=8, w=12))
    with pytest.raises(ValueError, match="does not divide image_size"):
        DataConfig(image_size=16, block_size=5)


@pytest.mark.parametrize("bad", [0, -2, 2.5, "2", "x", None, True])
def test_bad_block_sizes_are_rejected(bad):
    with pytest.raises(ValueError, match="block_size must be a positive int or '\\*'"):
        BlockShuffle(bad)


@pytest.mark.parametrize("bad", [0, -1, 2.5, "x", True])
def test_data_config_rejects_bad_block_sizes(bad):
    with pytest.raises(ValueError, match="block_size"):  # pydantic's ValidationError is a ValueError
        DataConfig(image_size=16, block_size=bad)


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match=r"\(C, H, W\) or \(N, C, H, W\)"):
        BlockShuffle(2)(torch.zeros(16, 16))


@pytest.mark.parametrize("block_size", ALL_SIZES)
@pytest.mark.parametrize("shape", [(3, 3, 16, 16), (2, 2, 8, 16)])
def test_batched_gather_equals_per_image_reference(block_size, shape):
    x = images(*shape, seed=11)
    shuffle = BlockShuffle(block_size, seed=9)
    np.testing.assert_array_equal(shuffle(x).numpy(), reference_shuffle(x.numpy(), shuffle))


def test_uint8_and_float32_batches_keep_their_dtype():
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    out = BlockShuffle(2, seed=0)(x)
    assert out.dtype == torch.uint8
    assert torch.equal(out.double(), BlockShuffle(2, seed=0)(x.double()))
