import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from transferscope.analysis.module_criticality import (
    _module_summary,
    criticality,
    criticality_value,
    network_criticality,
    noise_generator,
    path_positions,
    point_on_path,
)
from transferscope.evaluation import loss_fn
from transferscope.models import build_model, module_state_keys

ALPHAS = [0.0, 0.5, 1.0]
SIGMAS = [0.01, 0.1, 0.3, 1.0]


def _mlp_pair(seed=0):
    torch.manual_seed(seed)
    initial = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    final = copy.deepcopy(initial)
    with torch.no_grad():
        for param in final.parameters():
            param.add_(0.5 * torch.randn_like(param))
    return final, initial


def _mlp_data(n=40, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=generator)
    return [(x[:24], torch.randint(0, 3, (24,), generator=generator)),
            (x[24:], torch.randint(0, 3, (n - 24,), generator=generator))]


def _image_data(n=32, classes=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=generator)
    y = torch.randint(0, classes, (n,), generator=generator)
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, n, 16)]


@pytest.fixture(scope="module")
def resnets():
    torch.manual_seed(0)
    initial = build_model("small_resnet", 4, width=8)
    final = copy.deepcopy(initial)
    with torch.no_grad():
        for param in final.parameters():
            param.add_(0.1 * torch.randn_like(param))
        final.train()
        for x, _ in _image_data(seed=7):
            final(x)  # move the BatchNorm statistics too
    return final.eval(), initial


def _numpy_mlp_grid(final, initial, batches, layer, noise, alphas, sigmas, samples, seed, threshold):
    """Float64 NumPy reference of the grid for one Linear layer of the MLP, drawing the
    noise from the documented generators (weight first, then bias)."""
    state_f = {k: v.double().numpy() for k, v in final.state_dict().items()}
    state_0 = {k: v.double().numpy() for k, v in initial.state_dict().items()}
    keys = [f"{layer}.weight", f"{layer}.bias"]
    x = np.concatenate([b[0].double().numpy() for b in batches])
    y = np.concatenate([b[1].numpy() for b in batches])

    def loss(state):
        h = np.maximum(x @ state["0.weight"].T + state["0.bias"], 0)
        logits = h @ state["2.weight"].T + state["2.bias"]
        shifted = logits - logits.max(1, keepdims=True)
        return float(-(shifted - np.log(np.exp(shifted).sum(1, keepdims=True)))[np.arange(len(y)), y].mean())

    if noise == "absolute":
        scales = {k: 1.0 for k in keys}
    elif noise == "frobenius":
        flat = np.concatenate([state_f[k].ravel() for k in keys])
        scales = {k: np.linalg.norm(flat) / np.sqrt(flat.size) for k in keys}
    else:  # per output filter (row of the weight, entry of the bias)
        scales = {keys[0]: np.linalg.norm(state_f[keys[0]], axis=1, keepdims=True) / np.sqrt(state_f[keys[0]].shape[1]),
                  keys[1]: np.abs(state_f[keys[1]])}
    base = loss(state_f)
    delta = sum(((state_f[k] - state_0[k]) ** 2).sum() for k in keys)
    rows = []
    for a, alpha in enumerate(alphas):
        for s, sigma in enumerate(sigmas):
            losses = []
            for k in range(samples):
                generator = noise_generator(seed, a, s, k)
                state = dict(state_f)
                for key in keys:
                    draw = torch.randn(state_f[key].shape, generator=generator).double().numpy()
                    state[key] = (1 - alpha) * state_0[key] + alpha * state_f[key] + sigma * scales[key] * draw
                losses.append(loss(state))
            rows.append((alpha, sigma, np.mean(losses), np.mean(losses) <= threshold * base,
                         alpha ** 2 * delta / sigma ** 2))
    return pd.DataFrame(rows, columns=["alpha", "sigma", "loss_mean", "feasible", "measure"]), base


