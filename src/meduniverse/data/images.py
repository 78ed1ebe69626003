"""Image files for prediction, each read into 2-D frames: PNG/JPEG/BMP/TIFF and .npy (one frame),
DICOM (every frame of a multi-frame file; rescale slope and intercept, the VOI window, MONOCHROME1
inverted) and NIfTI (every slice along an axis, of every volume of a 4-D file).

Compressed DICOM is decoded by pydicom's plugins (Pillow, pylibjpeg with libjpeg, GDCM); a file none
of them accepts (12-bit JPEG Extended, whose pydicom plugins refuse it) is decoded by GDCM itself.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meduniverse.core.errors import DataError

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".nii", ".nii.gz", ".npy")


@dataclass
class Frame:
    """One 2-D image of a file: uint8 (H,W) or (H,W,3), and its place in the file.

    Args:
        path: the file.
        image: the frame, scaled to uint8.
        label: '' for a single-frame file, else 'f003' (DICOM frame 3) or 'v01_s012' (NIfTI volume
            1, slice 12): what output file names carry.
        index: (volume, slice) for NIfTI, (frame,) for DICOM, () otherwise.
    """

    path: Path
    image: np.ndarray
    label: str = ""
    index: tuple[int, ...] = ()


def to_uint8(array: np.ndarray, where: str) -> np.ndarray:
    """Scale to 0..255 by the array's own range (uint8 stays as it is); NaN or inf is refused."""
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return array
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise DataError(f"{where}: image contains NaN or inf")
    lo, hi = array.min(), array.max()
    if hi == lo:
        return np.zeros(array.shape, np.uint8)
    return np.round((array - lo) / (hi - lo) * 255).astype(np.uint8)


def to_ids(array: np.ndarray, where: str) -> np.ndarray:
    """Class ids as stored (a mask): whole numbers 0..255, as uint8."""
    array = np.asarray(array)
    if not np.isfinite(array).all() or (array != np.round(array)).any():
        raise DataError(f"{where}: a mask must hold whole numbers (class ids)")
    if array.min() < 0 or array.max() > 255:
        raise DataError(
            f"{where}: mask values must lie in 0..255, got [{array.min()}, {array.max()}]"
        )
    return array.astype(np.uint8)


def is_image_file(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIXES)


def _gdcm_pixels(path: Path) -> np.ndarray:
    """Pixel data decoded by GDCM directly (frames, rows, columns[, samples])."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    if not reader.Read():
        raise DataError(f"{path}: GDCM cannot read this DICOM file")
    image = reader.GetImage()
    pixel = image.GetPixelFormat()
    dtypes = {
        "UINT8": np.uint8,
        "INT8": np.int8,
        "UINT16": np.uint16,
        "INT16": np.int16,
        "UINT32": np.uint32,
        "INT32": np.int32,
    }
    dtype = dtypes.get(pixel.GetScalarTypeAsString())
    if dtype is None:
        raise DataError(f"{path}: unsupported pixel type {pixel.GetScalarTypeAsString()}")
    dims = image.GetDimensions()
    frames = dims[2] if len(dims) > 2 else 1
    raw = np.frombuffer(image.GetBuffer().encode("utf-8", "surrogateescape"), dtype=dtype)
    shape = (frames, dims[1], dims[0]) + (
        (pixel.GetSamplesPerPixel(),) if pixel.GetSamplesPerPixel() > 1 else ()
    )
    return raw.reshape(shape)


def read_dicom(path: Path, convert=to_uint8) -> list[Frame]:
    """Every frame of a DICOM file, with its modality LUT (rescale) and VOI window applied."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(path)
    try:
        pixels = ds.pixel_array
    except Exception:
        pixels = _gdcm_pixels(path)
        pixels = pixels if int(ds.get("NumberOfFrames", 1) or 1) > 1 else pixels[0]
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    rgb = int(ds.get("SamplesPerPixel", 1)) == 3
    stack = pixels if frames > 1 else pixels[None]
    if stack.ndim != (4 if rgb else 3):
        raise DataError(f"{path}: unexpected pixel array shape {pixels.shape}")
    out = []
    for k, frame in enumerate(stack):
        if not rgb:
            frame = apply_voi_lut(apply_modality_lut(frame, ds), ds)
            if ds.get("PhotometricInterpretation") == "MONOCHROME1":
                frame = frame.max() - frame
        label = f"f{k:03d}" if frames > 1 else ""
        out.append(
            Frame(path, convert(frame, f"{path} frame {k}"), label, (k,) if frames > 1 else ())
        )
    return out


