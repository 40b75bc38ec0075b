"""Renderers of the synthetic domains: each turns a batch of targets and a :class:`Draw`
into float images ``(n, 3, H, W)`` in [0, 1] -- :func:`render_natural` (source and real:
a textured, shaded object on a busy background), :func:`render_clipart` (flat fills with
outlines), :func:`render_sketch` (wobbly grey strokes) and :func:`render_xray` (a
schematic chest radiograph with CheXpert's findings) -- with the colour, clutter and
lighting helpers they share. The package docstring describes each style.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .catalogue import REAL_TEXTURES, SOURCE_SHAPES, SOURCE_TEXTURES, TARGET_SHAPES
from .geometry import Draw, Field, box, circle, coverage, length, pixel_grid, pose, segment, soft_step, stroke, translate

# ---------------------------------------------------------------- colour and compositing


def _blend(image: Tensor, colour: Tensor, alpha: Tensor) -> Tensor:
    """Paint ``colour`` over ``image`` with opacity ``alpha`` (one fused lerp)."""
    return torch.lerp(image, colour, alpha)


def _side(draw: Draw) -> Tensor:
    """-1 or +1 with equal chance, per image (a side, a sign)."""
    return draw.chance(0.5) * 2 - 1


_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


def _with_luma(draw: Draw, luma: Tensor) -> Tensor:
    """A colour of random hue and saturation whose luma (ITU-R BT.601) is ``luma``, up to
    clipping: a random colour shifted equally in its three channels."""
    colour = draw.colour()
    return (colour + luma - (colour * _LUMA).sum(1, keepdim=True)).clamp(0, 1)


def _contrasting_luma(draw: Draw, luma: Tensor, low: float, high: float) -> Tensor:
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
    assert out is not None, "no images to render"
    return out


# ---------------------------------------------------------------- renderers: batch -> float (n, 3, H, W) in [0, 1]


def _shaded_object(labels: Tensor, draw: Draw, X: Tensor, Y: Tensor, shapes: Sequence[Field],
                   textures: Sequence[Field], texture_ids: Tensor, background: Tensor,
                   texture_turn: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A textured, shaded object in random pose, standing out in luma from a background of
    luma ``background``: (signed distance in image units, colour, light direction x, y).
    The texture mixes two random colours of different luma, turned by up to ``texture_turn``
    radians from the object's axes; shading is a tilted, rounded light falloff."""
    n = len(labels)
    scale = draw.uniform(0.5, 0.8)
    x, y = pose(X, Y, draw.uniform(-math.pi / 12, math.pi / 12), scale,
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


def _clutter(image: Tensor, draw: Draw, X: Tensor, Y: Tensor, count: int, size: tuple[float, float],
             rectangles: bool = False, outline: bool = False) -> Tensor:
    """Paint ``count`` random blobs or sticks (ellipses, or rectangles) of random colour,
    each present with p=0.7, optionally with a dark outline."""
    pixel = 2.0 / X.shape[-1]
    for _ in range(count):
        half_x, half_y = draw.uniform(*size), draw.uniform(*size) * draw.uniform(0.15, 1.0)
        x, y = pose(X, Y, draw.uniform(0, math.pi), 1.0, draw.uniform(-1, 1), draw.uniform(-1, 1))
        if rectangles:
            sdf = torch.maximum(x.abs() - half_x, y.abs() - half_y)
        else:
            sdf = (length(x / half_x, y / half_y) - 1) * torch.minimum(half_x, half_y)
        present, colour = draw.chance(0.7), draw.colour()
        image = _blend(image, colour, coverage(sdf, pixel) * present)
        if outline:
            image = _blend(image, colour * 0.2, stroke(sdf, 1.5 * pixel, pixel) * present)
    return image


def _finish(image: Tensor, draw: Draw, X: Tensor, Y: Tensor, light: float, noise: float) -> Tensor:
    """Global directional lighting and colour sensor noise."""
    heading = draw.uniform(0, 2 * math.pi)
    image = image * (1 + draw.uniform(0, light) * (X * torch.cos(heading) + Y * torch.sin(heading)))
    return image + draw.uniform(0, noise) * draw.grain(*image.shape)


def render_natural(labels: Tensor, draw: Draw, size: int, *, classes: Sequence[str], scene: str) -> Tensor:
    """``source`` (scene "noise") or ``real`` (scene "sky"): a textured, shaded object with
    a soft shadow on a busy background, clutter behind and in front, lighting, noise."""
    X, Y = pixel_grid(size)
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
        sky = soft_step(Y - horizon, 1 / draw.uniform(0.02, 0.15))
        ground = _with_luma(draw, luma - draw.uniform(0, 0.15)) * (0.8 + 0.4 * draw.noise(4, size, octaves=3))
        background = _blend(ground, _with_luma(draw, luma + draw.uniform(0, 0.15)), sky)
        background = _clutter(background, draw, X, Y, 3, (0.1, 0.35), rectangles=True)
    sdf, colour, lx, ly = _shaded_object(labels, draw, X, Y, shapes, textures, texture_ids, luma,
                                         texture_turn=0.0 if scene == "noise" else math.pi / 2)
    shadow = coverage(translate(sdf, -lx * 0.12, -ly * 0.12), 4 * pixel)
    image = background * (1 - draw.uniform(0.2, 0.6) * shadow)
    image = _blend(image, colour, coverage(sdf, pixel))
    image = _clutter(image, draw, X, Y, 1, (0.03, 0.08), rectangles=scene != "noise")
    return _finish(image, draw, X, Y, light=0.4, noise=0.06)


def _hsv(hue: Tensor, saturation: Tensor, value: Tensor) -> Tensor:
    """HSV -> RGB, channel k = v - v s max(0, min(q, 4 - q, 1)), q = (k + 6h) mod 6, k = 5, 3, 1."""
    k = torch.tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1)
    q = torch.remainder(k + hue * 6, 6)
    return value - value * saturation * torch.minimum(q, 4 - q).clamp(0, 1)