@pytest.mark.parametrize("noise", ["absolute", "frobenius", "per_filter"])
def test_grid_matches_numpy_reference(noise):
    final, initial = _mlp_pair()
    batches = _mlp_data()
    grid = criticality(final, initial, batches, modules=["0"], noise=noise, alphas=ALPHAS, sigmas=SIGMAS, samples=3, seed=4,
                       threshold=1.05)
    reference, base = _numpy_mlp_grid(final, initial, batches, "0", noise, ALPHAS, SIGMAS, 3, 4, 1.05)
    assert len(grid) == len(ALPHAS) * len(SIGMAS)
    assert grid["base_loss"].iloc[0] == pytest.approx(base, rel=1e-5)
    assert np.allclose(grid["loss_mean"], reference["loss_mean"], rtol=1e-5)
    assert np.allclose(grid["measure"], reference["measure"], rtol=1e-9)
    clear = (reference["loss_mean"] - 1.05 * base).abs() > 1e-4  # not on the feasibility border
    assert (grid["feasible"][clear] == reference["feasible"][clear]).all()
    assert grid["feasible"].any() and not grid["feasible"].all()
    feasible = reference[reference["feasible"]]
    assert criticality_value(grid) == pytest.approx(feasible["measure"].min(), rel=1e-9)
    assert (grid["noise"] == noise).all() and (grid["n_samples"] == 3).all()


def test_tiny_noise_at_the_end_point_is_feasible_and_scores_delta_over_sigma():
    final, initial = _mlp_pair()
    grid = criticality(final, initial, _mlp_data(), modules=["2"], alphas=[1.0], sigmas=[1e-6], samples=2)
    row = grid.iloc[0]
    assert row["feasible"] and row["loss_mean"] == pytest.approx(row["base_loss"], rel=1e-4)
    delta = sum(float((final.state_dict()[k].double() - initial.state_dict()[k].double()).pow(2).sum())
                for k in ("2.weight", "2.bias"))
    assert criticality_value(grid) == pytest.approx(delta / 1e-12, rel=1e-9)
    nothing = criticality(final, initial, _mlp_data(), modules=["2"], alphas=[1.0], sigmas=[1.0], samples=2, noise="absolute",
                          threshold=1e-3, threshold_mode="absolute")
    assert not nothing["feasible"].any() and criticality_value(nothing) == math.inf


def test_each_grid_point_matches_an_independent_torch_computation_with_bn(resnets):
    final, initial = resnets
    batches = _image_data()
    alphas, sigmas = [0.3, 1.0], [0.05, 0.5]
    grid = criticality(final, initial, batches, modules=["conv1"], noise="per_filter", alphas=alphas, sigmas=sigmas, samples=2,
                       seed=3)
    keys = module_state_keys(final)["conv1"]
    params = [k for k in keys if k in dict(final.named_parameters())]
    stats = [k for k in keys if k not in params and final.state_dict()[k].is_floating_point()]
    assert stats  # the stem BatchNorm's running mean and variance
    end, start = final.state_dict(), initial.state_dict()
    for a, alpha in enumerate(alphas):
        for s, sigma in enumerate(sigmas):
            losses = []
            for k in range(2):
                generator = noise_generator(3, a, s, k)
                model = copy.deepcopy(final)
                state = model.state_dict()
                for key in stats:  # statistics follow the path, no noise
                    state[key].copy_((1 - alpha) * start[key].double() + alpha * end[key].double())
                for key in params:
                    weight = end[key].double()
                    scale = (weight.reshape(len(weight), -1).norm(dim=1) / math.sqrt(weight[0].numel()))
                    scale = scale.view(-1, *([1] * (weight.ndim - 1)))
                    draw = torch.randn(weight.shape, generator=generator).double()
                    state[key].copy_((1 - alpha) * start[key].double() + alpha * weight + sigma * scale * draw)
                with torch.no_grad():
                    losses.append(np.mean([float(loss_fn(model(x), y, reduction="none").double().mean())
                                           for x, y in batches]))
            row = grid[(grid["alpha"] == alpha) & (grid["sigma"] == sigma)].iloc[0]
            assert row["loss_mean"] == pytest.approx(np.mean(losses), rel=1e-5)
    assert (grid["bn"] == "follow").all()


def _count_calls(module):
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_activation_cache_equals_full_forward_and_skips_the_prefix(resnets):
    final, initial = resnets
    final = copy.deepcopy(final)
    calls = _count_calls(final.layer1)  # deep copies keep the hook: it counts the analysis' calls
    batches = _image_data(n=16)
    settings = dict(alphas=[0.2, 1.0], sigmas=[0.02, 0.2], samples=2, seed=1)
    fast = criticality(final, initial, batches, modules=["layer3"], **settings)
    fast_calls = len(calls)
    naive = criticality(final, initial, batches, modules=["layer3"], cache_prefix=False, **settings)
    pd.testing.assert_frame_equal(fast, naive)
    assert fast_calls <= 4 * len(batches)  # base, capture and check passes only
    assert len(calls) - fast_calls >= 2 * 2 * 2 * len(batches)  # the naive grid runs layer1 at every draw


