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

Modules: ``geometry`` (random numbers, coordinates, signed-distance primitives),
``catalogue`` (the shapes and textures), ``render`` (one renderer per style) and
``domains`` (the domain table, split generation, the cache, :func:`synthetic_domain`).
"""

from .catalogue import POLYGONS, REAL_TEXTURES, SOURCE_SHAPES, SOURCE_TEXTURES, TARGET_SHAPES
from .domains import (
    CHUNK,
    GENERATOR_VERSION,
    SYNTHETIC_DOMAINS,
    XRAY_PREVALENCE,
    default_cache_dir,
    generate_split,
    synthetic_domain,
)

__all__ = ["CHUNK", "GENERATOR_VERSION", "POLYGONS", "REAL_TEXTURES", "SOURCE_SHAPES", "SOURCE_TEXTURES",
           "SYNTHETIC_DOMAINS", "TARGET_SHAPES", "XRAY_PREVALENCE", "default_cache_dir", "generate_split",
           "synthetic_domain"]
