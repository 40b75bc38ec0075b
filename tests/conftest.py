"""Small shared fixtures for the core tests (shuffle, models, evaluation, trainer).

``toy_domain``: a 3-class domain of 16x16 uint8 noise images whose class is the one
channel that is brightened, so a width-8 ``small_resnet`` learns it in a couple of
epochs; ``toy_multilabel_domain``: the same images with 3 independent 0/1 labels
(label j = channel j brightened). ``toy_train_config`` builds a fast CPU
``TrainConfig`` for them.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from transferscope.config import DataConfig, ModelConfig, TrainConfig
from transferscope.data.domain import Domain
from transferscope.data.tensors import ImageSet

# The suite's models are tiny: one torch thread is as fast as two, and cannot spin
# against the worker processes that some tests start.
torch.set_num_threads(1)

TOY_SIZE = 16
TOY_CHANNELS = 3


def make_toy_domain(n_train: int = 128, n_test: int = 96, *, num_classes: int = TOY_CHANNELS,
                    multilabel: bool = False, seed: int = 0) -> Domain:
    """Noise in [0, 128) with +100 added to the channel(s) that carry the class/labels."""
    if not 2 <= num_classes <= TOY_CHANNELS:
        raise ValueError(f"the toy domain encodes at most {TOY_CHANNELS} classes, one per channel")
    generator = torch.Generator().manual_seed(seed)
    n = n_train + n_test
    images = torch.randint(0, 128, (n, TOY_CHANNELS, TOY_SIZE, TOY_SIZE), generator=generator, dtype=torch.uint8)
    if multilabel:
        targets = (torch.rand(n, TOY_CHANNELS, generator=generator) < 0.5).float()
        bright = targets.bool()
        classes = [f"channel{j}" for j in range(TOY_CHANNELS)]
    else:
        targets = torch.randint(0, num_classes, (n,), generator=generator)
        bright = F.one_hot(targets, TOY_CHANNELS).bool()
        classes = [f"class{k}" for k in range(num_classes)]
    images[bright] += 100
    train = ImageSet(images[:n_train], targets[:n_train], classes)
    test = ImageSet(images[n_train:], targets[n_train:], classes)
    mean, std = train.channel_stats()
    return Domain(name="toy", train=train, test=test, classes=classes, multilabel=multilabel, mean=mean, std=std)


@pytest.fixture(scope="session")
def toy_domain() -> Domain:
    return make_toy_domain()


@pytest.fixture(scope="session")
def toy_multilabel_domain() -> Domain:
    return make_toy_domain(multilabel=True, seed=1)


@pytest.fixture(scope="session")
def toy_domain_factory():
    """``make_toy_domain`` itself, for tests that need another size or class count."""
    return make_toy_domain


@pytest.fixture(scope="session")
def toy_train_config():
    """``toy_train_config(**fields)``: a TrainConfig for the toy domains (16x16 images,
    width-8 small_resnet, batch 32, CPU, augmentation off); ``data`` and
    ``model`` fields are given as dicts of overrides."""

    def build(data: dict | None = None, model: dict | None = None, **fields) -> TrainConfig:
        settings = dict(epochs=2, batch_size=32, lr=0.05, eval_batch_size=128, device="cpu", augment=False)
        settings.update(fields)
        return TrainConfig(data=DataConfig(image_size=TOY_SIZE, **(data or {})),
                           model=ModelConfig(arch="small_resnet", width=8, **(model or {})), **settings)

    return build