def test_activation_cache_on_torchvision_resnet():
    torch.manual_seed(0)
    initial = build_model("resnet18", 3)
    final = copy.deepcopy(initial)
    with torch.no_grad():
        for param in final.parameters():
            param.add_(0.01 * torch.randn_like(param))
    batches = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))]
    settings = dict(alphas=[0.5, 1.0], sigmas=[0.05], samples=1)
    calls = _count_calls(final.maxpool)  # between the stem and layer1, outside the partition
    fast = criticality(final, initial, batches, modules=["layer2"], **settings)
    assert len(calls) <= 4
    naive = criticality(final, initial, batches, modules=["layer2"], cache_prefix=False, **settings)
    pd.testing.assert_frame_equal(fast, naive)


class SkipOverModule(nn.Module):
    """``b`` reads the output of ``a`` and so does the skip connection after it: the
    input of ``b`` alone does not determine the output."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = self.a(x)
        return self.c(self.b(h) + h)


def test_activation_cache_falls_back_when_the_suffix_is_not_reproduced():
    torch.manual_seed(0)
    initial = SkipOverModule()
    final = copy.deepcopy(initial)
    with torch.no_grad():
        for param in final.parameters():
            param.add_(0.3 * torch.randn_like(param))
    settings = dict(alphas=[0.5, 1.0], sigmas=[0.1, 0.5], samples=2)
    with pytest.warns(UserWarning, match="full forward"):
        fast = criticality(final, initial, _mlp_data(), modules=["b"], **settings)
    naive = criticality(final, initial, _mlp_data(), modules=["b"], cache_prefix=False, **settings)
    pd.testing.assert_frame_equal(fast, naive)


class WideningSkip(nn.Module):
    """As SkipOverModule, but ``a`` widens its input: on cached inputs the skip
    connection adds tensors of different sizes and the forward raises."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = self.a(x)
        return self.c(self.b(h) + h)


def test_a_suffix_that_cannot_run_is_an_error_naming_its_cause():
    torch.manual_seed(0)
    initial = WideningSkip()
    final = copy.deepcopy(initial)
    settings = dict(modules=["b"], alphas=[1.0], sigmas=[0.1], samples=1)
    with pytest.raises(RuntimeError, match="from module 'b' on its cached inputs failed.*cache_prefix=False") as raised:
        criticality(final, initial, _mlp_data(), **settings)
    assert "size of tensor" in str(raised.value.__cause__)
    assert len(criticality(final, initial, _mlp_data(), cache_prefix=False, **settings)) == 1


def test_several_modules_in_one_call_equal_one_call_each():
    final, initial = _mlp_pair()
    settings = dict(alphas=[0.5, 1.0], sigmas=[0.05, 0.5], samples=2)
    both = criticality(final, initial, _mlp_data(), modules=["2", "0"], **settings)
    each = [criticality(final, initial, _mlp_data(), modules=[module], **settings) for module in ("2", "0")]
    pd.testing.assert_frame_equal(both, pd.concat(each, ignore_index=True))
    assert list(criticality(final, initial, _mlp_data(), **settings)["module"].unique()) == ["0", "2"]


def _is_monotone(grid):
    """Per alpha, feasible sigmas form an interval starting at the smallest sigma."""
    for _, rows in grid.sort_values("sigma").groupby("alpha"):
        feasible = rows["feasible"].to_numpy()
        if (np.diff(feasible.astype(int)) > 0).any():
            return False
    return True


DRAWN = ["loss_mean", "loss_std", "n_samples"]  # a point the fast path proved infeasible early has fewer draws


def _deciding_points(grid, n_grid_points, n_alphas):
    """From a full grid frame, the points that decide μ (module docstring): per search
    block (the grid's points, then each σ of the downward extension) in ascending
    measure, ties in grid order, up to the first feasible point; a whole block without
    one; no block after the first with one."""
    blocks = [grid.iloc[:n_grid_points]] + [grid.iloc[i:i + n_alphas] for i in range(n_grid_points, len(grid), n_alphas)]
    picked = []
    for block in blocks:
        ranked = block.iloc[np.lexsort((np.arange(len(block)), block["measure"].to_numpy()))]
        feasible = ranked["feasible"].to_numpy()
        picked.append(ranked.iloc[:int(feasible.argmax()) + 1] if feasible.any() else ranked)
        if feasible.any():
            break
    return pd.concat(picked).sort_index().reset_index(drop=True)


