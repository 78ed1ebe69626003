"""One self-contained HTML page of a run's results (tables, embedded PNG figures, tests), figures
also as PNG files."""

import html
import json
import math
from pathlib import Path
from typing import Any

from meduniverse.core.arms import arm_order
from meduniverse.core.config import FederationConfig
from meduniverse.core.errors import MeduniverseError
from meduniverse.interfaces.charts import (
    bars_by_task,
    cost_bars,
    curves_chart,
    embedding_chart,
    overlays_chart,
)
from meduniverse.interfaces.page import CSS, fmt, mean_ci, na, num, table, write
from meduniverse.results.figures import embedding, load_models, overlays, pool_samples
from meduniverse.results.model_card import privacy_text
from meduniverse.sites.pool import Pool, build_pool


def _header(results: dict, config: FederationConfig | None) -> str:
    """Title and what the run was: configuration, commit, seeds, machine, command, privacy."""
    name = results.get("name") or (config.name if config else "run")
    machine = results.get("machine") or {}
    machine_text = (
        ", ".join(f"{k}={v}" for k, v in machine.items())
        if isinstance(machine, dict)
        else str(machine)
    )
    items = {
        "config": name,
        "commit": results.get("commit", "unknown"),
        "seeds": ", ".join(str(s) for s in results.get("seeds", [])),
        "machine": machine_text or "unknown",
        "command": results.get("command", "unknown"),
        "privacy": privacy_text(results.get("privacy", {"dp": False})),
    }
    dl = "".join(
        f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in items.items()
    )
    return f"<h1>meduniverse report: {html.escape(str(name))}</h1><dl>{dl}</dl>"


def _results(results: dict, out_dir: Path) -> str:
    """Per task, every arm's mean [95% CI] (best in bold), and a bar chart per task."""
    tasks = results.get("tasks") or {}
    if not tasks:
        return "<h2>Test results per task</h2>" + na("per-task results")
    arms = arm_order(dict.fromkeys(a for t in tasks.values() for a in t.get("arms", {})))
    rows, bold = [], set()
    for i, (site, t) in enumerate(tasks.items()):
        entries = t.get("arms", {})
        means = {
            a: num(e.get("mean")) for a, e in entries.items() if not math.isnan(num(e.get("mean")))
        }
        best = max(means, key=means.get) if means else None
        rows.append(
            [site, t.get("task", ""), t.get("metric", "")]
            + [mean_ci(entries[a]) if a in entries else "–" for a in arms]
        )
        bold |= {(i, 3 + arms.index(best))} if best else set()
    return (
        "<h2>Test results per task</h2><p>Mean and 95% CI of the primary test metric over seeds; "
        "best arm in bold.</p>"
        + table(["task", "type", "metric", *arms], rows, bold)
        + bars_by_task(tasks, out_dir)
    )


def _cost(cost: dict, out_dir: Path) -> str:
    """Seconds and megabytes moved per arm: a table and a bar chart."""
    if not cost:
        return na("timing and bytes")
    rows, arms = [], arm_order(cost)
    for arm in arms:
        stages = (cost[arm].get("stages") or {}).values()
        to = sum(sum((s.get("bytes_to_sites") or {}).values()) for s in stages) / 1e6
        back = sum(sum((s.get("bytes_from_sites") or {}).values()) for s in stages) / 1e6
        rows.append(
            [arm, fmt(cost[arm].get("seconds"), ".1f"), len(stages), f"{to:.2f}", f"{back:.2f}"]
        )
    megabytes = [float(r[3]) + float(r[4]) for r in rows]
    return table(["arm", "seconds", "stages", "MB to sites", "MB from sites"], rows) + cost_bars(
        cost, arms, megabytes, out_dir
    )


def _tests(results: dict) -> str:
    """The paired tests over all tasks, then per task."""
    tests = results.get("tests") or {}
    rows = [
        [
            name,
            t.get("n_pairs", "–"),
            t.get("wins", "–"),
            t.get("losses", "–"),
            fmt(t.get("mean_difference"), ".3g"),
            fmt(t.get("wilcoxon_p"), ".3g"),
        ]
        for name, t in tests.items()
    ]
    per_task = [
        [
            site,
            name,
            t.get("n", "–"),
            fmt(t.get("mean_difference"), ".3g"),
            fmt(t.get("ttest_p"), ".3g"),
        ]
        for site, block in (results.get("per_task_tests") or {}).items()
        for name, t in block.items()
    ]
    out = (
        table(["comparison", "n_pairs", "wins", "losses", "mean_difference", "wilcoxon_p"], rows)
        if rows
        else na("tests")
    )
    out += "<h3>Per task</h3>"
    return out + (
        table(["task", "comparison", "n", "mean_difference", "ttest_p"], per_task)
        if per_task
        else na("per-task tests")
    )


