"""Random numbers and geometry for the synthetic domains: :class:`Draw` turns a seeded
numpy ``Generator`` into per-image float32 tensors (uniforms, coin flips, colours, grain,
smooth value noise); :func:`pixel_grid` and :func:`pose` give image and object coordinates;
:func:`coverage` and :func:`stroke` anti-alias a signed distance into a fill or a line; and
the signed-distance primitives (circle, box, star, polygon, segment) evaluate on whole
batches of pixel grids, so rendering is array code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

Field = Callable[..., Tensor]
"""A function of coordinate tensors (and per-image parameters) returning a tensor: a shape's
signed distance or a texture's value."""


# ---------------------------------------------------------------- random numbers


class Draw:
    """Seeded random numbers for a batch of ``n`` images, as float32 tensors shaped
    ``(n, 1, 1, 1)`` (one value per image, broadcast over pixels) unless told."""

    def __init__(self, rng: np.random.Generator, n: int) -> None:
        self.rng, self.n = rng, n

    def _shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape or (self.n, 1, 1, 1)

    def uniform(self, low: float, high: float, *shape: int) -> Tensor:
        return torch.from_numpy(self.rng.uniform(low, high, self._shape(shape)).astype(np.float32))

    def chance(self, p: float) -> Tensor:
        """1.0 with probability ``p``, else 0.0, per image."""
        return (self.uniform(0, 1) < p).float()

    def integers(self, high: int) -> Tensor:
        return torch.from_numpy(self.rng.integers(0, high, self.n))

    def colour(self, low: float = 0.0, high: float = 1.0) -> Tensor:
        return self.uniform(low, high, self.n, 3, 1, 1)

    def grain(self, *shape: int) -> Tensor:
        """Per-pixel noise of mean 0 and variance 1 (uniform: 4x cheaper than normal)."""
        return (torch.from_numpy(self.rng.random(shape, dtype=np.float32)) - 0.5) * math.sqrt(12)

    def noise(self, cells: int, size: int, octaves: int = 1, persistence: float = 0.6) -> Tensor:
        """Smooth value noise in [0, 1], shape ``(n, 1, size, size)``: a ``cells`` x ``cells``
        random grid, then ``octaves - 1`` finer grids (twice the cells, ``persistence``
        times the amplitude) added after bilinear upsampling."""
        field, total, amplitude = self.uniform(0, 1, self.n, 1, cells, cells), 1.0, 1.0
        for _ in range(octaves - 1):
            cells, amplitude = min(2 * cells, size), amplitude * persistence
            field = _resize(field, cells) + amplitude * self.uniform(0, 1, self.n, 1, cells, cells)
            total += amplitude
        return _resize(field, size) / total


def _resize(field: Tensor, size: int) -> Tensor:
    return F.interpolate(field, size=(size, size), mode="bilinear", align_corners=False)


# ---------------------------------------------------------------- geometry


def pixel_grid(size: int) -> tuple[Tensor, Tensor]:
    """Pixel centres in [-1, 1]: ``X`` grows rightwards ``(1, 1, 1, W)``, ``Y`` upwards ``(1, 1, H, 1)``."""
    centres = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    return centres.view(1, 1, 1, size), centres.flip(0).view(1, 1, size, 1)


