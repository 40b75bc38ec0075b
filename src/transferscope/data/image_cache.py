"""A decoded-image cache for image files: each split of a
:class:`~.files.FileImageDataset` (folder, csv, DomainNet, CheXpert) or of a
:class:`~.hf_datasets.HFImageDataset` (a Hugging Face data set, whose images are
decoded by the same code) decoded once, in parallel worker processes, to uint8
at its decode size ``S`` (:func:`~.files.read_image`), and stored as a NumPy ``.npy``
file of ``(N, S, S, 3)`` pixels (channels last: the CPU's uint8 resampling reads them 3x
faster) that every later job memory-maps as an ``(N, 3, S, S)`` view (no copy, no
decoding): pre-training,
fine-tuning, shuffled and checkpoint-sweep runs and analyses read the same pixels the
files would give, bit for bit, and the loader crops or augments them on its device.

A cache file is named by the digest of what decides its content (:func:`cache_key`: the
decoder version, the decode size, and each file's path, size and modification time, in
the split's order; for a Hugging Face split, the data set's fingerprint, its Arrow
files' paths, sizes and modification times, the image column and the rows in order), so
a changed, added or removed file makes a new one. Builders of one
file are serialised by a POSIX lock on ``<file>.lock`` (it works across the nodes of a
cluster on a shared file system and is released when its holder dies): one decodes, the
others wait and then read. A build writes a temporary file, syncs it to disk and renames
it into place, so a reader never sees a partial cache and a killed build leaves no
published file (its temporary file is removed by the next build of that cache).
"""

from __future__ import annotations

import dataclasses
import fcntl
import math
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from numpy.lib.format import open_memmap
from torch.utils.data import Dataset

from ..io import atomic_path, content_hash
from ..progress import progress
from .domain import Domain
from .files import FileImageDataset, ImageReadError
from .hf_datasets import HFImageDataset
from .tensors import ImageSet

DECODER_VERSION = 1  # bump when read_image changes its pixels: every cache is then rebuilt
CHUNK = 64  # images a worker decodes per task (the progress bar's step), fewer in small builds

EncodedImages = FileImageDataset | HFImageDataset
"""A split whose images are decoded on access: what the cache stores decoded."""


@dataclass
class CachedImages(ImageSet):
    """An :class:`ImageSet` whose images are a memory-mapped cache file (``path``),
    stored at their decode size (channels last) and seen by the network at
    ``image_size``."""

    image_size: int = 0
    path: Path | None = None


def cache_key(dataset: EncodedImages) -> str:
    """Digest of what decides a split's cached pixels: :data:`DECODER_VERSION`, the
    decode size, and every file's path, size and modification time, in order (a
    Hugging Face split: :meth:`~.hf_datasets.HFImageDataset.content`). A file that
    cannot be read is an :class:`~.files.ImageReadError` naming it."""
    if isinstance(dataset, HFImageDataset):
        return content_hash({"decoder": DECODER_VERSION, "decode_size": dataset.decode_size,
                             "hf": dataset.content()}, 24)
    files = []
    for path in dataset.paths:
        try:
            stat = os.stat(path)
        except OSError as error:
            raise ImageReadError(path, f"{type(error).__name__}: {error.strerror}") from error
        files.append([path, stat.st_size, stat.st_mtime_ns])
    return content_hash({"decoder": DECODER_VERSION, "decode_size": dataset.decode_size, "files": files}, 24)


def cache_file(dataset: EncodedImages, cache_dir: str | os.PathLike) -> Path:
    """Where the decoded images of ``dataset`` are cached under ``cache_dir``."""
    return Path(cache_dir) / f"images-{len(dataset)}x{dataset.decode_size}-{cache_key(dataset)}.npy"


@contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    """Hold the POSIX write lock of ``lock_path`` (created when missing), waiting while
    another process holds it."""
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.lockf(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _decode_rows(file: str, start: int, part: EncodedImages) -> int:
    """Decode the images of ``part`` into rows ``start, start + 1, ...`` of the
    ``.npy`` ``file`` (a worker's task); returns how many."""
    rows = open_memmap(file, mode="r+")
    for offset in range(len(part)):
        rows[start + offset] = part[offset][0].permute(1, 2, 0).numpy()
    rows.flush()
    return len(part)


def default_workers() -> int:
    """The CPUs this process may use (a SLURM task's allocation, not the node's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def build(dataset: EncodedImages, path: Path, workers: int | None = None) -> None:
    """Decode every image of ``dataset`` into the ``.npy`` file ``path`` with
    ``workers`` processes (default :func:`default_workers`; 1 = in this process),
    showing a progress bar; the file appears complete and synced, or not at all."""
    size, count = dataset.decode_size, len(dataset)
    workers = workers or default_workers()
    chunk = max(1, min(CHUNK, math.ceil(count / (4 * workers))))  # at least 4 tasks a worker when it can
    workers = min(workers, math.ceil(count / chunk))
    with atomic_path(path) as tmp:
        open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(count, size, size, 3)).flush()  # header and length
        tasks = [(str(tmp), start, dataset.subset(range(start, min(start + chunk, count))))
                 for start in range(0, count, chunk)]
        description = f"decoding {count} images to {path.name}"
        if workers <= 1:
            for task in progress(tasks, description, total=len(tasks)):
                _decode_rows(*task)
        else:
            with ProcessPoolExecutor(workers) as pool:
                futures = [pool.submit(_decode_rows, *task) for task in tasks]
                try:
                    for future in progress(as_completed(futures), description, total=len(futures)):
                        future.result()  # a worker's ImageReadError, raised here
                except BaseException:
                    pool.shutdown(cancel_futures=True)
                    raise
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself, durably
    finally:
        os.close(directory)


def cached_split(dataset: EncodedImages, cache_dir: str | os.PathLike, workers: int | None = None) -> CachedImages:
    """The images of ``dataset`` from its cache file under ``cache_dir``, built first
    when missing (one builder at a time; see the module docstring); the returned
    split's images are the memory-mapped file itself."""
    path = cache_file(dataset, cache_dir)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with exclusive(path.with_name(path.name + ".lock")):
            if not path.is_file():  # no other builder published it while this one waited
                for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a killed build
                    stale.unlink(missing_ok=True)
                build(dataset, path, workers)
    return read_cached(path, dataset)


def read_cached(path: Path, dataset: EncodedImages) -> CachedImages:
    """The cache file ``path`` of ``dataset`` as a :class:`CachedImages` (copy-on-write
    memory map: nothing is read until used, nothing is ever written back)."""
    expected = (len(dataset), dataset.decode_size, dataset.decode_size, 3)
    try:
        images = np.load(path, mmap_mode="c")
    except (OSError, ValueError) as error:
        raise ValueError(f"decoded-image cache {path} is damaged ({error}); delete it to decode the images again") from error
    if images.shape != expected or images.dtype != np.uint8:
        raise ValueError(f"decoded-image cache {path} holds {images.dtype} {images.shape}, not uint8 {expected}; "
                         "delete it to decode the images again")
    return CachedImages(torch.from_numpy(images).permute(0, 3, 1, 2), dataset.targets, list(dataset.classes),
                        image_size=dataset.image_size, path=path)


def decoded_domain(domain: Domain, *, decode_size: int | None = None, cache_dir: str | os.PathLike | None = None,
                   workers: int | None = None) -> Domain:
    """``domain`` with its splits of encoded images (:data:`EncodedImages`: image files,
    a Hugging Face data set) decoded at ``decode_size`` (None: theirs) and, when
    ``cache_dir`` is given, read from their decoded-image cache there
    (:func:`cached_split`); other splits as they are.

    Parameters
    ----------
    domain
        A domain, e.g. from :func:`~.folder.image_folder_domain`.
    decode_size
        Side the files are decoded at (at least the domain's image size).
    cache_dir
        Folder of the cache files (a study's ``cache/``); None = decode on access.
    workers
        Decoding processes for a cache build (default: the CPUs this process may use).

    Returns
    -------
    Domain
    """

    def convert(split: ImageSet | Dataset) -> ImageSet | Dataset:
        if isinstance(split, HFImageDataset) and decode_size is not None:
            split = HFImageDataset(split.images, split.rows, split.targets, split.image_size, split.classes,
                                   split.source, decode_size)
        elif isinstance(split, FileImageDataset) and decode_size is not None:
            split = FileImageDataset(split.paths, split.targets, split.image_size, split.classes, decode_size)
        if not isinstance(split, EncodedImages) or cache_dir is None:
            return split
        return cached_split(split, cache_dir, workers)

    return dataclasses.replace(domain, train=convert(domain.train), test=convert(domain.test))
