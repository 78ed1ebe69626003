"""Checks of the targets a site stores: class labels, multi-labels or masks.

The task types' `check_targets` in `meduniverse.core.tasks`."""

import numpy as np

from meduniverse.core.errors import DataError


def _whole_numbers(labels: np.ndarray, where: str) -> None:
    if np.issubdtype(labels.dtype, np.floating):
        if np.isnan(labels).any():
            raise DataError(f"{where}: labels contain NaN")
        if not np.all(labels == np.round(labels)):
            raise DataError(f"{where}: labels must be whole numbers, found fractional values")
    elif not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise DataError(f"{where}: labels must be integers, got dtype {labels.dtype}")


def check_class_labels(
    labels: np.ndarray, images: np.ndarray, num_classes: int, where: str
) -> np.ndarray:
    """One class id per image: int64 (N,) from (N,) or (N,1), every id in 0..C-1.

    Args:
        labels: as stored, (N,) or (N,1), integer or whole floats.
        images: the split's images (N,...), for the count.
        num_classes: C.
        where: the file and split, for the error message.
    """
    _whole_numbers(labels, where)
    if labels.shape[0] != images.shape[0]:
        raise DataError(f"{where}: {labels.shape[0]} labels for {images.shape[0]} images")
    labels = labels.astype(np.int64)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"{where}: labels must have shape (N,) or (N,1), got {labels.shape}")
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise DataError(
            f"{where}: label {labels[bad][0]} out of range 0..{num_classes - 1} ({int(bad.sum())} "
            "such labels)"
        )
    return labels


def check_multilabels(
    labels: np.ndarray, images: np.ndarray, num_classes: int, where: str
) -> np.ndarray:
    """One 0/1 column per class: int64 (N,C).

    Args:
        labels: as stored, (N,C) of 0/1.
        images: the split's images (N,...), for the count.
        num_classes: C.
        where: the file and split, for the error message.
    """
    _whole_numbers(labels, where)
    if labels.shape[0] != images.shape[0]:
        raise DataError(f"{where}: {labels.shape[0]} labels for {images.shape[0]} images")
    labels = labels.astype(np.int64)
    if labels.ndim != 2 or labels.shape[1] != num_classes:
        raise DataError(
            f"{where}: multilabel labels must have shape (N,{num_classes}), got {labels.shape}"
        )
    if not np.isin(labels, (0, 1)).all():
        raise DataError(f"{where}: multilabel labels must be 0 or 1")
    return labels


def check_masks(masks: np.ndarray, images: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    """A class-id mask per image, the image's height and width: uint8 (N,H,W).

    Args:
        masks: as stored, (N,H,W) or (N,H,W,1) class ids.
        images: the split's images (N,H,W[,C]), whose height and width the masks must have.
        num_classes: C; every value must lie in 0..C-1.
        where: the file and split, for the error message.
    """
    if masks.ndim == 4 and masks.shape[-1] == 1:
        masks = masks[..., 0]
    if masks.ndim != 3:
        raise DataError(f"{where}: masks must have shape (N,H,W), got {masks.shape}")
    if masks.shape != images.shape[:3]:
        raise DataError(
            f"{where}: masks shape {masks.shape} does not match images {images.shape[:3]}"
        )
    if np.issubdtype(masks.dtype, np.floating):
        if np.isnan(masks).any():
            raise DataError(f"{where}: masks contain NaN")
    elif not (np.issubdtype(masks.dtype, np.integer) or masks.dtype == np.bool_):
        raise DataError(f"{where}: masks must be integers, got dtype {masks.dtype}")
    values = np.unique(masks)
    outside = values[(values < 0) | (values >= num_classes) | (values != np.round(values))]
    if outside.size:
        raise DataError(
            f"{where}: mask values {outside[:5].tolist()} outside the classes 0..{num_classes - 1}"
        )
    return masks.astype(np.uint8)
