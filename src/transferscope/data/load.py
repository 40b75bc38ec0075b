"""From a :class:`~transferscope.config.DataConfig` to a :class:`~.domain.Domain`: one
builder per data kind in :data:`BUILDERS`, so that a new kind is one function and one
entry here (and its name in ``DataConfig.kind``). Each builder imports its loader on
first use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

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


BUILDERS: dict[str, Callable[[DataConfig, str | None], Domain]] = {
    "synthetic": _synthetic, "domainnet": _domainnet, "chexpert": _chexpert, "folder": _folder}


def load_domain(config: DataConfig, cache_dir: str | None = None) -> Domain:
    """The :class:`~.domain.Domain` a data config describes (``cache_dir``: where
    generated synthetic images are cached)."""
    if config.kind not in BUILDERS:
        raise ValueError(f"unknown data kind {config.kind!r}; known kinds: {', '.join(BUILDERS)}")
    return BUILDERS[config.kind](config, cache_dir)
