"""Bad input files give a clear error naming the file and the problem, and nothing is written."""

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from meduniverse.core.errors import DataError
from meduniverse.data.npz import read_labelled_npz
from meduniverse.interfaces.cli import app

pytestmark = pytest.mark.badinput


def good_classification(n: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for split in ("train", "val", "test"):
        out[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        out[f"{split}_labels"] = (np.arange(n) % 2).reshape(-1, 1).astype(np.int64)
    return out


def good_segmentation(n: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for split in ("train", "val", "test"):
        out[f"{split}_images"] = rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)
        out[f"{split}_masks"] = (rng.random((n, 32, 32)) > 0.5).astype(np.uint8)
    return out


def write(tmp_path: Path, arrays: dict[str, np.ndarray], name: str = "site.npz") -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def broken(
    base: dict[str, np.ndarray], key: str, value: np.ndarray | None
) -> dict[str, np.ndarray]:
    arrays = dict(base)
    if value is None:
        del arrays[key]
    else:
        arrays[key] = value
    return arrays


CLASSIFICATION_CASES = {
    "missing key": (broken(good_classification(), "val_labels", None), "missing key 'val_labels'"),
    "wrong image dtype": (
        broken(good_classification(), "train_images", np.zeros((6, 28, 28), np.int32)),
        "dtype int32",
    ),
    "wrong label dtype": (
        broken(good_classification(), "train_labels", np.array(["a"] * 6).reshape(-1, 1)),
        "labels must be integers",
    ),
    "wrong rank": (
        broken(good_classification(), "train_images", np.zeros((6, 28), np.uint8)),
        "must have shape",
    ),
    "label out of range": (
        broken(good_classification(), "test_labels", np.full((6, 1), 7)),
        "label 7 out of range 0..1",
    ),
    "empty split": (
        broken(
            broken(good_classification(), "val_images", np.zeros((0, 28, 28), np.uint8)),
            "val_labels",
            np.zeros((0, 1), np.int64),
        ),
        "empty split",
    ),
    "NaN labels": (
        broken(
            good_classification(),
            "train_labels",
            np.array([[0.0], [np.nan], [1.0], [0.0], [1.0], [0.0]]),
        ),
        "NaN",
    ),
    "NaN images": (
        broken(good_classification(), "train_images", np.full((6, 28, 28), np.nan, np.float32)),
        "NaN",
    ),
    "count mismatch": (
        broken(good_classification(), "train_labels", np.zeros((5, 1), np.int64)),
        "5 labels for 6 images",
    ),
}


SEGMENTATION_CASES = {
    "mask values outside the classes": (
        broken(good_segmentation(), "train_masks", np.full((4, 32, 32), 3, np.uint8)),
        "outside the classes",
    ),
    "mask shape differs": (
        broken(good_segmentation(), "val_masks", np.zeros((4, 16, 16), np.uint8)),
        "does not match images",
    ),
    "missing masks": (broken(good_segmentation(), "test_masks", None), "missing key 'test_masks'"),
    "NaN masks": (broken(good_segmentation(), "train_masks", np.full((4, 32, 32), np.nan)), "NaN"),
}


CASES = {
    **{("binary", name): case for name, case in CLASSIFICATION_CASES.items()},
    **{("segmentation", name): case for name, case in SEGMENTATION_CASES.items()},
}


@pytest.mark.parametrize("task, case", sorted(CASES))
def test_file_errors_name_file_and_problem(tmp_path, task, case):
    arrays, problem = CASES[task, case]
    path = write(tmp_path, arrays)
    with pytest.raises(DataError) as err:
        read_labelled_npz(path, task, 2)
    assert str(path) in str(err.value)
    assert problem in str(err.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_labelled_npz(tmp_path / "absent.npz", "binary", 2)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(DataError, match=r"not a readable \.npz"):
        read_labelled_npz(garbage, "binary", 2)


def config_for(tmp_path: Path, data: Path) -> Path:
    config = tmp_path / "fed.toml"
    config.write_text(f"""
name = "bad"
[pool]
sites = ["site"]
[[sites]]
name = "site"
path = "{data}"
task = "binary"
classes = ["a", "b"]
""")
    return config


def test_cli_run_on_bad_data_names_file_and_writes_nothing(tmp_path):
    data = write(tmp_path, broken(good_classification(), "test_labels", np.full((6, 1), 7)))
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["run", str(config_for(tmp_path, data)), "--out", str(out), "--no-progress"]
    )
    assert result.exit_code == 1
    assert str(data) in result.output and "out of range" in result.output
    assert (
        not (out / "results.json").exists()
        and not (out / "checkpoints").exists()
        and not (out / "model").exists()
    )


def test_cli_sites_on_bad_data_names_file(tmp_path):
    data = write(tmp_path, broken(good_classification(), "val_labels", None))
    result = CliRunner().invoke(app, ["sites", str(config_for(tmp_path, data))])
    assert result.exit_code == 1
    assert str(data) in result.output and "missing key 'val_labels'" in result.output


@pytest.mark.parametrize(
    "text, problem",
    [
        (
            "name = 1\n[[sites]]\nname='a'\ntask='binary'\nclasses=['x','y']\npath='a.npz'\n",
            "expected str",
        ),
        (
            "[[sites]]\nname='a'\ntask='regression'\nclasses=['x','y']\npath='a.npz'\n",
            "task 'regression' unknown",
        ),
        (
            "[[sites]]\nname='a'\ntask='binary'\nclasses=['x','y']\npath='a.npz'\ncolour='red'\n",
            "unknown key(s) ['colour']",
        ),
        (
            "[[sites]]\nname='a'\ntask='binary'\nclasses=['x','y','z']\npath='a.npz'\n",
            "exactly 2 classes",
        ),
        ("[[sites]]\nname='a'\ntask='binary'\nclasses=['x','y']\n", "exactly one of 'path'"),
        (
            "[method]\nvariant='magic'\n[[sites]]\nname='a'\ntask='binary'\nclasses=['x','y']\npath='a.npz'\n",
            "variant 'magic'",
        ),
        ("this is = not toml ]", "not valid TOML"),
        (
            "[model]\nencoder='vit'\n[[sites]]\nname='a'\ntask='binary'\nclasses=['x','y']\npath='a.npz'\n",
            "one input size",
        ),
        (
            "[privacy]\ndp=true\nepsilon=0\n[[sites]]\nname='a'\ntask='binary'\nclasses=['x','y']\npath='a.npz'\n",
            "privacy.epsilon, privacy.clip and privacy.lr_scale must be positive",
        ),
        (
            "[privacy]\ndp=true\n[method]\nlocal_training='early_stopping'\n[[sites]]\nname='a'\ntask='binary'\nclasses=['x','y']\npath='a.npz'\n",
            "privacy.dp needs method.local_training = 'epochs'",
        ),
        (
            "[privacy]\ndp=true\nbatch_scale=0\n[[sites]]\nname='a'\ntask='binary'\nclasses=['x','y']\npath='a.npz'\n",
            "privacy.batch_scale at least 1",
        ),
        (
            "[privacy]\ndp=true\nbatch_scale=2.5\n[[sites]]\nname='a'\ntask='binary'\nclasses=['x','y']\npath='a.npz'\n",
            "privacy.batch_scale",
        ),
        (
            "[privacy]\ndp=true\nlr_scale=0\n[[sites]]\nname='a'\ntask='binary'\nclasses=['x','y']\npath='a.npz'\n",
            "privacy.lr_scale must be positive",
        ),
        (
            "[privacy]\ndp=true\nema=1.0\n[[sites]]\nname='a'\ntask='binary'\nclasses=['x','y']\npath='a.npz'\n",
            "privacy.ema in [0, 1)",
        ),
        (
            "[privacy]\ndp=true\ndp_trains='encoder'\n[[sites]]\nname='a'\ntask='binary'\nclasses=['x','y']\npath='a.npz'\n",
            "privacy.dp_trains",
        ),
        (
            "[privacy]\ndp=true\n[method]\nteachers='best'\n[[sites]]\nname='a'\ntask='binary'\nclasses=['x','y']\npath='a.npz'\n",
            "method.teachers = 'fresh'",
        ),
        (
            "[runtime]\nteacher_outputs='cloud'\n[[sites]]\nname='a'\ntask='binary'\nclasses=['x','y']\npath='a.npz'\n",
            "runtime.teacher_outputs",
        ),
        (
            "[method]\nteachers='oldest'\n[[sites]]\nname='a'\ntask='binary'\nclasses=['x','y']\npath='a.npz'\n",
            "method.teachers",
        ),
        (
            "[privacy]\ndp=true\n[competitors]\nfederated=['fedavg','ditto']\n[[sites]]\nname='a'\ntask='binary'\nclasses=['x','y']\npath='a.npz'\n",
            "privacy.dp cannot run ['ditto']",
        ),
    ],
)
def test_bad_config_names_file_and_field(tmp_path, text, problem):
    from meduniverse.core.config_file import load_config
    from meduniverse.core.errors import ConfigError

    path = tmp_path / "fed.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and problem in str(err.value)
