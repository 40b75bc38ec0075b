import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from transferscope.analysis.spectra import spectrum, spectrum_summary
from transferscope.models import build_model


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("small_resnet", 10, width=8)


class TwoLinear(nn.Module):
    """Partition = its children with parameters: ``first`` and ``second``."""

    def __init__(self, first: torch.Tensor, second: torch.Tensor) -> None:
        super().__init__()
        self.first = nn.Linear(first.shape[1], first.shape[0], bias=False)
        self.second = nn.Linear(second.shape[1], second.shape[0])
        with torch.no_grad():
            self.first.weight.copy_(first)
            self.second.weight.copy_(second)


def test_singular_values_match_numpy_svd_of_reshaped_weights():
    model = _model()
    frame = spectrum(model)
    matrices = {name: p for name, p in model.named_parameters() if p.ndim >= 2}
    assert set(frame["parameter"]) == set(matrices)  # every weight matrix, nothing else
    assert list(dict.fromkeys(frame["module"])) == ["conv1", "layer1", "layer2", "layer3", "layer4", "fc"]
    for name, weight in matrices.items():
        matrix = weight.detach().double().numpy().reshape(weight.shape[0], -1)  # out x (in*k*k)
        reference = np.linalg.svd(matrix, compute_uv=False)
        rows = frame[frame["parameter"] == name].sort_values("index")
        np.testing.assert_allclose(rows["singular_value"].to_numpy(), reference, rtol=1e-10, atol=1e-12)
        assert (rows["rows"].iloc[0], rows["cols"].iloc[0]) == matrix.shape
        assert rows["module"].iloc[0] == name.split(".")[0]
    conv = frame[frame["parameter"] == "layer2.0.conv1.weight"]
    assert conv["shape"].iloc[0] == "16x8x3x3" and conv["cols"].iloc[0] == 72


def test_summary_matches_formulas():
    frame = spectrum(_model())
    summary = spectrum_summary(frame, top_k=(1, 3))
    model = _model()
    for row in summary.itertuples():
        w = dict(model.named_parameters())[row.parameter].detach().double().numpy()
        w = w.reshape(w.shape[0], -1)
        fro2, spec2 = np.linalg.norm(w, "fro") ** 2, np.linalg.norm(w, 2) ** 2
        s = np.linalg.svd(w, compute_uv=False)
        assert row.stable_rank == pytest.approx(fro2 / spec2, rel=1e-10)
        assert row.energy_top1 == pytest.approx(spec2 / fro2, rel=1e-10)
        assert row.energy_top3 == pytest.approx((s[:3] ** 2).sum() / fro2, rel=1e-10)
        p = s / s.sum()
        assert row.effective_rank == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-10)
        assert row.n_singular == min(w.shape)


def test_known_spectra_rank_one_and_orthogonal():
    torch.manual_seed(0)
    rank_one = torch.outer(torch.randn(6), torch.randn(4))
    orthogonal = torch.linalg.qr(torch.randn(5, 5))[0]
    summary = spectrum_summary(spectrum(TwoLinear(rank_one, orthogonal)), top_k=(1, 2, 10)).set_index("module")
    first, second = summary.loc["first"], summary.loc["second"]
    assert first["stable_rank"] == pytest.approx(1.0)
    assert first["energy_top1"] == pytest.approx(1.0)
    assert first["effective_rank"] == pytest.approx(1.0, rel=1e-6)  # tiny rounding singular values
    assert second["stable_rank"] == pytest.approx(5.0)
    assert second["effective_rank"] == pytest.approx(5.0)
    assert second["energy_top2"] == pytest.approx(2 / 5)
    assert second["energy_top10"] == pytest.approx(1.0)  # k beyond the rank: all the energy


def test_extra_columns_group_models_and_model_unchanged():
    a, b = _model(0), _model(1)
    a.train()
    before = copy.deepcopy(a.state_dict())
    frame = pd.concat([spectrum(a).assign(model="P"), spectrum(b).assign(model="RI-T")])
    summary = spectrum_summary(frame)
    assert set(summary["model"]) == {"P", "RI-T"}
    assert len(summary) == 2 * len(spectrum_summary(spectrum(a)))
    assert {"energy_top1", "energy_top5", "energy_top10"} <= set(summary.columns)
    for key, value in a.state_dict().items():
        assert torch.equal(value, before[key])
    assert all(m.training for m in a.modules())


def test_module_selection_and_errors():
    model = _model()
    assert set(spectrum(model, modules=["layer1", "fc"])["module"]) == {"layer1", "fc", "rest"}  # rest: reported
    with pytest.raises(ValueError, match="no module named 'layer9'"):
        spectrum(model, modules=["layer9"])
    with pytest.raises(TypeError):
        spectrum(model, ["fc"])  # settings are keyword-only
    with pytest.raises(ValueError, match="no weight with 2 or more dimensions"):
        spectrum(nn.Sequential(nn.BatchNorm1d(4)))
    with pytest.raises(ValueError, match="not a spectrum frame"):
        spectrum_summary(pd.DataFrame({"module": ["fc"]}))
    with pytest.raises(ValueError, match="top_k must list positive counts"):
        spectrum_summary(spectrum(model), top_k=(0,))
