"""Augmentation modes of the loader (issue 10: ``augment: auto | resized_crop | pad_crop |
none``; issue 14: on the batch's device): each mode against an independent reference
(NumPy for the padded crop and the centre crop, torchvision's ``resized_crop`` per image
for the random resized crop), the ``auto`` rule, the setting's former booleans (same
configs, run identities and job ids), the mode recorded in the run, and resumed runs
equal to uninterrupted ones in every mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from transferscope.config import DataConfig, TrainConfig
from transferscope.data.domain import Domain
from transferscope.data.tensors import ImageLoader, ImageSet, resample_boxes, resized_crop_boxes, resolve_augment
from transferscope.io import read_json
from transferscope.seeding import torch_generator
from transferscope.study.job import decisive
from transferscope.study.spec import Recipe
from transferscope.train import train
from transferscope.train.trainer import Trainer, run_identity

MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


def noise_set(n: int, side: int, seed: int = 0) -> ImageSet:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, side, side), generator=generator, dtype=torch.uint8)
    return ImageSet(images, torch.arange(n) % 2, ["a", "b"])


def normalised(images: np.ndarray) -> np.ndarray:
    """``(x / 255 - mean) / std`` in float32, as the loader computes it."""
    mean = np.array(MEAN, np.float32)[None, :, None, None]
    std = np.array(STD, np.float32)[None, :, None, None]
    return (images.astype(np.float32) / np.float32(255.0) - mean) / std


def loader(data: ImageSet, augment, image_size: int | None = None, **kwargs) -> ImageLoader:
    return ImageLoader(data, 8, mean=MEAN, std=STD, shuffle=True, seed=3, augment=augment, image_size=image_size,
                       **kwargs)


def draws(data: ImageSet, epoch: int = 1):
    """The loader's stream for ``epoch``: its example order, then per batch what the
    augmentation draws from it (the caller draws in the loader's order)."""
    generator = torch_generator(3, "loader", epoch)
    return torch.randperm(len(data), generator=generator), generator


# ---------------------------------------------------------------- modes


def test_auto_is_the_padded_crop_for_small_images_and_the_resized_crop_from_64_pixels():
    assert [resolve_augment("auto", side) for side in (16, 63, 64, 224)] == ["pad_crop"] * 2 + ["resized_crop"] * 2
    assert resolve_augment(True, 32) == "pad_crop" and resolve_augment(True, 224) == "resized_crop"
    assert resolve_augment(False, 224) == "none" and resolve_augment("pad_crop", 224) == "pad_crop"
    with pytest.raises(ValueError, match="augment must be one of auto, resized_crop, pad_crop, none"):
        resolve_augment("flip", 32)


@pytest.mark.parametrize("stored, size", [(12, None), (20, 16)])
def test_pad_crop_is_the_padded_crop_and_flip_of_the_normalised_centre(stored, size):
    """Stored larger than seen: the padded crop moves the centre crop (at most 4 pixels)."""
    data = noise_set(16, stored)
    batches = loader(data, "pad_crop", image_size=size)
    batches.set_epoch(1)
    got = torch.cat([x for x, _ in batches]).numpy()
    order, generator = draws(data)
    margin = (stored - (size or stored)) // 2
    expected = []
    for start in range(0, 16, 8):
        x = normalised(data.images[order[start:start + 8]].numpy())[:, :, margin:stored - margin, margin:stored - margin]
        dy = torch.randint(0, 9, (8,), generator=generator).numpy()
        dx = torch.randint(0, 9, (8,), generator=generator).numpy()
        flip = (torch.rand(8, generator=generator) < 0.5).numpy()
        padded = np.pad(x, ((0, 0), (0, 0), (4, 4), (4, 4)))
        for k in range(8):
            crop = padded[k, :, dy[k]:dy[k] + x.shape[-2], dx[k]:dx[k] + x.shape[-1]]
            expected.append(crop[:, :, ::-1] if flip[k] else crop)
    assert np.array_equal(got, np.stack(expected))


def test_without_augmentation_the_loader_yields_the_centre_crop_of_larger_stored_images():
    """Images stored at 20 and seen at 16: ImageNet's evaluation transform (Resize(256) +
    CenterCrop(224)) for 256-pixel stored images."""
    data = noise_set(8, 20)
    plain = ImageLoader(data, 8, mean=MEAN, std=STD, image_size=16)
    assert plain.augment == "none"
    assert np.array_equal(next(iter(plain))[0].numpy(), normalised(data.images.numpy())[:, :, 2:18, 2:18])
    with pytest.raises(ValueError, match="cannot be cropped to 24x24"):
        next(iter(ImageLoader(data, 8, mean=MEAN, std=STD, image_size=24)))


def test_resized_crop_is_torchvision_resized_crop_of_the_uint8_images_with_the_same_boxes():
    data = noise_set(16, 40, seed=1)
    batches = loader(data, "resized_crop", image_size=24)
    batches.set_epoch(2)
    got = torch.cat([x for x, _ in batches])
    order, generator = draws(data, epoch=2)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    expected = []
    for start in range(0, 16, 8):
        boxes = resized_crop_boxes(8, 40, 40, generator)
        flip = torch.rand(8, generator=generator) < 0.5
        for k, index in enumerate(order[start:start + 8].tolist()):
            image = TF.resized_crop(data.images[index], *boxes[k].tolist(), [24, 24], antialias=False)
            image = TF.horizontal_flip(image) if flip[k] else image
            expected.append((image.float() / 255 - mean) / std)
    assert got.shape == (16, 3, 24, 24)
    torch.testing.assert_close(got, torch.stack(expected), atol=1e-5, rtol=0)


def test_the_batched_resample_is_torchvision_resized_crop_in_floats():
    """The batched path (every device but the CPU): one grid_sample against
    torchvision's float resized_crop + flip, image by image; boxes larger and smaller than
    the output (down- and upsampling) and touching the image's edges."""
    data = noise_set(6, 40, seed=4)
    boxes = torch.tensor([[0, 0, 40, 40], [3, 5, 10, 30], [20, 0, 20, 7], [0, 33, 40, 7], [17, 17, 23, 23],
                          [5, 9, 24, 24]])
    flip = torch.tensor([False, True, False, True, True, False])
    got = resample_boxes(data.images.float(), boxes, flip, (24, 20))
    for k in range(6):
        image = TF.resized_crop(data.images[k].float(), *boxes[k].tolist(), [24, 20], antialias=False)
        image = TF.horizontal_flip(image) if flip[k] else image
        torch.testing.assert_close(got[k], image, atol=2e-3, rtol=0)  # grey levels 0..255


def test_resized_crop_boxes_follow_torchvision_random_resized_crop():
    boxes = resized_crop_boxes(4000, 50, 40, torch.Generator().manual_seed(0))
    top, left, height, width = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + height <= 50).all() and (left + width <= 40).all()
    area = (height * width).double() / (50 * 40)
    assert area.min() > 0.07 and area.max() <= 1  # scale (0.08, 1), up to rounding the sides
    ratio = (width / height).double()
    assert ratio.min() > 0.7 and ratio.max() < 1.4  # ratio (3/4, 4/3), up to rounding
    # the mean area fraction of the draws that fit is near the uniform's 0.54, less what fails to fit
    assert 0.4 < area.mean() < 0.6
    # an image no draw fits: torchvision's fallback, the central crop of the nearest ratio
    fallback = resized_crop_boxes(3, 200, 2, torch.Generator().manual_seed(0))
    assert fallback.tolist() == [[98, 0, 3, 2]] * 3  # height round(2 / (3/4)) = 3, centred