def _fidelity(results: dict) -> str:
    """Per task, the universal model as is against its site's last-stage model and other arms."""
    rows = {
        site: t["fidelity"] for site, t in results.get("tasks", {}).items() if t.get("fidelity")
    }
    if not rows:
        return na("distillation fidelity")
    keys = list(dict.fromkeys(k for f in rows.values() for k in f))
    return table(
        ["task", *keys],
        [
            [site, *(fmt(f.get(k), "+.3f" if "minus" in k else ".3f") for k in keys)]
            for site, f in rows.items()
        ],
    )


def _ablation(results: dict) -> str:
    """The ablation rows as a table, whatever their columns."""
    rows = (results.get("ablation") or {}).get("rows") or []
    if not rows:
        return na("ablation")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return table(
        keys,
        [
            [fmt(v) if isinstance(v, float) or v is None else v for v in map(r.get, keys)]
            for r in rows
        ],
    )


def _adapt(adapt: Any, out_dir: Path) -> str:
    """Adaptation curves when shaped like `curves` ({SITE: {ARM: {"stages", "mean"}}}), else the raw
    values."""
    shaped = isinstance(adapt, dict) and all(
        isinstance(a, dict) and all(isinstance(c, dict) and "mean" in c for c in a.values())
        for a in adapt.values()
    )
    if shaped:
        return curves_chart(
            adapt,
            out_dir,
            "adapt_curves",
            "Adaptation to an unseen site",
            "test metric",
            "fraction of the site's training labels",
            log_x=True,
        )
    return f"<h2>Adaptation</h2><pre>{html.escape(json.dumps(adapt, indent=1, default=str))}</pre>"


def _audit(audit: dict) -> str:
    """The membership audit: attack AUC per site (0.5: members cannot be told apart)."""
    privacy = privacy_text(audit.get("privacy") or {"dp": False})
    rows = [
        [site, str(e["members"]), fmt(e["loss_auc"]), fmt(e.get("reference_auc"))]
        for site, e in audit["sites"].items()
    ]
    target = audit.get("target", "released model")
    return (
        f"<h2>Membership audit</h2><p>Attacks on the {html.escape(target)}; "
        f"{html.escape(privacy)}</p>"
        + table(["site", "members (= non-members)", "loss attack AUC", "calibrated AUC"], rows)
    )


def build_report(
    out_dir: Path, results: dict, config: FederationConfig | None = None, pool: Pool | None = None
) -> Path:
    """Write out_dir/report.html (self-contained) and out_dir/figures/*.png; return the page's path.

    Args:
        out_dir: a run or experiment directory (its checkpoints give the model figures).
        results: its results.json.
        config: the federation; without it the model figures are marked not available.
        pool: the run's pool, if the caller built it already.
    """
    out_dir = Path(out_dir)
    parts = [
        _header(results, config),
        _results(results, out_dir),
        curves_chart(
            results.get("curves") or {},
            out_dir,
            "validation_curves",
            "Validation metric by stage",
            "validation metric",
        ),
    ]
    try:
        if config is None:
            raise LookupError("no configuration given")
        models = load_models(out_dir, results, config)
        samples = pool_samples(config, pool or build_pool(config))
        features = embedding_chart(embedding(models, samples), out_dir)
        masks = overlays_chart(overlays(models[1], samples, config), out_dir)
    except (LookupError, OSError, RuntimeError, MeduniverseError) as exc:
        features, masks = na("embedding", str(exc)), na("segmentation overlays", str(exc))
    parts += [
        "<h2>Encoder features of the public pool (PCA)</h2>",
        features,
        "<h2>Segmentation examples (universal model, public pool images)</h2>",
        masks,
        "<h2>Timing and bytes</h2>",
        _cost(results.get("cost") or {}, out_dir),
        "<h2>Statistical tests</h2>",
        _tests(results),
        "<h2>Distillation fidelity</h2>",
        _fidelity(results),
        "<h2>Ablation</h2>",
        _ablation(results),
    ]
    if results.get("adapt"):
        parts.append(_adapt(results["adapt"], out_dir))
    for key in ("audit", "audit_site_models"):
        if results.get(key):
            parts.append(_audit(results[key]))
    title = html.escape(str(results.get("name") or (config.name if config else "run")))
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>meduniverse report: '
        f"{title}</title>"
        f"<style>{CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
    path = out_dir / "report.html"
    write(path, page.encode("utf-8"))
    return path
