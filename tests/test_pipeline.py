"""End to end through the CLI on Flower's Simulation Engine (Ray): run, results layout, model card, predict, resume."""

import json

import numpy as np
from PIL import Image
import pytest
from typer.testing import CliRunner

from meduniverse.cli import app, demo_config_path
from meduniverse.sites import load_site

from conftest import ROOT, TINY

runner = CliRunner(env={"COLUMNS": "200"})  # wide enough that rich does not fold site names


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    args = ["run", str(demo_config_path()), "--out", str(out), "--no-progress"]
    for item in TINY:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.mark.slow
def test_run_writes_results_in_the_shared_layout(demo_run):
    out, output = demo_run
    results = json.loads((out / "results.json").read_text())
    assert set(results) >= {"tasks", "config", "commit"}
    assert len(results["tasks"]) == 5
    for site, entry in results["tasks"].items():
        assert entry["metric"] == ("dice" if entry["task"] == "segmentation" else "auc")
        assert set(entry["arms"]) == {"baseline", "universal", "universal_finetuned"}
        for arm in entry["arms"].values():
            assert len(arm["per_seed"]) == 1 and arm["mean"] == arm["per_seed"][0] and 0 <= arm["mean"] <= 1
        assert site in output
    card = json.loads((out / "model" / "card.json").read_text())
    assert [t["name"] for t in card["tasks"]] == list(results["tasks"])
    assert card["tasks"][3]["input"]["size"] == 64 and card["inputs"]["classification"]["mean"] == 0.5
    assert (out / "model" / "model.safetensors").stat().st_size > 10_000
    assert "stage 1" in (out / "log.txt").read_text()


@pytest.mark.slow
def test_rerun_resumes_without_training_again(demo_run):
    out, _ = demo_run
    before = (out / "checkpoints" / "progress.json").read_text()
    args = ["run", str(demo_config_path()), "--out", str(out), "--no-progress"]
    for item in TINY:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "checkpoints" / "progress.json").read_text() == before


@pytest.mark.slow
def test_rerun_with_another_configuration_is_refused(demo_run):
    out, _ = demo_run
    args = ["run", str(demo_config_path()), "--out", str(out), "--no-progress", "--set", "method.retention=0.9"]
    for item in TINY:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "different configuration" in result.output


@pytest.mark.slow
def test_predict_prints_probabilities_and_writes_masks(demo_run, demo_config, tmp_path):
    out, _ = demo_run
    xray = load_site(demo_config.sites[0], demo_config.pool, demo_config.input_spec("binary"), 0)
    png = tmp_path / "xray.png"
    Image.fromarray(xray.splits["test"].images[0, 0].numpy()).save(png)
    result = runner.invoke(app, ["predict", str(out / "model"), "--task", "synthetic_xray_nodule", str(png)])
    assert result.exit_code == 0, result.output
    probs = [float(part.split("=")[1]) for part in result.output.split(":", 1)[1].split()]
    assert len(probs) == 2 and abs(sum(probs) - 1) < 1e-3
    vessel = tmp_path / "vessel.npy"
    np.save(vessel, np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    result = runner.invoke(app, ["predict", str(out / "model"), "--task", "synthetic_vessel_seg", str(vessel),
                                 "--out-dir", str(tmp_path / "masks")])
    assert result.exit_code == 0, result.output
    mask = np.asarray(Image.open(tmp_path / "masks" / "vessel_synthetic_vessel_seg_mask.png"))
    assert mask.shape == (50, 70) and set(np.unique(mask)) <= {0, 255}
    bad = runner.invoke(app, ["predict", str(out / "model"), "--task", "no_such_task", str(png)])
    assert bad.exit_code == 1 and "no task 'no_such_task'" in bad.output


def test_sites_command_lists_every_shared8_site(shared_data):
    result = runner.invoke(app, ["sites", str(ROOT / "configs" / "shared8.toml"), "--set", f"data_root='{shared_data}'"])
    assert result.exit_code == 0, result.output
    for name in ["pneumonia_xray", "retina_fundus_dr", "breast_us", "blood_cells_bccd", "drive_vessels",
                 "skin_lesion_ph2", "fetal_head_us", "nuclei_histo"]:
        assert name in result.output
    assert "covid_xray" not in result.output and "disjoint" in result.output