def test_a_flip_draw_mirrors_the_resized_crop():
    """With the whole image as the box (resample to the stored size) the resized crop is
    the image itself or its mirror image, exactly."""
    data = noise_set(32, 16)
    boxes = torch.tensor([[0, 0, 16, 16]] * 32)
    flip = torch.arange(32) % 2 == 1
    out = resample_boxes(data.images.float(), boxes, flip, (16, 16))
    assert torch.equal(out[~flip], data.images[~flip].float())
    assert torch.equal(out[flip], data.images[flip].float().flip(-1))


def test_augmentation_is_refused_with_a_block_shuffle():
    from transferscope.data.shuffle import BlockShuffle

    for mode in ("pad_crop", "resized_crop", "auto", True):
        with pytest.raises(ValueError, match="augmentation must be off for block-shuffled data"):
            loader(noise_set(8, 16), mode, block_shuffle=BlockShuffle(4))


# ---------------------------------------------------------------- the setting


def test_augment_true_and_false_are_auto_and_none_with_unchanged_configs_identities_and_ids():
    for value, mode in ((True, "auto"), (False, "none"), ("resized_crop", "resized_crop")):
        assert TrainConfig(augment=value).augment == mode and Recipe(augment=value).augment == mode
        config = TrainConfig(augment=value)
        assert TrainConfig.model_validate_json(config.model_dump_json()) == config
    # written as the former booleans: the same config.json, run identity and job id as before
    assert TrainConfig().model_dump(mode="json")["augment"] is True
    assert decisive(TrainConfig(augment="auto")) == decisive(TrainConfig(augment=True)) == {}
    assert decisive(TrainConfig(augment="none")) == {"augment": False}
    assert decisive(TrainConfig(augment="pad_crop")) == {"augment": "pad_crop"}
    assert run_identity(TrainConfig(augment=True)) == run_identity(TrainConfig())
    assert run_identity(TrainConfig(augment="pad_crop")) != run_identity(TrainConfig())
    with pytest.raises(ValueError, match="'auto', 'resized_crop', 'pad_crop' or 'none'"):
        TrainConfig(augment="flip")