def _assert_fast_equals_grid(fast, grid, n_grid_points, n_alphas):
    """μ and its minimiser, and every column of every point the fast path reports (the
    draws where it drew them all), are the grid's."""
    assert criticality_value(fast) == criticality_value(grid)
    summaries = [_module_summary(frame) for frame in (fast, grid)]
    assert summaries[0] == {**summaries[1], "method": "fast"}
    expected = _deciding_points(grid, n_grid_points, n_alphas)
    points = ["alpha", "sigma", "feasible", "measure"]
    assert len(fast) == len(expected) and np.array_equal(fast[points].to_numpy(), expected[points].to_numpy())
    complete = (fast["n_samples"] == fast["samples"]).to_numpy()
    assert (complete | ~fast["feasible"]).all() and (fast["n_samples"] <= expected["n_samples"]).all()
    assert np.array_equal(fast[DRAWN].to_numpy()[complete], expected[DRAWN].to_numpy()[complete])


def _random_losses(rng, shape, samples, sizes):
    """Per-example losses, relative to ε, of each example (batches of sizes ``sizes``) of
    each draw of a random feasibility table (arbitrary rows, some all feasible or all
    infeasible, sometimes the whole grid infeasible) with draws, batches and examples that
    vary, so that early stopping happens at any chunk; no mean within 5% of ε."""
    feasible = rng.random(shape) < rng.choice([0.05, 0.3, 0.7, 0.95])
    rows = rng.random(shape[0])
    feasible[rows < 0.15] = True
    feasible[rows > 0.85] = False
    if rng.random() < 0.2:
        feasible[:, :7] = False  # the extension below the grid decides
    means = np.where(feasible, rng.uniform(0.0, 0.95, shape), rng.uniform(1.05, 4.0, shape))
    draws = means[..., None] * samples * rng.dirichlet(np.ones(samples), shape)
    spread = rng.uniform(0.2, 1.8, (*shape, samples, sum(sizes)))
    return draws[..., None] * spread / spread.mean(-1, keepdims=True)


def _fake_draws(monkeypatch, table):
    """Replace the network by a table: draw k at grid point (a, s) gives example e the
    loss ε · table["losses"][a, s, k, e]; what is evaluated is listed, in order, in
    table["evaluated"]: (a, s, k, "batch", b) for the grid's batches, (a, s, k, "chunk",
    c) for the fast path's chunks."""
    from transferscope.analysis import module_criticality

    def draw(search, a, s, k):
        bounds = np.cumsum([0] + [len(targets) for _, targets in search.evaluator.batches])
        for b in search.batch_order:
            table["evaluated"].append((a, s, k, "batch", b))
            yield search.limit * table["losses"][a, s, k, bounds[b]:bounds[b + 1]].sum()

    def chunk_sums(search, a, s):
        for c, chunk in enumerate(search.chunks):
            for k in range(search.grid.samples):
                table["evaluated"].append((a, s, k, "chunk", c))
                yield search.limit * table["losses"][a, s, k, chunk.numpy()].sum()

    monkeypatch.setattr(module_criticality._Search, "draw", draw)
    monkeypatch.setattr(module_criticality._Search, "chunk_sums", chunk_sums)


def test_fast_path_equals_the_grid_on_random_feasibility_tables(monkeypatch):
    """A fake evaluation makes feasibility an arbitrary table (per-batch losses read
    from it): the fast path gives the grid's μ, minimiser and reported points on 100
    tables, non-monotone rows and the extension below the grid included."""
    table = {"evaluated": []}
    _fake_draws(monkeypatch, table)
    final, initial = _mlp_pair()
    batches = _mlp_data()
    rng = np.random.default_rng(0)
    sigmas = np.arange(1, 8) / 10
    non_monotone = extended = proven_in_chunks = draws_fast = draws_grid = 0
    for index in range(100):
        alphas = np.linspace(0, 1, 7) if index % 2 else np.arange(1, 8) / 7  # α = 0 has measure 0 at every σ
        table["losses"] = _random_losses(rng, (7, 10), 3, [24, 16])  # σ indices 7-9: the extension
        settings = dict(modules=["2"], alphas=alphas, sigmas=sigmas, samples=3, sigma_floor=sigmas[0] / 8)
        grid = criticality(final, initial, batches, **settings)
        table["evaluated"].clear()
        fast = criticality(final, initial, batches, method="fast", **settings)
        _assert_fast_equals_grid(fast, grid, 49, 7)
        non_monotone += not _is_monotone(grid.iloc[:49])
        extended += len(grid) > 49
        proven_in_chunks += (fast["n_samples"] == 0).sum()
        draws_fast, draws_grid = draws_fast + fast["n_samples"].sum(), draws_grid + grid["n_samples"].sum()
    assert non_monotone > 50 and extended > 10 and proven_in_chunks > 300 and draws_fast < draws_grid / 2


