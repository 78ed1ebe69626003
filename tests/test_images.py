"""Real files from the wild, read frame by frame: the DICOM and NIfTI files that pydicom and nibabel
ship for their own tests (compressed, big-endian, multi-frame, RGB, 3-D and 4-D), by the reader and
by `predict`; DICOM windowing and MONOCHROME1; bad requests give clear errors."""

from pathlib import Path

import nibabel
import numpy as np
from pydicom.data import get_testdata_file
import pytest
from typer.testing import CliRunner

from dicom_files import write_dicom
from meduniverse.core.errors import DataError
from meduniverse.data.folders import read_folder
from meduniverse.data.images import read_frames
from meduniverse.interfaces.cli import app
from meduniverse.models.io import save_model
from meduniverse.models.universal import build_model

NIBABEL_DATA = Path(nibabel.__file__).parent / "tests" / "data"
# file -> frames it holds (every frame of a multi-frame DICOM, every slice of every NIfTI volume)
DICOM = {
    "CT_small.dcm": 1,
    "MR_small.dcm": 1,
    "MR_small_RLE.dcm": 1,
    "JPEG2000.dcm": 1,
    "MR_small_bigendian.dcm": 1,
    "liver_1frame.dcm": 1,
    "JPEG-lossy.dcm": 1,
    "SC_rgb_rle_2frame.dcm": 2,
}
NIFTI = {"anatomical.nii": None, "standard.nii.gz": None, "example4d.nii.gz": None}
runner = CliRunner(env={"COLUMNS": "200"})
CLASSES = ("normal", "finding")


def library_file(name: str) -> Path:
    return Path(get_testdata_file(name)) if name.endswith(".dcm") else NIBABEL_DATA / name


def expected_frames(name: str) -> int:
    if name in DICOM:
        return DICOM[name]
    shape = nibabel.load(library_file(name)).shape
    return shape[2] * (shape[3] if len(shape) == 4 else 1)


@pytest.mark.parametrize("name", [*DICOM, *NIFTI])
def test_every_library_file_is_read_frame_by_frame(name):
    frames = read_frames(library_file(name))
    assert len(frames) == expected_frames(name)
    for frame in frames:
        assert frame.image.dtype == np.uint8 and frame.image.ndim in (2, 3)
        assert frame.image.max() > frame.image.min()  # a real picture, not a blank
    if len(frames) > 1:
        assert len({f.label for f in frames}) == len(frames)  # each frame names its own outputs


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from meduniverse.core.config_file import load_config
    from meduniverse.interfaces.cli import demo_config_path

    config = load_config(demo_config_path())
    out = tmp_path_factory.mktemp("model")
    save_model(build_model(config, seed=0), config, out, {"stage": 0})
    return out


def test_predict_reads_every_library_file(model_dir, tmp_path):
    files = [str(library_file(n)) for n in [*DICOM, *NIFTI]]
    csv = tmp_path / "probs.csv"
    result = runner.invoke(
        app,
        [
            "predict",
            str(model_dir),
            "--task",
            "synthetic_xray_nodule",
            *files,
            "--csv",
            str(csv),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = csv.read_text().splitlines()
    assert rows[0] == "file,frame,clear,nodule"
    assert len(rows) - 1 == sum(expected_frames(n) for n in [*DICOM, *NIFTI])


def test_predict_writes_nifti_masks_with_the_input_geometry(model_dir, tmp_path):
    source = library_file("example4d.nii.gz")
    result = runner.invoke(
        app,
        [
            "predict",
            str(model_dir),
            "--task",
            "synthetic_vessel_seg",
            str(source),
            "--masks",
            "nifti",
            "--out-dir",
            str(tmp_path),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    mask = nibabel.load(tmp_path / "example4d_synthetic_vessel_seg_mask.nii.gz")
    image = nibabel.load(source)
    assert mask.shape == image.shape and np.allclose(mask.affine, image.affine)
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
    frames = runner.invoke(
        app,
        [
            "predict",
            str(model_dir),
            "--task",
            "synthetic_vessel_seg",
            str(library_file("SC_rgb_rle_2frame.dcm")),
            "--out-dir",
            str(tmp_path),
            "--no-progress",
        ],
    )
    assert frames.exit_code == 0, frames.output
    assert {p.name for p in tmp_path.glob("SC_rgb_rle_2frame_*")} == {
        f"SC_rgb_rle_2frame_f00{k}_synthetic_vessel_seg_mask.png" for k in (0, 1)
    }


def test_one_frame_can_be_chosen_and_bad_requests_are_clear(model_dir, tmp_path):
    source = library_file("example4d.nii.gz")
    assert [f.index for f in read_frames(source, frame=30)] == [(1, 6)]
    with pytest.raises(DataError, match=r"48 frame.*--frame 48 is out of range"):
        read_frames(source, frame=48)
    png = runner.invoke(
        app,
        [
            "predict",
            str(model_dir),
            "--task",
            "synthetic_vessel_seg",
            str(library_file("MR_small.dcm")),
            "--masks",
            "nifti",
            "--out-dir",
            str(tmp_path),
            "--no-progress",
        ],
    )
    assert png.exit_code == 1 and "needs a whole NIfTI input" in png.output
    empty = tmp_path / "empty"
    empty.mkdir()
    folder = runner.invoke(
        app, ["predict", str(model_dir), "--task", "synthetic_xray_nodule", str(empty)]
    )
    assert folder.exit_code == 1 and "holds no image file" in folder.output


def test_dicom_window_and_monochrome1(tmp_path):
    ramp = np.tile(np.arange(0, 1000, 10, dtype=np.uint16), (8, 1))  # 0..990 left to right
    plain = read_frames(write_dicom(tmp_path / "plain.dcm", ramp))[0].image
    assert plain[0, 0] == 0 and plain[0, -1] == 255
    window = read_frames(
        write_dicom(
            tmp_path / "window.dcm",
            ramp,
            WindowCenter=500,
            WindowWidth=200,
            RescaleSlope=1,
            RescaleIntercept=0,
        )
    )[0].image
    assert (window[0, :40] == 0).all() and (
        window[0, 61:] == 255
    ).all()  # outside the window: clipped
    inverted = read_frames(
        write_dicom(tmp_path / "mono1.dcm", ramp, PhotometricInterpretation="MONOCHROME1")
    )
    assert inverted[0].image[0, 0] == 255 and inverted[0].image[0, -1] == 0


def test_training_site_readers_take_every_library_file(tmp_path):
    """The same files as a hospital's classification site (a CSV of file, label, patient, split):
    every frame becomes one training example."""
    names = [*DICOM, *NIFTI]
    splits = ("train", "train", "val", "test")
    rows = ["file,label,patient,split"] + [
        f"{library_file(n)},{CLASSES[k % 2]},p{k},{splits[k % 4]}" for k, n in enumerate(names)
    ]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    site = read_folder(
        tmp_path, "binary", CLASSES, 32, (0.6, 0.2, 0.2), seed=0, labels="labels.csv"
    )
    assert sum(len(s.images) for s in site.values()) == sum(expected_frames(n) for n in names)
    assert all(s.images.shape[1:] == (32, 32, 3) for s in site.values())
