"""Built-in synthetic domains: a transfer benchmark that needs no download.

Five procedurally generated domains mirror the data of Neyshabur, Sedghi & Zhang (2020,
Sec. 2), ImageNet -> DomainNet real / clipart / quickdraw, and CheXpert:

``source``  pre-training: 40 classes = 10 shapes x 4 textures (``"triangle/stripes"``),
            natural-image-like: a textured, shaded object in random pose with a soft
            shadow, on a busy coloured-noise background with blobs behind and in front,
            global lighting and sensor noise. Colours are random and carry no class
            information; the object stands out from its background in luma, with random
            polarity.
``real``    10 *other* shapes in the same natural style, but not the source's renderer:
            other textures (a nuisance, turned freely), a sloping sky/ground background,
            boxes as clutter.
``clipart`` the same 10 target shapes as flat fills with a cel shade and a dark outline,
            squashed or stretched, with a flat drop shadow, among outlined flat props on
            a flat background (mostly white or pastel, sometimes any colour).
``sketch``  the same shapes as wobbly, broken grey strokes on paper, squashed or
            stretched, sometimes drawn twice, with stray strokes (quickdraw).
``xray``    greyscale (3 equal channels), low-contrast chest-radiograph-like images with
            CheXpert's 5 findings as correlated multi-label targets (metric: mean AUC).

Design: targets have new classes, so fine-tuning reuses features (edges, shape parts,
textures; robustness to clutter, colour and figure-ground polarity), not classes. They
are data-limited (400 training images by default) so that neither fine-tuning from the
source (P-T) nor training from scratch (RI-T) saturates, and they step away from the
source one axis at a time: real keeps the style, clipart keeps filled shapes but drops
texture and shading, sketch keeps only outlines, xray keeps nothing but blobs, lines
and edges. Pre-training therefore helps on every target, most on real, least on sketch.

Shapes are signed distance functions evaluated on whole batches of pixel grids, so
rendering is array code with a Python loop over classes only. Every random number comes
from a numpy ``Generator`` seeded by (seed, domain, split[, chunk]), so the same
arguments give bit-identical images and train and test never share a stream. Splits are
cached as safetensors under ``cache_dir`` (default ``$TRANSFERSCOPE_CACHE`` or
``~/.cache/transferscope``), keyed by a hash of the arguments and ``GENERATOR_VERSION``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from statistics import NormalDist

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.nn import functional as F

from ...io import atomic_path
from ..chexpert import LABELS as XRAY_LABELS
from ..domain import Domain
from ..tensors import ImageSet

GENERATOR_VERSION = 1
SYNTHETIC_DOMAINS = ("source", "real", "clipart", "sketch", "xray")
CHUNK = 512
"""Images rendered together from one random stream; changing it changes the images."""

Field = Callable[..., Tensor]


# ---------------------------------------------------------------- random numbers


class _Draw:
    """Seeded random numbers for a batch of ``n`` images, as float32 tensors shaped
    ``(n, 1, 1, 1)`` (one value per image, broadcast over pixels) unless told."""

    def __init__(self, rng: np.random.Generator, n: int) -> None:
        self.rng, self.n = rng, n

    def _shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape or (self.n, 1, 1, 1)

    def uniform(self, low: float, high: float, *shape: int) -> Tensor:
        return torch.from_numpy(self.rng.uniform(low, high, self._shape(shape)).astype(np.float32))

    def normal(self, *shape: int) -> Tensor:
        return torch.from_numpy(self.rng.standard_normal(self._shape(shape), dtype=np.float32))

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


def _grid(size: int) -> tuple[Tensor, Tensor]:
    """Pixel centres in [-1, 1]: ``X`` grows rightwards ``(1, 1, 1, W)``, ``Y`` upwards ``(1, 1, H, 1)``."""
    centres = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    return centres.view(1, 1, 1, size), centres.flip(0).view(1, 1, size, 1)


def _pose(X: Tensor, Y: Tensor, angle: Tensor, scale: Tensor, tx: Tensor, ty: Tensor) -> tuple[Tensor, Tensor]:
    """Object coordinates: translate by -t, rotate by -angle, divide by scale."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    dx, dy = X - tx, Y - ty
    return (cos * dx + sin * dy) / scale, (cos * dy - sin * dx) / scale


def _coverage(sdf: Tensor, pixel: float) -> Tensor:
    """Anti-aliased inside-ness from a signed distance in image units (pixel = 2/size)."""
    return (0.5 - sdf / pixel).clamp(0, 1)


def _stroke(sdf: Tensor, width: Tensor, pixel: float) -> Tensor:
    """Anti-aliased line of ``width`` (image units) along the zero level set of ``sdf``."""
    return _coverage(sdf.abs() - width / 2, pixel)