def test_early_stop_is_sound_and_starts_with_the_worst_chunk(monkeypatch):
    """Per-example losses (relative to ε) of three draws; the fast path evaluates the
    examples in 4 chunks of 10 by descending loss at the end point, each chunk at every
    draw before the next. Q1 (1.4 ε everywhere) is proven infeasible after 9 chunks
    (126 > 120 = ε times the examples of all draws); Q2 after its first chunk, which
    holds the 10 examples of highest end-point loss, at 13 ε (the rest at 0). P, the
    minimiser, has a first draw far above ε (2.5 ε) and a mean of 0.9667 ε: a rule that
    dropped a point on the losses seen so far (not on their sum against all draws to
    come, which are ≥ 0) would drop it and report μ = 16 Δ, not the grid's Δ/4; its
    chunks leave it open, so the grid's batches decide it."""
    final, initial = _mlp_pair()
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(3))
    y = torch.randint(0, 3, (40,), generator=torch.Generator().manual_seed(4))
    batches = [(x[:20], y[:20]), (x[20:], y[20:])]
    with torch.no_grad():
        worst = torch.argsort(loss_fn(final(x), y, reduction="none"), descending=True)[:10].numpy()
    losses = np.full((3, 2, 3, 40), 2.0)  # (α, σ, draw, example); infeasible unless set
    losses[0, 1] = 1.4  # Q1: measure Δ/16
    losses[0, 0] = 0.0
    losses[0, 0][:, worst] = 13.0  # Q2: Δ/4, before P in grid order
    losses[1, 1] = np.array([2.5, 0.2, 0.2])[:, None]  # P: Δ/4, mean 0.9667 ε
    losses[2, 0] = 0.5  # feasible, measure 4 Δ
    table = {"losses": losses, "evaluated": []}
    _fake_draws(monkeypatch, table)
    settings = dict(modules=["2"], alphas=[0.25, 0.5, 1.0], sigmas=[0.5, 1.0], samples=3)
    grid = criticality(final, initial, batches, **settings)
    table["evaluated"].clear()
    fast = criticality(final, initial, batches, method="fast", **settings)
    _assert_fast_equals_grid(fast, grid, 6, 3)
    assert criticality_value(fast) == grid["delta_norm_sq"].iloc[0] / 4
    assert list(zip(fast["alpha"], fast["sigma"], fast["n_samples"], fast["feasible"])) == [
        (0.25, 0.5, 0, False), (0.25, 1.0, 0, False), (0.5, 1.0, 3, True)]
    evaluated = [point[:2] for point in table["evaluated"]]
    assert [evaluated.count(point) for point in [(0, 1), (0, 0), (1, 1)]] == [9, 1, 12 + 6]
    assert table["evaluated"][:4] == [(0, 1, 0, "chunk", 0), (0, 1, 1, "chunk", 0), (0, 1, 2, "chunk", 0),
                                      (0, 1, 0, "chunk", 1)]
    assert table["evaluated"][-6:] == [(1, 1, k, "batch", b) for k in range(3) for b in _batch_order(final, batches)]


def _batch_order(model, batches):
    """The grid's batches by descending mean loss at the end point."""
    with torch.no_grad():
        means = [float(loss_fn(model(x), y)) for x, y in batches]
    return sorted(range(len(batches)), key=lambda b: -means[b])


