"""The decoded-image cache (issue 14): a split of image files decoded once into a
memory-mapped ``.npy`` file holds exactly the pixels :func:`read_image` gives (in one
process or several), is named by the files' content and the decode settings, is built by
one of several concurrent processes, is never published half-written, names a corrupt
image, and gives the loaders the batches the files would give."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transferscope.config import DataConfig
from transferscope.data import files as files_module
from transferscope.data import image_cache, load_domain
from transferscope.data.files import FileImageDataset, ImageReadError, read_image
from transferscope.data.image_cache import CachedImages, cache_file, cached_split

COUNT = 12
DECODE = 20
FORK = multiprocessing.get_context("fork")


def write_images(folder: Path, count: int = COUNT) -> list[Path]:
    """Random RGB JPEGs and greyscale PNGs of several sizes and aspect ratios."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        height, width = 24 + 5 * index, 48 - 2 * index
        if index % 3 == 2:
            path = folder / f"{index}.png"
            Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), "L").save(path)
        else:
            path = folder / f"{index}.jpg"
            Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def dataset(paths: list[Path]) -> FileImageDataset:
    return FileImageDataset(paths, [i % 2 for i in range(len(paths))], 16, ["a", "b"], decode_size=DECODE)


def mapped_file(tensor: torch.Tensor) -> Path | None:
    """The file whose memory map holds ``tensor``'s first byte (Linux's /proc/self/maps)."""
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, *_, name = line.split(maxsplit=5)
        start, end = (int(value, 16) for value in span.split("-"))
        if start <= address < end:
            return Path(name) if name.startswith("/") else None
    return None


@pytest.fixture
def files(tmp_path) -> list[Path]:
    return write_images(tmp_path / "images")


@pytest.mark.parametrize("workers", [1, 2])
def test_the_cache_holds_exactly_the_decoded_pixels(tmp_path, files, workers, monkeypatch):
    monkeypatch.setattr(image_cache, "CHUNK", 5)  # three tasks, so two processes share them
    split = cached_split(dataset(files), tmp_path / "cache", workers=workers)
    assert isinstance(split, CachedImages) and split.image_size == 16
    assert mapped_file(split.images) == split.path  # the file itself, not a copy in memory
    direct = torch.stack([read_image(path, DECODE) for path in files])
    assert split.images.shape == (COUNT, 3, DECODE, DECODE) and torch.equal(split.images, direct)
    assert torch.equal(split.targets, dataset(files).targets)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted([split.path.name, split.path.name + ".lock"])


def test_the_cache_is_read_again_not_rebuilt(tmp_path, files, monkeypatch):
    first = cached_split(dataset(files), tmp_path / "cache")
    monkeypatch.setattr(image_cache, "build", lambda *_: pytest.fail("rebuilt an existing cache"))
    again = cached_split(dataset(files), tmp_path / "cache")
    assert again.path == first.path and torch.equal(again.images, first.images)


