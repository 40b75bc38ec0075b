"""Labelled tables as data (issue 10): ``kind: csv`` (image paths + a label column, or
0/1 columns for multi-label) and ``kind: hf`` (a Hugging Face data set saved to disk by
``datasets`` here, no network), on tiny PNG fixtures written in the test: splits,
seeded per-class subsamples, errors, the same pixels through both kinds, and a plan
whose cost counts the images on disk."""

from __future__ import annotations

import pickle
import shutil
import sys
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from pydantic import ValidationError
from typer.testing import CliRunner

from transferscope.cli import app
from transferscope.config import DataConfig
from transferscope.data import image_cache, load_domain, preview
from transferscope.data.files import FileImageDataset, ImageReadError, read_image
from transferscope.data.hf_datasets import HFImageDataset, encoded_images
from transferscope.data.image_cache import CachedImages, decoded_domain
from transferscope.data.load import example_counts
from transferscope.data.preview import model_inputs, save_preview
from transferscope.study import StudySpec, build_plan

SIZE = 8
CLASSES = ("cat", "dog", "emu")


def write_png(path: Path, index: int) -> Path:
    """A 14x20 (portrait) image of seeded random pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(index).integers(0, 256, (20, 14, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def table(tmp_path) -> pd.DataFrame:
    """5 images per class under tmp_path/images, listed in tmp_path/pets.csv with paths
    relative to the CSV, a class, two 0/1 label columns and a split (3 train, 2 test)."""
    rows = []
    for index in range(15):
        label = CLASSES[index % 3]
        write_png(tmp_path / "images" / label / f"{index}.png", index)
        rows.append({"path": f"images/{label}/{index}.png", "label": label, "furry": int(label != "emu"),
                     "flies": index % 2, "split": "test" if index >= 9 else "train"})
    frame = pd.DataFrame(rows)
    frame.to_csv(tmp_path / "pets.csv", index=False)
    return frame


def csv_config(root: Path, **changes) -> DataConfig:
    return DataConfig(**{"kind": "csv", "root": str(root), "image_size": SIZE, **changes})


def items(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [dataset[i] for i in range(len(dataset))]
    return torch.stack([image for image, _ in pairs]), torch.stack([target for _, target in pairs])


# ------------------------------------------------------------------ kind: csv
def test_csv_rows_become_files_and_class_indices(tmp_path, table):
    domain = load_domain(csv_config(tmp_path / "pets.csv", split_column="split"))
    assert isinstance(domain.train, FileImageDataset) and not domain.multilabel
    assert domain.classes == list(CLASSES) and domain.name == "pets"
    assert (len(domain.train), len(domain.test)) == (9, 6)
    by_path = {str(tmp_path / path): CLASSES.index(label) for path, label in zip(table.path, table.label)}
    for split, names in ((domain.train, table.path[:9]), (domain.test, table.path[9:])):
        assert sorted(split.paths) == sorted(str(tmp_path / name) for name in names)  # relative to the CSV's folder
        assert split.targets.tolist() == [by_path[path] for path in split.paths]
    image, target = domain.train[0]
    assert torch.equal(image, read_image(domain.train.paths[0], SIZE)) and image.shape == (3, SIZE, SIZE)


@pytest.mark.usefixtures("table")
def test_csv_without_a_split_column_tests_a_fifth_of_each_class(tmp_path):
    config = csv_config(tmp_path / "pets.csv", seed=3)
    domain = load_domain(config)
    assert torch.bincount(domain.test.targets).tolist() == [1, 1, 1]  # round(0.2 * 5) per class
    assert torch.bincount(domain.train.targets).tolist() == [4, 4, 4]
    assert not set(domain.train.paths) & set(domain.test.paths)
    assert load_domain(config).test.paths == domain.test.paths
    assert load_domain(config.model_copy(update={"seed": 4})).test.paths != domain.test.paths


@pytest.mark.usefixtures("table")
def test_csv_n_train_keeps_each_class_share_seeded(tmp_path):
    config = csv_config(tmp_path / "pets.csv", split_column="split", n_train=6, n_test=3, seed=1)
    small = load_domain(config)
    assert torch.bincount(small.train.targets).tolist() == [2, 2, 2]
    assert torch.bincount(small.test.targets).tolist() == [1, 1, 1]
    full = load_domain(csv_config(tmp_path / "pets.csv", split_column="split"))
    assert set(small.train.paths) < set(full.train.paths)
    assert load_domain(config).train.paths == small.train.paths
    assert any(load_domain(config.model_copy(update={"seed": seed})).train.paths != small.train.paths
               for seed in (2, 3))
    with pytest.raises(ValueError, match=r"n_test 99 asked for, but the test split of .*pets.csv has "
                                         rf"{len(full.test)} examples; lower n_test"):  # never silently fewer
        load_domain(config.model_copy(update={"n_test": 99}))


def test_csv_folder_with_train_and_test_csv_and_integer_classes(tmp_path, table):
    folder = tmp_path / "set"
    folder.mkdir()
    numbered = table.assign(label=[(0, 2, 10)[CLASSES.index(label)] for label in table.label],
                            path=[f"../{path}" for path in table.path])
    numbered[:9].to_csv(folder / "train.csv", index=False)
    numbered[9:].to_csv(folder / "test.csv", index=False)
    domain = load_domain(csv_config(folder, num_classes=2))
    assert domain.classes == ["0", "2"] and domain.name == "set"  # numbers sort as numbers (10 after 2)
    assert (len(domain.train), len(domain.test)) == (6, 4)  # class 10 left out
    assert sorted(domain.test.paths) == sorted(str(folder / ".." / path) for path, label
                                               in zip(table.path[9:], table.label[9:]) if label != "emu")


def test_csv_multilabel_columns(tmp_path, table):
    domain = load_domain(csv_config(tmp_path / "pets.csv", label_columns=("furry", "flies"), split_column="split",
                                    n_train=5))
    assert domain.multilabel and domain.classes == ["furry", "flies"]
    assert domain.train.targets.dtype == torch.float32 and domain.train.targets.shape == (5, 2)
    expected = {str(tmp_path / p): [float(f), float(g)] for p, f, g in zip(table.path, table.furry, table.flies)}
    assert domain.train.targets.tolist() == [expected[path] for path in domain.train.paths]
    assert set(domain.train.paths) <= {str(tmp_path / path) for path in table.path[:9]}


@pytest.mark.parametrize("change, message", [
    ({"label_column": "species"},
     r"pets.csv has no column 'species' \(its columns: path, label, furry, flies, split\); set label_column"),
    ({"image_column": "file"}, r"no column 'file' .*set image_column"),
    ({"label_columns": ("furry", "label")},
     r"pets.csv line 2: column 'label' holds 'cat', not 0 or 1"),
    ({"split_column": "split", "test_split": "val"},
     r"no row of .*pets.csv has split = 'val' \(its values: test, train\); set test_split"),
    ({"num_classes": 4}, r"num_classes 4 asked for, but .* has 3 classes \(cat, dog, emu\)"),
])
@pytest.mark.usefixtures("table")
def test_csv_errors_name_the_problem_and_the_fix(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        load_domain(csv_config(tmp_path / "pets.csv", **change))


def test_csv_missing_image_or_file(tmp_path, table):
    (tmp_path / table.path[4]).unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of the 12 images that .*pets.csv lists are missing, e\.g\. "
                                                r".*images/dog/4\.png"):
        load_domain(csv_config(tmp_path / "pets.csv"))
    with pytest.raises(FileNotFoundError, match="CSV file .*nope.csv not found"):
        load_domain(csv_config(tmp_path / "nope.csv"))
    with pytest.raises(FileNotFoundError, match="train.csv not found"):
        load_domain(csv_config(tmp_path / "images"))  # a folder without train.csv and test.csv


@pytest.mark.parametrize("settings, message", [
    ({"kind": "folder", "image_column": "file"}, "image_column does not apply to data kind 'folder' \\(only to csv "
                                                 "and hf\\); remove image_column"),
    ({"kind": "hf", "split_column": "split"}, "split_column does not apply to data kind 'hf'"),
    ({"kind": "csv", "label_column": "a", "label_columns": ["b"]}, "give label_column .* or label_columns"),
    ({"kind": "csv", "label_columns": ["b"], "num_classes": 2}, "num_classes does not apply to a multi-label"),
    ({"kind": "csv", "test_split": "val"}, "train_split and test_split name values of split_column"),
])
def test_keys_a_kind_cannot_honour_are_rejected(settings, message):
    with pytest.raises(ValidationError, match=message):
        DataConfig(root="somewhere", **settings)


# ------------------------------------------------------------------ kind: hf
def save_hf(table: pd.DataFrame, base: Path, out: Path, **features) -> Path:
    """``table`` as a DatasetDict (train/test from its split column) of PNG images and a
    ClassLabel, saved to ``out``."""
    schema = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASSES)),
                                "furry": datasets.Value("int64"), **features})

    def part(rows: pd.DataFrame):
        return datasets.Dataset.from_dict({"image": [str(base / path) for path in rows.path],
                                           "label": [CLASSES.index(label) for label in rows.label],
                                           "furry": rows.furry.tolist()}, features=schema)

    datasets.DatasetDict(train=part(table[table.split == "train"]), test=part(table[table.split == "test"])) \
        .save_to_disk(str(out))
    return out


def test_hf_gives_the_pixels_of_the_same_png_files(tmp_path, table):
    saved = save_hf(table, tmp_path, tmp_path / "saved")
    for change in ({}, {"n_train": 6, "seed": 2}, {"image_size": 64}):  # 64 px: decoded at 73, cropped by the loader
        from_hf = load_domain(DataConfig(**{"kind": "hf", "root": str(saved), "image_size": SIZE, **change}))
        from_csv = load_domain(csv_config(tmp_path / "pets.csv", split_column="split", **change))
        assert isinstance(from_hf.train, HFImageDataset) and from_hf.classes == list(CLASSES)
        for split in ("train", "test"):
            hf_images, hf_targets = items(from_hf.split(split))
            csv_images, csv_targets = items(from_csv.split(split))
            assert torch.equal(hf_images, csv_images) and torch.equal(hf_targets, csv_targets)
    assert from_hf.train.decode_size == from_csv.train.decode_size == 73
    batch, _ = next(iter(pickle.loads(pickle.dumps(from_hf)).loader("train", 4)))  # pickles into workers
    assert batch.shape == (4, 3, 64, 64)
    assert torch.equal(batch, next(iter(from_csv.loader("train", 4)))[0])


def test_hf_single_dataset_multilabel_and_plain_labels(tmp_path, table):
    single = datasets.Dataset.from_dict({"picture": [str(tmp_path / path) for path in table.path],
                                         "kind": [(0, 2, 10)[CLASSES.index(label)] for label in table.label],
                                         "furry": table.furry.tolist(), "flies": table.flies.tolist()},
                                        features=datasets.Features({"picture": datasets.Image(),
                                                                    "kind": datasets.Value("int64"),
                                                                    "furry": datasets.Value("int64"),
                                                                    "flies": datasets.Value("int64")}))
    single.save_to_disk(str(tmp_path / "single"))
    plain = load_domain(DataConfig(kind="hf", root=str(tmp_path / "single"), image_size=SIZE, image_column="picture",
                                   label_column="kind"))
    assert plain.classes == ["0", "2", "10"] and (len(plain.train), len(plain.test)) == (12, 3)
    multi = load_domain(DataConfig(kind="hf", root=str(tmp_path / "single"), image_size=SIZE, image_column="picture",
                                   label_columns=("furry", "flies")))
    assert multi.multilabel and multi.test.targets.shape == (3, 2)
    image, target = multi.test[0]
    row = multi.test.rows[0]
    assert torch.equal(image, read_image(tmp_path / table.path[row], SIZE))
    assert target.tolist() == [table.furry[row], table.flies[row]]


def test_hf_errors(tmp_path, table, monkeypatch):
    saved = save_hf(table, tmp_path, tmp_path / "saved")
    config = DataConfig(kind="hf", root=str(saved), image_size=SIZE)
    with pytest.raises(ValueError, match=r"has no split 'validation' \(its splits: train, test\); set test_split"):
        load_domain(config.model_copy(update={"test_split": "validation"}))
    with pytest.raises(ValueError, match=r"column 'furry' of .* holds Value\('int64'.*not images; set image_column "
                                         r"to a column of images \(image\)"):
        load_domain(config.model_copy(update={"image_column": "furry"}))
    with pytest.raises(ValueError, match=r"has no column 'species' \(its columns: image, label, furry\)"):
        load_domain(config.model_copy(update={"label_column": "species"}))

    raw = datasets.Dataset.from_dict({"image": [b"not an image", (tmp_path / table.path[0]).read_bytes()]},
                                     features=datasets.Features({"image": datasets.Value("binary")}))
    images = encoded_images(raw, "image", "raw")
    corrupt = HFImageDataset(images, [1, 0], torch.tensor([0, 1]), SIZE, ["a", "b"], "raw bytes")
    assert torch.equal(corrupt[0][0], read_image(tmp_path / table.path[0], SIZE))  # bytes decode like the file
    with pytest.raises(ImageReadError, match=r"cannot read image raw bytes row 0: UnidentifiedImageError"):
        corrupt[1]

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "empty-cache")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(ValueError, match=r"^Hugging Face data set 'someone/pets' is no folder here and cannot be "
                                         r"loaded from the hub \(.*\); give the folder save_to_disk wrote") as error:
        load_domain(config.model_copy(update={"root": "someone/pets"}))
    assert "\n" not in str(error.value)

    monkeypatch.setitem(sys.modules, "datasets", None)  # the optional extra not installed
    with pytest.raises(ImportError, match=r"^data kind 'hf' needs the optional extra: pip install "
                                          r"'transferscope\[hf\]'$"):
        load_domain(config)


def test_hf_splits_are_decoded_once_into_the_cache_with_the_uncached_pixels(tmp_path, table, monkeypatch):
    """A study's cache_dir: each hf split is decoded once (by two worker processes here)
    into a memory-mapped cache holding the pixels, and giving the batches, of the
    uncached path; read again, not rebuilt; a re-saved data set is a new cache."""
    saved = save_hf(table, tmp_path, tmp_path / "saved")
    config = DataConfig(kind="hf", root=str(saved), image_size=64, n_train=6, seed=2)  # decoded at 73
    uncached = load_domain(config)
    monkeypatch.setattr(image_cache, "CHUNK", 2)
    cached = decoded_domain(uncached, cache_dir=tmp_path / "cache", workers=2)
    for split in ("train", "test"):
        stored = cached.split(split)
        assert isinstance(stored, CachedImages) and stored.path.parent == tmp_path / "cache"
        images, targets = items(uncached.split(split))
        assert images.shape[-1] == 73 and torch.equal(stored.images, images) and torch.equal(stored.targets, targets)
    for mode in ("none", "resized_crop"):
        (a, ya), (b, yb) = (next(iter(domain.loader("train", 6, seed=1, augment=mode))) for domain in (uncached, cached))
        assert a.shape == (6, 3, 64, 64) and torch.equal(a, b) and torch.equal(ya, yb), mode

    monkeypatch.setattr(image_cache, "build", lambda *_: pytest.fail("decoded an hf split again"))
    again = load_domain(config, cache_dir=str(tmp_path / "cache"))  # a study's job, in another process
    assert again.train.path == cached.train.path and again.test.path == cached.test.path
    monkeypatch.undo()
    other = load_domain(config.model_copy(update={"n_train": 5}), cache_dir=str(tmp_path / "cache"))
    assert other.train.path != cached.train.path and other.test.path == cached.test.path  # other rows, same test

    larger = load_domain(config.model_copy(update={"decode_size": 80}), cache_dir=str(tmp_path / "cache"))
    assert larger.train.images.shape[-1] == 80 and larger.train.path != cached.train.path  # decode_size, as for files

    write_png(tmp_path / table.path[0], 99)  # a changed image, saved again in the same folder
    shutil.rmtree(saved)
    save_hf(table, tmp_path, saved)
    changed = load_domain(config, cache_dir=str(tmp_path / "cache"))
    assert changed.train.path != cached.train.path
    assert torch.equal(changed.train.images, items(load_domain(config).train)[0])


# ------------------------------------------------------------------ plan cost
def test_plan_counts_the_images_of_file_data(tmp_path, table):
    save_hf(table, tmp_path, tmp_path / "saved")
    recipe = {"epochs": 2, "batch_size": 4, "clean_train_examples": 4}
    targets = [{"label": "csv", "data": {"kind": "csv", "root": str(tmp_path / "pets.csv"), "image_size": SIZE,
                                         "split_column": "split"}},
               {"label": "hf", "data": {"kind": "hf", "root": str(tmp_path / "saved"), "image_size": SIZE,
                                        "n_train": 5}},
               {"label": "folder", "data": {"kind": "folder", "root": str(tmp_path / "images"), "image_size": SIZE}},
               {"label": "later", "data": {"kind": "csv", "root": str(tmp_path / "not-yet.csv"), "n_train": 7,
                                           "n_test": 3}}]
    spec = StudySpec.model_validate({
        "name": "tables", "model": {"arch": "small_resnet", "width": 4}, "targets": targets, "seeds": [0],
        "source": {"data": {"kind": "synthetic", "name": "source", "image_size": SIZE, "n_train": 8, "n_test": 4},
                   "recipe": recipe},
        "finetune": recipe, "scratch": recipe,
        "analyses": {name: {"enabled": False} for name in ("cka", "distance", "mistakes", "interpolation", "basin",
                                                           "rewind", "criticality", "spectrum")}})
    # counts: csv 9 train / 6 test; hf n_train 5 of 9, test 6; folder 12 / 3 (a fifth of each class in test);
    # a CSV not there yet: its n_train / n_test
    counts = {"csv": (9, 6), "hf": (5, 6), "folder": (12, 3), "later": (7, 3)}
    for label, data in ((target["label"], target["data"]) for target in targets):
        assert example_counts(DataConfig(**data)) == counts[label]
    for job in build_plan(spec):
        if job.kind == "finetune":
            n_train, n_test = counts[job.target]
            evaluated = n_test + min(n_train, 4)
            assert job.cost == 2 * (3 * n_train + evaluated) + evaluated > 0, job.label



# ------------------------------------------------------------------ data preview of your data
def data_configs(tmp_path: Path, table: pd.DataFrame, **changes) -> dict[str, DataConfig]:
    """The fixture's images as folder, csv and hf data (the same 9 train / 6 test images for csv and hf)."""
    saved = save_hf(table, tmp_path, tmp_path / "saved")
    changes = {"image_size": SIZE, **changes}
    return {"folder": DataConfig(kind="folder", root=str(tmp_path / "images"), **changes),
            "csv": DataConfig(kind="csv", root=str(tmp_path / "pets.csv"), split_column="split", **changes),
            "hf": DataConfig(kind="hf", root=str(saved), **changes)}


