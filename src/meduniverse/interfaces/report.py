"""One self-contained HTML page of a run's results (tables, embedded PNG figures, tests), figures also as PNG files."""

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend
from matplotlib.colors import ListedColormap  # noqa: E402
import numpy as np  # noqa: E402

from meduniverse.core.arms import arm_order  # noqa: E402
from meduniverse.core.config import FederationConfig  # noqa: E402
from meduniverse.core.errors import MeduniverseError  # noqa: E402
from meduniverse.core.files import atomic_write  # noqa: E402
from meduniverse.results.figures import (OVERLAYS_PER_SITE, Embedding, Overlay, embedding, load_models,  # noqa: E402
                                         overlays, pool_samples)
from meduniverse.sites.pool import Pool, build_pool  # noqa: E402
OVERLAY = ListedColormap(["#00c8ff"])  # predicted foreground, one flat colour
CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;white-space:nowrap}th{background:#f2f2f2}
img{max-width:100%;height:auto}.na{color:#888;font-style:italic}dt{font-weight:bold}dd{margin:0 0 .3em 1em}"""


def _num(value: Any) -> float:
    """A float, NaN for None or anything that is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _fmt(value: Any, spec: str = ".3f") -> str:
    """A number formatted, or an en dash when missing or NaN."""
    x = _num(value)
    return "–" if math.isnan(x) else format(x, spec)


def _mean_ci(entry: dict) -> str:
    """'0.912 [0.901, 0.925]', or the mean alone without a confidence interval."""
    ci = entry.get("ci95") or [None, None]
    if any(math.isnan(_num(c)) for c in ci):
        return _fmt(entry.get("mean"))
    return f"{_fmt(entry.get('mean'))} [{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _table(header: list[str], rows: list[list[Any]], bold: set[tuple[int, int]] = frozenset()) -> str:
    """An HTML table, every cell escaped, cells (row, column) in `bold` in bold."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(
        f"<td>{'<b>' if (i, j) in bold else ''}{html.escape(str(c))}{'</b>' if (i, j) in bold else ''}</td>"
        for j, c in enumerate(row)) + "</tr>" for i, row in enumerate(rows))
    return f"<table><tr>{head}</tr>{body}</table>"


def _na(what: str, why: str = "") -> str:
    """A grey line saying that something is not available (and why)."""
    return f'<p class="na">{html.escape(what)}: not available{html.escape(f" ({why})" if why else "")}.</p>'


def _write(path: Path, data: bytes) -> None:
    """Write a file atomically, readable by all (it is meant to be published)."""
    atomic_write(path, lambda tmp: (tmp.write_bytes(data), tmp.chmod(0o644)))


def _figure(fig: plt.Figure, name: str, out_dir: Path) -> str:
    """Save a figure as figures/NAME.png and return it as an <img> with a data: URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    data = buf.getvalue()
    _write(out_dir / "figures" / f"{name}.png", data)
    return f'<img alt="{html.escape(name)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _grid(n: int, width: float = 4.0, height: float = 3.2) -> tuple[plt.Figure, list[plt.Axes]]:
    """A figure with n subplots, at most four a row."""
    cols = min(4, max(n, 1))
    rows = math.ceil(max(n, 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, layout="constrained")
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


def _header(results: dict, config: FederationConfig | None) -> str:
    """Title and what the run was: configuration, commit, seeds, machine, command."""
    name = results.get("name") or (config.name if config else "run")
    machine = results.get("machine") or {}
    machine_text = ", ".join(f"{k}={v}" for k, v in machine.items()) if isinstance(machine, dict) else str(machine)
    items = {"config": name, "commit": results.get("commit", "unknown"),
             "seeds": ", ".join(str(s) for s in results.get("seeds", [])), "machine": machine_text or "unknown",
             "command": results.get("command", "unknown")}
    dl = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in items.items())
    return f"<h1>meduniverse report: {html.escape(str(name))}</h1><dl>{dl}</dl>"


def _results(results: dict, out_dir: Path) -> str:
    """Per task, every arm's mean [95% CI] (best in bold), and a bar chart per task."""
    tasks = results.get("tasks") or {}
    if not tasks:
        return "<h2>Test results per task</h2>" + _na("per-task results")
    arms = arm_order(dict.fromkeys(a for t in tasks.values() for a in t.get("arms", {})))
    rows, bold = [], set()
    for i, (site, t) in enumerate(tasks.items()):
        entries = t.get("arms", {})
        means = {a: _num(e.get("mean")) for a, e in entries.items() if not math.isnan(_num(e.get("mean")))}
        best = max(means, key=means.get) if means else None
        rows.append([site, t.get("task", ""), t.get("metric", "")] + [_mean_ci(entries[a]) if a in entries else "–" for a in arms])
        bold |= {(i, 3 + arms.index(best))} if best else set()
    fig, axes = _grid(len(tasks))
    for ax, (site, t) in zip(axes, tasks.items(), strict=True):
        names = arm_order(t.get("arms", {}))
        means = np.array([_num(t["arms"][a].get("mean")) for a in names])
        cis = [t["arms"][a].get("ci95") or [None, None] for a in names]
        err = np.array([[m - _num(c[0]), _num(c[1]) - m] for m, c in zip(means, cis, strict=True)]).T.reshape(2, -1)
        ax.bar(range(len(names)), np.nan_to_num(means), yerr=np.clip(np.nan_to_num(err), 0, None), capsize=3, color="#4c72b0")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(site, fontsize=9)
        ax.set_ylabel(t.get("metric", ""))
    return ("<h2>Test results per task</h2><p>Mean and 95% CI of the primary test metric over seeds; best arm in bold.</p>"
            + _table(["task", "type", "metric"] + arms, rows, bold) + _figure(fig, "test_metric_by_arm", out_dir))