def _translate(field: Tensor, dx: Tensor, dy: Tensor) -> Tensor:
    """``field`` moved by (dx, dy) image units (y up); border values extend outwards."""
    n, size = len(field), field.shape[-1]
    X, Y = _grid(size)
    grid = torch.stack([(X - dx).expand(n, 1, size, size), (dy - Y).expand(n, 1, size, size)], -1)
    return F.grid_sample(field, grid.squeeze(1), mode="bilinear", padding_mode="border", align_corners=False)


def _blend(image: Tensor, colour: Tensor, alpha: Tensor) -> Tensor:
    """Paint ``colour`` over ``image`` with opacity ``alpha`` (one fused lerp)."""
    return torch.lerp(image, colour, alpha)


def _soft(value: Tensor, sharpness: float) -> Tensor:
    """A smooth step from 0 to 1 around ``value = 0``."""
    return torch.sigmoid(value * sharpness)


def _side(draw: _Draw) -> Tensor:
    """-1 or +1 with equal chance, per image (a side, a sign)."""
    return draw.chance(0.5) * 2 - 1


_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


def _with_luma(draw: _Draw, luma: Tensor) -> Tensor:
    """A colour of random hue and saturation whose luma (ITU-R BT.601) is ``luma``, up to
    clipping: a random colour shifted equally in its three channels."""
    colour = draw.colour()
    return (colour + luma - (colour * _LUMA).sum(1, keepdim=True)).clamp(0, 1)


def _contrasting_luma(draw: _Draw, luma: Tensor, low: float, high: float) -> Tensor:
    """A luma ``low``..``high`` brighter or darker than ``luma`` (random side, the other
    side when the first leaves [0.05, 0.95]): figure-ground contrast of random polarity.
    Luminance contrast is what lets a small CNN find shapes quickly; colour alone does not."""
    step = draw.uniform(low, high) * _side(draw)
    other = luma + step
    return torch.where((other < 0.05) | (other > 0.95), luma - step, other)


def _per_group(groups: Tensor, functions: Sequence[Field], *fields: Tensor) -> Tensor:
    """Evaluate ``functions[g]`` on the images of each group ``g``: one vectorised call
    per group, per-image tensors (first dimension = number of images) sliced, others passed whole."""
    out = None
    for group in groups.unique().tolist():
        index = (groups == group).nonzero().flatten()
        values = functions[group](*(f[index] if len(f) == len(groups) else f for f in fields))
        if out is None:
            out = values.new_empty(len(groups), *values.shape[1:])
        out[index] = values
    return out


# ---------------------------------------------------------------- shapes (signed distances, object units ~[-1, 1])
# Formulas after I. Quilez, "2D distance functions" (iquilezles.org/articles/distfunctions2d).


def _length(x: Tensor, y: Tensor) -> Tensor:
    return torch.addcmul(x * x, y, y).sqrt_()


def _circle(x: Tensor, y: Tensor, r: float) -> Tensor:
    return _length(x, y) - r


def _box(x: Tensor, y: Tensor, hx: float, hy: float) -> Tensor:
    dx, dy = x.abs() - hx, y.abs() - hy
    return _length(dx.clamp_min(0), dy.clamp_min(0)) + torch.maximum(dx, dy).clamp_max(0)


def _star(x: Tensor, y: Tensor, r: float, n: int, m: float) -> Tensor:
    """Star with ``n`` tips of radius ``r``; ``m`` in [2, n] sets the spikiness (2 = regular polygon)."""
    an, en = math.pi / n, math.pi / m
    acx, acy, ecx, ecy = math.cos(an), math.sin(an), math.cos(en), math.sin(en)
    bn = torch.remainder(torch.atan2(x, y), 2 * an) - an
    length = _length(x, y)
    px, py = length * torch.cos(bn) - r * acx, length * torch.sin(bn).abs() - r * acy
    t = (-(px * ecx + py * ecy)).clamp(0, r * acy / ecy)
    px, py = px + ecx * t, py + ecy * t
    return _length(px, py) * torch.sign(px)


def _polygon(x: Tensor, y: Tensor, vertices: Sequence[tuple[float, float]]) -> Tensor:
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


def _segment(x: Tensor, y: Tensor, ax: Tensor | float, ay: Tensor | float, bx: Tensor | float,
             by: Tensor | float) -> Tensor:
    """Distance to the segment from a to b."""
    ex, ey, wx, wy = bx - ax, by - ay, x - ax, y - ay
    t = ((wx * ex + wy * ey) / (ex * ex + ey * ey + 1e-12)).clamp(0, 1)
    return _length(wx - ex * t, wy - ey * t)