@pytest.mark.parametrize(("module", "threshold"), [("0", 1.01), ("2", 1.05)])
def test_fast_path_equals_the_grid_on_a_monotone_mlp(module, threshold):
    final, initial = _mlp_pair()
    batches = _mlp_data()
    settings = dict(alphas=np.linspace(0.2, 1, 5), sigmas=np.geomspace(1e-3, 1.0, 9), samples=4, threshold=threshold,
                    noise="frobenius")
    grid = criticality(final, initial, batches, modules=[module], **settings)
    assert _is_monotone(grid) and grid["feasible"].any() and not grid["feasible"].all()
    fast = criticality(final, initial, batches, modules=[module], method="fast", **settings)
    _assert_fast_equals_grid(fast, grid, 45, 5)
    assert len(fast) < len(grid)


def test_fast_path_equals_the_grid_where_feasibility_is_not_monotone(resnets):
    """On a small ResNet where a row's feasible σ are not a prefix of the grid (where
    bisection over σ, the earlier fast path, missed the minimiser) the fast path is
    still exact; "bisection" is the fast path's earlier name."""
    final, initial = resnets
    settings = dict(modules=["layer1"], alphas=np.arange(1, 6) / 5, sigmas=np.arange(1, 6) / 5, samples=2)
    grid = criticality(final, initial, _image_data(), **settings)
    assert not _is_monotone(grid)
    fast = criticality(final, initial, _image_data(), method="fast", **settings)
    _assert_fast_equals_grid(fast, grid, 25, 5)
    assert fast["n_samples"].sum() < grid["n_samples"].sum() / 2
    pd.testing.assert_frame_equal(criticality(final, initial, _image_data(), method="bisection", **settings), fast)


def test_path_positions_and_points_by_hand():
    states = [{"w": torch.tensor([0.0, 0.0])}, {"w": torch.tensor([3.0, 4.0])}, {"w": torch.tensor([3.0, 4.0])},
              {"w": torch.tensor([3.0, 19.0])}]
    positions = path_positions(states, ["w"])
    assert np.allclose(positions, [0.0, 0.25, 0.25, 1.0])  # segment lengths 5, 0, 15
    assert torch.equal(point_on_path(states, positions, 0.0, ["w"])["w"], states[0]["w"])
    assert torch.equal(point_on_path(states, positions, 1.0, ["w"])["w"], states[-1]["w"])
    assert torch.allclose(point_on_path(states, positions, 0.125, ["w"])["w"], torch.tensor([1.5, 2.0]))
    assert torch.allclose(point_on_path(states, positions, 0.25, ["w"])["w"], torch.tensor([3.0, 4.0]))
    assert torch.allclose(point_on_path(states, positions, 0.625, ["w"])["w"], torch.tensor([3.0, 11.5]))
    with pytest.raises(ValueError, match="does not move"):
        path_positions([states[1], states[2]], ["w"])


def test_optimization_path_along_a_straight_line_equals_the_direct_path():
    final, initial = _mlp_pair()
    batches = _mlp_data()
    middle = {k: 0.7 * initial.state_dict()[k] + 0.3 * final.state_dict()[k] for k in final.state_dict()}
    settings = dict(alphas=[0.0, 0.2, 0.3, 0.9, 1.0], sigmas=[0.05, 0.5], samples=2)
    direct = criticality(final, initial, batches, modules=["0"], **settings)
    two = criticality(final, initial, batches, modules=["0"], path="optimization",
                      path_states=[initial.state_dict(), final.state_dict()], **settings)
    three = criticality(final, initial, batches, modules=["0"], path="optimization",
                        path_states=[initial, middle, final], **settings)
    columns = ["alpha", "sigma", "loss_mean", "feasible", "measure"]
    pd.testing.assert_frame_equal(direct[columns], two[columns])
    assert np.allclose(direct["loss_mean"], three["loss_mean"], rtol=1e-5)
    assert (three["path"] == "optimization").all()
    # a detour changes the losses away from the end points
    detour = {k: v + 1.0 for k, v in middle.items()}
    bent = criticality(final, initial, batches, modules=["0"], path="optimization", path_states=[initial, detour, final],
                       **settings)
    assert not np.allclose(direct["loss_mean"], bent["loss_mean"])
    assert bent["delta_norm_sq"].iloc[0] == direct["delta_norm_sq"].iloc[0]
    # the whole run serves start="best": the path stops at the best checkpoint
    after = {k: v - 1.0 for k, v in final.state_dict().items()}
    best = criticality(final, initial, batches, modules=["0"], path="optimization", start="best", best_state=middle,
                       path_states=[initial, middle, final, after], **settings)
    to_middle = criticality(final, initial, batches, modules=["0"], path="optimization", start="best", best_state=middle,
                            path_states=[initial, middle], **settings)
    pd.testing.assert_frame_equal(best, to_middle)
    assert best["delta_norm_sq"].iloc[0] < direct["delta_norm_sq"].iloc[0]


