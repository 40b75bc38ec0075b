"""File-backed domains (DomainNet split files, CheXpert CSV, image folders) on tiny
image fixtures written here with PIL: parsing, subsampling, label policy, item
format, errors, and the batches that come out of ``Domain.loader``."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from transferscope.config import DataConfig
from transferscope.data import load_domain
from transferscope.data.chexpert import chexpert_domain, chexpert_targets
from transferscope.data.domainnet import domainnet_domain
from transferscope.data.files import IMAGENET_MEAN, IMAGENET_STD, FileImageDataset, ImageReadError, read_image, to_image_set
from transferscope.data.folder import image_folder_domain, stratified_subsample
from transferscope.data.tensors import ImageSet

SIZE = 16
MODES = ("RGB", "L", "RGBA")  # JPEG, greyscale JPEG, PNG with alpha


def write_image(path: Path, index: int) -> Path:
    """A 40x30 image of random pixels; the mode cycles through RGB, L and RGBA (PNG)."""
    mode = MODES[index % len(MODES)]
    path = path.with_suffix(".png" if mode == "RGBA" else ".jpg")
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(index)
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    pixels = rng.integers(0, 256, (30, 40, channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(2) if mode == "L" else pixels, mode).save(path)
    return path


# ---------------------------------------------------------------- decoding one image


@pytest.mark.parametrize("portrait", [False, True])
def test_read_image_resizes_shorter_side_then_centre_crops(tmp_path, portrait):
    # 48x32: a red 32x32 centre between two blue 8-pixel bands. Resizing the shorter
    # side to 16 halves everything; the centre crop then cuts the (now 4-pixel) bands
    # off. Stretching the whole image to 16x16 instead would keep ~2.7 blue columns.
    pixels = np.zeros((32, 48, 3), np.uint8)
    pixels[:, :, 2] = 255
    pixels[:, 8:40] = (255, 0, 0)
    if portrait:
        pixels = pixels.transpose(1, 0, 2).copy()
    Image.fromarray(pixels).save(tmp_path / "bands.png")
    image = read_image(tmp_path / "bands.png", SIZE)
    assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.uint8
    assert image[0].min() >= 150 and image[2].max() <= 100  # red everywhere, only a border blur of blue
    assert (image[:, 1:-1, 1:-1] == torch.tensor([255, 0, 0], dtype=torch.uint8)[:, None, None]).all()


def test_read_image_converts_greyscale_and_rgba_to_rgb(tmp_path):
    Image.new("L", (20, 20), 77).save(tmp_path / "grey.png")
    Image.new("RGBA", (20, 20), (10, 200, 30, 0)).save(tmp_path / "rgba.png")
    assert (read_image(tmp_path / "grey.png", SIZE) == 77).all()
    rgba = read_image(tmp_path / "rgba.png", SIZE)
    assert rgba.shape == (3, SIZE, SIZE)
    assert rgba[:, 0, 0].tolist() == [10, 200, 30]  # alpha dropped, colour kept


# ---------------------------------------------------------------- DomainNet


def domainnet_fixture(root: Path) -> dict[str, list[tuple[str, int]]]:
    """real/<class>/..., labels in non-alphabetical order: zebra 0, apple 1, bee 2;
    4 train and 2 test images per class. Returns the (path, label) lines written."""
    labels = {"zebra": 0, "apple": 1, "bee": 2}
    lines: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    index = 0
    for name, label in labels.items():
        for split, count in (("train", 4), ("test", 2)):
            for _ in range(count):
                path = write_image(root / "real" / name / f"{name}_{index:03d}", index)
                lines[split].append((path.relative_to(root).as_posix(), label))
                index += 1
    for split, items in lines.items():
        (root / f"real_{split}.txt").write_text("".join(f"{path} {label}\n" for path, label in items))
    return lines


def test_domainnet_reads_split_files_and_class_names(tmp_path):
    lines = domainnet_fixture(tmp_path)
    domain = domainnet_domain(tmp_path, "real", image_size=SIZE, n_train=None, n_test=None)
    assert domain.classes == ["zebra", "apple", "bee"]
    assert domain.num_outputs == 3 and not domain.multilabel and domain.name == "real"
    assert domain.mean == list(IMAGENET_MEAN) and domain.std == list(IMAGENET_STD)
    for split in ("train", "test"):
        data = domain.split(split)
        read = sorted(zip(data.paths, data.targets.tolist()))
        assert read == sorted((str(tmp_path / path), label) for path, label in lines[split])
    image, target = domain.train[0]
    assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.uint8
    assert target.dtype == torch.int64 and target.ndim == 0
    assert Path(domain.train.paths[0]).parent.name == domain.classes[int(target)]


def test_domainnet_seeded_subsample(tmp_path):
    domainnet_fixture(tmp_path)
    full = domainnet_domain(tmp_path, "real", image_size=SIZE, n_train=None, n_test=None)
    first = domainnet_domain(tmp_path, "real", image_size=SIZE, n_train=5, n_test=4, seed=2020)
    again = domainnet_domain(tmp_path, "real", image_size=SIZE, n_train=5, n_test=4, seed=2020)
    other = domainnet_domain(tmp_path, "real", image_size=SIZE, n_train=5, n_test=4, seed=7)
    assert len(first.train) == 5 and len(first.test) == 4
    assert first.train.paths == again.train.paths and first.test.paths == again.test.paths
    assert first.train.paths != other.train.paths
    assert len(set(first.train.paths)) == 5 and set(first.train.paths) <= set(full.train.paths)
    assert set(first.test.paths) <= set(full.test.paths)
    label_of = dict(zip(full.train.paths, full.train.targets.tolist()))
    assert first.train.targets.tolist() == [label_of[path] for path in first.train.paths]
    larger = domainnet_domain(tmp_path, "real", image_size=SIZE, n_train=100, n_test=100)
    assert sorted(larger.train.paths) == sorted(full.train.paths) and len(larger.test) == 6


def test_domainnet_missing_split_file(tmp_path):
    domainnet_fixture(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"clipart_train\.txt.*<name>_test\.txt"):
        domainnet_domain(tmp_path, "clipart", image_size=SIZE)


@pytest.mark.parametrize("bad_line", ["real/apple/x.jpg", "real/apple/x.jpg one", "real/apple/x.jpg -1"])
def test_domainnet_malformed_line_names_file_and_line(tmp_path, bad_line):
    domainnet_fixture(tmp_path)
    split = tmp_path / "real_train.txt"
    lines = split.read_text().splitlines()
    lines[2] = bad_line
    split.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"real_train\.txt, line 3: expected"):
        domainnet_domain(tmp_path, "real", image_size=SIZE)


def test_domainnet_label_out_of_range_and_inconsistent_labels(tmp_path):
    domainnet_fixture(tmp_path)
    split = tmp_path / "real_test.txt"
    original = split.read_text()
    split.write_text(original.replace(" 2\n", " 5\n"))  # bee is 2 in train, 5 in test
    with pytest.raises(ValueError, match=r"real_test\.txt, line 5: .*label 5"):
        domainnet_domain(tmp_path, "real", image_size=SIZE)
    (tmp_path / "real_train.txt").write_text((tmp_path / "real_train.txt").read_text().replace(" 2\n", " 5\n"))
    with pytest.raises(ValueError, match=r"real_train\.txt, line 9: label 5 out of range.*0 to 2"):
        domainnet_domain(tmp_path, "real", image_size=SIZE)


# ---------------------------------------------------------------- CheXpert

CHEXPERT_LABELS = ["Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Pleural Effusion"]


def test_chexpert_label_policy_by_hand():
    # rows: all blank, all 1, all 0, all -1, one mixed row
    text = ("Path,Sex,Cardiomegaly,Edema,Consolidation,Atelectasis,Pleural Effusion,No Finding\n"
            "a.jpg,Male,,,,,,1.0\n"
            "b.jpg,Male,1.0,1.0,1.0,1.0,1.0,\n"
            "c.jpg,Female,0.0,0.0,0.0,0.0,0.0,\n"
            "d.jpg,Female,-1.0,-1.0,-1.0,-1.0,-1.0,-1.0\n"
            "e.jpg,Male,-1.0,,1.0,-1.0,0.0,\n")
    frame = pd.read_csv(io.StringIO(text))
    paper = chexpert_targets(frame, CHEXPERT_LABELS, ("Edema", "Atelectasis"))
    assert paper.dtype == torch.float32 and paper.shape == (5, 5)
    assert paper.tolist() == [[0, 0, 0, 0, 0],
                              [1, 1, 1, 1, 1],
                              [0, 0, 0, 0, 0],
                              [0, 1, 0, 1, 0],
                              [0, 0, 1, 1, 0]]
    zeros = chexpert_targets(frame, CHEXPERT_LABELS, ())
    assert zeros.tolist() == [[0, 0, 0, 0, 0],
                              [1, 1, 1, 1, 1],
                              [0, 0, 0, 0, 0],
                              [0, 0, 0, 0, 0],
                              [0, 0, 1, 0, 0]]
    ones = chexpert_targets(frame, ["Edema", "No Finding"], ["Edema", "No Finding"])
    assert ones.tolist() == [[0, 1], [1, 0], [0, 0], [1, 1], [0, 0]]


def test_chexpert_targets_reject_bad_columns_and_values():
    frame = pd.DataFrame({"Path": ["a.jpg", "b.jpg"], "Edema": [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"row 1 \(b\.jpg\), column 'Edema': 2\.0"):
        chexpert_targets(frame, ["Edema"], [])
    with pytest.raises(ValueError, match="no column \\['Cardiomegaly'\\]"):
        chexpert_targets(frame, ["Cardiomegaly", "Edema"], [])
    with pytest.raises(ValueError, match="uncertain_ones \\['Atelectasis'\\]"):
        chexpert_targets(frame.assign(Edema=1.0), ["Edema"], ["Atelectasis"])


def chexpert_fixture(parent: Path, rows: int = 10, relative_to_root: bool = False) -> Path:
    """<parent>/CheXpert-v1.0-small/{train.csv, train/patientXXXXX/study1/view1_*.jpg};
    the label of each row is a function of its index (so it can be checked per path)."""
    root = parent / "CheXpert-v1.0-small"
    records = []
    for index in range(rows):
        view = "frontal" if index % 3 else "lateral"
        image = write_image(root / "train" / f"patient{index:05d}" / "study1" / f"view1_{view}", index)
        path = image.relative_to(root if relative_to_root else parent).as_posix()
        values = [(index + k) % 4 - 1 for k in range(5)]  # cycles through -1, 0, 1, 2 -> blank
        records.append([path, view.capitalize()] + [v if v < 2 else None for v in values])
    frame = pd.DataFrame(records, columns=["Path", "Frontal/Lateral"] + CHEXPERT_LABELS)
    frame.to_csv(root / "train.csv", index=False)
    return root


def test_chexpert_domain_disjoint_halves_and_targets(tmp_path):
    root = chexpert_fixture(tmp_path)
    domain = chexpert_domain(root, image_size=SIZE, n_train=4, n_test=5, seed=3)
    assert domain.multilabel and domain.classes == CHEXPERT_LABELS and domain.name == "chexpert"
    assert len(domain.train) == 4 and len(domain.test) == 5
    assert not set(domain.train.paths) & set(domain.test.paths)
    again = chexpert_domain(root, image_size=SIZE, n_train=4, n_test=5, seed=3)
    assert again.train.paths == domain.train.paths and again.test.paths == domain.test.paths
    frame = pd.read_csv(root / "train.csv")
    expected = dict(zip((str(tmp_path / p) for p in frame["Path"]), chexpert_targets(frame).tolist()))
    for data in (domain.train, domain.test):
        assert data.targets.tolist() == [expected[path] for path in data.paths]
    image, target = domain.test[0]
    assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.uint8
    assert target.dtype == torch.float32 and target.shape == (5,)
    halves = chexpert_domain(root, image_size=SIZE, n_train=None, n_test=None)
    assert (len(halves.train), len(halves.test)) == (5, 5)
    assert sorted(halves.train.paths + halves.test.paths) == sorted(expected)
    with pytest.raises(ValueError, match=r"cannot split 10 CheXpert rows.*n_train \+ n_test <= 10"):
        chexpert_domain(root, image_size=SIZE, n_train=6, n_test=5)


def test_chexpert_frontal_only(tmp_path):
    root = chexpert_fixture(tmp_path)
    domain = chexpert_domain(root, image_size=SIZE, n_train=None, n_test=None, frontal_only=True)
    paths = domain.train.paths + domain.test.paths
    assert len(paths) == 6 and all("frontal" in path for path in paths)  # indices 0, 3, 6, 9 are lateral


def test_chexpert_paths_resolve_against_root_or_its_parent(tmp_path):
    official = chexpert_fixture(tmp_path / "official")
    inside = chexpert_fixture(tmp_path / "inside", relative_to_root=True)
    for root in (official, inside):
        domain = chexpert_domain(root, image_size=SIZE, n_train=5, n_test=5)
        assert all(Path(path).is_file() for path in domain.train.paths + domain.test.paths)
        assert domain.train[0][0].shape == (3, SIZE, SIZE)
    with pytest.raises(FileNotFoundError, match=r"patient00000.*neither under"):
        chexpert_domain(tmp_path / "official" / "CheXpert-v1.0-small" / "train", csv="../train.csv",
                        image_size=SIZE, n_train=5, n_test=5)
    with pytest.raises(FileNotFoundError, match=r"valid\.csv not found"):
        chexpert_domain(official, csv="valid.csv")


# ---------------------------------------------------------------- image folders


def folder_fixture(root: Path, classes=("cat", "dog", "emu"), per_class: int = 5) -> list[str]:
    paths = []
    for c, name in enumerate(classes):
        for i in range(per_class):
            paths.append(str(write_image(root / name / f"{i}", c * per_class + i)))
    return paths


def test_image_folder_split_per_class(tmp_path):
    paths = folder_fixture(tmp_path / "pets")
    domain = image_folder_domain(tmp_path / "pets", image_size=SIZE, test_fraction=0.4, seed=1)
    assert domain.classes == ["cat", "dog", "emu"] and domain.name == "pets" and not domain.multilabel
    assert sorted(domain.train.paths + domain.test.paths) == sorted(paths)
    assert not set(domain.train.paths) & set(domain.test.paths)
    assert torch.bincount(domain.train.targets).tolist() == [3, 3, 3]
    assert torch.bincount(domain.test.targets).tolist() == [2, 2, 2]
    for data in (domain.train, domain.test):
        assert [domain.classes[t] for t in data.targets.tolist()] == [Path(p).parent.name for p in data.paths]
    again = image_folder_domain(tmp_path / "pets", image_size=SIZE, test_fraction=0.4, seed=1)
    assert again.test.paths == domain.test.paths
    other = image_folder_domain(tmp_path / "pets", image_size=SIZE, test_fraction=0.4, seed=2)
    assert set(other.test.paths) != set(domain.test.paths)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        image_folder_domain(tmp_path / "pets", test_fraction=1.0)


def test_image_folder_with_train_and_test(tmp_path):
    train = folder_fixture(tmp_path / "set" / "train", per_class=3)
    test = folder_fixture(tmp_path / "set" / "test", per_class=2)
    domain = image_folder_domain(tmp_path / "set", image_size=SIZE)
    assert domain.classes == ["cat", "dog", "emu"]
    assert sorted(domain.train.paths) == sorted(train) and sorted(domain.test.paths) == sorted(test)
    image, target = domain.test[0]
    assert image.shape == (3, SIZE, SIZE) and target.dtype == torch.int64 and target.ndim == 0


def test_image_folder_rejects_mismatched_or_half_splits(tmp_path):
    folder_fixture(tmp_path / "set" / "train", per_class=2)
    folder_fixture(tmp_path / "set" / "test", classes=("cat", "dog", "yak"), per_class=1)
    with pytest.raises(ValueError, match=r"missing in test \['emu'\], not in train \['yak'\]"):
        image_folder_domain(tmp_path / "set")
    folder_fixture(tmp_path / "half" / "train", per_class=2)
    with pytest.raises(ValueError, match="has a train folder but no test folder"):
        image_folder_domain(tmp_path / "half")


# ---------------------------------------------------------------- unreadable images


def test_corrupt_and_missing_images_raise_image_read_error(tmp_path):
    folder_fixture(tmp_path / "set" / "train", per_class=2)
    folder_fixture(tmp_path / "set" / "test", per_class=2)
    domain = image_folder_domain(tmp_path / "set", image_size=SIZE)
    bad = Path(domain.test.paths[1])
    bad = bad.rename(bad.with_name("broken.jpg"))
    bad.write_bytes(b"this is not a jpeg" * 10)
    domain.test.paths[1] = str(bad)
    with pytest.raises(ImageReadError, match=rf"cannot read image {bad}: .*remove it from the split file"):
        domain.test[1]
    with pytest.raises(ImageReadError, match=str(bad)):
        list(domain.loader("test", batch_size=4))
    with pytest.raises(ImageReadError, match=str(bad)):  # re-raised from a DataLoader worker
        list(domain.loader("test", batch_size=4, num_workers=1))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(Path(domain.test.paths[0]).read_bytes()[:200])
    with pytest.raises(ImageReadError, match=str(truncated)) as info:
        read_image(truncated, SIZE)
    assert info.value.path == str(truncated)
    error = pickle.loads(pickle.dumps(info.value))
    assert (error.path, error.reason, str(error)) == (info.value.path, info.value.reason, str(info.value))
    with pytest.raises(ImageReadError, match=r"missing\.png: FileNotFoundError"):
        read_image(tmp_path / "missing.png", SIZE)


# ---------------------------------------------------------------- batches and materialisation


def test_loader_batches_are_normalised_and_dataset_pickles(tmp_path):
    domainnet_fixture(tmp_path)
    domain = domainnet_domain(tmp_path, "real", image_size=SIZE, n_train=None, n_test=None)
    inputs, targets = next(iter(domain.loader("train", batch_size=5)))
    assert inputs.shape == (5, 3, SIZE, SIZE) and inputs.dtype == torch.float32
    assert targets.dtype == torch.int64 and targets.tolist() == domain.train.targets[:5].tolist()
    raw = np.stack([domain.train[i][0].numpy() for i in range(5)]).astype(np.float64)
    mean, std = np.array(IMAGENET_MEAN)[:, None, None], np.array(IMAGENET_STD)[:, None, None]
    np.testing.assert_allclose(inputs.numpy(), (raw / 255.0 - mean) / std, atol=1e-5)
    copy = pickle.loads(pickle.dumps(domain.train))
    assert isinstance(copy, FileImageDataset) and copy.paths == domain.train.paths
    assert torch.equal(copy[3][0], domain.train[3][0]) and torch.equal(copy.targets, domain.train.targets)


def test_to_image_set_matches_items(tmp_path):
    root = chexpert_fixture(tmp_path)
    domain = chexpert_domain(root, image_size=SIZE, n_train=6, n_test=4)
    memory = to_image_set(domain.train, batch_size=4)
    assert isinstance(memory, ImageSet) and memory.classes == CHEXPERT_LABELS and memory.multilabel
    assert torch.equal(memory.images, torch.stack([domain.train[i][0] for i in range(6)]))
    assert torch.equal(memory.targets, domain.train.targets)
    inputs, targets = next(iter(domain.loader("test", batch_size=3)))
    assert inputs.shape == (3, 3, SIZE, SIZE) and targets.dtype == torch.float32 and targets.shape == (3, 5)
    with pytest.raises(ValueError, match="empty dataset"):
        to_image_set(domain.train.subset([]))


# ---------------------------------------------------------------- settings honoured per kind


def test_stratified_subsample_keeps_each_class_share():
    labels = [0] * 5 + [1] * 3 + [2] * 2
    chosen = stratified_subsample(labels, 5, seed=0)
    assert torch.bincount(torch.tensor(labels)[chosen]).tolist() == [3, 1, 1]  # quotas 2.5, 1.5, 1: largest remainder
    assert chosen == stratified_subsample(labels, 5, seed=0) and chosen == sorted(set(chosen))
    assert {tuple(stratified_subsample(labels, 5, seed=s)) for s in range(5)} != {tuple(chosen)}
    assert stratified_subsample(labels, None, 0) == stratified_subsample(labels, 10, 0) == list(range(10))


def test_image_folder_honours_n_train_n_test_and_num_classes(tmp_path):
    folder_fixture(tmp_path / "pets", per_class=5)  # split 0.4: 3 train and 2 test images per class
    full = image_folder_domain(tmp_path / "pets", image_size=SIZE, test_fraction=0.4, seed=1)
    small = image_folder_domain(tmp_path / "pets", image_size=SIZE, test_fraction=0.4, seed=1, n_train=6, n_test=3)
    assert torch.bincount(small.train.targets).tolist() == [2, 2, 2]
    assert torch.bincount(small.test.targets).tolist() == [1, 1, 1]
    assert set(small.train.paths) <= set(full.train.paths) and set(small.test.paths) <= set(full.test.paths)
    again = image_folder_domain(tmp_path / "pets", image_size=SIZE, test_fraction=0.4, seed=1, n_train=6, n_test=3)
    assert again.train.paths == small.train.paths
    two = image_folder_domain(tmp_path / "pets", image_size=SIZE, num_classes=2)
    assert two.classes == ["cat", "dog"] and two.num_outputs == 2
    assert {Path(p).parent.name for p in two.train.paths + two.test.paths} == {"cat", "dog"}
    with pytest.raises(ValueError, match=r"num_classes 4 asked for, but .*pets has 3 class folders \(cat, dog, emu\)"):
        image_folder_domain(tmp_path / "pets", num_classes=4)


def test_folder_settings_reach_the_domain(tmp_path):
    folder_fixture(tmp_path / "set" / "train", per_class=4)
    folder_fixture(tmp_path / "set" / "test", per_class=2)
    domain = load_domain(DataConfig(kind="folder", root=str(tmp_path / "set"), image_size=SIZE, n_train=4, n_test=2,
                                    num_classes=2))
    assert domain.classes == ["cat", "dog"]
    assert torch.bincount(domain.train.targets).tolist() == [2, 2] and torch.bincount(domain.test.targets).tolist() == [1, 1]
    everything = load_domain(DataConfig(kind="folder", root=str(tmp_path / "set"), image_size=SIZE, n_train=12))
    assert len(everything.train) == 12 and everything.num_outputs == 3
    with pytest.raises(ValueError, match=r"n_train 100 asked for, but the train split of .*set has 12 examples; "
                                         r"lower n_train to at most 12"):  # not silently 12
        load_domain(DataConfig(kind="folder", root=str(tmp_path / "set"), image_size=SIZE, n_train=100))


@pytest.mark.parametrize("layout", ["split here", "train and test"])
def test_a_one_class_folder_is_an_error(tmp_path, layout):
    if layout == "split here":
        folder_fixture(tmp_path / "set", classes=("cat",), per_class=5)
    else:
        for split in ("train", "test"):
            folder_fixture(tmp_path / "set" / split, classes=("cat",), per_class=2)
    with pytest.raises(ValueError, match=r"domain 'set' has 1 class\(es\) \['cat'\].*at least two classes"):
        image_folder_domain(tmp_path / "set", image_size=SIZE)


def test_domainnet_honours_num_classes(tmp_path):
    domainnet_fixture(tmp_path)
    two = domainnet_domain(tmp_path, "real", image_size=SIZE, n_train=None, n_test=None, num_classes=2)
    assert two.classes == ["zebra", "apple"]
    assert len(two.train) == 8 and len(two.test) == 4 and int(two.train.targets.max()) == 1
    assert load_domain(DataConfig(kind="domainnet", root=str(tmp_path), image_size=SIZE, num_classes=2)).num_outputs == 2
    with pytest.raises(ValueError, match="num_classes 4 asked for, but the real split files of .* name 3 classes"):
        domainnet_domain(tmp_path, "real", image_size=SIZE, num_classes=4)


def test_chexpert_rejects_num_classes():
    with pytest.raises(ValidationError, match="num_classes does not apply to data kind 'chexpert'"):
        DataConfig(kind="chexpert", root="/data/CheXpert-v1.0-small", num_classes=3)