def render_clipart(labels: Tensor, draw: Draw, size: int, *, classes: Sequence[str]) -> Tensor:
    """Flat colour fill with a two-tone cel shade and a dark outline, squashed or stretched,
    with a flat drop shadow, among outlined flat props and confetti on a flat background
    (mostly white or pastel, else any colour; maybe a ground band)."""
    X, Y = pixel_grid(size)
    n, pixel = len(labels), 2.0 / size
    light = torch.where(draw.chance(0.5) > 0, torch.ones(n, 3, 1, 1), draw.colour(0.75, 1.0))
    paper = torch.where(draw.chance(0.7) > 0, light, draw.colour())  # mostly light, else any flat colour
    band = (Y < draw.uniform(-1.2, 0.0)).float() * draw.chance(0.4)
    image = _blend(paper, draw.colour(), band).expand(n, 3, size, size)
    image = _clutter(image, draw, X, Y, 3, (0.08, 0.25), outline=True)
    image = _clutter(image, draw, X, Y, 3, (0.03, 0.08))
    scale, stretch = draw.uniform(0.45, 0.75), draw.uniform(0.85, 1.18)
    x, y = pose(X, Y, draw.uniform(-math.pi / 7, math.pi / 7), scale,
                draw.uniform(-1, 1) * (1 - scale) * 0.7, draw.uniform(-1, 1) * (1 - scale) * 0.7)
    x, y = x * stretch, y / stretch
    sdf = _per_group(labels, [TARGET_SHAPES[name] for name in classes], x, y) * scale
    drop = coverage(translate(sdf, draw.uniform(0.04, 0.1), -draw.uniform(0.04, 0.1)), pixel) * draw.chance(0.5)
    image = image * (1 - 0.35 * drop)
    fill = _hsv(draw.uniform(0, 1), draw.uniform(0.5, 1.0), draw.uniform(0.6, 1.0))
    heading = draw.uniform(0, 2 * math.pi)
    shaded = (x * torch.cos(heading) + y * torch.sin(heading) > draw.uniform(-0.2, 0.5)).float()
    image = _blend(image, fill * (1 - draw.uniform(0.15, 0.4) * shaded), coverage(sdf, pixel))
    return _blend(image, fill * draw.uniform(0.0, 0.3), stroke(sdf, draw.uniform(1.0, 2.2) * pixel, pixel))


def render_sketch(labels: Tensor, draw: Draw, size: int, *, classes: Sequence[str]) -> Tensor:
    """Outline strokes only: the shape's boundary, squashed or stretched, drawn once or
    twice with a wobbly hand (smooth random displacement), gaps in the line, varying pen
    width and ink, and up to two stray strokes; grey ink on paper, photographed (uneven
    light, grain); the same value in the 3 channels."""
    X, Y = pixel_grid(size)
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
        x, y = pose(X + wx, Y + wy, angle + draw.uniform(-0.1, 0.1), scale * draw.uniform(0.95, 1.05), tx, ty)
        gaps = ((draw.noise(5, size) - draw.uniform(0.0, 0.4)) * 12).clamp(0, 1)
        sdf = _per_group(labels, shapes, x * stretch, y / stretch) * scale
        ink = torch.maximum(ink, stroke(sdf, width, pixel) * gaps * repeat)
    for _ in range(2):
        stray = segment(X, Y, draw.uniform(-1, 1), draw.uniform(-1, 1), draw.uniform(-1, 1), draw.uniform(-1, 1))
        ink = torch.maximum(ink, stroke(stray, width, pixel) * draw.chance(0.35) * draw.uniform(0.4, 1.0))
    image = _finish(_blend(draw.uniform(0.88, 1.0), draw.uniform(0.0, 0.35), ink), draw, X, Y, light=0.3, noise=0.08)
    return image.expand(n, 3, size, size)


# ---------------------------------------------------------------- xray: CheXpert-like multi-label