def test_start_best_uses_the_best_checkpoint():
    final, initial = _mlp_pair()
    best, _ = _mlp_pair(seed=1)
    batches = _mlp_data()
    settings = dict(alphas=[0.5, 1.0], sigmas=[0.1], samples=2)
    same = criticality(final, initial, batches, modules=["0"], start="best", best_state=final.state_dict(), **settings)
    pd.testing.assert_frame_equal(same.drop(columns="start"),
                                  criticality(final, initial, batches, modules=["0"], **settings).drop(columns="start"))
    other = criticality(final, initial, batches, modules=["0"], start="best", best_state=best, **settings)
    reference = criticality(best, initial, batches, modules=["0"], **settings)
    assert other["base_loss"].iloc[0] == reference["base_loss"].iloc[0]
    assert np.array_equal(other["loss_mean"], reference["loss_mean"])


def test_noise_generator_draws():
    a = torch.randn(5, generator=noise_generator(0, 1, 2, 0))
    assert torch.equal(a, torch.randn(5, generator=noise_generator(0, 1, 2, 0)))
    for other in (noise_generator(0, 1, 2, 1), noise_generator(0, 2, 1, 0), noise_generator(1, 1, 2, 0)):
        assert not torch.allclose(a, torch.randn(5, generator=other))


def test_samples_differ_and_seeds_reproduce():
    final, initial = _mlp_pair()
    settings = dict(alphas=[1.0], sigmas=[0.5], samples=4)
    grid = criticality(final, initial, _mlp_data(), modules=["0"], seed=2, **settings)
    assert grid["loss_std"].iloc[0] > 0  # four different draws
    pd.testing.assert_frame_equal(grid, criticality(final, initial, _mlp_data(), modules=["0"], seed=2, **settings))
    assert grid["loss_mean"].iloc[0] != criticality(final, initial, _mlp_data(), modules=["0"], seed=3, **settings)[
        "loss_mean"].iloc[0]


def test_models_are_unchanged(resnets):
    final, initial = resnets
    final = copy.deepcopy(final).train()
    before = copy.deepcopy(final.state_dict())
    criticality(final, initial, _image_data(), modules=["layer2"], alphas=[0.5], sigmas=[0.1], samples=1)
    assert final.training and all(m.training for m in final.modules())
    assert all(torch.equal(before[k], v) for k, v in final.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in final.modules())


def test_network_criticality_sums_modules():
    final, initial = _mlp_pair()
    batches = _mlp_data()
    settings = dict(alphas=[0.5, 1.0], sigmas=[0.01, 0.1], samples=2)
    frame = network_criticality(final, initial, batches, **settings)
    assert list(frame["module"]) == ["0", "2", "network"]
    for module in ("0", "2"):
        value = criticality_value(criticality(final, initial, batches, modules=[module], **settings))
        assert frame.loc[frame["module"] == module, "criticality"].iloc[0] == value
    assert frame["criticality"].iloc[-1] == pytest.approx(frame["criticality"].iloc[:2].sum())


def test_clear_errors(resnets):
    final, initial = resnets
    batches = _image_data()
    with pytest.raises(ValueError, match="no module named 'layer9'.*top-level modules are: conv1"):
        criticality(final, initial, batches, modules=["layer9"])
    with pytest.raises(ValueError, match="layer9"):
        network_criticality(final, initial, batches, modules=["fc", "layer9"])
    with pytest.raises(ValueError, match=r"modules=\['fc'\]"):
        criticality(final, initial, batches, modules="fc")
    with pytest.raises(ValueError, match="path_states"):
        criticality(final, initial, batches, modules=["fc"], path="optimization")
    with pytest.raises(ValueError, match="best_state"):
        criticality(final, initial, batches, modules=["fc"], start="best")
    with pytest.raises(ValueError, match="noise must be one of"):
        criticality(final, initial, batches, modules=["fc"], noise="gaussian")
    with pytest.raises(ValueError, match="sigmas"):
        criticality(final, initial, batches, modules=["fc"], sigmas=[0.0, 0.5])
    with pytest.raises(ValueError, match="start at initial"):
        criticality(final, initial, batches, modules=["fc"], path="optimization", path_states=[final, final])
    with pytest.raises(ValueError, match="reach the end point"):
        criticality(final, initial, batches, modules=["fc"], path="optimization", path_states=[initial, initial])
    with pytest.raises(ValueError, match="shape"):
        criticality(final, build_model("small_resnet", 9, width=8), batches, modules=["fc"])
    with pytest.raises(ValueError, match="several modules"):
        criticality_value(pd.DataFrame({"module": ["a", "b"], "feasible": [True, True], "measure": [1.0, 2.0]}))