def _heart(x: Tensor, y: Tensor) -> Tensor:
    s = 1.6  # the unit heart has its tip at (0, 0) and spans 1.2 x 1.1: scale and centre it
    px, py = x.abs() / s, y / s + 0.55
    upper = _length(px - 0.25, py - 0.75) - math.sqrt(2) / 4
    fold = 0.5 * (px + py).clamp_min(0)
    lower = torch.minimum(_length(px, py - 1.0), _length(px - fold, py - fold)) * torch.sign(px - py)
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
    return lambda x, y: _polygon(x, y, POLYGONS[name])


SOURCE_SHAPES: dict[str, Field] = {
    "circle": lambda x, y: _circle(x, y, 0.85),
    "triangle": lambda x, y: _star(x, y + 0.2, 1.05, 3, 2),
    "square": lambda x, y: _box(x, y, 0.72, 0.72),
    "diamond": _polygon_shape("diamond"),
    "oval": lambda x, y: (_length(x / 0.95, y / 0.5) - 1) * 0.5,
    "star": lambda x, y: _star(x, y, 1.0, 5, 3.2),
    "plus": lambda x, y: torch.minimum(_box(x, y, 0.9, 0.28), _box(x, y, 0.28, 0.9)),
    "ring": lambda x, y: (_length(x, y) - 0.62).abs() - 0.26,
    "crescent": lambda x, y: torch.maximum(_circle(x, y, 0.88), -_circle(x - 0.45, y + 0.15, 0.72)),
    "heart": _heart,
}
"""Source shapes: distinct at 32 pixels under the source's +-15 degree rotations (a pentagon
or hexagon next to a circle would not be, and would slow pre-training down)."""

TARGET_SHAPES: dict[str, Field] = {
    "arrow": _polygon_shape("arrow"),
    "chevron": _polygon_shape("chevron"),
    "el": _polygon_shape("el"),
    "tee": _polygon_shape("tee"),
    "semicircle": lambda x, y: torch.maximum(_circle(x, y + 0.4, 0.95), -(y + 0.4)),
    "pacman": lambda x, y: torch.maximum(_circle(x, y, 0.88), -_polygon(x, y, [(0, 0), (1.2, -0.9), (1.2, 0.9)])),
    "hourglass": _polygon_shape("hourglass"),
    "trapezoid": _polygon_shape("trapezoid"),
    "frame": lambda x, y: torch.maximum(_box(x, y, 0.78, 0.78), -_box(x, y, 0.42, 0.42)),
    "bolt": _polygon_shape("bolt"),
    "pill": lambda x, y: _segment(x, y, -0.5, 0.0, 0.5, 0.0) - 0.42,
    "lens": lambda x, y: torch.maximum(_circle(x - 0.5, y, 0.95), _circle(x + 0.5, y, 0.95)),
}
"""Target classes (real, clipart, sketch): none of them is a source shape; the first 10 are the default."""


# ---------------------------------------------------------------- textures
# Values in [0, 1] at object coordinates (u, v), with ``f`` cycles per object unit and a
# per-image random ``grid`` (n, 1, 8, 8) for the textures that need noise.


def _dots(u: Tensor, v: Tensor, f: Tensor, grid: Tensor) -> Tensor:
    du, dv = torch.frac(f * u).abs(), torch.frac(f * v).abs()  # distance to the lattice of integers
    return _soft(0.3 - _length(torch.minimum(du, 1 - du), torch.minimum(dv, 1 - dv)), 25)


def _blotches(u: Tensor, v: Tensor, f: Tensor, grid: Tensor) -> Tensor:
    coords = torch.stack([u, v], -1).squeeze(1) * f.view(-1, 1, 1, 1)
    return _soft(F.grid_sample(grid, coords, align_corners=False, padding_mode="reflection") - 0.5, 12)


def _hatch(u: Tensor, v: Tensor, f: Tensor, grid: Tensor) -> Tensor:
    lines = torch.maximum(torch.cos(2 * math.pi * f * (u + v) / 1.4), torch.cos(2 * math.pi * f * (u - v) / 1.4))
    return _soft(lines - 0.7, 12)


SOURCE_TEXTURES: dict[str, Field] = {
    "stripes": lambda u, v, f, grid: _soft(torch.sin(2 * math.pi * f * u), 6),
    "checks": lambda u, v, f, grid: _soft(torch.sin(2 * math.pi * f * u) * torch.sin(2 * math.pi * f * v), 8),
    "dots": _dots,
    "blotches": _blotches,
}

REAL_TEXTURES: dict[str, Field] = {
    "waves": lambda u, v, f, grid: _soft(torch.sin(2 * math.pi * f * u + 2.5 * torch.sin(math.pi * f * v)), 4),
    "rings": lambda u, v, f, grid: _soft(torch.sin(2 * math.pi * f * _length(u - 0.3, v)), 6),
    "hatch": _hatch,
    "plain": lambda u, v, f, grid: (0.5 + 0.25 * u).clamp(0, 1),
}


# ---------------------------------------------------------------- renderers: batch -> float (n, 3, H, W) in [0, 1]


