"""The model card of a run: what the universal model is, its tasks and inputs, where its knowledge
comes from (sites' names and sizes, never paths), its test metrics with their intervals, privacy,
intended use and limitations. Written as MODEL_CARD.md beside the weights; `serve` shows it."""

import html
from pathlib import Path

from meduniverse.core.config import FederationConfig
from meduniverse.core.files import atomic_write

INTENDED_USE = (
    "Research on federated learning for medical imaging: comparing methods, reproducing results, "
    "prototyping. It is not a medical device and must not inform any clinical decision."
)
LIMITATIONS = [
    "Trained and tested on small public datasets at low resolution (32 px classification, 128 px "
    "segmentation by default); results on other scanners, populations or resolutions are unknown.",
    "Each head serves only its own task and classes; an image from another modality gets an "
    "answer all the same.",
    "Test metrics come from each site's own held-out split; no external validation was done.",
]


def card_sections(results: dict, config: FederationConfig) -> list[tuple[str, object]]:
    """The card as (heading, content) pairs; content is text, a list of lines, or a table (rows,
    the first the header)."""
    sites = {s.name: s for s in config.sites}
    tasks = [["task", "type", "classes", "input"]]
    for name, entry in results["tasks"].items():
        spec = config.input_spec(entry["task"])
        tasks.append(
            [
                name,
                entry["task"],
                ", ".join(sites[name].classes),
                f"{spec.size} px, {spec.channels} channel(s)",
            ]
        )
    provenance = [["site", "training examples"]]
    metrics = [["task", "metric", "universal (as is)", "universal, fine-tuned", "baseline (MIM)"]]
    for name, entry in results["tasks"].items():
        arms = entry["arms"]
        provenance.append([name, str(_train_size(results, name))])
        metrics.append(
            [
                name,
                entry["metric"],
                *(_with_ci(arms.get(a)) for a in ("universal", "universal_finetuned", "baseline")),
            ]
        )
    seeds = results.get("seeds", [])
    m = config.method
    return [
        (
            "What it is",
            f"One encoder ({config.model.encoder}, widths {list(config.model.widths)}) "
            f"with one head per task, distilled on the server from {len(config.sites)} sites' "
            "models "
            f"over {m.stages} stage(s) ({m.variant}, local training '{m.local_training}'); "
            "federation "
            f"'{config.name}', seed(s) {seeds}, code {results.get('commit', 'unknown')}.",
        ),
        ("Tasks", tasks),
        (
            "Inputs",
            "Images are resized to the task's input size, gray replicated to RGB, scaled "
            "by 1/255, then (x - 0.5) / 0.25.",
        ),
        ("Where its knowledge comes from", provenance),
        ("Test metrics", metrics),
        ("Privacy", privacy_text(results.get("privacy", {"dp": False}))),
        ("Intended use", INTENDED_USE),
        ("Limitations", LIMITATIONS),
    ]


def privacy_text(privacy: dict) -> str:
    """The card's privacy paragraph, from results.json's "privacy" block."""
    text = (
        "Sites sent model weights and scalar metrics only; the server distilled on public pool "
        "images. "
    )
    if not privacy.get("dp"):
        return text + "No differential privacy was applied in this run (epsilon: none)."
    spent = ", ".join(f"{site} {eps:.2f}" for site, eps in privacy["epsilon"].items())
    return text + (
        f"Local training used DP-SGD (per-example clipping at {privacy['clip']}, Gaussian noise): "
        f"target epsilon {privacy['target_epsilon']} at delta = 1/n per site; spent: "
        f"{spent or 'no stage recorded'}. The server's distillation is post-processing."
    )


def _with_ci(arm: dict | None) -> str:
    if not arm:
        return "–"
    low, high = arm.get("ci95", [None, None])
    interval = f" [{low:.3f}, {high:.3f}]" if low is not None and low == low else ""
    return f"{arm['mean']:.3f}{interval}"


def _train_size(results: dict, site: str) -> int | str:
    return results.get("train_sizes", {}).get(site, "–")


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines: the header, its rule, one line per row of cells."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def card_markdown(sections: list[tuple[str, object]], title: str) -> str:
    """The card as Markdown."""
    out = [f"# Model card: {title}", ""]
    for heading, content in sections:
        out += [f"## {heading}", ""]
        if isinstance(content, str):
            out.append(content)
        elif content and isinstance(content[0], list):
            out += markdown_table(content[0], content[1:])
        else:
            out += [f"- {line}" for line in content]
        out.append("")
    return "\n".join(out)


def card_html(sections: list[tuple[str, object]], title: str) -> str:
    """The card as an HTML fragment (every text escaped)."""
    out = [f"<h1>Model card: {html.escape(title)}</h1>"]
    for heading, content in sections:
        out.append(f"<h2>{html.escape(heading)}</h2>")
        if isinstance(content, str):
            out.append(f"<p>{html.escape(content)}</p>")
        elif content and isinstance(content[0], list):
            head = "".join(f"<th>{html.escape(h)}</th>" for h in content[0])
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                for row in content[1:]
            )
            out.append(f"<table><tr>{head}</tr>{rows}</table>")
        else:
            out.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in content) + "</ul>")
    return "\n".join(out)


def write_model_card(model_dir: Path, results: dict, config: FederationConfig) -> Path:
    """MODEL_DIR/MODEL_CARD.md from a run's results."""
    path = Path(model_dir) / "MODEL_CARD.md"
    text = card_markdown(card_sections(results, config), config.name)
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path


def card_page(model_dir: Path, card: dict) -> str:
    """The model card of a saved model as HTML: from its run's results when they are beside it, else
    what its card.json says."""
    from meduniverse.core.config_file import config_from_dict
    from meduniverse.core.files import read_json

    results_path = Path(model_dir).parent / "results.json"
    if results_path.is_file():
        results = read_json(results_path)
        if "config" in results:
            config = config_from_dict(results["config"], str(results_path))
            return card_html(card_sections(results, config), config.name)
    tasks = [["task", "type", "classes"]] + [
        [t["name"], t["type"], ", ".join(t["classes"])] for t in card["tasks"]
    ]
    return card_html(
        [("Tasks", tasks), ("Intended use", INTENDED_USE), ("Limitations", LIMITATIONS)],
        str(card.get("federation", "model")),
    )