# ---------------------------------------------------------------- grids that resolve themselves (issue 11)
EXTENSION = dict(modules=["0"], noise="absolute", alphas=[0.5, 1.0], sigmas=[0.3, 1.0], samples=3, seed=0)


def test_infeasible_grid_extends_sigma_down_by_halving_until_a_point_is_feasible():
    """No (α, σ) of the grid is feasible; σ = 0.15 (nothing feasible) then 0.075 (feasible) are
    searched at every α, with the draws of σ indices 2 and 3, and μ is finite."""
    final, initial = _mlp_pair()
    batches = _mlp_data()
    grid = criticality(final, initial, batches, **EXTENSION)
    assert list(grid["sigma"]) == [0.3, 1.0, 0.3, 1.0, 0.15, 0.15, 0.075, 0.075]
    assert not grid["feasible"].iloc[:6].any() and grid["feasible"].iloc[6:].any()
    reference, _ = _numpy_mlp_grid(final, initial, batches, "0", "absolute", [0.5, 1.0], [0.3, 1.0, 0.15, 0.075], 3, 0,
                                   1.01)
    merged = grid.merge(reference, on=["alpha", "sigma"], suffixes=("", "_numpy"))
    assert len(merged) == 8 and np.allclose(merged["loss_mean"], merged["loss_mean_numpy"], rtol=1e-5)
    assert criticality_value(grid) == pytest.approx(reference[reference["feasible"]]["measure"].min(), rel=1e-9)
    assert (grid["sigma_searched_min"] == 0.075).all() and (grid["sigma_floor"] == 1e-4).all()
    only_grid = criticality(final, initial, batches, sigma_floor=None, **EXTENSION)
    assert len(only_grid) == 4 and criticality_value(only_grid) == math.inf
    assert (only_grid["sigma_searched_min"] == 0.3).all() and only_grid["sigma_floor"].isna().all()
    fast = criticality(final, initial, batches, method="fast", **EXTENSION)
    _assert_fast_equals_grid(fast, grid, 4, 2)
    assert len(fast) < len(grid)
    network = network_criticality(final, initial, batches, **{**EXTENSION, "modules": None})
    assert np.isfinite(network["criticality"]).all()


def test_no_feasible_point_down_to_the_floor_is_reported():
    final, initial = _mlp_pair()
    never = dict(modules=["2"], alphas=[1.0], sigmas=[0.5], samples=2, threshold=1e-3, threshold_mode="absolute")
    grid = criticality(final, initial, _mlp_data(), sigma_floor=0.05, **never)
    assert list(grid["sigma"]) == [0.5, 0.25, 0.125, 0.0625, 0.05]  # halving, the last step clipped to the floor
    assert criticality_value(grid) == math.inf and (grid["sigma_searched_min"] == 0.05).all()
    frame = network_criticality(final, initial, _mlp_data(), sigma_floor=0.05, **never)
    module, network = frame.iloc[0], frame.iloc[-1]
    assert module["criticality"] == math.inf and module["sigma_searched_min"] == 0.05
    assert network["module"] == "network" and network["criticality"] == math.inf
    with pytest.raises(ValueError, match="sigma_floor must be a positive σ"):
        criticality(final, initial, _mlp_data(), sigma_floor=0.0, **never)


def test_a_grid_that_resolves_is_not_extended():
    final, initial = _mlp_pair()
    settings = dict(modules=["0"], alphas=ALPHAS, sigmas=SIGMAS, samples=3, seed=4, threshold=1.05)
    extended = criticality(final, initial, _mlp_data(), **settings)
    plain = criticality(final, initial, _mlp_data(), sigma_floor=None, **settings)
    assert extended["feasible"].any() and len(extended) == len(ALPHAS) * len(SIGMAS)
    pd.testing.assert_frame_equal(extended.drop(columns="sigma_floor"), plain.drop(columns="sigma_floor"))