def _shaded_object(labels: Tensor, draw: _Draw, X: Tensor, Y: Tensor, shapes: Sequence[Field],
                   textures: Sequence[Field], texture_ids: Tensor, background: Tensor,
                   texture_turn: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A textured, shaded object in random pose, standing out in luma from a background of
    luma ``background``: (signed distance in image units, colour, light direction x, y).
    The texture mixes two random colours of different luma, turned by up to ``texture_turn``
    radians from the object's axes; shading is a tilted, rounded light falloff."""
    n = len(labels)
    scale = draw.uniform(0.5, 0.8)
    x, y = _pose(X, Y, draw.uniform(-math.pi / 12, math.pi / 12), scale,
                 draw.uniform(-1, 1) * (1 - scale) * 0.7, draw.uniform(-1, 1) * (1 - scale) * 0.7)
    sdf = _per_group(labels, shapes, x, y) * scale
    turn = draw.uniform(-texture_turn, texture_turn)
    u, v = x * torch.cos(turn) + y * torch.sin(turn), y * torch.cos(turn) - x * torch.sin(turn)
    pattern = _per_group(texture_ids, textures, u, v, draw.uniform(1.3, 2.3), draw.uniform(0, 1, n, 1, 8, 8))
    luma = _contrasting_luma(draw, background, 0.35, 0.6)
    spread = (luma - background).abs() * draw.uniform(0.5, 0.9)
    dark, light = _with_luma(draw, luma - spread / 2), _with_luma(draw, luma + spread / 2)
    heading = draw.uniform(0, 2 * math.pi)
    lx, ly = torch.cos(heading), torch.sin(heading)
    shade = (0.9 + 0.15 * (x * lx + y * ly) - 0.1 * (x * x + y * y)).clamp(0.6, 1.2)
    return sdf, _blend(dark, light, pattern) * shade, lx, ly


def _clutter(image: Tensor, draw: _Draw, X: Tensor, Y: Tensor, count: int, size: tuple[float, float],
             rectangles: bool = False, outline: bool = False) -> Tensor:
    """Paint ``count`` random blobs or sticks (ellipses, or rectangles) of random colour,
    each present with p=0.7, optionally with a dark outline."""
    pixel = 2.0 / X.shape[-1]
    for _ in range(count):
        half_x, half_y = draw.uniform(*size), draw.uniform(*size) * draw.uniform(0.15, 1.0)
        x, y = _pose(X, Y, draw.uniform(0, math.pi), 1.0, draw.uniform(-1, 1), draw.uniform(-1, 1))
        if rectangles:
            sdf = torch.maximum(x.abs() - half_x, y.abs() - half_y)
        else:
            sdf = (_length(x / half_x, y / half_y) - 1) * torch.minimum(half_x, half_y)
        present, colour = draw.chance(0.7), draw.colour()
        image = _blend(image, colour, _coverage(sdf, pixel) * present)
        if outline:
            image = _blend(image, colour * 0.2, _stroke(sdf, 1.5 * pixel, pixel) * present)
    return image


def _finish(image: Tensor, draw: _Draw, X: Tensor, Y: Tensor, light: float, noise: float) -> Tensor:
    """Global directional lighting and colour sensor noise."""
    heading = draw.uniform(0, 2 * math.pi)
    image = image * (1 + draw.uniform(0, light) * (X * torch.cos(heading) + Y * torch.sin(heading)))
    return image + draw.uniform(0, noise) * draw.grain(*image.shape)


def _render_natural(labels: Tensor, draw: _Draw, size: int, *, classes: Sequence[str], scene: str) -> Tensor:
    """``source`` (scene "noise") or ``real`` (scene "sky"): a textured, shaded object with
    a soft shadow on a busy background, clutter behind and in front, lighting, noise."""
    X, Y = _grid(size)
    pixel = 2.0 / size
    if scene == "noise":  # source: class = shape x texture; background: coloured fractal noise and blobs
        shape_names, texture_names = zip(*(name.split("/") for name in classes))
        texture_kinds = list(dict.fromkeys(texture_names))
        shapes = [SOURCE_SHAPES[name] for name in shape_names]
        textures = [SOURCE_TEXTURES[name] for name in texture_kinds]
        texture_ids = torch.tensor([texture_kinds.index(name) for name in texture_names])[labels]
        luma = draw.uniform(0.15, 0.85)
        background = _blend(_with_luma(draw, luma), _with_luma(draw, luma + draw.uniform(-0.1, 0.1)),
                            draw.noise(3, size, octaves=4))
        background = _clutter(background, draw, X, Y, 2, (0.05, 0.18))
    else:  # real: class = shape, texture a nuisance; background: a sloping horizon, ground and sky, boxes
        shapes = [TARGET_SHAPES[name] for name in classes]
        textures = list(REAL_TEXTURES.values())
        texture_ids = draw.integers(len(textures))
        luma = draw.uniform(0.2, 0.8)
        horizon = draw.uniform(-0.7, 0.7) + draw.uniform(-0.4, 0.4) * X
        sky = _soft(Y - horizon, 1 / draw.uniform(0.02, 0.15))
        ground = _with_luma(draw, luma - draw.uniform(0, 0.15)) * (0.8 + 0.4 * draw.noise(4, size, octaves=3))
        background = _blend(ground, _with_luma(draw, luma + draw.uniform(0, 0.15)), sky)
        background = _clutter(background, draw, X, Y, 3, (0.1, 0.35), rectangles=True)
    sdf, colour, lx, ly = _shaded_object(labels, draw, X, Y, shapes, textures, texture_ids, luma,
                                         texture_turn=0.0 if scene == "noise" else math.pi / 2)
    shadow = _coverage(_translate(sdf, -lx * 0.12, -ly * 0.12), 4 * pixel)
    image = background * (1 - draw.uniform(0.2, 0.6) * shadow)
    image = _blend(image, colour, _coverage(sdf, pixel))
    image = _clutter(image, draw, X, Y, 1, (0.03, 0.08), rectangles=scene != "noise")
    return _finish(image, draw, X, Y, light=0.4, noise=0.06)


def _hsv(hue: Tensor, saturation: Tensor, value: Tensor) -> Tensor:
    """HSV -> RGB, channel k = v - v s max(0, min(q, 4 - q, 1)), q = (k + 6h) mod 6, k = 5, 3, 1."""
    k = torch.tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1)
    q = torch.remainder(k + hue * 6, 6)
    return value - value * saturation * torch.minimum(q, 4 - q).clamp(0, 1)


