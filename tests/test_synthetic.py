"""Built-in synthetic domains: determinism, disjoint splits, formats, cache, geometry, preview."""

from __future__ import annotations

import colorsys
import hashlib
import math
import warnings

import numpy as np
import pytest
import torch
from matplotlib.path import Path as PolygonPath

from transferscope.data.preview import save_preview
from transferscope.data.synthetic import (
    POLYGONS,
    SOURCE_SHAPES,
    SYNTHETIC_DOMAINS,
    TARGET_SHAPES,
    XRAY_PREVALENCE,
    domains,
    geometry,
    render,
    synthetic_domain,
)

SMALL = {"n_train": 40, "n_test": 20}


def make(name, tmp_path, **kwargs):
    return synthetic_domain(name, cache_dir=tmp_path / "cache", **{**SMALL, **kwargs})


@pytest.mark.parametrize("name", SYNTHETIC_DOMAINS)
def test_same_arguments_give_identical_tensors_and_another_seed_differs(name, tmp_path):
    first = synthetic_domain(name, seed=3, cache_dir=tmp_path / "a", **SMALL)
    again = synthetic_domain(name, seed=3, cache_dir=tmp_path / "b", **SMALL)  # regenerated, not read back
    other = synthetic_domain(name, seed=4, cache_dir=tmp_path / "a", **SMALL)
    for split in ("train", "test"):
        assert torch.equal(first.split(split).images, again.split(split).images)
        assert torch.equal(first.split(split).targets, again.split(split).targets)
        assert not torch.equal(first.split(split).images, other.split(split).images)


PINNED_DIGESTS = {
    "source": "f01de91aa06386003e9a73afab52d9e7e849aec74f903cd00d562251f85e2282",
    "real": "d7d2b55f636e9d845313e46376e0ae6fee4d3382d70a7a331669a56a4ce5344c",
    "clipart": "e2da33eb74b94747f67e5b5796e5b947e46d23343ff87c84cbd67d5569cbb7ff",
    "sketch": "3ca252a8ff1a7707c34b360bcf5f38e5f74dd2b0f980e9cd9fcb79ed344d7f4c",
    "xray": "0e83414b24b83b4d10bedca27befaf8da186fb63dcadbb72d7cf31b9e36155ec",
}
"""sha256 of the uint8 images and the targets (dtype, shape, bytes) of both splits, from
GENERATOR_VERSION 1: a refactoring must not change one pixel. Bump GENERATOR_VERSION (the
cache key) when the images change on purpose, then update these."""


@pytest.mark.parametrize("name", SYNTHETIC_DOMAINS)
def test_generated_pixels_and_targets_match_the_pinned_digest(name, tmp_path):
    num_classes = {"source": 40, "xray": None}.get(name, len(TARGET_SHAPES))  # every shape and texture
    domain = synthetic_domain(name, n_train=48, n_test=16, num_classes=num_classes, seed=5,
                              cache_dir=tmp_path)  # an empty cache: generated, not read back
    digest = hashlib.sha256()
    for split in ("train", "test"):
        for tensor in (domain.split(split).images, domain.split(split).targets):
            digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(tensor.numpy().tobytes())
    assert digest.hexdigest() == PINNED_DIGESTS[name]


@pytest.mark.parametrize("name", SYNTHETIC_DOMAINS)
def test_train_and_test_share_no_image(name, tmp_path):
    domain = make(name, tmp_path, n_train=120, n_test=60)
    train = {image.numpy().tobytes() for image in domain.train.images}
    test = {image.numpy().tobytes() for image in domain.test.images}
    assert len(train) == 120 and len(test) == 60  # no duplicate within a split either
    assert not train & test


@pytest.mark.parametrize("name", SYNTHETIC_DOMAINS)
def test_formats_and_value_ranges(name, tmp_path):
    domain = make(name, tmp_path)
    assert domain.name == name and domain.multilabel == (name == "xray")
    for split, count in (("train", 40), ("test", 20)):
        data = domain.split(split)
        assert data.images.dtype == torch.uint8 and tuple(data.images.shape) == (count, 3, 32, 32)
        per_image_spread = data.images.float().flatten(1).std(1)
        assert (per_image_spread > 5).all(), "every image shows something, none is blank"
        if domain.multilabel:
            assert data.targets.dtype == torch.float32 and tuple(data.targets.shape) == (count, 5)
            assert set(data.targets.unique().tolist()) <= {0.0, 1.0}
        else:
            assert data.targets.dtype == torch.int64 and data.targets.ndim == 1
            assert 0 <= int(data.targets.min()) and int(data.targets.max()) < len(domain.classes)
    mean, std = domain.train.channel_stats()
    assert domain.mean == mean and domain.std == std
    if name in ("sketch", "xray"):  # greyscale stored as 3 identical channels
        images = domain.train.images
        assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])
    else:
        assert not torch.equal(domain.train.images[:, 0], domain.train.images[:, 1])