def test_decode_size_is_checked_against_the_data():
    assert DataConfig(kind="folder", root="x", image_size=224, decode_size=256).decode_size == 256
    with pytest.raises(ValueError, match="decode_size 200 is smaller than image_size 224"):
        DataConfig(kind="folder", root="x", image_size=224, decode_size=200)
    with pytest.raises(ValueError, match="decode_size applies to decoded images .* not to synthetic"):
        DataConfig(kind="synthetic", decode_size=64)
    assert run_identity(TrainConfig(data=DataConfig(decode_size=None))) == run_identity(TrainConfig())


# ---------------------------------------------------------------- runs


def small_domain(side: int = 16) -> Domain:
    data = noise_set(96, side, seed=2)
    data.images[data.targets == 1, 0] //= 2  # class 1: a darker red channel
    return Domain("noise", data.subset(range(64)), data.subset(range(64, 96)), ["a", "b"], False, MEAN, STD)


@pytest.mark.parametrize("mode", ["resized_crop", "pad_crop", "none"])
def test_a_resumed_run_equals_an_uninterrupted_one_in_every_mode(tmp_path, toy_train_config, mode):
    domain = small_domain()
    config = toy_train_config(augment=mode, epochs=2, clean_train_examples=32)
    straight = train(config, tmp_path / "straight", domain=domain, progress=False)

    def stop(epoch: int) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(config, tmp_path / "resumed", domain=domain, progress=False).run(on_epoch_end=stop)
    resumed = train(config, tmp_path / "resumed", domain=domain, progress=False)
    assert resumed.status["augment"] == straight.status["augment"] == mode
    for key, value in straight.checkpoint("final").items():
        assert torch.equal(value, resumed.checkpoint("final")[key]), key


def test_the_run_records_its_resolved_mode(tmp_path, toy_train_config):
    """16-pixel images: auto is the padded crop; a block-shuffled run is never augmented."""
    domain = small_domain()
    for name, config in (("auto", toy_train_config(augment=True, epochs=0)),
                         ("shuffled", toy_train_config(augment=True, epochs=0, data={"block_size": 4}))):
        run = train(config, tmp_path / name, domain=domain, progress=False)
        assert read_json(run.path / "status.json")["augment"] == ("pad_crop" if name == "auto" else "none")
        assert run.config.augment == "auto"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_augmentation_on_the_gpu_equals_the_cpu():
    data = noise_set(16, 40)
    for mode in ("none", "pad_crop", "resized_crop"):
        cpu = torch.cat([x for x, _ in loader(data, mode, image_size=32)])
        gpu = torch.cat([x.cpu() for x, _ in loader(data, mode, image_size=32, device="cuda")])
        if mode != "resized_crop":  # the same formula, rounded by another division
            torch.testing.assert_close(gpu, cpu, atol=1e-6, rtol=1e-6)
            continue
        # the GPU rounds its float resample, the CPU's uint8 kernel its fixed-point one
        # (one grey level apart on about a fifth of the pixels, unbiased)
        levels = (gpu - cpu) * torch.tensor(STD).view(1, 3, 1, 1) * 255
        assert levels.abs().max() < 1 + 1e-3 and levels.mean().abs() < 0.1