def _render_clipart(labels: Tensor, draw: _Draw, size: int, *, classes: Sequence[str]) -> Tensor:
    """Flat colour fill with a two-tone cel shade and a dark outline, squashed or stretched,
    with a flat drop shadow, among outlined flat props and confetti on a flat background
    (mostly white or pastel, else any colour; maybe a ground band)."""
    X, Y = _grid(size)
    n, pixel = len(labels), 2.0 / size
    light = torch.where(draw.chance(0.5) > 0, torch.ones(n, 3, 1, 1), draw.colour(0.75, 1.0))
    paper = torch.where(draw.chance(0.7) > 0, light, draw.colour())  # mostly light, else any flat colour
    band = (Y < draw.uniform(-1.2, 0.0)).float() * draw.chance(0.4)
    image = _blend(paper, draw.colour(), band).expand(n, 3, size, size)
    image = _clutter(image, draw, X, Y, 3, (0.08, 0.25), outline=True)
    image = _clutter(image, draw, X, Y, 3, (0.03, 0.08))
    scale, stretch = draw.uniform(0.45, 0.75), draw.uniform(0.85, 1.18)
    x, y = _pose(X, Y, draw.uniform(-math.pi / 7, math.pi / 7), scale,
                 draw.uniform(-1, 1) * (1 - scale) * 0.7, draw.uniform(-1, 1) * (1 - scale) * 0.7)
    x, y = x * stretch, y / stretch
    sdf = _per_group(labels, [TARGET_SHAPES[name] for name in classes], x, y) * scale
    drop = _coverage(_translate(sdf, draw.uniform(0.04, 0.1), -draw.uniform(0.04, 0.1)), pixel) * draw.chance(0.5)
    image = image * (1 - 0.35 * drop)
    fill = _hsv(draw.uniform(0, 1), draw.uniform(0.5, 1.0), draw.uniform(0.6, 1.0))
    heading = draw.uniform(0, 2 * math.pi)
    shaded = (x * torch.cos(heading) + y * torch.sin(heading) > draw.uniform(-0.2, 0.5)).float()
    image = _blend(image, fill * (1 - draw.uniform(0.15, 0.4) * shaded), _coverage(sdf, pixel))
    return _blend(image, fill * draw.uniform(0.0, 0.3), _stroke(sdf, draw.uniform(1.0, 2.2) * pixel, pixel))