def test_the_content_address_follows_the_files_and_the_decode_settings(tmp_path, files):
    cache = tmp_path / "cache"
    before = cache_file(dataset(files), cache)
    assert cache_file(dataset(files), cache) == before
    assert cache_file(FileImageDataset(files, [0] * COUNT, 16, ["a", "b"], decode_size=24), cache) != before
    assert cache_file(dataset(files[::-1]), cache) != before  # another order is another split
    stat = files[0].stat()
    os.utime(files[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched
    touched = cache_file(dataset(files), cache)
    assert touched != before
    Image.new("RGB", (40, 30), (255, 0, 0)).save(files[0])  # replaced
    assert cache_file(dataset(files), cache) not in (before, touched)
    assert torch.equal(cached_split(dataset(files), cache).images[0], read_image(files[0], DECODE))


def _build_in_child(files: list[Path], cache: Path, out: Path) -> None:
    np.save(out, cached_split(dataset(files), cache).images.numpy())


def test_concurrent_builders_decode_once_and_publish_one_file(tmp_path, files, monkeypatch):
    """Two processes ask for the same cache at once: one builds (slowly), the other waits
    for its lock and reads the published file."""
    log = tmp_path / "builds.log"
    build = image_cache.build

    def slow_logged_build(*arguments, **keywords):
        with open(log, "a") as stream:
            stream.write(f"{os.getpid()}\n")
        time.sleep(1.0)
        build(*arguments, **keywords)

    monkeypatch.setattr(image_cache, "build", slow_logged_build)  # inherited by the forked children
    cache = tmp_path / "cache"
    children = [FORK.Process(target=_build_in_child, args=(files, cache, tmp_path / f"out{k}.npy")) for k in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    assert len(log.read_text().split()) == 1
    assert [p.suffix for p in sorted(cache.iterdir())] == [".npy", ".lock"]
    assert np.array_equal(np.load(tmp_path / "out0.npy"), np.load(tmp_path / "out1.npy"))


def _slow_read(path, size):
    time.sleep(0.2)
    return read_image(path, size)


def _build_in_own_process_group(*arguments) -> None:
    """:func:`_build_in_child` in a process group of its own, which its decoding workers
    join, so that one signal kills the build whole (as a cluster kills a job step)."""
    os.setpgid(0, 0)
    _build_in_child(*arguments)


def test_a_killed_build_publishes_nothing_and_the_next_build_cleans_up(tmp_path, files, monkeypatch):
    monkeypatch.setattr(files_module, "read_image", _slow_read)  # 12 images: 2.4 s to decode
    cache = tmp_path / "cache"
    child = FORK.Process(target=_build_in_own_process_group, args=(files, cache, tmp_path / "out.npy"))
    child.start()
    target = cache_file(dataset(files), cache)
    deadline = time.monotonic() + 30
    while not list(cache.glob(f".{target.name}.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)  # the builder and its workers, none left running
    child.join()
    assert not target.exists() and len(list(cache.glob(f".{target.name}.*.tmp"))) == 1
    monkeypatch.setattr(files_module, "read_image", read_image)
    split = cached_split(dataset(files), cache)  # the dead builder's lock is gone with it
    assert split.path == target and not list(cache.glob("*.tmp")) and not list(cache.glob(".*.tmp"))
    assert torch.equal(split.images, torch.stack([read_image(path, DECODE) for path in files]))


@pytest.mark.parametrize("workers", [1, 2])
def test_a_corrupt_image_names_the_file_and_publishes_nothing(tmp_path, files, workers, monkeypatch):
    monkeypatch.setattr(image_cache, "CHUNK", 4)
    files[7].write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match=f"cannot read image {files[7]}"):
        cached_split(dataset(files), tmp_path / "cache", workers=workers)
    assert not list((tmp_path / "cache").glob("*.npy")) and not list((tmp_path / "cache").glob(".*.tmp"))
    files[3].unlink()
    with pytest.raises(ImageReadError, match=f"cannot read image {files[3]}"):
        cached_split(dataset(files), tmp_path / "cache")


def test_a_damaged_cache_file_is_named_with_the_fix(tmp_path, files):
    split = cached_split(dataset(files), tmp_path / "cache")
    split.path.write_bytes(split.path.read_bytes()[:200])
    with pytest.raises(ValueError, match=f"decoded-image cache {split.path} .*delete it to decode the images again"):
        cached_split(dataset(files), tmp_path / "cache")


def test_a_cached_folder_domain_gives_the_batches_of_the_files(tmp_path):
    """load_domain with a cache_dir: the splits are memory-mapped caches, and every
    augmentation mode yields the batches of the uncached domain, bit for bit."""
    for label in ("cat", "dog"):
        write_images(tmp_path / "set" / label, count=8)
    config = DataConfig(kind="folder", root=str(tmp_path / "set"), image_size=16, decode_size=DECODE)
    files = load_domain(config)
    cached = load_domain(config, cache_dir=str(tmp_path / "cache"))
    assert isinstance(cached.train, CachedImages) and isinstance(cached.test, CachedImages)
    assert files.image_size == cached.image_size == 16 and files.train.decode_size == DECODE
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2
    for mode in ("none", "pad_crop", "resized_crop"):
        batches = [domain.loader("train", 4, shuffle=True, seed=1, augment=mode) for domain in (files, cached)]
        for loader in batches:
            loader.set_epoch(2)
        (a, ya), (b, yb) = (tuple(map(torch.cat, zip(*loader))) for loader in batches)
        assert a.shape == (len(files.train), 3, 16, 16) and torch.equal(a, b) and torch.equal(ya, yb), mode
        assert b.is_contiguous(), mode  # stored channels last, yielded as the files' batches are
    limited = cached.loader("test", 2, limit=3)
    assert sum(len(x) for x, _ in limited) == 3


def test_study_jobs_read_image_files_from_the_study_cache(tmp_path):
    """Every job of a study (training, shuffled and sweep runs, analyses) loads its
    domain through jobs.domain_of: image files from the study's cache/ folder."""
    from transferscope.config import TrainConfig
    from transferscope.study.jobs import domain_of
    from transferscope.study.store import Store

    for label in ("cat", "dog"):
        write_images(tmp_path / "set" / label, count=6)
    store = Store(tmp_path / "study")
    data = DataConfig(kind="folder", root=str(tmp_path / "set"), image_size=16, block_size=4)
    domain = domain_of(TrainConfig(data=data), store)
    assert isinstance(domain.train, CachedImages) and domain.train.path.parent == store.root / "cache"
    assert domain_of(TrainConfig(data=data.model_copy(update={"block_size": None})), store) is domain
