"""The README's competitor section (issue 14), generated from bench/results/competitors.json: every
arm's test metric per task, and one plain statement per competitor of where the universal model
stands against it."""

import re
from statistics import mean

from meduniverse.results.model_card import markdown_table

LEVEL = 0.005  # a mean difference smaller than this is called level
# (ours, competitor): the comparisons the README states, each between arms of the same kind
STATEMENTS = (
    ("universal_finetuned", "fedavg_finetuned"),
    ("universal_finetuned", "fedprox_finetuned"),
    ("universal_finetuned", "fedbn_finetuned"),
    ("universal", "ditto"),
    ("universal", "fedrep"),
    ("universal", "fedavg"),
    ("universal_finetuned", "centralized_finetuned"),
)
ROWS = (
    "baseline",
    "universal",
    "universal_finetuned",
    "fedavg",
    "fedavg_finetuned",
    "fedprox",
    "fedprox_finetuned",
    "fedbn",
    "fedbn_finetuned",
    "ditto",
    "fedrep",
    "centralized",
    "centralized_finetuned",
)


def _pairs(doc: dict, ours: str, other: str) -> list[tuple[float, float]]:
    """(ours, other) test values over every (task, seed) pair."""
    out = []
    for task in doc["tasks"].values():
        arms = task["arms"]
        if ours in arms and other in arms:
            out += list(zip(arms[ours]["per_seed"], arms[other]["per_seed"], strict=True))
    return out


def statement(doc: dict, ours: str, other: str) -> str | None:
    """One sentence: mean difference, wins and losses over (task, seed) pairs, and the Wilcoxon
    p-value when the experiment computed it."""
    pairs = _pairs(doc, ours, other)
    if not pairs:
        return None
    diff = mean(a - b for a, b in pairs)
    wins, losses = sum(a > b for a, b in pairs), sum(a < b for a, b in pairs)
    test = doc.get("tests", {}).get(f"{ours}_vs_{other}")
    where = "level with" if abs(diff) < LEVEL else "ahead of" if diff > 0 else "behind"
    if test:
        p = test["wilcoxon_p"]
        significance = f"Wilcoxon p = {p:.2g}, {'' if p < 0.05 else 'not '}significant at 0.05"
    else:
        significance = "no paired test in the experiment"
    return (
        f"- `{ours}` is **{where}** `{other}` on the mean ({diff:+.3f}; {wins} wins and "
        f"{losses} losses over {len(pairs)} (task, seed) pairs; {significance})."
    )


def arm_rows(tasks: dict) -> list[list[str]]:
    """Each arm that every task has: its test mean per task, then its val and test means."""
    rows = []
    for arm in (a for a in ROWS if all(a in t["arms"] for t in tasks.values())):
        test = [t["arms"][arm]["mean"] for t in tasks.values()]
        val = [t["arms"][arm]["val"]["mean"] for t in tasks.values()]
        rows.append([arm, *(f"{v:.3f}" for v in test), f"{mean(val):.3f}", f"{mean(test):.3f}"])
    return rows


def competitor_lines(doc: dict) -> list[str]:
    tasks = doc["tasks"]
    command = re.sub(r"--out \S+", "--out DIR", doc["command"])
    lines = [
        f"`configs/shared8.toml`, {len(doc['seeds'])} seed(s) {doc['seeds']}, test split, mean "
        f"over seeds (AUC for classification, Dice for segmentation). From "
        f"`bench/results/competitors.json`: `{command}` at commit `{doc['commit'][:12]}`; each "
        "seed took "
        + ", ".join(f"{v / 60:.0f}" for v in doc["seed_seconds"].values())
        + f" minutes on {doc['machine']['cpus']} CPU cores. Every federated arm has the same "
        "stages, local training and encoder; every fine-tune the same early-stopped schedule.",
        "",
        *markdown_table(["arm", *tasks, "mean (val)", "mean (test)"], arm_rows(tasks)),
    ]
    said = [s for s in (statement(doc, a, b) for a, b in STATEMENTS) if s]
    return [
        *lines,
        "",
        "Where the universal model stands (from the same JSON; Ditto's sites run two local updates "
        "a stage, the global and the personal one, so it gets twice the local computation; every "
        "arm's budget is in the JSON's `arms`):",
        "",
        *said,
    ]