def _render_sketch(labels: Tensor, draw: _Draw, size: int, *, classes: Sequence[str]) -> Tensor:
    """Outline strokes only: the shape's boundary, squashed or stretched, drawn once or
    twice with a wobbly hand (smooth random displacement), gaps in the line, varying pen
    width and ink, and up to two stray strokes; grey ink on paper, photographed (uneven
    light, grain); the same value in the 3 channels."""
    X, Y = _grid(size)
    n, pixel = len(labels), 2.0 / size
    shapes = [TARGET_SHAPES[name] for name in classes]
    scale, stretch = draw.uniform(0.45, 0.85), draw.uniform(0.75, 1.33)
    angle = draw.uniform(-math.pi / 6, math.pi / 6)
    tx, ty = draw.uniform(-1, 1) * (1 - scale) * 0.6, draw.uniform(-1, 1) * (1 - scale) * 0.6
    width = draw.uniform(1.0, 2.0) * pixel
    ink = torch.zeros(n, 1, size, size)
    for repeat in (1.0, draw.chance(0.4)):
        wobble = draw.uniform(0.05, 0.2)
        wx, wy = (draw.noise(4, size) - 0.5) * wobble, (draw.noise(4, size) - 0.5) * wobble
        x, y = _pose(X + wx, Y + wy, angle + draw.uniform(-0.1, 0.1), scale * draw.uniform(0.95, 1.05), tx, ty)
        gaps = ((draw.noise(5, size) - draw.uniform(0.0, 0.4)) * 12).clamp(0, 1)
        sdf = _per_group(labels, shapes, x * stretch, y / stretch) * scale
        ink = torch.maximum(ink, _stroke(sdf, width, pixel) * gaps * repeat)
    for _ in range(2):
        stray = _segment(X, Y, draw.uniform(-1, 1), draw.uniform(-1, 1), draw.uniform(-1, 1), draw.uniform(-1, 1))
        ink = torch.maximum(ink, _stroke(stray, width, pixel) * draw.chance(0.35) * draw.uniform(0.4, 1.0))
    image = _finish(_blend(draw.uniform(0.88, 1.0), draw.uniform(0.0, 0.35), ink), draw, X, Y, light=0.3, noise=0.08)
    return image.expand(n, 3, size, size)


# ---------------------------------------------------------------- xray: CheXpert-like multi-label

XRAY_PREVALENCE = (0.15, 0.25, 0.12, 0.3, 0.4)
"""Designed marginal prevalence of Cardiomegaly, Edema, Consolidation, Atelectasis, Pleural Effusion."""
_XRAY_LOADINGS = np.array([[1.2, 0.0], [1.0, 0.3], [0.0, 1.0], [0.2, 0.9], [0.8, 0.6]])
"""Loadings of each finding on two latent causes (heart failure, infection/collapse): correlated findings."""


def _xray_targets(n: int, rng: np.random.Generator) -> Tensor:
    """Labels = 1[loadings @ z + e > threshold], z (2 causes) and e standard normal;
    the thresholds give the designed prevalences in expectation."""
    latent = rng.standard_normal((n, 2)) @ _XRAY_LOADINGS.T + rng.standard_normal((n, len(XRAY_LABELS)))
    spread = np.sqrt((_XRAY_LOADINGS ** 2).sum(1) + 1)
    thresholds = np.array([NormalDist().inv_cdf(1 - p) for p in XRAY_PREVALENCE]) * spread
    return torch.from_numpy((latent > thresholds).astype(np.float32))


