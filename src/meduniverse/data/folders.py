"""A hospital's own files as a site: image folders, DICOM and NIfTI, read into the same checked
splits as an npz file.

Layouts, below the site's folder (optionally under `train/`, `val/`, `test/`, which then are the
splits):

* classification: one sub-folder per class, named as the class, or a CSV (`labels`) with the columns
  `file` and `label` (a class name or id) and optionally `patient` and `split`;
* segmentation: `images/` and `masks/` with matching file names (a mask's stem is its image's, PNG
  masks may mark the foreground 255; NIfTI masks are volumes of class ids like their images).

Every image file may hold several frames (a multi-frame DICOM, the slices of a NIfTI volume): each
frame is an example, and the frames of one file, or of one patient (DICOM PatientID, the CSV's
`patient`), stay in one split. Without split folders the split is made per patient by a seeded draw.
"""

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from meduniverse.core.errors import DataError
from meduniverse.core.tasks import task_type
from meduniverse.data.images import is_image_file, read_frames
from meduniverse.data.npz import check_split
from meduniverse.data.splits import SPLITS, RawSplit


@dataclass
class Example:
    """One labelled frame before resizing: the image, its label or mask, its patient, its split."""

    image: np.ndarray
    target: int | np.ndarray
    group: str
    split: str | None = None


def image_files(folder: Path) -> list[Path]:
    """The image files below a folder, sorted (a folder of DICOM files is a series)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))


def patient_of(path: Path, root: Path) -> str:
    """A DICOM file's PatientID, else its file (for a series: its folder)."""
    if path.suffix.lower() == ".dcm":
        import pydicom

        patient = pydicom.dcmread(path, stop_before_pixels=True).get("PatientID")
        if patient:
            return f"patient:{patient}"
        return str(path.parent.relative_to(root)) if path.parent != root else str(path)
    return str(path)


def class_folders(root: Path, classes: tuple[str, ...], split: str | None) -> list[Example]:
    """Examples from one sub-folder per class."""
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    unknown = [p.name for p in folders if p.name not in classes]
    if unknown:
        raise DataError(f"{root}: sub-folders {unknown} are not classes ({', '.join(classes)})")
    out = []
    for folder in folders:
        for path in image_files(folder):
            for frame in read_frames(path):
                out.append(
                    Example(frame.image, classes.index(folder.name), patient_of(path, root), split)
                )
    if not out:
        raise DataError(f"{root}: no image file in its class folders ({', '.join(classes)})")
    return out


def labelled_by_csv(
    root: Path, table: Path, classes: tuple[str, ...], split: str | None
) -> list[Example]:
    """Examples listed in a CSV: file, label, and optionally patient and split."""
    with table.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"file", "label"} <= set(rows[0]):
        raise DataError(
            f"{table}: needs the columns 'file' and 'label' (and optionally 'patient', 'split')"
        )
    out = []
    for line, row in enumerate(rows, 2):
        label = row["label"].strip()
        if label in classes:
            target = classes.index(label)
        elif label.isdigit() and int(label) < len(classes):
            target = int(label)
        else:
            raise DataError(
                f"{table} line {line}: label '{label}' is not a class ({', '.join(classes)})"
            )
        path = root / row["file"]
        row_split = (row.get("split") or "").strip() or split
        if row_split is not None and row_split not in SPLITS:
            raise DataError(
                f"{table} line {line}: split '{row_split}' is not one of {', '.join(SPLITS)}"
            )
        group = (row.get("patient") or "").strip() or patient_of(path, root)
        out += [Example(f.image, target, group, row_split) for f in read_frames(path)]
    return out


