"""The HTML report: every section present, figures embedded as valid PNGs and saved, text escaped,
and (marked `browser`) every image loads in headless Chromium without console errors."""

import base64
import math
from pathlib import Path
import re
import subprocess

import pytest

from meduniverse.core.checkpoints import Checkpoints
from meduniverse.interfaces.report import build_report
from meduniverse.models.universal import build_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLASSIFICATION, SEGMENTATION = "synthetic_xray_nodule", "synthetic_vessel_seg"
SECTIONS = [
    "Test results per task",
    "Validation metric by stage",
    "Encoder features of the public pool (PCA)",
    "Segmentation examples",
    "Timing and bytes",
    "Statistical tests",
    "Distillation fidelity",
    "Ablation",
    "Adaptation",
]


def arm(per_seed: list[float], secondary: str) -> dict:
    mean = sum(per_seed) / len(per_seed)
    return {
        "per_seed": per_seed,
        "mean": mean,
        "ci95": [mean - 0.02, mean + 0.02],
        "val": {"per_seed": per_seed, "mean": mean},
        secondary: {"per_seed": per_seed, "mean": mean},
    }


def synthetic_results() -> dict:
    """Two tasks (classification, segmentation), three arms, two seeds; a NaN, a None and a missing
    arm."""
    tasks = {
        CLASSIFICATION: {
            "task": "binary",
            "metric": "auc",
            "secondary_metric": "acc",
            "arms": {
                "baseline": arm([0.80, 0.82], "acc"),
                "universal": arm([0.90, 0.92], "acc"),
                "fedavg": {"per_seed": [None, None], "mean": math.nan, "ci95": [None, None]},
            },
        },
        SEGMENTATION: {
            "task": "segmentation",
            "metric": "dice",
            "secondary_metric": "iou",
            "arms": {"baseline": arm([0.71, 0.73], "iou"), "universal": arm([0.61, 0.63], "iou")},
        },
    }
    curve = {
        "stages": [1, 2, 3],
        "mean": [0.5, 0.6, 0.7],
        "per_seed": [[0.5, 0.6, 0.7], [0.5, 0.6, 0.7]],
    }
    stage = {
        "seconds": 3.0,
        "bytes_to_sites": {CLASSIFICATION: 2_000_000},
        "bytes_from_sites": {CLASSIFICATION: 1_000_000},
        "site_seconds": {CLASSIFICATION: 1.5},
    }
    return {
        "name": "demo <script>alert(1)</script>",
        "commit": "abc123",
        "seeds": [0, 1],
        "command": 'meduniverse run a.toml --set x="a&b"',
        "machine": {"platform": "Linux", "cpus": 2},
        "tasks": {
            **tasks,
            CLASSIFICATION: {
                **tasks[CLASSIFICATION],
                "fidelity": {"teacher_test": 0.93, "universal_minus_teacher": -0.0314},
            },
        },
        "arms": {"baseline": {"description": "MIM encoder", "budget": {}}},
        "tests": {
            "universal_vs_baseline": {
                "wilcoxon_p": 0.0123456,
                "n_pairs": 4,
                "wins": 2,
                "losses": 2,
                "mean_difference": 0.0004567,
            }
        },
        "per_task_tests": {
            CLASSIFICATION: {
                "universal_vs_baseline": {"ttest_p": None, "mean_difference": 0.1, "n": 2}
            }
        },
        "curves": {
            CLASSIFICATION: {"universal": curve, "fedavg": curve},
            SEGMENTATION: {"universal": curve},
        },
        "cost": {
            "universal": {"seconds": 12.5, "stages": {"1": stage, "2": stage}},
            "fedavg": {"seconds": 8.0, "stages": {"1": stage}},
        },
        "ablation": {
            "rows": [
                {"variant": "distil_only", "val_mean": 0.81},
                {"variant": "average<then>distil", "val_mean": None},
            ]
        },
        "adapt": {CLASSIFICATION: {"universal": curve}},
    }


