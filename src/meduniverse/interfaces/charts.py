"""The report's charts: matplotlib figures returned as embedded <img> tags (also saved as PNGs)."""

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
from matplotlib.colors import ListedColormap
import matplotlib.pyplot as plt
import numpy as np

from meduniverse.core.arms import arm_order
from meduniverse.interfaces.page import figure, grid, na, num
from meduniverse.results.figures import OVERLAYS_PER_SITE, Embedding, Overlay

OVERLAY = ListedColormap(["#00c8ff"])  # predicted foreground, one flat colour


def bars_by_task(tasks: dict, out_dir: Path) -> str:
    """One bar chart per task: every arm's mean with its 95% CI."""
    fig, axes = grid(len(tasks))
    for ax, (site, t) in zip(axes, tasks.items(), strict=True):
        names = arm_order(t.get("arms", {}))
        means = np.array([num(t["arms"][a].get("mean")) for a in names])
        cis = [t["arms"][a].get("ci95") or [None, None] for a in names]
        err = np.array(
            [[m - num(c[0]), num(c[1]) - m] for m, c in zip(means, cis, strict=True)]
        ).T.reshape(2, -1)
        ax.bar(
            range(len(names)),
            np.nan_to_num(means),
            yerr=np.clip(np.nan_to_num(err), 0, None),
            capsize=3,
            color="#4c72b0",
        )
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(site, fontsize=9)
        ax.set_ylabel(t.get("metric", ""))
    return figure(fig, "test_metric_by_arm", out_dir)


def cost_bars(cost: dict, arms: list[str], megabytes: list[float], out_dir: Path) -> str:
    """Seconds and megabytes moved per arm, side by side.

    Args:
        cost: results.json's `cost` block.
        arms: the arms, in order.
        megabytes: per arm, megabytes to and from the sites.
        out_dir: where figures/cost_by_arm.png goes.
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    left.bar(arms, [np.nan_to_num(num(cost[a].get("seconds"))) for a in arms], color="#55a868")
    left.set_ylabel("seconds")
    right.bar(arms, megabytes, color="#c44e52")
    right.set_ylabel("MB to + from sites")
    for ax in (left, right):
        plt.setp(ax.get_xticklabels(), rotation=45, ha="right", fontsize=8)
    return figure(fig, "cost_by_arm", out_dir)


def curves_chart(
    curves: dict,
    out_dir: Path,
    name: str,
    title: str,
    ylabel: str,
    xlabel: str = "stage",
    log_x: bool = False,
) -> str:
    """One subplot per task, one line per arm: the mean against the stage (or label fraction).

    Args:
        curves: {TASK: {ARM: {'stages', 'mean'}}}.
        out_dir: where figures/NAME.png goes.
        name: the figure's file name.
        title, ylabel, xlabel: the section title and axis labels.
        log_x: a logarithmic x axis (label fractions).
    """
    if not curves:
        return f"<h2>{html.escape(title)}</h2>" + na(title)
    fig, axes = grid(len(curves))
    for ax, (site, by_arm) in zip(axes, curves.items(), strict=True):
        for arm in arm_order(by_arm):
            mean = [num(v) for v in by_arm[arm].get("mean", [])]
            ax.plot(by_arm[arm].get("stages", range(1, len(mean) + 1)), mean, marker="o", label=arm)
        ax.set_title(site, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if log_x:
            ax.set_xscale("log")
        ax.legend(fontsize=7)
    return f"<h2>{html.escape(title)}</h2>" + figure(fig, name, out_dir)


def embedding_chart(data: Embedding, out_dir: Path) -> str:
    """PCA of the pool's encoder features, coloured by site: baseline encoder beside the universal
    one."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, (title, coords) in zip(axes, data.coords.items(), strict=True):
        for i, label in enumerate(dict.fromkeys(data.labels)):
            ax.scatter(
                *coords[data.labels == label].T, s=10, color=plt.cm.tab10(i % 10), label=label
            )
        ax.set_title(title)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
    axes[1].legend(fontsize=7, loc="best")
    return figure(fig, "embedding_pca", out_dir)


def overlays_chart(rows: list[Overlay], out_dir: Path) -> str:
    """A few public images of each segmentation site with the universal model's predicted
    foreground."""
    if not rows:
        return na("segmentation overlays", "no segmentation site lends images to the public pool")
    fig, axes = plt.subplots(
        len(rows), OVERLAYS_PER_SITE, figsize=(3 * OVERLAYS_PER_SITE, 3 * len(rows)), squeeze=False
    )
    for axes_row, row in zip(axes, rows, strict=True):
        for ax, img, mask in zip(axes_row, row.images, row.masks, strict=False):
            ax.imshow(img.transpose(1, 2, 0) if img.shape[0] == 3 else img[0], cmap="gray")
            ax.imshow(np.ma.masked_where(~mask, mask), cmap=OVERLAY, alpha=0.5, vmin=0, vmax=1)
            ax.set_title(row.site, fontsize=8)
        for ax in axes_row:
            ax.axis("off")
    return figure(fig, "segmentation_overlays", out_dir)