def read_nifti(path: Path, axis: int = 2, convert=to_uint8) -> list[Frame]:
    """Every 2-D slice along `axis` of every volume (the 4th axis) of a NIfTI file."""
    import nibabel

    data = np.asanyarray(nibabel.load(path).dataobj)
    if data.ndim == 2:
        return [Frame(path, convert(data, str(path)))]
    if data.ndim not in (3, 4):
        raise DataError(f"{path}: expected a 2-D, 3-D or 4-D NIfTI image, got shape {data.shape}")
    if not 0 <= axis < 3:
        raise DataError(f"{path}: slice axis must be 0, 1 or 2, got {axis}")
    volumes = data if data.ndim == 4 else data[..., None]
    out = []
    for v in range(volumes.shape[3]):
        volume = volumes[..., v]
        for s in range(volume.shape[axis]):
            image = np.take(volume, s, axis=axis)
            label = f"v{v:02d}_s{s:03d}" if data.ndim == 4 else f"s{s:03d}"
            index = (v, s) if data.ndim == 4 else (s,)
            out.append(Frame(path, convert(image, f"{path} {label}"), label, index))
    return out


def read_plain(path: Path, convert=to_uint8) -> list[Frame]:
    """A PNG/JPEG/BMP/TIFF image or a .npy array: one frame."""
    if path.name.lower().endswith(".npy"):
        array = np.load(path, allow_pickle=False)
    else:
        from PIL import Image

        with Image.open(path) as img:
            if convert is to_ids and img.mode in ("L", "P", "I", "I;16", "1"):
                array = np.asarray(img)  # class ids as stored (a palette image's indices)
            else:
                gray = img.mode in ("L", "I", "I;16", "F", "1")
                array = np.asarray(img.convert("L" if gray else "RGB"))
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 3)):
        raise DataError(f"{path}: expected a 2-D gray or RGB image, got shape {array.shape}")
    return [Frame(path, convert(array[..., 0] if array.shape[-1:] == (1,) else array, str(path)))]


def read_frames(
    path: Path, frame: int | None = None, axis: int = 2, scale: bool = True
) -> list[Frame]:
    """Every 2-D frame of an image file (or only frame/slice number `frame`); DataError naming the
    file.

    Args:
        path: a PNG/JPEG/BMP/TIFF, DICOM (.dcm), NIfTI (.nii, .nii.gz) or .npy file.
        frame: keep only this frame (DICOM) or slice (NIfTI, counted over every volume); None: all.
        axis: the NIfTI slice axis.
        scale: scale every frame to 0..255 (images); False keeps the stored values (masks: class
            ids, refused unless whole numbers in 0..255).
    """
    path = Path(path)
    convert = to_uint8 if scale else to_ids
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    name = path.name.lower()
    try:
        if name.endswith(".dcm"):
            frames = read_dicom(path, convert)
        elif name.endswith((".nii", ".nii.gz")):
            frames = read_nifti(path, axis, convert)
        else:
            frames = read_plain(path, convert)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from exc
    if frame is not None:
        if not 0 <= frame < len(frames):
            raise DataError(f"{path}: has {len(frames)} frame(s); --frame {frame} is out of range")
        frames = [frames[frame]]
    return frames
