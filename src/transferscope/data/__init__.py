"""Data: built-in synthetic domains, block shuffles, in-memory image sets and loaders,
and loaders for DomainNet, CheXpert and image folders."""

from .domain import Domain
from .shuffle import BlockShuffle
from .tensors import ImageLoader, ImageSet, random_crop_flip

__all__ = ["BlockShuffle", "Domain", "ImageLoader", "ImageSet", "random_crop_flip"]
