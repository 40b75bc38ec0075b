"""The catalogue of shapes and textures the synthetic domains draw from: the source's 10
shapes and 4 textures (40 classes), the targets' 12 other shapes, and the real domain's
4 nuisance textures. Shapes are signed distances in object units (about [-1, 1], y up);
textures are values in [0, 1] at object coordinates (u, v) with ``f`` cycles per object
unit and a per-image random ``grid`` (n, 1, 8, 8) for the textures that need noise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from .geometry import Field, box, circle, length, polygon, segment, soft_step, star

# ---------------------------------------------------------------- shapes (signed distances, object units ~[-1, 1])


def _heart(x: Tensor, y: Tensor) -> Tensor:
    s = 1.6  # the unit heart has its tip at (0, 0) and spans 1.2 x 1.1: scale and centre it
    px, py = x.abs() / s, y / s + 0.55
    upper = length(px - 0.25, py - 0.75) - math.sqrt(2) / 4
    fold = 0.5 * (px + py).clamp_min(0)
    lower = torch.minimum(length(px, py - 1.0), length(px - fold, py - fold)) * torch.sign(px - py)
    return torch.where(px + py > 1.0, upper, lower) * s


POLYGONS: dict[str, tuple[tuple[float, float], ...]] = {
    "diamond": ((0.0, 0.98), (0.62, 0.0), (0.0, -0.98), (-0.62, 0.0)),
    "arrow": ((-0.95, -0.22), (0.1, -0.22), (0.1, -0.62), (0.95, 0), (0.1, 0.62), (0.1, 0.22), (-0.95, 0.22)),
    "chevron": ((-0.65, -0.9), (-0.1, -0.9), (0.65, 0), (-0.1, 0.9), (-0.65, 0.9), (0.1, 0)),
    "el": ((-0.65, 0.9), (-0.2, 0.9), (-0.2, -0.5), (0.7, -0.5), (0.7, -0.9), (-0.65, -0.9)),
    "tee": ((-0.85, 0.9), (0.85, 0.9), (0.85, 0.5), (0.22, 0.5), (0.22, -0.9), (-0.22, -0.9), (-0.22, 0.5),
            (-0.85, 0.5)),
    "hourglass": ((-0.75, 0.9), (0.75, 0.9), (0.13, 0), (0.75, -0.9), (-0.75, -0.9), (-0.13, 0)),
    "trapezoid": ((-0.95, -0.6), (0.95, -0.6), (0.45, 0.6), (-0.45, 0.6)),
    "bolt": ((-0.15, 0.95), (0.55, 0.95), (0.15, 0.15), (0.55, 0.15), (-0.4, -0.95), (-0.05, -0.1), (-0.45, -0.1)),
}
"""Vertices (object units, y up) of the shapes that are simple polygons."""


def _polygon_shape(name: str) -> Field:
    return lambda x, y: polygon(x, y, POLYGONS[name])


SOURCE_SHAPES: dict[str, Field] = {
    "circle": lambda x, y: circle(x, y, 0.85),
    "triangle": lambda x, y: star(x, y + 0.2, 1.05, 3, 2),
    "square": lambda x, y: box(x, y, 0.72, 0.72),
    "diamond": _polygon_shape("diamond"),
    "oval": lambda x, y: (length(x / 0.95, y / 0.5) - 1) * 0.5,
    "star": lambda x, y: star(x, y, 1.0, 5, 3.2),
    "plus": lambda x, y: torch.minimum(box(x, y, 0.9, 0.28), box(x, y, 0.28, 0.9)),
    "ring": lambda x, y: (length(x, y) - 0.62).abs() - 0.26,
    "crescent": lambda x, y: torch.maximum(circle(x, y, 0.88), -circle(x - 0.45, y + 0.15, 0.72)),
    "heart": _heart,
}
"""Source shapes: distinct at 32 pixels under the source's +-15 degree rotations (a pentagon
or hexagon next to a circle would not be, and would slow pre-training down)."""

TARGET_SHAPES: dict[str, Field] = {
    "arrow": _polygon_shape("arrow"),
    "chevron": _polygon_shape("chevron"),
    "el": _polygon_shape("el"),
    "tee": _polygon_shape("tee"),
    "semicircle": lambda x, y: torch.maximum(circle(x, y + 0.4, 0.95), -(y + 0.4)),
    "pacman": lambda x, y: torch.maximum(circle(x, y, 0.88), -polygon(x, y, [(0, 0), (1.2, -0.9), (1.2, 0.9)])),
    "hourglass": _polygon_shape("hourglass"),
    "trapezoid": _polygon_shape("trapezoid"),
    "frame": lambda x, y: torch.maximum(box(x, y, 0.78, 0.78), -box(x, y, 0.42, 0.42)),
    "bolt": _polygon_shape("bolt"),
    "pill": lambda x, y: segment(x, y, -0.5, 0.0, 0.5, 0.0) - 0.42,
    "lens": lambda x, y: torch.maximum(circle(x - 0.5, y, 0.95), circle(x + 0.5, y, 0.95)),
}
"""Target classes (real, clipart, sketch): none of them is a source shape; the first 10 are the default."""


# ---------------------------------------------------------------- textures: (u, v, f, grid) -> [0, 1]


def _dots(u: Tensor, v: Tensor, f: Tensor, _grid: Tensor) -> Tensor:
    du, dv = torch.frac(f * u).abs(), torch.frac(f * v).abs()  # distance to the lattice of integers
    return soft_step(0.3 - length(torch.minimum(du, 1 - du), torch.minimum(dv, 1 - dv)), 25)


def _blotches(u: Tensor, v: Tensor, f: Tensor, grid: Tensor) -> Tensor:
    coords = torch.stack([u, v], -1).squeeze(1) * f.view(-1, 1, 1, 1)
    return soft_step(F.grid_sample(grid, coords, align_corners=False, padding_mode="reflection") - 0.5, 12)


def _hatch(u: Tensor, v: Tensor, f: Tensor, _grid: Tensor) -> Tensor:
    lines = torch.maximum(torch.cos(2 * math.pi * f * (u + v) / 1.4), torch.cos(2 * math.pi * f * (u - v) / 1.4))
    return soft_step(lines - 0.7, 12)


SOURCE_TEXTURES: dict[str, Field] = {
    "stripes": lambda u, _v, f, _grid: soft_step(torch.sin(2 * math.pi * f * u), 6),
    "checks": lambda u, v, f, _grid: soft_step(torch.sin(2 * math.pi * f * u) * torch.sin(2 * math.pi * f * v), 8),
    "dots": _dots,
    "blotches": _blotches,
}

REAL_TEXTURES: dict[str, Field] = {
    "waves": lambda u, v, f, _grid: soft_step(torch.sin(2 * math.pi * f * u + 2.5 * torch.sin(math.pi * f * v)), 4),
    "rings": lambda u, v, f, _grid: soft_step(torch.sin(2 * math.pi * f * length(u - 0.3, v)), 6),
    "hatch": _hatch,
    "plain": lambda u, _v, _f, _grid: (0.5 + 0.25 * u).clamp(0, 1),
}

