"""Use a saved universal model on image files and folders: class probabilities (printed, and as CSV)
or segmentation masks (PNG per frame, or NIfTI with the input volume's geometry)."""

from collections.abc import Callable
import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
import torch
import torch.nn.functional as F

from meduniverse.core.config import InputSpec
from meduniverse.core.errors import DataError
from meduniverse.core.files import atomic_write
from meduniverse.core.tasks import task_type
from meduniverse.data.images import Frame, is_image_file, read_frames
from meduniverse.data.transforms import images_to_spec
from meduniverse.method.supervised import predict_probs
from meduniverse.models.universal import UniversalModel

MASK_FORMATS = ("png", "nifti")


@dataclass
class Prediction:
    """One frame's result: class probabilities (C,), or per-pixel probabilities (C,H,W) at the
    frame's own size."""

    frame: Frame
    probs: torch.Tensor


def task_card(card: dict, task: str) -> dict:
    """The card's entry of one task; DataError listing the tasks otherwise."""
    for entry in card["tasks"]:
        if entry["name"] == task:
            return entry
    names = ", ".join(t["name"] for t in card["tasks"])
    raise DataError(f"model has no task '{task}' (tasks: {names})")


def image_files(paths: list[Path]) -> list[Path]:
    """The files given, and every image file inside the folders given (recursively, sorted)."""
    out = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
            if not found:
                raise DataError(f"{path}: folder holds no image file ({', '.join(SUPPORTED)})")
            out += found
        else:
            out.append(path)
    return out


SUPPORTED = "PNG/JPEG/BMP/TIFF, DICOM, NIfTI, .npy"


def predict_frames(
    model: UniversalModel, card: dict, task: str, frames: list[Frame]
) -> list[Prediction]:
    """Every frame through one head, at the task's input spec; masks resized back to each frame.

    Args:
        model: the universal model.
        card: its card (the task's input spec and type).
        task: the head.
        frames: 2-D frames (any sizes).
    """
    entry = task_card(card, task)
    spec = InputSpec(entry["input"]["size"], entry["input"]["channels"])
    segmentation = task_type(entry["type"]).segmentation
    out = []
    for frame in frames:
        probs = predict_probs(model, task, images_to_spec(frame.image[None], spec))[0]
        if segmentation:
            size = frame.image.shape[:2]
            probs = F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]
        out.append(Prediction(frame, probs))
    return out


def mask_ids(probs: torch.Tensor) -> np.ndarray:
    """The most probable class of each pixel, uint8 (H,W)."""
    return probs.argmax(0).numpy().astype(np.uint8)


def write_mask(probs: torch.Tensor, path: Path) -> None:
    """Class ids as a gray PNG, spread over 0..255 (binary: 0 background, 255 foreground)."""
    scale = 255 // max(probs.shape[0] - 1, 1)
    atomic_write(path, lambda tmp: Image.fromarray(mask_ids(probs) * scale).save(tmp, format="PNG"))


def write_nifti_mask(predictions: list[Prediction], source: Path, path: Path, axis: int) -> None:
    """The masks of every slice of a NIfTI input, put back into its shape, with its affine
    (gzipped)."""
    import gzip

    import nibabel

    image = nibabel.load(source)
    volume = np.zeros(image.shape, np.uint8)
    for p in predictions:
        if volume.ndim == 2:
            volume[...] = mask_ids(p.probs)
            continue
        v, s = p.frame.index if len(p.frame.index) == 2 else (None, p.frame.index[0])
        target = volume if v is None else volume[..., v]
        where = [slice(None)] * 3
        where[axis] = s
        target[tuple(where)] = mask_ids(p.probs)
    header = image.header.copy()
    header.set_data_dtype(np.uint8)
    data = gzip.compress(nibabel.Nifti1Image(volume, image.affine, header).to_bytes())
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def file_stem(path: Path) -> str:
    """A file's name without its image suffix ('.nii.gz' counts as one)."""
    name = path.name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else path.stem


def output_stem(frame: Frame, task: str) -> str:
    """The file name stem of a frame's output: IMAGE[_FRAME]_TASK."""
    return f"{file_stem(frame.path)}{'_' + frame.label if frame.label else ''}_{task}"


def write_csv(predictions: list[Prediction], classes: list[str], path: Path) -> None:
    """One row per frame: file, frame, and each class's probability."""

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            rows = csv.writer(f)
            rows.writerow(["file", "frame", *classes])
            for p in predictions:
                rows.writerow(
                    [str(p.frame.path), p.frame.label, *(f"{x:.6f}" for x in p.probs.tolist())]
                )

    atomic_write(path, write)


def run_predict(
    model: UniversalModel,
    card: dict,
    task: str,
    paths: list[Path],
    out_dir: Path,
    frame: int | None = None,
    axis: int = 2,
    masks: str = "png",
    on_file: Callable[[int, int], None] | None = None,
) -> list[Prediction]:
    """Predict every frame of every file; segmentation masks are written into `out_dir`.

    Args:
        model, card: the universal model and its card.
        task: the head.
        paths: image files and folders.
        out_dir: where masks go (PNG per frame, or one NIfTI per NIfTI input with `masks='nifti'`).
        frame: only this frame or slice of each file (None: all).
        axis: the NIfTI slice axis.
        masks: 'png' or 'nifti'.
        on_file: progress callback (files done, files).
    """
    if masks not in MASK_FORMATS:
        raise DataError(f"--masks '{masks}' unknown (allowed: {', '.join(MASK_FORMATS)})")
    entry = task_card(card, task)
    segmentation = task_type(entry["type"]).segmentation
    files, out = image_files(paths), []
    for done, path in enumerate(files, 1):
        results = predict_frames(model, card, task, read_frames(path, frame, axis))
        if segmentation and masks == "nifti":
            if not path.name.lower().endswith((".nii", ".nii.gz")) or frame is not None:
                raise DataError(f"{path}: --masks nifti needs a whole NIfTI input (its geometry)")
            target = Path(out_dir) / f"{file_stem(path)}_{task}_mask.nii.gz"
            write_nifti_mask(results, path, target, axis)
        elif segmentation:
            for r in results:
                write_mask(r.probs, Path(out_dir) / f"{output_stem(r.frame, task)}_mask.png")
        out += results
        if on_file:
            on_file(done, len(files))
    return out