def pose(X: Tensor, Y: Tensor, angle: Tensor, scale: Tensor | float, tx: Tensor, ty: Tensor) -> tuple[Tensor, Tensor]:
    """Object coordinates: translate by -t, rotate by -angle, divide by scale."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    dx, dy = X - tx, Y - ty
    return (cos * dx + sin * dy) / scale, (cos * dy - sin * dx) / scale


def coverage(sdf: Tensor, pixel: float) -> Tensor:
    """Anti-aliased inside-ness from a signed distance in image units (pixel = 2/size)."""
    return (0.5 - sdf / pixel).clamp(0, 1)


def stroke(sdf: Tensor, width: Tensor | float, pixel: float) -> Tensor:
    """Anti-aliased line of ``width`` (image units) along the zero level set of ``sdf``."""
    return coverage(sdf.abs() - width / 2, pixel)


def translate(field: Tensor, dx: Tensor, dy: Tensor) -> Tensor:
    """``field`` moved by (dx, dy) image units (y up); border values extend outwards."""
    n, size = len(field), field.shape[-1]
    X, Y = pixel_grid(size)
    grid = torch.stack([(X - dx).expand(n, 1, size, size), (dy - Y).expand(n, 1, size, size)], -1)
    return F.grid_sample(field, grid.squeeze(1), mode="bilinear", padding_mode="border", align_corners=False)


def soft_step(value: Tensor, sharpness: Tensor | float) -> Tensor:
    """A smooth step from 0 to 1 around ``value = 0``."""
    return torch.sigmoid(value * sharpness)


# ---------------------------------------------------------------- shapes (signed distances, object units ~[-1, 1])
# Formulas after I. Quilez, "2D distance functions" (iquilezles.org/articles/distfunctions2d).


def length(x: Tensor, y: Tensor) -> Tensor:
    """Euclidean length of (x, y), elementwise."""
    return torch.addcmul(x * x, y, y).sqrt_()


def circle(x: Tensor, y: Tensor, r: Tensor | float) -> Tensor:
    return length(x, y) - r


def box(x: Tensor, y: Tensor, hx: float, hy: float) -> Tensor:
    dx, dy = x.abs() - hx, y.abs() - hy
    return length(dx.clamp_min(0), dy.clamp_min(0)) + torch.maximum(dx, dy).clamp_max(0)


def star(x: Tensor, y: Tensor, r: float, n: int, m: float) -> Tensor:
    """Star with ``n`` tips of radius ``r``; ``m`` in [2, n] sets the spikiness (2 = regular polygon)."""
    an, en = math.pi / n, math.pi / m
    acx, acy, ecx, ecy = math.cos(an), math.sin(an), math.cos(en), math.sin(en)
    bn = torch.remainder(torch.atan2(x, y), 2 * an) - an
    distance = length(x, y)
    px, py = distance * torch.cos(bn) - r * acx, distance * torch.sin(bn).abs() - r * acy
    t = (-(px * ecx + py * ecy)).clamp(0, r * acy / ecy)
    px, py = px + ecx * t, py + ecy * t
    return length(px, py) * torch.sign(px)


def polygon(x: Tensor, y: Tensor, vertices: Sequence[tuple[float, float]]) -> Tensor:
    """Exact signed distance to a simple polygon (distance to the nearest edge, sign by crossings)."""
    distance = (x - vertices[0][0]) ** 2 + (y - vertices[0][1]) ** 2
    inside = torch.zeros_like(x, dtype=torch.bool)
    for (vx, vy), (ux, uy) in zip(vertices, [vertices[-1], *vertices[:-1]]):
        ex, ey, wx, wy = ux - vx, uy - vy, x - vx, y - vy
        t = ((wx * ex + wy * ey) / (ex * ex + ey * ey)).clamp(0, 1)
        distance = torch.minimum(distance, (wx - ex * t) ** 2 + (wy - ey * t) ** 2)
        above, below, left = y >= vy, y < uy, ex * wy > ey * wx
        inside ^= (above & below & left) | (~above & ~below & ~left)
    return distance.sqrt_() * (1 - 2 * inside.float())


def segment(x: Tensor, y: Tensor, ax: Tensor | float, ay: Tensor | float, bx: Tensor | float,
            by: Tensor | float) -> Tensor:
    """Distance to the segment from a to b."""
    ex, ey, wx, wy = bx - ax, by - ay, x - ax, y - ay
    t = ((wx * ex + wy * ey) / (ex * ex + ey * ey + 1e-12)).clamp(0, 1)
    return length(wx - ex * t, wy - ey * t)

