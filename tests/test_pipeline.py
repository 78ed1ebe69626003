"""End to end through the CLI on Flower's Simulation Engine (Ray): run, results layout, model card,
predict, resume."""

from dataclasses import replace
import json
import shutil

import numpy as np
from PIL import Image
import pytest
from typer.testing import CliRunner

from conftest import ROOT, TINY
from meduniverse.core.checkpoints import Checkpoints
from meduniverse.core.config import RuntimeConfig
from meduniverse.core.device import Compute
from meduniverse.core.errors import ConfigError
from meduniverse.interfaces.cli import app, demo_config_path
from meduniverse.results.analysis import seed_seconds
from meduniverse.results.run import check_same_run
from meduniverse.sites.sources import load_site

runner = CliRunner(env={"COLUMNS": "200"})  # wide enough that rich does not fold site names


def tiny(*args: str) -> list[str]:
    """CLI arguments on the demo configuration with the TINY budgets."""
    return [
        args[0],
        str(demo_config_path()),
        *args[1:],
        "--no-progress",
        *(x for item in TINY for x in ("--set", item)),
    ]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    keep = ["--set", "runtime.keep_site_models=true"]  # for the audit of the site models
    result = runner.invoke(app, [*tiny("run", "--out", str(out)), *keep])
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.mark.slow
def test_run_writes_results_in_the_shared_layout(demo_run):
    out, output = demo_run
    results = json.loads((out / "results.json").read_text())
    assert set(results) >= {"tasks", "config", "commit", "machine"}
    assert results["compute"] == Compute.of(RuntimeConfig()).describe()  # what 'auto' resolved to
    assert len(results["tasks"]) == 5
    for site, entry in results["tasks"].items():
        assert entry["metric"] == ("dice" if entry["task"] == "segmentation" else "auc")
        assert set(entry["arms"]) == {"baseline", "universal", "universal_finetuned"}
        for arm in entry["arms"].values():
            assert (
                len(arm["per_seed"]) == 1
                and arm["mean"] == arm["per_seed"][0]
                and 0 <= arm["mean"] <= 1
            )
        assert site in output
    card = json.loads((out / "model" / "card.json").read_text())
    assert [t["name"] for t in card["tasks"]] == list(results["tasks"])
    assert (
        card["tasks"][3]["input"]["size"] == 64 and card["inputs"]["classification"]["mean"] == 0.5
    )
    assert (out / "model" / "model.safetensors").stat().st_size > 10_000
    assert "stage 1" in (out / "log.txt").read_text()


@pytest.mark.slow
def test_rerun_resumes_without_training_again(demo_run):
    out, _ = demo_run
    before = (out / "checkpoints" / "progress.json").read_text()
    result = runner.invoke(app, tiny("run", "--out", str(out)))
    assert result.exit_code == 0, result.output
    assert (out / "checkpoints" / "progress.json").read_text() == before
    # the resumed run's cost is the work its checkpoints record, not the seconds of this attempt
    rerun = json.loads((out / "results.json").read_text())
    assert rerun["run_seconds"] >= seed_seconds(Checkpoints(out)) > 0


@pytest.mark.slow
def test_rerun_with_another_configuration_is_refused(demo_run):
    out, _ = demo_run
    result = runner.invoke(app, tiny("run", "--out", str(out), "--set", "method.retention=0.9"))
    assert result.exit_code == 1 and "different configuration" in result.output


def test_resume_accepts_a_run_that_predates_a_setting(demo_config, tmp_path):
    """A config.json written before a setting existed resumes when that setting is at its
    default, and is refused when the setting is not at its default now, or when a setting it does
    hold has changed."""
    older = demo_config.to_dict()
    del older["privacy"]["dp_trains"]  # as a run started before privacy.dp_trains
    (tmp_path / "config.json").write_text(json.dumps(older))
    check_same_run(tmp_path, demo_config)
    head = replace(demo_config, privacy=replace(demo_config.privacy, dp_trains="head"))
    with pytest.raises(ConfigError, match="differs in: privacy"):
        check_same_run(tmp_path, head)
    older["method"]["retention"] = demo_config.method.retention + 0.1
    (tmp_path / "config.json").write_text(json.dumps(older))
    with pytest.raises(ConfigError, match="differs in: method"):
        check_same_run(tmp_path, demo_config)


