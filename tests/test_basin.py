"""(ε, δ)-basins (Definition 3.1): closed forms on a quadratic loss, NumPy references
on a linear model, consistency with interpolate(), errors."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from torch import nn

from transferscope.analysis.basins import basin, basin_along
from transferscope.analysis.interpolation import interpolate
from transferscope.models import build_model

# Quadratic bowl ℓ(θ) = ‖θ‖² in n dimensions; θ_a, θ_b at distance r from the origin's
# projection-free line: θ(α) = r·e2 + D(α − ½)·e1, so ℓ(α) = r² + D²(α − ½)².
N, D, R, THRESHOLD = 400, 2.0, 1.0, 0.5
ENDPOINT_LOSS = R**2 + D**2 / 4
LEVEL = (1 + THRESHOLD) * ENDPOINT_LOSS
HALF = math.sqrt(LEVEL - R**2) / D  # boundary at α = ½ ± HALF
MU = R**2 + D**2 * HALF**2 / 3  # mean of r² + D²u² for u ~ U[−HALF, HALF]
EPSILON = 4 / (9 * math.sqrt(3)) * D**2 * HALF**2  # E|D²u² − D²HALF²/3| = D²HALF²·∫₀¹|t² − 1/3|dt


def _quadratic_loss_at():
    e1, e2 = np.eye(N)[0], np.eye(N)[1]

    def loss_at(alpha, noise):
        theta = R * e2 + D * (alpha - 0.5) * e1
        if noise is not None:
            theta = theta + noise.numpy()
        return float(theta @ theta)

    return loss_at


def _quadratic_basin(deltas, rise, n_noise=400, **settings):
    return basin_along(_quadratic_loss_at(), N, D, threshold=THRESHOLD, sigmas=[d / math.sqrt(N) for d in deltas],
                       n_segment=1000, n_noise=n_noise, rise=rise, boundary_tol=1e-9, seed=3, **settings)


def test_quadratic_boundary_mu_epsilon_in_closed_form():
    frame = _quadratic_basin([1.0], rise=2.0, n_noise=2)
    row = frame.iloc[0]
    assert row["alpha_lo"] == pytest.approx(0.5 - HALF, abs=1e-7)
    assert row["alpha_hi"] == pytest.approx(0.5 + HALF, abs=1e-7)
    assert row["level"] == pytest.approx(LEVEL)
    assert row["mu"] == pytest.approx(MU, rel=1e-5)
    assert row["epsilon"] == pytest.approx(EPSILON, rel=1e-4)
    assert row["n_parameters"] == N and row["distance"] == D


def test_quadratic_conditions_and_smallest_delta_in_closed_form():
    """Walls at μ + 4ε: condition 2 needs δ² ≥ μ + 4ε − L (E‖θ_∂ + u‖² = L + nσ² = L + δ²);
    condition 3 needs δ² + 2√(2/π)·D·HALF·δ ≥ μ + 4ε − L (E(D·HALF + |ν|)² + r²)."""
    gap = MU + 4 * EPSILON - LEVEL
    delta_noise = math.sqrt(gap)  # ≈ 0.85
    delta_step = D * HALF * (-math.sqrt(2 / math.pi) + math.sqrt(2 / math.pi + gap / (D * HALF) ** 2))  # ≈ 0.28
    deltas = [0.2, 0.5, 1.1, 2.0]
    assert deltas[0] < delta_step < deltas[1] < delta_noise < deltas[2]
    frame = _quadratic_basin(deltas, rise=4.0)
    assert frame["delta"].to_numpy() == pytest.approx(deltas)
    assert frame["wall"].iloc[0] == pytest.approx(MU + 4 * EPSILON, rel=1e-4)
    for _, row in frame.iterrows():
        delta, sigma = row["delta"], row["sigma"]
        v = LEVEL  # ‖θ_∂‖² at either boundary
        noise_mean, noise_se = LEVEL + delta**2, math.sqrt((4 * sigma**2 * v + 2 * N * sigma**4) / 400)
        m1, m2 = delta * math.sqrt(2 / math.pi), delta**2  # E|ν|, Eν²
        m3, m4 = 2 * math.sqrt(2 / math.pi) * delta**3, 3 * delta**4
        a = 2 * D * HALF
        step_mean = LEVEL + a * m1 + m2
        step_se = math.sqrt((a**2 * (m2 - m1**2) + (m4 - m2**2) + 2 * a * (m3 - m1 * m2)) / 400)
        for end in ("lo", "hi"):
            assert abs(row[f"noise_loss_{end}"] - noise_mean) < 5 * noise_se
            assert abs(row[f"extrapolation_loss_{end}"] - step_mean) < 5 * step_se
    assert frame["extrapolation_holds"].tolist() == [False, True, True, True]
    assert frame["noise_holds"].tolist() == [False, False, True, True]
    assert frame["basin_delta"].iloc[0] == pytest.approx(1.1) and frame["in_basin"].all()


def test_quadratic_walls_already_clear_mu_plus_two_epsilon():
    """For a quadratic, L − μ − 2ε = D²HALF²(2/3 − 8/(9√3)) > 0: with the default rise of 2
    both conditions hold for every δ > 0, so the refinement runs down to sigma_floor and δ
    stays an upper bound there (the grid alone gives the bound at its smallest δ)."""
    assert LEVEL - MU - 2 * EPSILON > 0
    frame = _quadratic_basin([0.01, 0.1], rise=2.0, n_noise=20)
    assert frame["holds"].all() and frame["basin_delta"].iloc[0] == pytest.approx(1e-4 * math.sqrt(N))
    assert not frame["basin_delta_exact"].iloc[0] and frame["sigma_searched_min"].iloc[0] == 1e-4
    grid_only = _quadratic_basin([0.01, 0.1], rise=2.0, n_noise=20, sigma_floor=None)
    assert grid_only["holds"].all() and grid_only["basin_delta"].iloc[0] == pytest.approx(0.01)
    assert not grid_only["basin_delta_exact"].iloc[0] and len(grid_only) == 2


def test_delta_at_the_grid_minimum_is_refined_to_a_number():
    """Issue 11. Walls at μ + 4ε: the conditions hold from δ* = √(μ + 4ε − L) ≈ 0.85 up
    (closed form above). A grid starting at δ = 2 holds at its smallest δ; halving σ finds
    δ = 1 holding and 0.5 failing, so δ = 1 is a number (δ* in (0.5, 1])."""
    delta_star = math.sqrt(MU + 4 * EPSILON - LEVEL)
    frame = _quadratic_basin([2.0, 4.0], rise=4.0)
    assert frame["delta"].to_numpy() == pytest.approx([0.5, 1.0, 2.0, 4.0])
    assert frame["holds"].tolist() == [False, True, True, True]
    row = frame.iloc[0]
    assert row["basin_delta"] == pytest.approx(1.0) and row["basin_delta_exact"] and row["in_basin"]
    assert 0.5 < delta_star <= row["basin_delta"]
    assert row["sigma_searched_min"] == pytest.approx(0.5 / math.sqrt(N)) and row["sigma_floor"] == 1e-4


def test_delta_refinement_stops_at_the_floor_as_a_bound():
    floor = 1.2 / math.sqrt(N)  # above δ*: the conditions still hold there
    frame = _quadratic_basin([2.0, 4.0], rise=4.0, sigma_floor=floor)
    assert frame["delta"].to_numpy() == pytest.approx([1.2, 2.0, 4.0])  # σ/2 clipped to the floor
    row = frame.iloc[0]
    assert row["basin_delta"] == pytest.approx(1.2) and not row["basin_delta_exact"]
    assert row["sigma_searched_min"] == floor
    above_grid = _quadratic_basin([2.0, 4.0], rise=4.0, sigma_floor=1.0)  # not below the grid: nothing to search
    assert len(above_grid) == 2 and above_grid["basin_delta"].iloc[0] == pytest.approx(2.0)
    assert not above_grid["basin_delta_exact"].iloc[0]
    with pytest.raises(ValueError, match="sigma_floor must be a positive σ"):
        _quadratic_basin([2.0], rise=4.0, sigma_floor=0.0)


def test_no_delta_of_the_grid_holds():
    frame = _quadratic_basin([0.01, 0.05], rise=4.0, n_noise=20)
    assert not frame["holds"].any() and not frame["in_basin"].any()
    assert np.isnan(frame["basin_delta"]).all()
    assert len(frame) == 2 and not frame["basin_delta_exact"].any()  # nothing to refine


def _linear_setup(multilabel: bool = False):
    torch.manual_seed(11)
    a, b = nn.Linear(6, 3), nn.Linear(6, 3)
    generator = torch.Generator().manual_seed(12)
    x = torch.randn(64, 6, generator=generator)
    y = ((torch.rand(64, 3, generator=generator) < 0.5).float() if multilabel
         else torch.randint(0, 3, (64,), generator=generator))
    return a, b, [(x[:32], y[:32]), (x[32:], y[32:])], x.double().numpy(), y.numpy()


def _numpy_loss(a: nn.Linear, b: nn.Linear, alpha: float, x: np.ndarray, y: np.ndarray) -> float:
    w = (1 - alpha) * a.weight.detach().double().numpy() + alpha * b.weight.detach().double().numpy()
    c = (1 - alpha) * a.bias.detach().double().numpy() + alpha * b.bias.detach().double().numpy()
    z = x @ w.T + c
    if y.ndim == 2:
        return float(np.mean(np.logaddexp(0, z) - y * z))
    return float(np.mean(logsumexp(z, axis=1) - z[np.arange(len(y)), y]))


@pytest.mark.parametrize("multilabel", [False, True])
def test_linear_model_matches_numpy_reference(multilabel):
    a, b, loader, x, y = _linear_setup(multilabel)
    before = [copy.deepcopy(m.state_dict()) for m in (a, b)]
    frame = basin(a, b, loader, threshold=0.3, sigmas=(0.05, 0.5), n_segment=8, n_noise=3, boundary_tol=1e-7)
    row = frame.iloc[0]
    assert row["n_parameters"] == 6 * 3 + 3 and row["bn"] == "follow" and row["n_examples"] == 64
    assert "n" not in frame
    vector_a, vector_b = (np.concatenate([p.detach().double().numpy().ravel() for p in m.parameters()]) for m in (a, b))
    assert row["distance"] == pytest.approx(np.linalg.norm(vector_b - vector_a), rel=1e-12)
    endpoint = max(_numpy_loss(a, b, 0.0, x, y), _numpy_loss(a, b, 1.0, x, y))
    assert row["level"] == pytest.approx(1.3 * endpoint, rel=1e-5)
    for end in ("alpha_lo", "alpha_hi"):
        assert _numpy_loss(a, b, row[end], x, y) == pytest.approx(row["level"], rel=1e-5)
    assert row["alpha_lo"] < 0 < 1 < row["alpha_hi"]
    grid = row["alpha_lo"] + (np.arange(8) + 0.5) / 8 * (row["alpha_hi"] - row["alpha_lo"])
    losses = np.array([_numpy_loss(a, b, alpha, x, y) for alpha in grid])
    assert row["mu"] == pytest.approx(losses.mean(), rel=1e-5)
    assert row["epsilon"] == pytest.approx(np.abs(losses - losses.mean()).mean(), rel=1e-4)
    grid = frame[frame["sigma"].isin([0.05, 0.5])]  # and the refinement's smaller σ, where δ ≤ 0.05·√21 held
    assert grid["delta"].to_numpy() == pytest.approx(np.array([0.05, 0.5]) * math.sqrt(21))
    for model, state in zip((a, b), before):
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_basin_passes_sigma_floor_on():
    a, b, loader, _, _ = _linear_setup()
    settings = dict(sigmas=(0.05, 0.5), n_segment=4, n_noise=2, boundary_tol=1e-3)
    grid_only = basin(a, b, loader, sigma_floor=None, **settings)
    assert len(grid_only) == 2 and grid_only["sigma_floor"].isna().all()
    refined = basin(a, b, loader, sigma_floor=0.01, **settings)
    assert refined["sigma_searched_min"].iloc[0] < 0.05 and (refined["sigma_floor"] == 0.01).all()


def test_seed_makes_the_noise_reproducible():
    a, b, loader, _, _ = _linear_setup()
    settings = dict(sigmas=(0.3,), n_segment=4, n_noise=3, boundary_tol=1e-3)
    first, again = basin(a, b, loader, seed=5, **settings), basin(a, b, loader, seed=5, **settings)
    other = basin(a, b, loader, seed=6, **settings)
    assert first["noise_loss_hi"].iloc[0] == again["noise_loss_hi"].iloc[0]
    assert first["noise_loss_hi"].iloc[0] != other["noise_loss_hi"].iloc[0]
    assert first["seed"].iloc[0] == 5


def test_batchnorm_model_recalibrated_basin_agrees_with_interpolate():
    torch.manual_seed(0)
    a, b = build_model("small_resnet", 3, width=4), build_model("small_resnet", 3, width=4)
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 3, 8, 8, generator=generator), torch.randint(0, 3, (32,), generator=generator)
    test, train = [(x[:16], y[:16]), (x[16:], y[16:])], [(torch.randn(16, 3, 8, 8, generator=generator), y[:16])]
    frame = basin(a, b, test, recalibration_loader=train, sigmas=(0.05,), n_segment=4, n_noise=1,
                  boundary_tol=0.05, initial_step=0.5)
    row = frame.iloc[0]
    assert row["bn"] == "recalibrate" and row["recalibration_batches"] is None
    grid = row["alpha_lo"] + (np.arange(4) + 0.5) / 4 * (row["alpha_hi"] - row["alpha_lo"])
    curve = interpolate(a, b, test, alphas=grid, recalibration_loader=train)
    assert row["mu"] == pytest.approx(curve["loss"].mean(), rel=1e-5)


def test_channels_last_models_give_the_same_basin():
    """Noise is added per parameter, whatever the memory format (channels_last weights
    cannot be viewed as one flat vector)."""
    torch.manual_seed(0)
    a, b = build_model("small_resnet", 3, width=4).eval(), build_model("small_resnet", 3, width=4).eval()
    generator = torch.Generator().manual_seed(2)
    x, y = torch.randn(16, 3, 8, 8, generator=generator), torch.randint(0, 3, (16,), generator=generator)
    settings = dict(bn="follow", sigmas=(0.05,), n_segment=3, n_noise=1, boundary_tol=0.05, initial_step=0.5)
    plain = basin(a, b, [(x, y)], **settings)
    cl = [m.to(memory_format=torch.channels_last) for m in (a, b)]
    fast = basin(*cl, [(x.contiguous(memory_format=torch.channels_last), y)], **settings)
    for column in ("mu", "epsilon", "alpha_lo", "alpha_hi", "noise_loss_hi"):
        assert fast[column].iloc[0] == pytest.approx(plain[column].iloc[0], rel=1e-4), column


def test_clear_errors():
    a, b, loader, _, _ = _linear_setup()
    with pytest.raises(ValueError, match="identical parameters"):
        basin(a, copy.deepcopy(a), loader)
    with pytest.raises(ValueError, match="sigmas"):
        basin(a, b, loader, sigmas=())
    with pytest.raises(ValueError, match="sigmas"):
        basin(a, b, loader, sigmas=(0.01, -1))
    with pytest.raises(ValueError, match="n_segment"):
        basin(a, b, loader, n_segment=1)
    with pytest.raises(ValueError, match="positive"):
        basin(a, b, loader, threshold=0)
    with pytest.raises(ValueError, match="max_extent"):
        basin_along(lambda _alpha, _noise: 1.0, 10, 1.0, max_extent=5.0)
    with pytest.raises(ValueError, match="bn='recalibrate'"):
        basin_along(lambda alpha, _noise: 1.0 if 0 <= alpha <= 1 else float("nan"), 10, 1.0)
