"""Sites kept as a hospital's own files: class folders, a CSV of labels, images/ + masks/, DICOM
series, NIfTI volumes; splits from folders or per patient; the same checks and clear errors as npz
sites."""

from pathlib import Path

import nibabel
import numpy as np
from PIL import Image
import pytest
from typer.testing import CliRunner

from dicom_files import write_dicom
from meduniverse.core.errors import ConfigError, DataError
from meduniverse.data.folders import read_folder
from meduniverse.interfaces.cli import app

CLASSES = ("normal", "lesion")
SPLIT = (0.6, 0.2, 0.2)
rng = np.random.default_rng(0)


def png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def picture(label: int, size: int = 40, rgb: bool = False) -> np.ndarray:
    image = rng.integers(0, 60, (size, size)).astype(np.uint8)
    if label:
        image[10:25, 10:25] = 220
    return np.stack([image] * 3, -1) if rgb else image


def test_class_folders_split_per_file_and_keep_every_class(tmp_path):
    for k in range(20):
        png(tmp_path / CLASSES[k % 2] / f"{k}.png", picture(k % 2, rgb=k == 3))  # one RGB image
    splits = read_folder(tmp_path, "binary", CLASSES, 32, SPLIT, seed=0)
    assert {s: len(x.images) for s, x in splits.items()} == {"train": 12, "val": 4, "test": 4}
    assert splits["train"].images.shape[1:] == (32, 32, 3)  # mixed gray and RGB: all RGB
    assert set(splits["train"].targets.tolist()) == {0, 1}
    again = read_folder(tmp_path, "binary", CLASSES, 32, SPLIT, seed=0)
    assert np.array_equal(again["test"].images, splits["test"].images)  # the seeded split repeats


def test_a_csv_keeps_each_patient_in_one_split(tmp_path):
    rows = ["file,label,patient"]
    for k in range(24):
        png(tmp_path / "img" / f"{k}.png", picture(k % 2))
        rows.append(f"img/{k}.png,{CLASSES[k % 2]},p{k // 4}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    splits = read_folder(
        tmp_path, "binary", CLASSES, 32, (0.5, 0.25, 0.25), seed=1, labels="labels.csv"
    )
    sizes = [len(x.images) for x in splits.values()]
    assert sum(sizes) == 24 and all(n % 4 == 0 for n in sizes)  # whole patients only


def test_images_and_masks_with_split_folders(tmp_path):
    for split, count in (("train", 4), ("val", 2), ("test", 2)):
        for k in range(count):
            image = picture(1, 48, rgb=True)
            mask = np.zeros((48, 48), np.uint8)
            mask[10:25, 10:25] = 255
            png(tmp_path / split / "images" / f"case{k}.png", image)
            png(tmp_path / split / "masks" / f"case{k}.png", mask)
    splits = read_folder(tmp_path, "segmentation", ("background", "lesion"), 32, SPLIT, seed=0)
    assert [len(x.images) for x in splits.values()] == [4, 2, 2]
    assert set(np.unique(splits["train"].targets)) == {0, 1} and splits["val"].targets.shape == (
        2,
        32,
        32,
    )


def test_dicom_series_stay_with_their_patient(tmp_path):
    for patient in range(10):
        label = patient % 2
        for k in range(3):  # a series: three slices of one patient
            write_dicom(
                tmp_path / CLASSES[label] / f"p{patient}" / f"{k}.dcm",
                picture(label) * 16,
                PatientID=f"P{patient}",
                BitsStored=12,
                HighBit=11,
            )
    splits = read_folder(tmp_path, "binary", CLASSES, 32, SPLIT, seed=0)
    assert (
        all(len(x.images) % 3 == 0 for x in splits.values())
        and sum(len(x.images) for x in splits.values()) == 30
    )


def test_nifti_slices_of_one_volume_never_cross_splits(tmp_path):
    affine = np.eye(4)
    for case in range(6):
        volume = rng.integers(0, 1000, (40, 40, 5)).astype(np.int16)
        mask = np.zeros((40, 40, 5), np.uint8)
        mask[5:20, 5:20, :] = 1
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "masks").mkdir(exist_ok=True)
        nibabel.save(nibabel.Nifti1Image(volume, affine), tmp_path / "images" / f"c{case}.nii.gz")
        nibabel.save(nibabel.Nifti1Image(mask, affine), tmp_path / "masks" / f"c{case}.nii.gz")
    splits = read_folder(
        tmp_path, "segmentation", ("background", "organ"), 32, (0.5, 0.25, 0.25), seed=0
    )
    assert all(len(x.images) % 5 == 0 for x in splits.values())  # whole volumes only
    assert set(np.unique(splits["test"].targets)) == {0, 1}


@pytest.mark.badinput
def test_bad_folders_say_what_is_wrong(tmp_path):
    png(tmp_path / "a" / "normal" / "1.png", picture(0))
    png(tmp_path / "a" / "tumour" / "1.png", picture(1))
    with pytest.raises(DataError, match="sub-folders \\['tumour'\\] are not classes"):
        read_folder(tmp_path / "a", "binary", CLASSES, 32, SPLIT, 0)
    png(tmp_path / "b" / "images" / "x.png", picture(1))
    (tmp_path / "b" / "masks").mkdir()
    with pytest.raises(DataError, match=r"x\.png: no mask with the same name"):
        read_folder(tmp_path / "b", "segmentation", ("bg", "fg"), 32, SPLIT, 0)
    png(tmp_path / "c" / "images" / "x.png", picture(1, 40))
    png(tmp_path / "c" / "masks" / "x.png", np.zeros((30, 30), np.uint8))
    with pytest.raises(DataError, match="mask \\(30, 30\\) for image \\(40, 40\\)"):
        read_folder(tmp_path / "c", "segmentation", ("bg", "fg"), 32, SPLIT, 0)
    (tmp_path / "d" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="give all of train/, val/, test/ or none"):
        read_folder(tmp_path / "d", "binary", CLASSES, 32, SPLIT, 0)
    png(tmp_path / "e" / "normal" / "1.png", picture(0))
    with pytest.raises(DataError, match=r"\[val\]: no example falls in this split"):
        read_folder(tmp_path / "e", "binary", CLASSES, 32, SPLIT, 0)
    png(tmp_path / "f" / "1.png", picture(0))
    (tmp_path / "f" / "labels.csv").write_text("file,label\n1.png,benign\n")
    with pytest.raises(DataError, match=r"labels\.csv line 2: label 'benign' is not a class"):
        read_folder(tmp_path / "f", "binary", CLASSES, 32, SPLIT, 0, labels="labels.csv")


def site_config(tmp_path: Path, extra: str = "") -> Path:
    for k in range(30):
        png(tmp_path / "site" / CLASSES[k % 2] / f"{k}.png", picture(k % 2))
    path = tmp_path / "fed.toml"
    path.write_text(
        "[[sites]]\nname='clinic'\ntask='binary'\nclasses=['normal','lesion']\npath='site'\nsize=32\n"
        f"{extra}[pool]\nsites=['clinic']\n"
    )
    return path


def test_sites_shows_a_folder_site(tmp_path):
    result = CliRunner().invoke(app, ["sites", str(site_config(tmp_path))])
    assert result.exit_code == 0, result.output
    assert "clinic" in result.output and "32x32 gray" in result.output


def test_a_folder_site_config_is_checked(tmp_path):
    from meduniverse.core.config_file import load_config

    with pytest.raises(ConfigError, match="split needs three shares"):
        load_config(site_config(tmp_path, "split=[0.5, 0.5]\n"))
