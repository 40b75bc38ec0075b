"""From a :class:`~transferscope.config.DataConfig` to a :class:`~.domain.Domain`: one
builder per data kind in :data:`BUILDERS`, so that a new kind is one function and one
entry here (and its name in ``DataConfig.kind``). Each builder imports its loader on
first use."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .tensors import split_size

if TYPE_CHECKING:
    from ..config import DataConfig
    from .domain import Domain


def _root(config: DataConfig) -> str:
    """The data set folder of a real data kind (``DataConfig`` requires it)."""
    assert config.root is not None, f"data kind {config.kind!r} needs root"
    return config.root


def _synthetic(config: DataConfig, cache_dir: str | None) -> Domain:
    from .synthetic import synthetic_domain

    return synthetic_domain(config.name, n_train=config.n_train, n_test=config.n_test, image_size=config.image_size,
                            num_classes=config.num_classes, seed=config.seed, cache_dir=cache_dir)


def _domainnet(config: DataConfig, _cache_dir: str | None) -> Domain:
    from .domainnet import domainnet_domain

    return domainnet_domain(_root(config), config.name, image_size=config.image_size, n_train=config.n_train,
                            n_test=config.n_test, num_classes=config.num_classes, seed=config.seed)


def _chexpert(config: DataConfig, _cache_dir: str | None) -> Domain:
    from .chexpert import chexpert_domain

    return chexpert_domain(_root(config), image_size=config.image_size, n_train=config.n_train, n_test=config.n_test,
                           seed=config.seed)


def _folder(config: DataConfig, _cache_dir: str | None) -> Domain:
    from .folder import image_folder_domain

    return image_folder_domain(_root(config), image_size=config.image_size, seed=config.seed, n_train=config.n_train,
                               n_test=config.n_test, num_classes=config.num_classes)


def _csv(config: DataConfig, _cache_dir: str | None) -> Domain:
    from .csv_table import csv_domain

    return csv_domain(_root(config), image_column=config.image_column or "path", label_column=config.label_column,
                      label_columns=config.label_columns, split_column=config.split_column,
                      train_split=config.train_split or "train", test_split=config.test_split or "test",
                      image_size=config.image_size, n_train=config.n_train, n_test=config.n_test,
                      num_classes=config.num_classes, seed=config.seed)


def _hf(config: DataConfig, _cache_dir: str | None) -> Domain:
    from .hf_datasets import hf_domain

    return hf_domain(_root(config), image_column=config.image_column or "image", label_column=config.label_column,
                     label_columns=config.label_columns, train_split=config.train_split or "train",
                     test_split=config.test_split or "test", image_size=config.image_size, n_train=config.n_train,
                     n_test=config.n_test, num_classes=config.num_classes, seed=config.seed)


BUILDERS: dict[str, Callable[[DataConfig, str | None], Domain]] = {
    "synthetic": _synthetic, "domainnet": _domainnet, "chexpert": _chexpert, "folder": _folder, "csv": _csv, "hf": _hf}


def load_domain(config: DataConfig, cache_dir: str | None = None) -> Domain:
    """The :class:`~.domain.Domain` a data config describes. ``cache_dir``: where
    generated synthetic images are cached (None: the default cache), and where image
    files are decoded once and read from after (:mod:`.image_cache`; None: decoded on
    every access)."""
    if config.kind not in BUILDERS:
        raise ValueError(f"unknown data kind {config.kind!r}; known kinds: {', '.join(BUILDERS)}")
    domain = BUILDERS[config.kind](config, cache_dir)
    if config.decode_size is None and cache_dir is None:
        return domain
    from .image_cache import decoded_domain

    return decoded_domain(domain, decode_size=config.decode_size, cache_dir=cache_dir)


def example_counts(config: DataConfig) -> tuple[int, int]:
    """Train and test examples of a data config, for cost estimates: the splits' sizes of
    files on disk (folder, csv, a saved hf data set: listing and tables only, no image
    decoded), else ``n_train`` / ``n_test`` (0 where None), also when the files are not
    there yet."""
    fallback = (config.n_train or 0, config.n_test or 0)
    if config.kind not in ("folder", "csv", "hf") or (config.kind == "hf" and not Path(_root(config)).exists()):
        return fallback  # an hf hub name: counted only by downloading it
    return _file_counts(config.model_dump_json(exclude={"block_size", "shuffle_seed"})) or fallback


@lru_cache(maxsize=32)
def _file_counts(config_json: str) -> tuple[int, int] | None:
    """The split sizes of the data config ``config_json`` (a plan asks once per run), or
    None when its files are not found."""
    from ..config import DataConfig

    config = DataConfig.model_validate_json(config_json)
    try:
        domain = BUILDERS[config.kind](config, None)  # lists files and reads tables; decodes no image
    except FileNotFoundError:
        return None
    return split_size(domain.train), split_size(domain.test)
