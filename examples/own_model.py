"""Your own architecture, as examples/byo-own-model.yaml uses it: any callable that
takes ``num_classes=`` (and the YAML's ``model.kwargs``) and returns an ``nn.Module``,
named by its import path ``own_model:TinyNet`` (this folder on PYTHONPATH).

Run as a script, it pre-trains TinyNet on the built-in synthetic source domain through
``transferscope.train.train(config, out, model=...)`` and writes its weights to
``examples/own_model.safetensors``, the stand-in for your own pre-trained checkpoint::

    PYTHONPATH=examples .venv/bin/python examples/own_model.py
"""

from __future__ import annotations

from pathlib import Path

from torch import nn


def conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class TinyNet(nn.Module):
    """A small convolutional classifier: stem, three strided stages, pooled linear classifier."""

    def __init__(self, num_classes: int, width: int = 8) -> None:
        super().__init__()
        self.stem = conv_bn(3, width)
        self.stage1 = conv_bn(width, 2 * width, stride=2)
        self.stage2 = conv_bn(2 * width, 4 * width, stride=2)
        self.stage3 = conv_bn(4 * width, 4 * width, stride=2)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.stage3(self.stage2(self.stage1(self.stem(x))))))


if __name__ == "__main__":
    import tempfile

    import torch

    from transferscope.config import DataConfig, TrainConfig
    from transferscope.data import load_domain
    from transferscope.models import save_weights
    from transferscope.train import train

    data = DataConfig(kind="synthetic", name="source", n_train=3000, n_test=500, num_classes=10)
    config = TrainConfig(data=data, epochs=6, batch_size=64, lr=0.1, schedule={"kind": "cosine"}, device="cpu")
    torch.manual_seed(0)
    model = TinyNet(num_classes=load_domain(data).num_outputs)
    with tempfile.TemporaryDirectory() as out:
        run = train(config, out, model=model, progress=False)
        print(run.metrics[["epoch", "test_loss", "test_accuracy"]].to_string(index=False))
        save_weights(run.checkpoint("final"), Path(__file__).with_name("own_model.safetensors"))