def test_preview_shows_the_images_as_the_model_sees_them(tmp_path, table):
    """Folder, csv and hf data: the first images at the network's size (a 64 px crop of
    the 73 px decoded ones), with their targets; the training augmentation drawn as the
    loader draws it, its normalisation undone."""
    for kind, config in data_configs(tmp_path, table, image_size=64).items():
        domain = load_domain(config)
        stored, targets = items(domain.train)
        plain, shown_targets, mode = model_inputs(domain, 4)
        assert mode == "none" and torch.equal(shown_targets, targets[:4]), kind
        assert plain.dtype == torch.uint8 and torch.equal(plain, stored[:4, :, 4:68, 4:68]), kind  # centre crop
        augmented, _, mode = model_inputs(domain, 4, augment="auto", seed=3)
        inputs, _ = next(iter(domain.loader("train", 4, augment="resized_crop", seed=3)))
        mean, std = torch.tensor(domain.mean).view(1, 3, 1, 1), torch.tensor(domain.std).view(1, 3, 1, 1)
        assert mode == "resized_crop" and augmented.shape == (4, 3, 64, 64) and not torch.equal(augmented, plain)
        assert (augmented.double() / 255 - (inputs * std + mean).double()).abs().max() <= 0.5 / 255, kind


def test_data_preview_command_takes_a_study_target_or_your_data(tmp_path, table, monkeypatch):
    """`data preview --study S --target T` shows T's data with the finetune recipe's
    augment (none for the test split); `--kind K --path P` shows any folder, csv or hf
    data (augment auto); mistakes are one line with exit code 2, and nothing is written."""
    configs = data_configs(tmp_path, table)
    shown: list[tuple[str, str]] = []

    def recording(domain, path, **options):
        shown.append((domain.name, options["augment"]))
        return save_preview(domain, path, **options)

    monkeypatch.setattr(preview, "save_preview", recording)
    targets = [{"label": kind, "data": config.model_dump(exclude_defaults=True)} for kind, config in configs.items()]
    recipe = {"epochs": 1, "augment": "pad_crop"}
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"source": {"data": {"name": "source"}, "recipe": recipe}, "targets": targets,
                                     "finetune": recipe, "scratch": {"epochs": 1, "augment": "none"}}))
    runner = CliRunner()
    for args in (["--study", str(study), "--target", "hf"], ["--study", str(study), "--target", "hf", "--split", "test"],
                 ["--kind", "csv", "--path", str(tmp_path / "pets.csv"), "--data", "split_column=split"],
                 ["--kind", "folder", "--path", str(tmp_path / "images"), "--augment", "none", "--n", "4"]):
        out = tmp_path / "grid.png"
        out.unlink(missing_ok=True)
        result = runner.invoke(app, ["data", "preview", *args, "--out", str(out)])
        assert result.exit_code == 0 and out.read_bytes().startswith(b"\x89PNG"), result.output
    assert shown == [("saved", "pad_crop"), ("saved", "none"), ("pets", "auto"), ("images", "none")]

    for args, message in (
            (["--kind", "folder", "--path", str(tmp_path / "nothere")], f"image folder {tmp_path / 'nothere'} not found"),
            (["--kind", "zip", "--path", "x"], "'zip' is not one of 'folder', 'csv', 'hf'"),
            (["--kind", "csv"], "--kind csv needs --path"),
            (["--kind", "csv", "--path", str(tmp_path / "pets.csv"), "--data", "label_column=species"],
             "has no column 'species'"),
            (["--kind", "csv", "--path", "x.csv", "--data", "labl=1"], "--data: labl: unknown key; allowed keys:"),
            (["real", "--kind", "csv"], "give one of: a synthetic domain"),
            (["--study", str(study)], "has 3 targets (folder, csv, hf); choose one with --target"),
            (["--study", str(study), "--target", "pets"], "has no target 'pets'; its targets: folder, csv, hf"),
            (["--path", "x"], "--path and --data with --kind")):
        result = runner.invoke(app, ["data", "preview", *args, "--out", str(tmp_path / "bad.png")])
        error = " ".join(result.stderr.split())
        assert result.exit_code == 2 and message in error and len(result.stderr.strip().splitlines()) == 1, error
        assert not (tmp_path / "bad.png").exists()
