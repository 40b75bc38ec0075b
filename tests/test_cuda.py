"""The CUDA paths: each GPU result against the same computation on the CPU (TF32 off, so
the two differ only by float32 rounding order), and the trainer with bf16 autocast and
channels_last. These need a GPU; the CPU suite covers the same functions on the CPU."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from transferscope.analysis import compare_representations, criticality, interpolate, rewind
from transferscope.analysis.similarity import cka
from transferscope.data import BlockShuffle
from transferscope.evaluation import evaluate
from transferscope.models import build_model
from transferscope.models.weights import load_into
from transferscope.train.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA paths need a CUDA GPU")


@pytest.fixture(autouse=True)
def exact_float32():
    """TF32 off, so GPU and CPU products agree to float32 rounding."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _models(seed: int = 0, classes: int = 3) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed)
    a = build_model("small_resnet", classes, width=8)
    b = copy.deepcopy(a)
    with torch.no_grad():
        for param in b.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return a.eval(), b.eval()


def _batches(toy_domain, split: str = "test", batch_size: int = 32):
    return list(toy_domain.loader(split, batch_size))


def test_block_shuffle_on_cuda_equals_cpu():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    for size in (1, 4, "*"):
        shuffle = BlockShuffle(size, seed=3)
        assert torch.equal(shuffle(images.cuda()).cpu(), shuffle(images))


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_on_cuda_matches_float64_reference(debiased):
    generator = np.random.default_rng(0)
    X = generator.normal(size=(64, 40)) + 5.0  # a large mean, as after a ReLU
    Y = np.tanh(X @ generator.normal(size=(40, 20))) + 0.3 * generator.normal(size=(64, 20))
    expected = cka(torch.tensor(X, dtype=torch.float64), torch.tensor(Y, dtype=torch.float64), debiased=debiased)
    value = cka(torch.tensor(X, dtype=torch.float32, device="cuda"), torch.tensor(Y, dtype=torch.float32, device="cuda"),
                debiased=debiased)
    assert value == pytest.approx(expected, abs=1e-6)


def test_compare_representations_on_cuda_equals_cpu(toy_domain):
    a, b = _models()
    batches = _batches(toy_domain)
    on_cpu = compare_representations({"a": a, "b": b}, batches)
    on_gpu = compare_representations({"a": a.cuda(), "b": b.cuda()}, batches)
    assert next(a.parameters()).is_cuda  # the models stay where they were
    np.testing.assert_allclose(on_gpu["cka"], on_cpu["cka"], atol=1e-5)


@pytest.mark.parametrize("bn", ["follow", "recalibrate"])
def test_interpolation_on_cuda_equals_cpu_and_vmap_equals_loop(toy_domain, bn):
    a, b = _models()
    test, train = _batches(toy_domain), _batches(toy_domain, "train")
    alphas = [-0.5, 0.0, 0.5, 1.0, 1.5]
    settings = {"bn": bn, "recalibration_loader": train, "recalibration_batches": 2}
    on_cpu = interpolate(a, b, test, alphas=alphas, batched=False, **settings)
    loop = interpolate(a.cuda(), b.cuda(), test, alphas=alphas, batched=False, **settings)
    np.testing.assert_allclose(loop["loss"], on_cpu["loss"], rtol=1e-4)
    if bn == "follow":  # vmap evaluates BatchNorm in eval mode only; α = 0 is model a itself
        batched = interpolate(a, b, test, alphas=alphas, batched=True, **settings)
        np.testing.assert_allclose(batched["loss"], loop["loss"], rtol=1e-4)
        np.testing.assert_allclose(batched["score"], loop["score"], atol=1.5 / len(toy_domain.test))
        assert loop[loop["alpha"] == 0.0]["loss"].iloc[0] == pytest.approx(evaluate(a, test)["loss"], rel=1e-5)


def test_rewind_and_criticality_on_cuda_equal_cpu(toy_domain):
    initial, final = _models()
    batches = _batches(toy_domain)
    grid = {"alphas": [0.5, 1.0], "sigmas": [0.05, 0.2, 0.5], "samples": 2, "threshold": 1.05}
    on_cpu = criticality(final, initial.state_dict(), batches, modules=["layer1"], **grid)
    on_gpu = criticality(copy.deepcopy(final).cuda(), initial.state_dict(), batches, modules=["layer1"], **grid)
    np.testing.assert_allclose(on_gpu["loss_mean"], on_cpu["loss_mean"], rtol=1e-4)
    rewound_cpu = rewind(final, initial.state_dict(), {"test": batches})
    rewound_gpu = rewind(copy.deepcopy(final).cuda(), initial.state_dict(), {"test": batches})
    np.testing.assert_allclose(rewound_gpu["loss"], rewound_cpu["loss"], rtol=1e-4)


def test_trainer_with_bf16_and_channels_last_on_cuda(tmp_path, toy_domain, toy_train_config):
    config = toy_train_config(epochs=3, device="cuda", bf16=True, channels_last=True)
    run = Trainer(config, tmp_path / "run", progress=False, domain=toy_domain).run()
    metrics = run.metrics
    assert np.isfinite(metrics["train_loss"].iloc[1:]).all()
    assert metrics["test_accuracy"].iloc[-1] > 0.6  # chance is 1/3
    final = run.checkpoint("final")
    assert all(tensor.device.type == "cpu" for tensor in final.values())  # portable checkpoints
    model = build_model("small_resnet", 3, width=8)
    load_into(model, final)
    on_cpu = evaluate(model, _batches(toy_domain))
    assert on_cpu["accuracy"] == pytest.approx(metrics["test_accuracy"].iloc[-1], abs=0.05)
    assert not math.isnan(on_cpu["loss"])