def mask_values(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """A mask frame as class ids; a binary task's 0/255 masks become 0/1."""
    mask = mask[..., 0] if mask.ndim == 3 else mask
    if num_classes == 2 and set(np.unique(mask).tolist()) <= {0, 255}:
        return (mask > 0).astype(np.uint8)
    return mask


def images_and_masks(root: Path, num_classes: int, split: str | None, axis: int) -> list[Example]:
    """Examples from `images/` and `masks/` with matching file names."""
    images, masks = root / "images", root / "masks"
    for folder in (images, masks):
        if not folder.is_dir():
            raise DataError(f"{root}: a segmentation site needs the folders images/ and masks/")
    by_stem = {stem(p): p for p in image_files(masks)}
    out = []
    for path in image_files(images):
        mask_path = by_stem.get(stem(path))
        if mask_path is None:
            raise DataError(f"{path}: no mask with the same name in {masks}")
        frames = read_frames(path, axis=axis)
        targets = read_frames(mask_path, axis=axis, scale=False)
        if len(frames) != len(targets):
            raise DataError(f"{mask_path}: {len(targets)} frame(s) for {len(frames)} in {path}")
        for frame, target in zip(frames, targets, strict=True):
            if target.image.shape[:2] != frame.image.shape[:2]:
                raise DataError(
                    f"{mask_path}: mask {target.image.shape[:2]} for image {frame.image.shape[:2]}"
                )
            out.append(
                Example(
                    frame.image,
                    mask_values(target.image, num_classes),
                    patient_of(path, root),
                    split,
                )
            )
    if not out:
        raise DataError(f"{images}: no image file")
    return out


def stem(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else path.stem


def resized(
    example: Example, size: int, rgb: bool, segmentation: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The example's image (uint8 size×size[×3]) and target at the stored size."""
    image = Image.fromarray(example.image)
    image = image.convert("RGB" if rgb else "L").resize((size, size), Image.Resampling.BILINEAR)
    if not segmentation:
        return np.asarray(image), np.asarray(example.target)
    mask = Image.fromarray(example.target.astype(np.uint8)).resize(
        (size, size), Image.Resampling.NEAREST
    )
    return np.asarray(image), np.asarray(mask)


def assign_splits(examples: list[Example], fractions: tuple[float, ...], seed: int) -> None:
    """Examples without a split get one by a seeded draw of their patients, in proportion."""
    groups = sorted({e.group for e in examples if e.split is None})
    order = np.random.default_rng(seed).permutation(len(groups))
    bounds = np.cumsum(np.asarray(fractions) / sum(fractions)) * len(groups)
    where = {
        groups[g]: SPLITS[min(int(np.searchsorted(bounds, rank, side="right")), 2)]
        for rank, g in enumerate(order)
    }
    for e in examples:
        if e.split is None:
            e.split = where[e.group]


def read_folder(
    root: Path,
    task: str,
    classes: tuple[str, ...],
    size: int,
    fractions: tuple[float, ...],
    seed: int,
    labels: str | None = None,
    axis: int = 2,
) -> dict[str, RawSplit]:
    """Every split of a site kept as files, checked like an npz site.

    Args:
        root: the site's folder.
        task: its task type.
        classes: its class names.
        size: the side every image and mask is resized to (bilinear, masks nearest).
        fractions: train/val/test shares of the patients when the folder has no split folders.
        seed: the seed of that split.
        labels: a CSV file in the folder labelling the images (classification).
        axis: the NIfTI slice axis.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: site folder not found")
    kind = task_type(task)
    roots = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if roots and set(roots) != set(SPLITS):
        raise DataError(
            f"{root}: has split folders {sorted(roots)}; give all of train/, val/, test/ or none"
        )
    examples = []
    for split, folder in roots.items() if roots else [(None, root)]:
        if kind.segmentation:
            examples += images_and_masks(folder, len(classes), split, axis)
        elif labels:
            table = root / labels
            if not table.is_file():
                raise DataError(f"{table}: labels file not found")
            examples += labelled_by_csv(folder, table, classes, split)
        else:
            examples += class_folders(folder, classes, split)
    assign_splits(examples, fractions, seed)
    rgb = any(e.image.ndim == 3 for e in examples)
    out = {}
    for split in SPLITS:
        chosen = [resized(e, size, rgb, kind.segmentation) for e in examples if e.split == split]
        if not chosen:
            raise DataError(
                f"{root} [{split}]: no example falls in this split ({len(examples)} in all); "
                "add files or set the split fractions"
            )
        images, targets = np.stack([c[0] for c in chosen]), np.stack([c[1] for c in chosen])
        out[split] = check_split(images, targets, task, len(classes), f"{root} [{split}]")
    return out
