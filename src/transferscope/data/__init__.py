"""Data: built-in synthetic domains, block shuffles, in-memory image sets and loaders,
and loaders for DomainNet, CheXpert and image folders."""

from .chexpert import chexpert_domain, chexpert_targets
from .domain import Domain, block_shuffle_for
from .domainnet import domainnet_domain
from .files import FileImageDataset, ImageReadError, read_image, to_image_set
from .folder import image_folder_domain
from .load import load_domain
from .preview import save_preview
from .shuffle import BlockShuffle
from .synthetic import SYNTHETIC_DOMAINS, synthetic_domain
from .tensors import ImageLoader, ImageSet, random_crop_flip

__all__ = [
    "SYNTHETIC_DOMAINS", "BlockShuffle", "Domain", "FileImageDataset", "ImageLoader", "ImageReadError", "ImageSet",
    "block_shuffle_for", "chexpert_domain", "chexpert_targets", "domainnet_domain", "image_folder_domain",
    "load_domain", "random_crop_flip", "read_image", "save_preview", "synthetic_domain", "to_image_set"]