def render_xray(targets: Tensor, draw: Draw, size: int, *, classes: Sequence[str]) -> Tensor:  # noqa: ARG001 - every renderer's signature
    """A frontal chest radiograph, schematically: dark air, a soft-tissue thorax, dark
    lungs crossed by faint ribs, spine and heart; findings add density: an enlarged heart
    (Cardiomegaly), diffuse perihilar haze in both lungs (Edema), a dense blob in one lung
    (Consolidation), a thin plate-like band low in a lung (Atelectasis), fluid with a
    meniscus at a lung base (Pleural Effusion), each with a random severity; monitoring
    leads, electrodes, a tube and a side marker as clutter; then random exposure, low
    contrast and noise. Greyscale in 3 equal channels; ``classes`` is unused (fixed labels)."""
    cardiomegaly, edema, consolidation, atelectasis, effusion = (targets[:, j].view(-1, 1, 1, 1) for j in range(5))
    X, Y = pixel_grid(size)
    n, pixel = len(targets), 2.0 / size
    x, y = pose(X, Y, draw.uniform(-0.2, 0.2), draw.uniform(0.8, 1.2), draw.uniform(-0.15, 0.15),
                draw.uniform(-0.15, 0.15))
    body = coverage((length(x / 0.85, y / 1.15) - 1) * 0.85, pixel)
    side = torch.sign(x)
    lung_x, lung_y = x.abs() - 0.38, y - 0.05
    lungs = coverage((length(lung_x / 0.27, lung_y / 0.58) - 1) * 0.27, pixel)
    ribs = 0.5 + 0.5 * torch.cos(2 * math.pi * draw.uniform(2.8, 3.6) * (y + 0.35 * x * x))
    spine = coverage(x.abs() - 0.07, pixel)
    heart_size = torch.where(cardiomegaly > 0, draw.uniform(0.34, 0.46), draw.uniform(0.25, 0.37))
    heart = coverage((length((x - 0.1) / heart_size, (y + 0.25) / (heart_size * 0.75)) - 1) * heart_size, pixel)
    density = 0.55 * body - 0.35 * lungs + (0.08 * ribs + 0.15 * spine) * body + 0.3 * heart
    reticular = soft_step(draw.noise(max(size // 3, 4), size) - 0.55, 12)  # fine interstitial lines
    haze = (0.4 * draw.noise(4, size) + 0.6 * reticular) * torch.exp(-(lung_x + 0.15) ** 2 / 0.08 - lung_y ** 2 / 0.2)
    density = density + edema * draw.uniform(0.15, 0.35) * haze * lungs
    spot = coverage(circle(lung_x + draw.uniform(-0.1, 0.1), lung_y + draw.uniform(-0.35, 0.25),
                            draw.uniform(0.1, 0.2)), 3 * pixel)
    density = density + consolidation * draw.uniform(0.15, 0.4) * spot * (side == _side(draw)) * lungs
    band = stroke(lung_y - draw.uniform(-0.5, -0.15) - draw.uniform(-0.3, 0.3) * lung_x, draw.uniform(0.06, 0.12),
                  pixel)
    density = density + atelectasis * draw.uniform(0.12, 0.28) * band * (side == _side(draw)) * lungs
    level = -0.58 + draw.uniform(0.1, 0.4) + 0.35 * ((lung_x + 0.27) / 0.54).clamp(0, 1) ** 2  # meniscus
    fluid = coverage(lung_y - level, pixel) * ((side == _side(draw)) | (draw.chance(0.5) > 0))  # one side or both
    density = density + effusion * draw.uniform(0.1, 0.3) * fluid * lungs
    foreign = coverage(box(X - 0.8, Y - 0.8, 0.06, 0.08), pixel) * draw.chance(0.7)  # side marker
    tube = segment(X, Y, draw.uniform(-0.1, 0.1), 1.0, draw.uniform(-0.15, 0.15), draw.uniform(-0.4, 0.2))
    foreign = torch.maximum(foreign, stroke(tube, draw.uniform(0.05, 0.08), pixel) * draw.chance(0.4))  # midline
    for _ in range(3):  # leads: bright wires across the chest
        lead = segment(X, Y, draw.uniform(-1, 1), draw.uniform(0.3, 1), draw.uniform(-1, 1), draw.uniform(-1, 0))
        foreign = torch.maximum(foreign, stroke(lead, draw.uniform(0.03, 0.06), pixel) * draw.chance(0.6))
    for _ in range(4):  # electrodes: small bright discs
        disc = circle(X - draw.uniform(-0.8, 0.8), Y - draw.uniform(-0.8, 0.8), draw.uniform(0.04, 0.07))
        foreign = torch.maximum(foreign, coverage(disc, pixel) * draw.chance(0.5))
    image = 0.08 + density + 0.5 * foreign
    image = image * draw.uniform(0.6, 0.9) + draw.uniform(0.05, 0.2)
    image = image.clamp(0, 1) ** draw.uniform(0.8, 1.25) + draw.uniform(0.01, 0.04) * draw.grain(n, 1, size, size)
    return image.expand(n, 3, size, size)