def write_checkpoints(run_dir: Path, config) -> None:
    """Tiny real checkpoints: stage 0 (the encoder only) and the last stage (the whole model)."""
    state = build_model(config, seed=0).state_dict()
    ckpt = Checkpoints(run_dir / "seed_0")
    ckpt.save_stage(0, {"model": {k: v for k, v in state.items() if k.startswith("encoder.")}}, {})
    ckpt.save_stage(config.method.stages, {"model": state}, {})


def check_images(page: str, out_dir: Path) -> list[str]:
    """Every <img> is a data: URI holding a PNG; return their alt names."""
    images = re.findall(r"<img\b[^>]*>", page)
    assert images
    names = []
    for tag in images:
        src = re.search(r'src="([^"]*)"', tag).group(1)
        assert src.startswith("data:image/png;base64,"), tag[:80]
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
        names.append(re.search(r'alt="([^"]*)"', tag).group(1))
    for name in names:
        assert (out_dir / "figures" / f"{name}.png").read_bytes().startswith(PNG_MAGIC)
    return names


def test_report_has_every_section(tmp_path, demo_config):
    write_checkpoints(tmp_path, demo_config)
    path = build_report(tmp_path, synthetic_results(), demo_config)
    assert path == tmp_path / "report.html"
    page = path.read_text()
    for title in SECTIONS:
        assert f"<h2>{title}" in page, title
    names = check_images(page, tmp_path)
    assert set(names) == {
        "test_metric_by_arm",
        "validation_curves",
        "embedding_pca",
        "segmentation_overlays",
        "cost_by_arm",
        "adapt_curves",
    }
    assert "not available" not in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
    # escaped text, bold best arm, mean [CI], tests at 3 significant digits
    assert "demo &lt;script&gt;alert(1)&lt;/script&gt;" in page and "&quot;a&amp;b&quot;" in page
    assert "average&lt;then&gt;distil" in page
    assert "<b>0.910 [0.890, 0.930]</b>" in page and "<b>0.720 [0.700, 0.740]</b>" in page
    assert "0.0123" in page and "0.000457" in page and "abc123" in page and "-0.031" in page


def test_report_without_config_or_checkpoints(tmp_path, demo_config):
    results = synthetic_results()
    del results["adapt"], results["ablation"], results["curves"]
    page = build_report(tmp_path, results).read_text()
    assert page.count("not available") >= 4  # embedding, overlays, curves, ablation
    assert "<h2>Adaptation" not in page
    assert set(check_images(page, tmp_path)) == {"test_metric_by_arm", "cost_by_arm"}
    page = build_report(
        tmp_path / "other", results, demo_config
    ).read_text()  # config given, no checkpoints
    assert "no checkpoint" in page and "embedding_pca" not in page


CHECK_SCRIPT = """<script>
var errors = [];
window.onerror = function (msg) { errors.push(String(msg)); };
var consoleError = console.error;
console.error = function () { errors.push(Array.prototype.join.call(arguments, " "));
consoleError.apply(console, arguments); };
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var loaded = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var div = document.createElement("div");
  div.id = "imgcheck";
  div.textContent = "loaded=" + loaded + " broken=" + (imgs.length - loaded) + " errors=" +
  errors.length + " " + errors.join(" | ");
  document.body.appendChild(div);
});
</script>"""


@pytest.mark.browser
def test_report_renders_in_chromium(tmp_path, demo_config, browser):
    write_checkpoints(tmp_path, demo_config)
    page = build_report(tmp_path, synthetic_results(), demo_config).read_text()
    expected = page.count("<img ")
    check = tmp_path / "report_check.html"
    check.write_text(page.replace("<head>", "<head>" + CHECK_SCRIPT, 1))
    run = subprocess.run(
        [
            browser,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-extensions",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            check.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    marker = re.search(r'<div id="imgcheck">([^<]*)</div>', run.stdout)
    assert marker, f"the check script did not run:\n{run.stdout[-1000:]}\n{run.stderr[-2000:]}"
    assert marker.group(1).startswith(f"loaded={expected} broken=0 errors=0"), marker.group(1)
    console = [
        line for line in run.stderr.splitlines() if "Uncaught" in line or ":ERROR:CONSOLE" in line
    ]
    assert not console, console