def test_default_classes_and_names(tmp_path):
    source = make("source", tmp_path, n_train=8, n_test=4)
    assert len(source.classes) == 40 and source.num_outputs == 40
    shapes, textures = zip(*(name.split("/") for name in source.classes))
    assert set(shapes) == set(SOURCE_SHAPES) and len(set(textures)) == 4
    assert len(set(source.classes)) == 40
    for name in ("real", "clipart", "sketch"):
        target = make(name, tmp_path, n_train=8, n_test=4)
        assert target.classes == list(TARGET_SHAPES)[:10]
        assert not set(target.classes) & set(SOURCE_SHAPES), "targets use other shapes than the source"
    assert make("xray", tmp_path, n_train=8, n_test=4).classes == ["Cardiomegaly", "Edema", "Consolidation", "Atelectasis",
                                              "Pleural Effusion"]


@pytest.mark.parametrize("name,num_classes", [("source", 40), ("source", 12), ("real", 10), ("sketch", 4)])
def test_classes_are_balanced(name, num_classes, tmp_path):
    domain = make(name, tmp_path, num_classes=num_classes, n_train=10 * num_classes + 3)
    counts = torch.bincount(domain.train.targets, minlength=num_classes)
    assert len(domain.classes) == num_classes and len(counts) == num_classes
    assert int(counts.max() - counts.min()) <= 1


def test_xray_labels_have_the_designed_prevalences_and_correlations(tmp_path):
    labels = domains._xray_targets(20_000, np.random.default_rng(0)).double()
    prevalence = labels.mean(0)  # binomial standard error <= 0.0035
    assert torch.allclose(prevalence, torch.tensor(XRAY_PREVALENCE, dtype=torch.float64), atol=0.015)
    assert (prevalence > 0.1).all() and (prevalence < 0.5).all()
    rendered = make("xray", tmp_path, n_train=400, n_test=1).train.targets.double().mean(0)
    assert (rendered > 0.06).all() and (rendered < 0.55).all()  # the domain draws its labels the same way
    correlation = torch.corrcoef(labels.T)
    assert correlation[0, 1] > 0.1, "Cardiomegaly and Edema co-occur (one latent cause)"
    assert correlation[2, 3] > 0.1, "Consolidation and Atelectasis co-occur (another cause)"
    assert (labels.sum(1) == 0).any() and (labels.sum(1) >= 2).any()


def test_cache_hit_returns_identical_tensors_without_regenerating(tmp_path, monkeypatch):
    first = make("clipart", tmp_path)
    files = list((tmp_path / "cache").glob("*.safetensors"))
    assert len(files) == 1 and "clipart" in files[0].name

    def fail(*_args, **_kwargs):
        raise AssertionError("a cache hit must not regenerate")

    monkeypatch.setattr(domains, "generate_split", fail)
    again = make("clipart", tmp_path)
    assert torch.equal(first.train.images, again.train.images) and torch.equal(first.test.targets,
                                                                               again.test.targets)
    assert first.mean == again.mean
    with pytest.raises(AssertionError, match="must not regenerate"):
        make("clipart", tmp_path, seed=1)  # other arguments, other file


def test_cache_file_name_depends_on_every_argument(tmp_path):
    for kwargs in ({}, {"seed": 1}, {"n_train": 9}, {"n_test": 5}, {"image_size": 16}, {"num_classes": 5}):
        make("sketch", tmp_path, **{"n_train": 8, "n_test": 4, **kwargs})
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 6