def _render_xray(targets: Tensor, draw: _Draw, size: int, *, classes: Sequence[str]) -> Tensor:
    """A frontal chest radiograph, schematically: dark air, a soft-tissue thorax, dark
    lungs crossed by faint ribs, spine and heart; findings add density: an enlarged heart
    (Cardiomegaly), diffuse perihilar haze in both lungs (Edema), a dense blob in one lung
    (Consolidation), a thin plate-like band low in a lung (Atelectasis), fluid with a
    meniscus at a lung base (Pleural Effusion), each with a random severity; monitoring
    leads, electrodes, a tube and a side marker as clutter; then random exposure, low
    contrast and noise. Greyscale in 3 equal channels; ``classes`` is unused (fixed labels)."""
    cardiomegaly, edema, consolidation, atelectasis, effusion = (targets[:, j].view(-1, 1, 1, 1) for j in range(5))
    X, Y = _grid(size)
    n, pixel = len(targets), 2.0 / size
    x, y = _pose(X, Y, draw.uniform(-0.2, 0.2), draw.uniform(0.8, 1.2), draw.uniform(-0.15, 0.15),
                 draw.uniform(-0.15, 0.15))
    body = _coverage((_length(x / 0.85, y / 1.15) - 1) * 0.85, pixel)
    side = torch.sign(x)
    lung_x, lung_y = x.abs() - 0.38, y - 0.05
    lungs = _coverage((_length(lung_x / 0.27, lung_y / 0.58) - 1) * 0.27, pixel)
    ribs = 0.5 + 0.5 * torch.cos(2 * math.pi * draw.uniform(2.8, 3.6) * (y + 0.35 * x * x))
    spine = _coverage(x.abs() - 0.07, pixel)
    heart_size = torch.where(cardiomegaly > 0, draw.uniform(0.34, 0.46), draw.uniform(0.25, 0.37))
    heart = _coverage((_length((x - 0.1) / heart_size, (y + 0.25) / (heart_size * 0.75)) - 1) * heart_size, pixel)
    density = 0.55 * body - 0.35 * lungs + (0.08 * ribs + 0.15 * spine) * body + 0.3 * heart
    reticular = _soft(draw.noise(max(size // 3, 4), size) - 0.55, 12)  # fine interstitial lines
    haze = (0.4 * draw.noise(4, size) + 0.6 * reticular) * torch.exp(-(lung_x + 0.15) ** 2 / 0.08 - lung_y ** 2 / 0.2)
    density = density + edema * draw.uniform(0.15, 0.35) * haze * lungs
    spot = _coverage(_circle(lung_x + draw.uniform(-0.1, 0.1), lung_y + draw.uniform(-0.35, 0.25),
                             draw.uniform(0.1, 0.2)), 3 * pixel)
    density = density + consolidation * draw.uniform(0.15, 0.4) * spot * (side == _side(draw)) * lungs
    band = _stroke(lung_y - draw.uniform(-0.5, -0.15) - draw.uniform(-0.3, 0.3) * lung_x, draw.uniform(0.06, 0.12),
                   pixel)
    density = density + atelectasis * draw.uniform(0.12, 0.28) * band * (side == _side(draw)) * lungs
    level = -0.58 + draw.uniform(0.1, 0.4) + 0.35 * ((lung_x + 0.27) / 0.54).clamp(0, 1) ** 2  # meniscus
    fluid = _coverage(lung_y - level, pixel) * ((side == _side(draw)) | (draw.chance(0.5) > 0))  # one side or both
    density = density + effusion * draw.uniform(0.1, 0.3) * fluid * lungs
    foreign = _coverage(_box(X - 0.8, Y - 0.8, 0.06, 0.08), pixel) * draw.chance(0.7)  # side marker
    tube = _segment(X, Y, draw.uniform(-0.1, 0.1), 1.0, draw.uniform(-0.15, 0.15), draw.uniform(-0.4, 0.2))
    foreign = torch.maximum(foreign, _stroke(tube, draw.uniform(0.05, 0.08), pixel) * draw.chance(0.4))  # midline
    for _ in range(3):  # leads: bright wires across the chest
        lead = _segment(X, Y, draw.uniform(-1, 1), draw.uniform(0.3, 1), draw.uniform(-1, 1), draw.uniform(-1, 0))
        foreign = torch.maximum(foreign, _stroke(lead, draw.uniform(0.03, 0.06), pixel) * draw.chance(0.6))
    for _ in range(4):  # electrodes: small bright discs
        disc = _circle(X - draw.uniform(-0.8, 0.8), Y - draw.uniform(-0.8, 0.8), draw.uniform(0.04, 0.07))
        foreign = torch.maximum(foreign, _coverage(disc, pixel) * draw.chance(0.5))
    image = 0.08 + density + 0.5 * foreign
    image = image * draw.uniform(0.6, 0.9) + draw.uniform(0.05, 0.2)
    image = image.clamp(0, 1) ** draw.uniform(0.8, 1.25) + draw.uniform(0.01, 0.04) * draw.grain(n, 1, size, size)
    return image.expand(n, 3, size, size)


# ---------------------------------------------------------------- the domains


@dataclass(frozen=True)
class _Spec:
    render: Callable[..., Tensor]  # (targets, draw, image_size, *, classes) -> float (n, 3, H, W)
    all_classes: tuple[str, ...]
    default_classes: int
    n_train: int
    n_test: int
    multilabel: bool = False


def _source_classes() -> tuple[str, ...]:
    """Texture-major order: the first k classes cover all shapes before repeating textures."""
    return tuple(f"{shape}/{texture}" for texture in SOURCE_TEXTURES for shape in SOURCE_SHAPES)


_SPECS: dict[str, _Spec] = {
    "source": _Spec(partial(_render_natural, scene="noise"), _source_classes(), 40, 12_000, 2_000),
    "real": _Spec(partial(_render_natural, scene="sky"), tuple(TARGET_SHAPES), 10, 400, 1_000),
    "clipart": _Spec(_render_clipart, tuple(TARGET_SHAPES), 10, 400, 1_000),
    "sketch": _Spec(_render_sketch, tuple(TARGET_SHAPES), 10, 400, 1_000),
    "xray": _Spec(_render_xray, XRAY_LABELS, 5, 400, 1_000, multilabel=True),
}


def _resolve_classes(name: str, spec: _Spec, num_classes: int | None) -> list[str]:
    if num_classes is None:
        return list(spec.all_classes[: spec.default_classes])
    if spec.multilabel:
        if num_classes != len(spec.all_classes):
            raise ValueError(f"synthetic domain {name!r} has exactly {len(spec.all_classes)} labels "
                             f"({', '.join(spec.all_classes)}); leave num_classes unset")
        return list(spec.all_classes)
    if not 2 <= num_classes <= len(spec.all_classes):
        raise ValueError(f"synthetic domain {name!r} offers 2 to {len(spec.all_classes)} classes, "
                         f"got num_classes={num_classes}")
    return list(spec.all_classes[:num_classes])


def generate_split(name: str, split: str, n: int, image_size: int, classes: Sequence[str], seed: int) -> ImageSet:
    """Render ``n`` images of one split (no cache). Targets come from the stream
    (seed, domain, split); each chunk of ``CHUNK`` images from (seed, domain, split, chunk)."""
    spec = _SPECS[name]
    key = [seed, SYNTHETIC_DOMAINS.index(name), ("train", "test").index(split)]
    target_rng = np.random.default_rng(key)
    if spec.multilabel:
        targets = _xray_targets(n, target_rng)
    else:
        targets = torch.from_numpy(target_rng.permutation(np.arange(n) % len(classes)))
    images = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    for chunk, start in enumerate(range(0, n, CHUNK)):
        batch = targets[start:start + CHUNK]
        # chunk + 1: a seed sequence ending in 0 would equal the shorter one of the targets
        draw = _Draw(np.random.default_rng([*key, chunk + 1]), len(batch))
        pixels = spec.render(batch, draw, image_size, classes=classes)
        images[start:start + CHUNK] = (pixels.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageSet(images, targets, list(classes))


def default_cache_dir() -> Path:
    return Path(os.environ.get("TRANSFERSCOPE_CACHE") or Path.home() / ".cache" / "transferscope")


def _cache_path(cache_dir: Path, arguments: dict) -> Path:
    text = json.dumps({"generator_version": GENERATOR_VERSION, **arguments}, sort_keys=True)
    return cache_dir / f"synthetic-{arguments['name']}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.safetensors"


def _read_cache(path: Path, classes: list[str], sizes: dict[str, int], image_size: int) -> dict[str, ImageSet] | None:
    """The cached splits, or None when the file is missing; a file that is unreadable or
    does not hold what the arguments ask for is reported and ignored (regenerated)."""
    if not path.is_file():
        return None
    try:
        tensors = load_file(str(path))
        splits = {split: ImageSet(tensors[f"{split}_images"], tensors[f"{split}_targets"], classes)
                  for split in sizes}
        for split, data in splits.items():
            if tuple(data.images.shape) != (sizes[split], 3, image_size, image_size):
                raise ValueError(f"{split} images have shape {tuple(data.images.shape)}")
        return splits
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError) as error:
        warnings.warn(f"synthetic data cache {path} is unreadable ({error}); regenerating it", stacklevel=3)
        return None


def synthetic_domain(name: str, *, n_train: int | None = None, n_test: int | None = None, image_size: int = 32,
                     num_classes: int | None = None, seed: int = 0,
                     cache_dir: str | os.PathLike | None = None) -> Domain:
    """A built-in synthetic domain (see the module docstring), generated once and cached.

    ``n_train``/``n_test``/``num_classes`` default to the domain's demo sizes (source:
    12,000/2,000 images, 40 classes; targets: 400/1,000 images, 10 classes; xray: 5
    labels). Normalisation: per-channel mean and std of the train split. A cache file
    that cannot be read is regenerated with a warning.
    """
    if name not in _SPECS:
        raise ValueError(f"unknown synthetic domain {name!r}; choose one of {', '.join(SYNTHETIC_DOMAINS)}")
    spec = _SPECS[name]
    sizes = {"train": spec.n_train if n_train is None else n_train, "test": spec.n_test if n_test is None else n_test}
    for split, count in sizes.items():
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"n_{split} must be a positive number of images, got {count!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an integer of at least 8 pixels, got {image_size!r}")
    classes = _resolve_classes(name, spec, num_classes)
    arguments = {"name": name, "n_train": sizes["train"], "n_test": sizes["test"], "image_size": image_size,
                 "classes": classes, "seed": seed}
    path = _cache_path(Path(cache_dir) if cache_dir is not None else default_cache_dir(), arguments)
    splits = _read_cache(path, classes, sizes, image_size)
    if splits is None:
        splits = {split: generate_split(name, split, count, image_size, classes, seed) for split, count in sizes.items()}
        tensors = {f"{split}_{part}": getattr(data, part).contiguous()
                   for split, data in splits.items() for part in ("images", "targets")}
        try:
            with atomic_path(path) as tmp:
                save_file(tensors, str(tmp), metadata={"arguments": json.dumps(arguments),
                                                       "generator_version": str(GENERATOR_VERSION)})
        except OSError as error:
            warnings.warn(f"cannot write the synthetic data cache {path} ({error}); continuing without it",
                          stacklevel=2)
    mean, std = splits["train"].channel_stats()
    return Domain(name=name, train=splits["train"], test=splits["test"], classes=classes,
                  multilabel=spec.multilabel, mean=mean, std=std)
