"""The imaging registry and readers against the real data (counts, shapes, ranges, labels, splits)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from pumamed.errors import DataError, InputError
from pumamed.imaging import (
    DATASETS,
    NIH_FINDINGS,
    balanced_sampler,
    dataset_splits,
    load_dataset,
    make_pretraining_mix,
)

SIZE = 32
EXPECTED = {  # images present in the shared data folder (official test splits held back)
    "nih_cxr14_1000": 800, "pneumoniamnist": 5232, "brain_tumor_mri": 5708, "busi": 624, "breastmnist": 624,
    "mini_mias": 258,
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_every_registered_dataset_loads_with_common_sample(name, data_root):
    info = DATASETS[name]
    ds = load_dataset(name, split="all", size=SIZE, data_dir=data_root)
    assert len(ds) == EXPECTED[name] == len(ds.metadata) == len(ds.labels)
    assert ds.task == info.task and ds.class_names == list(info.class_names)
    for i in (0, len(ds) // 2, len(ds) - 1):
        image, label = ds[i]
        assert image.shape == (1, SIZE, SIZE) and image.dtype == torch.float32
        assert 0.0 <= float(image.min()) <= float(image.max()) <= 1.0
        if ds.task == "multilabel":
            assert label.dtype == torch.float32 and label.shape == (len(ds.class_names),)
        else:
            assert isinstance(label, int) and 0 <= label < len(ds.class_names)
    images = ds.uint8_images()
    assert images.shape == (len(ds), SIZE, SIZE) and images.dtype == np.uint8
    assert images.std() > 10, "images should not be blank"
    assert ds.labels.shape == ((len(ds), 14) if ds.task == "multilabel" else (len(ds),))
    for column in ("dataset", "modality", "split", "label", "patient_id", "sex", "age", "view", "density", "path"):
        assert column in ds.metadata.columns
    assert (ds.metadata["dataset"] == name).all() and (ds.metadata["modality"] == info.modality).all()
    if ds.task != "multilabel":
        assert (ds.metadata["label"].to_numpy() == ds.labels).all()
        assert set(np.unique(ds.labels)) == set(range(len(ds.class_names)))


@pytest.mark.parametrize("name", list(EXPECTED))
def test_splits_partition_the_data_deterministically(name, data_root):
    parts = {s: load_dataset(name, split=s, size=SIZE, data_dir=data_root) for s in ("train", "val", "test")}
    keys = {s: set(zip(d.metadata["path"], d.metadata["source_index"])) for s, d in parts.items()}
    assert sum(len(k) for k in keys.values()) == EXPECTED[name]
    assert not (keys["train"] & keys["val"]) and not (keys["train"] & keys["test"]) and not (keys["val"] & keys["test"])
    assert all(len(d) > 0 for d in parts.values())
    assert (parts["train"].metadata["split"] == "train").all()
    again = load_dataset(name, split="val", size=SIZE, data_dir=data_root)
    assert list(again.metadata["path"]) == list(parts["val"].metadata["path"])
    assert list(again.metadata["source_index"]) == list(parts["val"].metadata["source_index"])
    # Every class is present in train and test (stratified carve).
    if parts["train"].task != "multilabel":
        for s in ("train", "test"):
            assert set(np.unique(parts[s].labels)) == set(range(len(parts[s].class_names)))


@pytest.mark.parametrize("name", ["nih_cxr14_1000", "mini_mias"])
def test_no_patient_in_two_splits(name, data_root):
    frame = dataset_splits(name, data_root)
    assert frame["patient_id"].notna().all()
    per_patient = frame.groupby("patient_id")["split"].nunique()
    assert (per_patient == 1).all(), per_patient[per_patient > 1].head()
    # And through the public datasets, not only the helper.
    patients = {s: set(load_dataset(name, s, SIZE, data_root).metadata["patient_id"]) for s in ("train", "val", "test")}
    assert not (patients["train"] & patients["val"]) and not (patients["train"] & patients["test"])
    assert not (patients["val"] & patients["test"])


def test_nih_metadata_findings_and_official_split(data_root):
    ds = load_dataset("nih_cxr14_1000", split="all", size=SIZE, data_dir=data_root)
    meta = ds.metadata
    row = meta.index[meta["image_index"] == "00000001_001.png"][0]
    expected = np.zeros(14, np.float32)
    expected[[NIH_FINDINGS.index("Cardiomegaly"), NIH_FINDINGS.index("Emphysema")]] = 1
    assert np.array_equal(ds.labels[row], expected)
    assert meta.loc[row, "age"] == 58 and meta.loc[row, "sex"] == "M" and meta.loc[row, "view"] == "PA"
    assert meta.loc[row, "patient_id"] == "1"
    assert set(meta["sex"]) == {"M", "F"} and set(meta["view"]) <= {"PA", "AP"}
    assert meta["age"].between(0, 100).all()
    # "No Finding" rows are all zeros; the own valid/ folder is entirely inside test.
    assert (ds.labels[meta["findings"] == "No Finding"].sum(axis=1) == 0).all()
    valid = meta["path"].str.contains("/valid/")
    assert valid.sum() == 200 and (meta.loc[valid, "split"] == "test").all()
    # The binary view: abnormal = any finding.
    binary = load_dataset("nih_cxr14_1000", split="all", size=SIZE, data_dir=data_root, task="binary")
    assert binary.task == "binary" and binary.class_names == ["normal", "abnormal"]
    assert np.array_equal(binary.labels, (ds.labels.sum(axis=1) > 0).astype(int))


def test_medmnist_label_shapes_and_test_is_own_val(data_root):
    for name, n_train, n_val in (("pneumoniamnist", 4708, 524), ("breastmnist", 546, 78)):
        test = load_dataset(name, split="test", size=28, data_dir=data_root)
        with np.load(data_root / DATASETS[name].relative_path) as raw:
            assert len(raw["train_labels"]) == n_train and len(raw["val_labels"]) == n_val
            assert np.array_equal(test.labels, raw["val_labels"].reshape(-1))
            # size 28 = stored size: pixels are returned unchanged.
            assert np.array_equal(test.uint8_images(), raw["val_images"])
        train, val = (load_dataset(name, split=s, size=28, data_dir=data_root) for s in ("train", "val"))
        assert len(train) + len(val) == n_train


def test_pixels_match_a_direct_pil_decode(data_root):
    ds = load_dataset("nih_cxr14_1000", split="all", size=64, data_dir=data_root)
    for i in (0, 10, 500):
        direct = np.asarray(Image.open(ds.metadata["path"][i]).convert("L"))
        assert np.array_equal(ds.uint8_images()[i], direct)
    busi = load_dataset("busi", split="all", size=SIZE, data_dir=data_root)
    direct = np.asarray(Image.open(busi.metadata["path"][3]).convert("L").resize((SIZE, SIZE), Image.Resampling.BILINEAR))
    assert np.abs(busi.uint8_images()[3].astype(int) - direct.astype(int)).max() <= 1


def test_brain_tumor_class_counts(data_root):
    ds = load_dataset("brain_tumor_mri", split="all", size=SIZE, data_dir=data_root)
    assert ds.class_counts().to_dict() == {"glioma": 1321, "meningioma": 1339, "notumor": 1591, "pituitary": 1457}
    assert ds.metadata["path"].str.contains("/Training/").all()


def test_mini_mias_lesion_masks_and_density(data_root):
    ds = load_dataset("mini_mias", split="all", size=256, data_dir=data_root)
    meta = ds.metadata
    assert set(meta["density"]) == {"F", "G", "D"}
    i = int(meta.index[meta["refnum"] == "mdb001"][0])
    mask = ds.lesion_mask(i)
    scale = 256 / 1024
    # mdb001: centre (535, 425) from the bottom-left, radius 197, in 1024-px units.
    row, col = int((1024 - 425) * scale), int(535 * scale)
    assert mask[row, col] and not mask[10, 10]
    assert mask.sum() == pytest.approx(np.pi * (197 * scale) ** 2, rel=0.05)
    # The lesion (a bright mass) is brighter than the breast around it.
    image = ds.uint8_images()[i].astype(float)
    assert image[mask].mean() > image[(image > 30) & ~mask].mean()
    normal = int(meta.index[meta["class_name"] == "normal"][0])
    assert not ds.lesion_mask(normal).any()
    # Patients are the consecutive image pairs.
    assert meta.loc[meta["refnum"] == "mdb002", "patient_id"].item() == meta.loc[i, "patient_id"]


def test_cache_is_shared_and_epochs_do_not_decode(data_root, monkeypatch):
    first = load_dataset("busi", split="train", size=SIZE, data_dir=data_root).preload()
    second = load_dataset("busi", split="train", size=SIZE, data_dir=data_root)
    assert second._store is first._store

    def fail(*_):
        raise AssertionError("decoded again")

    monkeypatch.setattr(second.table, "decode", fail)
    for i in range(len(second)):
        second[i]
    assert torch.equal(second[5][0], first[5][0])


def test_disk_cache_round_trip(data_root, tmp_path):
    from pumamed.imaging import clear_image_cache

    ds = load_dataset("breastmnist", split="all", size=40, data_dir=data_root, cache_dir=tmp_path).preload()
    files = list(tmp_path.glob("breastmnist_40_*.npy"))
    assert len(files) == 1
    clear_image_cache()
    again = load_dataset("breastmnist", split="all", size=40, data_dir=data_root, cache_dir=tmp_path)
    assert again._store.decoded.all() and np.array_equal(again.uint8_images(), ds.uint8_images())


def test_transform_v2_and_dataloader(data_root):
    flip = v2.Compose([v2.RandomHorizontalFlip(p=1.0)])
    plain = load_dataset("breastmnist", split="val", size=SIZE, data_dir=data_root)
    flipped = load_dataset("breastmnist", split="val", size=SIZE, data_dir=data_root, transform=flip)
    assert torch.equal(flipped[0][0], plain[0][0].flip(-1))
    images, labels = next(iter(DataLoader(plain, batch_size=16)))
    assert images.shape == (16, 1, SIZE, SIZE) and labels.dtype == torch.int64
    nih = load_dataset("nih_cxr14_1000", split="val", size=SIZE, data_dir=data_root)
    images, labels = next(iter(DataLoader(nih, batch_size=8)))
    assert labels.shape == (8, 14) and labels.dtype == torch.float32


def test_bad_arguments_raise_clear_errors(data_root, tmp_path):
    with pytest.raises(InputError, match="split"):
        load_dataset("busi", split="holdout", size=SIZE, data_dir=data_root)
    with pytest.raises(InputError, match="size"):
        load_dataset("busi", size=4, data_dir=data_root)
    with pytest.raises(DataError, match="neither a known dataset"):
        load_dataset("no_such_dataset", data_dir=data_root)
    with pytest.raises(DataError, match="not found"):
        load_dataset("busi", data_dir=tmp_path)


def _write_png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)


def test_user_image_folder_with_split_folders_and_odd_modes(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "my_scans"
    for split in ("Training", "Testing"):
        for k, cls in enumerate(("cyst", "solid")):
            for j in range(8):
                grey = (rng.random((40, 30)) * 200 + 20 * k).astype(np.uint8)
                kind = j % 4
                target = root / split / cls / f"{j}.png"
                if kind == 0:
                    _write_png(target, grey)
                elif kind == 1:  # RGBA with an opaque alpha
                    _write_png(target, np.dstack([grey, grey, grey, np.full_like(grey, 255)]))
                elif kind == 2:  # 16-bit
                    target.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(grey.astype(np.uint16) * 16).save(target)
                else:  # palette
                    target.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(grey).convert("P").save(target)
    (root / "Training" / "cyst" / ".ipynb_checkpoints").mkdir()
    _write_png(root / "Training" / "cyst" / ".ipynb_checkpoints" / "0-checkpoint.png", np.zeros((4, 4), np.uint8))
    test = load_dataset(str(root), split="test", size=24)
    assert len(test) == 16 and test.class_names == ["cyst", "solid"] and test.task == "binary"
    assert test.metadata["path"].str.contains("Testing").all()
    train, val = load_dataset(root, split="train", size=24), load_dataset(root, split="val", size=24)
    assert len(train) + len(val) == 16 and len(val) == 2  # 15 % of 8 per class, rounded, >= 1
    images = load_dataset(root, split="all", size=24).uint8_images()
    assert images.shape == (32, 24, 24)
    # Non-square 40x30 images are padded left/right with black, never stretched.
    assert images[:, :, 0].max() == 0 and images[:, 12, 12].min() > 0


def test_user_folder_too_small_for_a_split_raises(tmp_path):
    for cls in ("a", "b"):
        _write_png(tmp_path / "tiny" / cls / "x.png", np.full((8, 8), 100, np.uint8))
    with pytest.raises(DataError, match="no 'val' split"):
        load_dataset(tmp_path / "tiny", split="val", size=16)
    with pytest.raises(DataError, match="only one class"):
        _write_png(tmp_path / "one" / "a" / "x.png", np.zeros((8, 8), np.uint8))
        load_dataset(tmp_path / "one", split="all", size=16)


def test_user_medmnist_npz_multilabel_rgb_and_absent_splits(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "chestlike.npz"
    np.savez(path, train_images=rng.integers(0, 255, (60, 64, 64), dtype=np.uint8),
             train_labels=rng.integers(0, 2, (60, 14), dtype=np.uint8),
             val_images=rng.integers(0, 255, (20, 64, 64), dtype=np.uint8),
             val_labels=rng.integers(0, 2, (20, 14), dtype=np.uint8))
    ds = load_dataset(path, split="test", size=32)
    assert ds.task == "multilabel" and ds.labels.shape == (20, 14) and ds[0][1].shape == (14,)
    rgb = tmp_path / "bloodlike.npz"
    np.savez(rgb, train_images=rng.integers(0, 255, (30, 28, 28, 3), dtype=np.uint8),
             train_labels=rng.integers(0, 5, (30, 1)), test_images=rng.integers(0, 255, (10, 28, 28, 3), dtype=np.uint8),
             test_labels=np.arange(10).reshape(10, 1) % 5)
    ds = load_dataset(rgb, split="test", size=28)
    assert ds.task == "multiclass" and len(ds) == 10 and ds[0][0].shape == (1, 28, 28)
    assert len(load_dataset(rgb, split="val", size=28)) > 0  # carved from train
    bad = tmp_path / "bad.npz"
    np.savez(bad, something=np.zeros(3))
    with pytest.raises(DataError, match="_images"):
        load_dataset(bad, size=32)


def test_pretraining_mix_and_balanced_sampler(data_root):
    mix = make_pretraining_mix(["busi", "breastmnist", "mini_mias", "nih_cxr14_1000"], split="train", size=SIZE,
                               data_dir=data_root)
    lengths = dict(zip(mix.names, mix.lengths))
    assert len(mix) == sum(lengths.values()) == len(mix.metadata)
    assert set(mix.metadata["modality"]) == {"breast_ultrasound", "mammography", "chest_xray"}
    assert mix.n_outputs == 3 + 2 + 3 + 14
    image, target = mix[lengths["busi"] + 1]  # second breastmnist sample
    part = mix.task_slices["breastmnist"]
    assert image.shape == (1, SIZE, SIZE) and target["dataset"] == 1
    assert target["label"][part].sum() == 1 and target["label"].sum() == 1
    sampler = balanced_sampler(mix, seed=3, num_samples=4000)
    drawn = np.bincount(mix.dataset_ids[list(sampler)], minlength=4) / 4000
    assert np.all(np.abs(drawn - 0.25) < 0.04), drawn
    assert list(balanced_sampler(mix, seed=3, num_samples=50)) == list(balanced_sampler(mix, seed=3, num_samples=50))
    batch = next(iter(DataLoader(mix, batch_size=8, sampler=balanced_sampler(mix, seed=0))))
    assert batch[0].shape == (8, 1, SIZE, SIZE) and batch[1]["label"].shape == (8, mix.n_outputs)


def test_dataset_splits_table_has_no_decoding_and_all_rows(data_root):
    frame = dataset_splits("busi", data_root)
    assert isinstance(frame, pd.DataFrame) and len(frame) == 624
    assert frame["split"].value_counts().to_dict().keys() == {"train", "val", "test"}


def test_chestxray14_layout_with_official_lists_and_2017_metadata(tmp_path):
    """A user ChestX-ray14 folder: 2017 Data_Entry (ages like '058Y', 11 fields under 9 names),
    images in nested folders, and the official train_val_list.txt / test_list.txt."""
    root = tmp_path / "cxr"
    rows = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
            "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"]
    test_names, train_names = [], []
    rng = np.random.default_rng(2)
    for patient in range(1, 13):
        for follow in range(2):
            name = f"{patient:08d}_{follow:03d}.png"
            finding = ["No Finding", "Effusion|Mass", "Hernia"][patient % 3]
            rows.append(f"{name},{finding},{follow},{patient},{40 + patient:03d}Y,{'MF'[patient % 2]},PA,2500,2048,0.14,0.14")
            _write_png(root / "images_001" / "images" / name, rng.integers(0, 255, (20, 20), dtype=np.uint8))
            (test_names if patient > 9 else train_names).append(name)
    (root / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n")
    (root / "test_list.txt").write_text("\n".join(test_names) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(train_names) + "\n")
    test = load_dataset(root, split="test", size=16)
    assert sorted(test.metadata["image_index"]) == sorted(test_names)
    assert test.task == "multilabel" and test.labels.shape == (6, 14)
    assert set(test.metadata["age"]) == {50.0, 51.0, 52.0}
    row = test.metadata.index[test.metadata["image_index"] == "00000010_000.png"][0]
    assert test.labels[row].sum() == 2 and test.metadata.loc[row, "sex"] == "M"
    val = load_dataset(root, split="val", size=16)
    train = load_dataset(root, split="train", size=16)
    assert len(val) > 0 and len(train) + len(val) == 18
    assert not set(val.metadata["patient_id"]) & set(train.metadata["patient_id"])
    from pumamed.imaging.sources import read_nih_cxr14

    (root / "Data_Entry_2017.csv").unlink()
    with pytest.raises(DataError, match="no Data_Entry"):
        read_nih_cxr14(root)
