"""Single image files for prediction: PNG/JPEG/BMP/TIFF, DICOM, NIfTI (middle slice) and .npy."""

from pathlib import Path

import numpy as np

from meduniverse.core.errors import DataError


def _to_uint8(array: np.ndarray, path: Path) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return array
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise DataError(f"{path}: image contains NaN or inf")
    lo, hi = array.min(), array.max()
    return (
        np.zeros(array.shape, np.uint8)
        if hi == lo
        else np.round((array - lo) / (hi - lo) * 255).astype(np.uint8)
    )


def read_image(path: Path) -> np.ndarray:
    """A 2-D image as uint8 (H,W) or (H,W,3); raises DataError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    name = path.name.lower()
    try:
        if name.endswith(".dcm"):
            import pydicom

            array = pydicom.dcmread(path).pixel_array
        elif name.endswith((".nii", ".nii.gz")):
            import nibabel

            volume = np.asanyarray(nibabel.load(path).dataobj)
            array = volume[..., volume.shape[2] // 2] if volume.ndim == 3 else volume
        elif name.endswith(".npy"):
            array = np.load(path, allow_pickle=False)
        else:
            from PIL import Image

            with Image.open(path) as img:
                array = np.asarray(
                    img.convert("L" if img.mode in ("L", "I", "I;16", "F", "1") else "RGB")
                )
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from exc
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 3)):
        raise DataError(f"{path}: expected a 2-D gray or RGB image, got shape {array.shape}")
    return _to_uint8(array, path)
