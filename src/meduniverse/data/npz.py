"""Read and validate MedMNIST-style ``.npz`` files: ``{split}_images`` plus ``{split}_labels`` or ``{split}_masks``."""

from dataclasses import dataclass
from pathlib import Path
import zipfile

import numpy as np

from meduniverse.errors import DataError
from meduniverse.tasks import is_segmentation

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass
class RawSplit:
    """One split as stored: images (N,H,W) or (N,H,W,C) and targets (labels or masks)."""

    images: np.ndarray
    targets: np.ndarray


def target_key(task: str) -> str:
    return "masks" if is_segmentation(task) else "labels"


def open_npz(path: Path) -> np.lib.npyio.NpzFile:
    """Open an npz file or raise a DataError naming it."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from exc


def read_array(npz: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    if key not in npz.files:
        raise DataError(f"{path}: missing key '{key}' (has {sorted(npz.files)})")
    try:
        return npz[key]
    except ValueError as exc:  # object arrays need pickle, which we refuse
        raise DataError(f"{path}: key '{key}' cannot be read without pickle ({exc})") from exc


def check_images(images: np.ndarray, where: str) -> np.ndarray:
    """Check rank, dtype and values of an image array; return it as uint8 (N,H,W[,C])."""
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise DataError(f"{where}: images must have shape (N,H,W) or (N,H,W,1|3), got {images.shape}")
    if images.shape[0] == 0:
        raise DataError(f"{where}: empty split (0 images)")
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating):
        raise DataError(f"{where}: images must be uint8 or float in [0,1], got dtype {images.dtype}")
    if np.isnan(images).any():
        raise DataError(f"{where}: images contain NaN")
    if images.min() < 0 or images.max() > 1:
        raise DataError(f"{where}: float images must lie in [0,1], got [{images.min()}, {images.max()}]")
    return np.round(images * 255).astype(np.uint8)


def check_labels(labels: np.ndarray, task: str, num_classes: int, n: int, where: str) -> np.ndarray:
    """Check a label array; return int64 (N,) for single-label tasks or (N,C) for multilabel."""
    if np.issubdtype(labels.dtype, np.floating):
        if np.isnan(labels).any():
            raise DataError(f"{where}: labels contain NaN")
        if not np.all(labels == np.round(labels)):
            raise DataError(f"{where}: labels must be whole numbers, found fractional values")
    elif not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise DataError(f"{where}: labels must be integers, got dtype {labels.dtype}")
    if labels.shape[0] != n:
        raise DataError(f"{where}: {labels.shape[0]} labels for {n} images")
    labels = labels.astype(np.int64)
    if task == "multilabel":
        if labels.ndim != 2 or labels.shape[1] != num_classes:
            raise DataError(f"{where}: multilabel labels must have shape (N,{num_classes}), got {labels.shape}")
        if not np.isin(labels, (0, 1)).all():
            raise DataError(f"{where}: multilabel labels must be 0 or 1")
        return labels
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"{where}: labels must have shape (N,) or (N,1), got {labels.shape}")
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise DataError(
            f"{where}: label {labels[bad][0]} out of range 0..{num_classes - 1} ({int(bad.sum())} such labels)"
        )
    return labels


def check_masks(masks: np.ndarray, images: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    """Check a mask array against its images; return uint8 (N,H,W)."""
    if masks.ndim == 4 and masks.shape[-1] == 1:
        masks = masks[..., 0]
    if masks.ndim != 3:
        raise DataError(f"{where}: masks must have shape (N,H,W), got {masks.shape}")
    if masks.shape != images.shape[:3]:
        raise DataError(f"{where}: masks shape {masks.shape} does not match images {images.shape[:3]}")
    if np.issubdtype(masks.dtype, np.floating):
        if np.isnan(masks).any():
            raise DataError(f"{where}: masks contain NaN")
    elif not (np.issubdtype(masks.dtype, np.integer) or masks.dtype == np.bool_):
        raise DataError(f"{where}: masks must be integers, got dtype {masks.dtype}")
    values = np.unique(masks)
    outside = values[(values < 0) | (values >= num_classes) | (values != np.round(values))]
    if outside.size:
        raise DataError(f"{where}: mask values {outside[:5].tolist()} outside the classes 0..{num_classes - 1}")
    return masks.astype(np.uint8)


def check_split(images: np.ndarray, targets: np.ndarray, task: str, num_classes: int, where: str) -> RawSplit:
    images = check_images(images, where)
    if is_segmentation(task):
        return RawSplit(images, check_masks(targets, images, num_classes, where))
    return RawSplit(images, check_labels(targets, task, num_classes, images.shape[0], where))


def read_labelled_npz(path: Path, task: str, num_classes: int, splits: tuple[str, ...] = SPLITS) -> dict[str, RawSplit]:
    """Read and check every split of a labelled npz file."""
    kind = target_key(task)
    out = {}
    with open_npz(path) as npz:
        for split in splits:
            images = read_array(npz, f"{split}_images", path)
            targets = read_array(npz, f"{split}_{kind}", path)
            out[split] = check_split(images, targets, task, num_classes, f"{path} [{split}]")
    return out


def read_images_npz(path: Path, key: str) -> np.ndarray:
    """Read one image array only (labels are never touched): for pools of unlabelled images."""
    with open_npz(path) as npz:
        return check_images(read_array(npz, key, path), f"{path} [{key}]")
