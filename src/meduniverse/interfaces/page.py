"""Building blocks of self-contained HTML pages: number formatting, escaped tables, notes, and
matplotlib figures embedded as PNG data URIs (also saved as files)."""

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt

from meduniverse.core.files import atomic_write

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;white-space:nowrap}
th{background:#f2f2f2}
img{max-width:100%;height:auto}
.na{color:#888;font-style:italic}
dt{font-weight:bold}
dd{margin:0 0 .3em 1em}"""


def num(value: Any) -> float:
    """A float, NaN for None or anything that is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def fmt(value: Any, spec: str = ".3f") -> str:
    """A number formatted, or an en dash when missing or NaN."""
    x = num(value)
    return "–" if math.isnan(x) else format(x, spec)


def mean_ci(entry: dict) -> str:
    """'0.912 [0.901, 0.925]', or the mean alone without a confidence interval."""
    ci = entry.get("ci95") or [None, None]
    if any(math.isnan(num(c)) for c in ci):
        return fmt(entry.get("mean"))
    return f"{fmt(entry.get('mean'))} [{fmt(ci[0])}, {fmt(ci[1])}]"


def table(
    header: list[str], rows: list[list[Any]], bold: set[tuple[int, int]] = frozenset()
) -> str:
    """An HTML table, every cell escaped, cells (row, column) in `bold` in bold."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)

    def cell(i: int, j: int, value: Any) -> str:
        text = html.escape(str(value))
        return f"<td><b>{text}</b></td>" if (i, j) in bold else f"<td>{text}</td>"

    body = "".join(
        "<tr>" + "".join(cell(i, j, c) for j, c in enumerate(row)) + "</tr>"
        for i, row in enumerate(rows)
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def na(what: str, why: str = "") -> str:
    """A grey line saying that something is not available (and why)."""
    reason = html.escape(f" ({why})" if why else "")
    return f'<p class="na">{html.escape(what)}: not available{reason}.</p>'


def write(path: Path, data: bytes) -> None:
    """Write a file atomically, readable by all (it is meant to be published)."""
    atomic_write(path, lambda tmp: (tmp.write_bytes(data), tmp.chmod(0o644)))


def figure(fig: plt.Figure, name: str, out_dir: Path) -> str:
    """Save a figure as figures/NAME.png and return it as an <img> with a data: URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    data = buf.getvalue()
    write(out_dir / "figures" / f"{name}.png", data)
    uri = f"data:image/png;base64,{base64.b64encode(data).decode()}"
    return f'<img alt="{html.escape(name)}" src="{uri}">'


def grid(n: int, width: float = 4.0, height: float = 3.2) -> tuple[plt.Figure, list[plt.Axes]]:
    """A figure with n subplots, at most four a row."""
    cols = min(4, max(n, 1))
    rows = math.ceil(max(n, 1) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(width * cols, height * rows), squeeze=False, layout="constrained"
    )
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]