@pytest.mark.slow
def test_predict_prints_probabilities_and_writes_masks(demo_run, demo_config, tmp_path):
    out, _ = demo_run
    xray = load_site(demo_config.sites[0], demo_config.pool, demo_config.input_spec("binary"), 0)
    png = tmp_path / "xray.png"
    Image.fromarray(xray.splits["test"].images[0, 0].numpy()).save(png)
    result = runner.invoke(
        app, ["predict", str(out / "model"), "--task", "synthetic_xray_nodule", str(png)]
    )
    assert result.exit_code == 0, result.output
    probs = [float(part.split("=")[1]) for part in result.stdout.split(":", 1)[1].split()]
    assert len(probs) == 2 and abs(sum(probs) - 1) < 1e-3
    vessel = tmp_path / "vessel.npy"
    np.save(vessel, np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    result = runner.invoke(
        app,
        [
            "predict",
            str(out / "model"),
            "--task",
            "synthetic_vessel_seg",
            str(vessel),
            "--out-dir",
            str(tmp_path / "masks"),
        ],
    )
    assert result.exit_code == 0, result.output
    mask = np.asarray(Image.open(tmp_path / "masks" / "vessel_synthetic_vessel_seg_mask.png"))
    assert mask.shape == (50, 70) and set(np.unique(mask)) <= {0, 255}
    bad = runner.invoke(app, ["predict", str(out / "model"), "--task", "no_such_task", str(png)])
    assert bad.exit_code == 1 and "no task 'no_such_task'" in bad.output


@pytest.mark.slow
def test_audit_reports_both_attacks_per_site(demo_run, demo_config, tmp_path):
    out, _ = demo_run
    args = ["audit", str(out), "--references", "2", "--limit", "20", "--no-progress"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    audit = json.loads((out / "audit.json").read_text())
    assert json.loads((out / "results.json").read_text())["audit"] == audit
    assert set(audit["sites"]) == {s.name for s in demo_config.sites}
    for entry in audit["sites"].values():
        assert 0 <= entry["loss_auc"] <= 1 and 0 <= entry["reference_auc"] <= 1
        assert entry["members"] == entry["non_members"] <= 20
    assert runner.invoke(app, ["report", str(out)]).exit_code == 0
    assert "Membership audit" in (out / "report.html").read_text()
    missing = runner.invoke(app, ["audit", str(tmp_path)])
    assert missing.exit_code == 1 and "results.json: not found" in missing.output


@pytest.mark.slow
def test_audit_attacks_the_site_models_the_server_received(demo_run, demo_config, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(demo_run[0], out)
    args = ["audit", str(out), "--site-models", "--references", "0", "--limit", "20"]
    result = runner.invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    audit = json.loads((out / "audit_site_models.json").read_text())
    assert audit["target"].startswith("site models") and audit["attacks"] == ["loss"]
    assert set(audit["sites"]) == {s.name for s in demo_config.sites}
    assert json.loads((out / "results.json").read_text())["audit_site_models"] == audit
    for kept in (out / "checkpoints").glob("stage_*_site_*.safetensors"):
        kept.unlink()
    missing = runner.invoke(app, [*args, "--no-progress"])
    assert missing.exit_code == 1 and "runtime.keep_site_models" in missing.output


def test_sites_command_lists_every_shared8_site(shared_data):
    result = runner.invoke(
        app,
        ["sites", str(ROOT / "configs" / "shared8.toml"), "--set", f"data_root='{shared_data}'"],
    )
    assert result.exit_code == 0, result.output
    for name in [
        "pneumonia_xray",
        "retina_fundus_dr",
        "breast_us",
        "blood_cells_bccd",
        "drive_vessels",
        "skin_lesion_ph2",
        "fetal_head_us",
        "nuclei_histo",
    ]:
        assert name in result.output
    assert "covid_xray" not in result.output and "disjoint" in result.output


@pytest.fixture(scope="module")
def demo_experiment(tmp_path_factory):
    """Two seeds of every arm on the synthetic federation without one site (left out for adapt)."""
    out = tmp_path_factory.mktemp("experiment") / "exp"
    result = runner.invoke(
        app,
        tiny("experiment", "--seeds", "2", "--out", str(out), "--leave-out", "synthetic_cell_type"),
    )
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.mark.slow
def test_experiment_reports_every_arm_with_cis_tests_curves_and_costs(demo_experiment):
    out, output = demo_experiment
    results = json.loads((out / "results.json").read_text())
    arms = {
        "baseline",
        "local",
        "universal",
        "universal_finetuned",
        "fedavg",
        "fedprox",
        "fedbn",
        "ditto",
        "fedrep",
        "centralized",
        "fedavg_finetuned",
        "fedprox_finetuned",
        "fedbn_finetuned",
        "centralized_finetuned",
        "baseline_probe",
        "universal_probe",
        "fedavg_probe",
    }
    assert set(results["arms"]) == arms and results["seeds"] == [0, 1]
    assert "synthetic_cell_type" not in results["tasks"] and len(results["tasks"]) == 4
    for entry in results["tasks"].values():
        assert set(entry["arms"]) == arms
        for arm in entry["arms"].values():
            low, high = arm["ci95"]
            assert len(arm["per_seed"]) == 2 and low <= arm["mean"] <= high
        assert set(entry["fidelity"]) >= {"teacher_test", "universal_minus_teacher"}
    n_pairs = 2 * len(results["tasks"])
    for ours in ("universal", "universal_finetuned"):
        for other in ("baseline", "fedavg", "local"):
            test = results["tests"][f"{ours}_vs_{other}"]
            assert (
                test["n_pairs"] == n_pairs
                and test["wins"] + test["losses"] <= n_pairs
                and 0 < test["wilcoxon_p"] <= 1
            )
    for _site, curves in results["curves"].items():
        assert set(curves) == {"universal", "fedavg", "fedprox", "fedbn", "ditto", "fedrep"}
        assert all(len(c["mean"]) == 1 for c in curves.values())
    stage = results["cost"]["fedavg"]["stages"]["1"]
    assert (
        set(stage["bytes_to_sites"]) == set(results["tasks"])
        and min(stage["bytes_from_sites"].values()) > 1000
    )
    assert (
        results["arms"]["baseline"]["budget"]["finetune"]
        == results["arms"]["universal_finetuned"]["budget"]["finetune"]
    )
    assert set(results["seed_seconds"]) == {"0", "1"} and min(results["seed_seconds"].values()) > 0
    assert (out / "report.html").is_file() and "Wilcoxon p" in output


@pytest.mark.slow
def test_adapt_to_the_left_out_site_and_to_a_file(demo_experiment, tmp_path, shared_data):
    out, _ = demo_experiment
    args = [
        "adapt",
        str(out / "seed_0"),
        "--config",
        str(demo_config_path()),
        "--leave-out",
        "synthetic_cell_type",
        "--fractions",
        "0.1,1.0",
        "--seeds",
        "2",
        "--out",
        str(tmp_path / "loso"),
        "--no-progress",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "loso" / "results.json").read_text())
    arms = results["tasks"]["synthetic_cell_type"]["arms"]
    assert set(arms) == {
        f"{e}_{m}@{f}"
        for e in ("baseline", "universal")
        for m in ("probe", "finetune")
        for f in ("0.1", "1")
    }
    assert all(len(a["per_seed"]) == 2 for a in arms.values())
    assert set(results["tests"]) == {
        f"universal_{m}_vs_baseline_{m}@{f}" for m in ("probe", "finetune") for f in ("0.1", "1")
    }
    took_part = runner.invoke(
        app,
        [
            "adapt",
            str(out / "seed_0"),
            "--config",
            str(demo_config_path()),
            "--leave-out",
            "synthetic_xray_nodule",
            "--out",
            str(tmp_path / "no"),
        ],
    )
    assert took_part.exit_code == 1 and "took part" in took_part.output
    neither = runner.invoke(app, ["adapt", str(out / "seed_0"), "--out", str(tmp_path / "no")])
    assert neither.exit_code == 1 and "either --data" in neither.output
    missing = runner.invoke(
        app,
        [
            "adapt",
            str(tmp_path),
            "--data",
            str(shared_data / "covid_xray.npz"),
            "--task",
            "multiclass",
            "--out",
            str(tmp_path / "no"),
        ],
    )
    assert missing.exit_code == 1 and "not found" in missing.output
    assert not (tmp_path / "no").exists()


@pytest.mark.slow
def test_extend_adds_a_site_and_reports_the_old_tasks_before_and_after(tmp_path):
    base = tmp_path / "base"
    first = runner.invoke(
        app, tiny("run", "--out", str(base), "--leave-out", "synthetic_cell_type")
    )
    assert first.exit_code == 0, first.output
    args = [
        "extend",
        str(base),
        "--config",
        str(demo_config_path()),
        "--out",
        str(tmp_path / "ext"),
        "--no-progress",
        *(x for item in TINY for x in ("--set", item)),
        "--set",
        "method.stages=2",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "ext" / "results.json").read_text())
    assert results["extension"]["new_sites"] == ["synthetic_cell_type"]
    assert set(results["extension"]["old_tasks"]) == set(results["tasks"]) - {"synthetic_cell_type"}
    assert "universal" in results["tasks"]["synthetic_cell_type"]["arms"]
    same = runner.invoke(
        app, [*args[:6], "--no-progress", *(x for item in TINY for x in ("--set", item))]
    )
    assert same.exit_code == 1 and "method.stages must exceed" in same.output
