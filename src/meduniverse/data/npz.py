"""Read and validate MedMNIST-style ``.npz`` files: ``{split}_images`` plus ``{split}_labels`` or
``{split}_masks``."""

from pathlib import Path
import zipfile

import numpy as np

from meduniverse.core.errors import DataError
from meduniverse.core.tasks import task_type
from meduniverse.data.splits import SPLITS, RawSplit


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
        raise DataError(
            f"{where}: images must have shape (N,H,W) or (N,H,W,1|3), got {images.shape}"
        )
    if images.shape[0] == 0:
        raise DataError(f"{where}: empty split (0 images)")
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating):
        raise DataError(
            f"{where}: images must be uint8 or float in [0,1], got dtype {images.dtype}"
        )
    if np.isnan(images).any():
        raise DataError(f"{where}: images contain NaN")
    if images.min() < 0 or images.max() > 1:
        raise DataError(
            f"{where}: float images must lie in [0,1], got [{images.min()}, {images.max()}]"
        )
    return np.round(images * 255).astype(np.uint8)


def check_split(
    images: np.ndarray, targets: np.ndarray, task: str, num_classes: int, where: str
) -> RawSplit:
    """Images checked, then the targets by the task type's own check.

    Args:
        images: as stored, (N,H,W) or (N,H,W,1|3).
        targets: labels or masks as stored.
        task: the site's task type (its registry entry checks the targets).
        num_classes: C.
        where: the file and split, for the error message.
    """
    images = check_images(images, where)
    return RawSplit(images, task_type(task).check_targets(targets, images, num_classes, where))


def read_labelled_npz(
    path: Path, task: str, num_classes: int, splits: tuple[str, ...] = SPLITS
) -> dict[str, RawSplit]:
    """Read and check every split of a labelled npz file.

    Args:
        path: the npz file.
        task: the site's task type (labels or masks).
        num_classes: C.
        splits: which splits to read.
    """
    kind = task_type(task).target_key
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