def _curves(curves: dict, out_dir: Path, name: str, title: str, ylabel: str, xlabel: str = "stage",
            log_x: bool = False) -> str:
    """One subplot per task, one line per arm: the mean against the stage (or the label fraction)."""
    if not curves:
        return f"<h2>{html.escape(title)}</h2>" + _na(title)
    fig, axes = _grid(len(curves))
    for ax, (site, by_arm) in zip(axes, curves.items(), strict=True):
        for arm in arm_order(by_arm):
            mean = [_num(v) for v in by_arm[arm].get("mean", [])]
            ax.plot(by_arm[arm].get("stages", range(1, len(mean) + 1)), mean, marker="o", label=arm)
        ax.set_title(site, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if log_x:
            ax.set_xscale("log")
        ax.legend(fontsize=7)
    return f"<h2>{html.escape(title)}</h2>" + _figure(fig, name, out_dir)


def _embedding(data: Embedding, out_dir: Path) -> str:
    """PCA of the pool's encoder features, coloured by site: baseline encoder beside the universal one."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, (title, coords) in zip(axes, data.coords.items(), strict=True):
        for i, label in enumerate(dict.fromkeys(data.labels)):
            ax.scatter(*coords[data.labels == label].T, s=10, color=plt.cm.tab10(i % 10), label=label)
        ax.set_title(title)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
    axes[1].legend(fontsize=7, loc="best")
    return _figure(fig, "embedding_pca", out_dir)


def _overlays(rows: list[Overlay], out_dir: Path) -> str:
    """A few public images of each segmentation site with the universal model's predicted foreground."""
    if not rows:
        return _na("segmentation overlays", "no segmentation site lends images to the public pool")
    fig, axes = plt.subplots(len(rows), OVERLAYS_PER_SITE, figsize=(3 * OVERLAYS_PER_SITE, 3 * len(rows)), squeeze=False)
    for axes_row, row in zip(axes, rows, strict=True):
        for ax, img, mask in zip(axes_row, row.images, row.masks, strict=False):
            ax.imshow(img.transpose(1, 2, 0) if img.shape[0] == 3 else img[0], cmap="gray")
            ax.imshow(np.ma.masked_where(~mask, mask), cmap=OVERLAY, alpha=0.5, vmin=0, vmax=1)
            ax.set_title(row.site, fontsize=8)
        for ax in axes_row:
            ax.axis("off")
    return _figure(fig, "segmentation_overlays", out_dir)


def _cost(cost: dict, out_dir: Path) -> str:
    """Seconds and megabytes moved per arm: a table and a bar chart."""
    if not cost:
        return _na("timing and bytes")
    rows, arms = [], arm_order(cost)
    for arm in arms:
        stages = (cost[arm].get("stages") or {}).values()
        to = sum(sum((s.get("bytes_to_sites") or {}).values()) for s in stages) / 1e6
        back = sum(sum((s.get("bytes_from_sites") or {}).values()) for s in stages) / 1e6
        rows.append([arm, _fmt(cost[arm].get("seconds"), ".1f"), len(stages), f"{to:.2f}", f"{back:.2f}"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    left.bar(arms, [np.nan_to_num(_num(cost[a].get("seconds"))) for a in arms], color="#55a868")
    left.set_ylabel("seconds")
    right.bar(arms, [float(r[3]) + float(r[4]) for r in rows], color="#c44e52")
    right.set_ylabel("MB to + from sites")
    for ax in (left, right):
        plt.setp(ax.get_xticklabels(), rotation=45, ha="right", fontsize=8)
    return (_table(["arm", "seconds", "stages", "MB to sites", "MB from sites"], rows)
            + _figure(fig, "cost_by_arm", out_dir))


def _tests(results: dict) -> str:
    """The paired tests over all tasks, then per task."""
    tests = results.get("tests") or {}
    rows = [[name, t.get("n_pairs", "–"), t.get("wins", "–"), t.get("losses", "–"), _fmt(t.get("mean_difference"), ".3g"),
             _fmt(t.get("wilcoxon_p"), ".3g")] for name, t in tests.items()]
    per_task = [[site, name, t.get("n", "–"), _fmt(t.get("mean_difference"), ".3g"), _fmt(t.get("ttest_p"), ".3g")]
                for site, block in (results.get("per_task_tests") or {}).items() for name, t in block.items()]
    out = _table(["comparison", "n_pairs", "wins", "losses", "mean_difference", "wilcoxon_p"], rows) if rows else _na("tests")
    out += "<h3>Per task</h3>"
    return out + (_table(["task", "comparison", "n", "mean_difference", "ttest_p"], per_task) if per_task else _na("per-task tests"))


def _fidelity(results: dict) -> str:
    """Per task, the universal model as is against its site's last-stage model and the other arms."""
    rows = {site: t["fidelity"] for site, t in results.get("tasks", {}).items() if t.get("fidelity")}
    if not rows:
        return _na("distillation fidelity")
    keys = list(dict.fromkeys(k for f in rows.values() for k in f))
    return _table(["task", *keys], [[site, *(_fmt(f.get(k), "+.3f" if "minus" in k else ".3f") for k in keys)]
                                    for site, f in rows.items()])


def _ablation(results: dict) -> str:
    """The ablation rows as a table, whatever their columns."""
    rows = (results.get("ablation") or {}).get("rows") or []
    if not rows:
        return _na("ablation")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return _table(keys, [[_fmt(v) if isinstance(v, float) or v is None else v for v in map(r.get, keys)] for r in rows])


def _adapt(adapt: Any, out_dir: Path) -> str:
    """Adaptation curves when shaped like `curves` ({SITE: {ARM: {"stages", "mean"}}}), else the raw values."""
    shaped = isinstance(adapt, dict) and all(isinstance(a, dict) and all(isinstance(c, dict) and "mean" in c
                                                                         for c in a.values()) for a in adapt.values())
    if shaped:
        return _curves(adapt, out_dir, "adapt_curves", "Adaptation to an unseen site", "test metric",
                       "fraction of the site's training labels", log_x=True)
    return f"<h2>Adaptation</h2><pre>{html.escape(json.dumps(adapt, indent=1, default=str))}</pre>"


def build_report(out_dir: Path, results: dict, config: FederationConfig | None = None, pool: Pool | None = None) -> Path:
    """Write out_dir/report.html (self-contained) and out_dir/figures/*.png; return the page's path.

    Args:
        out_dir: a run or experiment directory (its checkpoints give the model figures).
        results: its results.json.
        config: the federation; without it the model figures are marked not available.
        pool: the run's pool, if the caller built it already.
    """
    out_dir = Path(out_dir)
    parts = [_header(results, config), _results(results, out_dir),
             _curves(results.get("curves") or {}, out_dir, "validation_curves", "Validation metric by stage", "validation metric")]
    try:
        if config is None:
            raise LookupError("no configuration given")
        models = load_models(out_dir, results, config)
        samples = pool_samples(config, pool or build_pool(config))
        features = _embedding(embedding(models, samples), out_dir)
        masks = _overlays(overlays(models[1], samples, config), out_dir)
    except (LookupError, OSError, RuntimeError, MeduniverseError) as exc:
        features, masks = _na("embedding", str(exc)), _na("segmentation overlays", str(exc))
    parts += ["<h2>Encoder features of the public pool (PCA)</h2>", features,
              "<h2>Segmentation examples (universal model, public pool images)</h2>", masks,
              "<h2>Timing and bytes</h2>", _cost(results.get("cost") or {}, out_dir),
              "<h2>Statistical tests</h2>", _tests(results),
              "<h2>Distillation fidelity</h2>", _fidelity(results), "<h2>Ablation</h2>", _ablation(results)]
    if results.get("adapt"):
        parts.append(_adapt(results["adapt"], out_dir))
    title = html.escape(str(results.get("name") or (config.name if config else "run")))
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>meduniverse report: {title}</title>'
            f"<style>{CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    path = out_dir / "report.html"
    _write(path, page.encode("utf-8"))
    return path