@pytest.mark.parametrize("damage", ["garbage", "truncate"])
def test_corrupt_cache_file_is_regenerated_with_a_warning(damage, tmp_path):
    first = make("real", tmp_path)
    (path,) = (tmp_path / "cache").glob("*.safetensors")
    content = path.read_bytes()
    path.write_bytes(b"not a safetensors file" if damage == "garbage" else content[: len(content) // 2])
    with pytest.warns(UserWarning, match="regenerating"):
        again = make("real", tmp_path)
    assert torch.equal(first.train.images, again.train.images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rewritten whole: read back without a warning
        assert torch.equal(make("real", tmp_path).test.images, first.test.images)


def test_default_cache_dir_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERSCOPE_CACHE", str(tmp_path / "env"))
    synthetic_domain("xray", n_train=8, n_test=4)
    assert len(list((tmp_path / "env").glob("synthetic-xray-*.safetensors"))) == 1


def test_bad_arguments_are_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError) as error:
        make("quickdraw", tmp_path)
    assert all(name in str(error.value) for name in SYNTHETIC_DOMAINS)
    with pytest.raises(ValueError, match="2 to 40 classes"):
        make("source", tmp_path, num_classes=41)
    with pytest.raises(ValueError, match="exactly 5 labels"):
        make("xray", tmp_path, num_classes=3)
    with pytest.raises(ValueError, match="n_train"):
        make("real", tmp_path, n_train=0)
    with pytest.raises(ValueError, match="image_size"):
        make("real", tmp_path, image_size=4)
    with pytest.raises(ValueError, match="seed"):
        make("real", tmp_path, seed=-1)


@pytest.mark.parametrize("image_size", [16, 64])
def test_image_size_setting(image_size, tmp_path):
    for name in SYNTHETIC_DOMAINS:
        domain = make(name, tmp_path, n_train=6, n_test=4, image_size=image_size)
        assert tuple(domain.train.images.shape) == (6, 3, image_size, image_size)
        assert tuple(domain.test.images.shape) == (4, 3, image_size, image_size)
        assert (domain.train.images.float().flatten(1).std(1) > 5).all()


def test_preview_writes_a_png(tmp_path):
    for name, n in (("source", 16), ("xray", 10)):
        path = save_preview(make(name, tmp_path), tmp_path / f"{name}.png", n=n)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 5_000
    with pytest.raises(ValueError, match="split"):
        save_preview(make("real", tmp_path), tmp_path / "x.png", split="valid")


# ---------------------------------------------------------------- geometry against float64 NumPy references


def _segment_distance(points: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Distance from each point to the closed polyline through ``vertices`` (float64)."""
    best = np.full(len(points), np.inf)
    for a, b in zip(vertices, np.roll(vertices, 1, axis=0)):
        edge = b - a
        t = np.clip(((points - a) @ edge) / (edge @ edge), 0, 1)
        best = np.minimum(best, np.linalg.norm(points - a - t[:, None] * edge, axis=1))
    return best


def _reference_sdf(points: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    inside = PolygonPath(vertices).contains_points(points)
    return np.where(inside, -1.0, 1.0) * _segment_distance(points, vertices)


def _evaluate(shape, points: np.ndarray) -> np.ndarray:
    x = torch.tensor(points[:, 0], dtype=torch.float32).view(1, 1, 1, -1)
    y = torch.tensor(points[:, 1], dtype=torch.float32).view(1, 1, 1, -1)
    return shape(x, y).double().flatten().numpy()


@pytest.mark.parametrize("name", sorted(POLYGONS))
def test_polygon_signed_distance_matches_a_float64_reference(name):
    points = np.random.default_rng(0).uniform(-1.3, 1.3, (4000, 2))
    vertices = np.array(POLYGONS[name], dtype=np.float64)
    shape = {**SOURCE_SHAPES, **TARGET_SHAPES}[name]
    np.testing.assert_allclose(_evaluate(shape, points), _reference_sdf(points, vertices), atol=2e-5)


def test_regular_triangle_matches_a_float64_reference():
    points = np.random.default_rng(1).uniform(-1.3, 1.3, (4000, 2))
    angles = 2 * np.pi * np.arange(3) / 3  # a vertex straight up, as atan2(x, y) measures
    vertices = 1.05 * np.stack([np.sin(angles), np.cos(angles)], 1)
    expected = _reference_sdf(points + np.array([0.0, 0.2]), vertices)  # centred by y + 0.2
    np.testing.assert_allclose(_evaluate(SOURCE_SHAPES["triangle"], points), expected, atol=2e-5)


@pytest.mark.parametrize("name,area", [("circle", math.pi * 0.85 ** 2), ("square", 1.44 ** 2),
                                       ("oval", math.pi * 0.95 * 0.5),
                                       ("ring", math.pi * (0.88 ** 2 - 0.36 ** 2)),
                                       ("frame", 1.56 ** 2 - 0.84 ** 2), ("pill", math.pi * 0.42 ** 2 + 0.84)])
def test_antialiased_coverage_integrates_to_the_exact_area(name, area):
    size = 256
    X, Y = geometry.pixel_grid(size)
    x, y = X.expand(1, 1, size, size) * 1.2, Y.expand(1, 1, size, size) * 1.2  # object units, 1.2 = half width
    shape = {**SOURCE_SHAPES, **TARGET_SHAPES}[name]
    coverage = geometry.coverage(shape(x, y) / 1.2, 2.0 / size)  # image units
    measured = float(coverage.double().mean()) * 2.4 ** 2
    assert measured == pytest.approx(area, rel=2e-3)


def test_translate_moves_a_field_by_the_given_offset_with_y_up():
    field = torch.zeros(1, 1, 16, 16)
    field[0, 0, 8, 8] = 1.0
    pixel = 2.0 / 16
    moved = geometry.translate(field, torch.tensor(2 * pixel).view(1, 1, 1, 1), torch.tensor(3 * pixel).view(1, 1, 1, 1))
    assert moved[0, 0, 5, 10] == pytest.approx(1.0) and float(moved.sum()) == pytest.approx(1.0)


def test_hsv_matches_colorsys():
    rng = np.random.default_rng(2)
    hsv = rng.uniform(0, 1, (50, 3))
    expected = np.array([colorsys.hsv_to_rgb(*row) for row in hsv])
    got = render._hsv(*(torch.tensor(hsv[:, j], dtype=torch.float32).view(-1, 1, 1, 1) for j in range(3)))
    np.testing.assert_allclose(got.view(50, 3).double().numpy(), expected, atol=1e-6)
