"""Regenerate the README's results section from bench/results/*.json (never type numbers by hand).

python bench/readme_results.py
"""

import json
from pathlib import Path
import re

from meduniverse.results.model_card import markdown_table
from readme_claims import (
    distill_screen_lines,
    dp_screen_lines,
    dp_sites_lines,
    extend_lines,
    fidelity_by_task,
    privacy_lines,
    row_without_dp,
    screening_table,
    screening_unseen,
    speed_lines,
    targets_line,
    transfer_lines,
)
from readme_competitors import competitor_lines

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
START, END = "<!-- results:start -->", "<!-- results:end -->"
OUT_PATH = r"--out \S+"  # a machine's own path in a recorded command
ARMS = ("baseline", "universal", "universal_finetuned")


def load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def mean_of(doc: dict, arm: str, split: str = "test") -> float:
    values = [t["arms"][arm]["val" if split == "val" else "mean"] for t in doc["tasks"].values()]
    values = [v["mean"] if isinstance(v, dict) else v for v in values]
    return sum(values) / len(values)


def task_table(doc: dict) -> list[str]:
    rows = []
    for site, t in doc["tasks"].items():
        m = {a: t["arms"][a]["mean"] for a in ARMS}
        gain = m["universal_finetuned"] - m["baseline"]
        rows.append([site, t["task"], t["metric"], *(f"{m[a]:.3f}" for a in ARMS), f"{gain:+.3f}"])
    total = {a: mean_of(doc, a) for a in ARMS}
    means = " | ".join(f"{total[a]:.3f}" for a in ARMS)
    gain = total["universal_finetuned"] - total["baseline"]
    # written by hand: its empty cells are "| |", which markdown_table writes as "|  |"
    mean_row = f"| **mean** | | | {means} | {gain:+.3f} |"
    header = ["site", "task", "metric", *ARMS, "finetuned - baseline"]
    return [*markdown_table(header, rows), mean_row]


def variant_table(docs: dict[str, dict]) -> list[str]:
    columns = [(split, arm) for split in ("val", "test") for arm in ARMS[1:]]
    rows = [
        [
            f"`{name}`",
            *(f"{mean_of(doc, arm, split):.3f}" for split, arm in columns),
            f"{doc['total_seconds'] / 60:.1f} min",
        ]
        for name, doc in docs.items()
    ]
    return markdown_table(["variant", *(f"{s}: {a}" for s, a in columns), "run time"], rows)


def throughput_table(doc: dict) -> list[str]:
    runs, rows = doc["rows"], []
    for r in (one for one in runs if one["threads"] == 1):
        two = next(
            x
            for x in runs
            if x["threads"] == 2 and x["widths"] == r["widths"] and x["head"] == r["head"]
        )
        cells = [
            f"{x['train_images_per_second']:.0f} ({x['inference_images_per_second']:.0f})"
            for x in (r, two)
        ]
        widths = "-".join(map(str, r["widths"]))
        params = f"{r['encoder_parameters'] / 1e6:.2f}M"
        rows.append([widths, params, r["head"], f"{r['size']} px", *cells])
    header = ["widths", "encoder parameters", "head", "input", "1 thread", "2 threads"]
    return markdown_table(header, rows)


COMPETITORS = (
    "fedavg",
    "fedprox",
    "fedbn",
)  # `local` is the baseline's own computation (see the arms table)


def cell(arm: dict | None) -> str:
    return f"{arm['mean']:.3f} [{arm['ci95'][0]:.3f}, {arm['ci95'][1]:.3f}]" if arm else "-"


def p_value(test: dict | None) -> str:
    return "-" if not test or test.get("ttest_p") is None else f"{test['ttest_p']:.3g}"


def headline_table(doc: dict) -> list[str]:
    """Per task: baseline, universal, universal_finetuned, best competitor, centralised, paired
    p-values."""
    rows = []
    for site, t in doc["tasks"].items():
        arms, tests = t["arms"], doc["per_task_tests"].get(site, {})
        best = max((a for a in COMPETITORS if a in arms), key=lambda a: arms[a]["mean"])
        rows.append(
            [
                site,
                t["metric"],
                *(cell(arms.get(a)) for a in ARMS),
                f"{best}: {cell(arms[best])}",
                cell(arms.get("centralized")),
                *(p_value(tests.get(f"{a}_vs_baseline")) for a in ARMS[1:]),
            ]
        )
    header = ["site", "metric", "baseline (= local)", *ARMS[1:], "best federated competitor"]
    header += ["centralized", *(f"p ({a} vs baseline)" for a in ARMS[1:])]
    lines = markdown_table(header, rows)
    names = [
        a
        for a in ("baseline", "universal", "universal_finetuned", *COMPETITORS, "centralized")
        if all(a in t["arms"] for t in doc["tasks"].values())
    ]
    lines += [
        "",
        "Mean over the tasks: " + ", ".join(f"{a} {mean_of(doc, a):.3f}" for a in names) + ".",
    ]
    for ours in ("universal", "universal_finetuned"):
        behind = [
            site
            for site, t in doc["tasks"].items()
            if t["arms"][ours]["mean"] < t["arms"]["baseline"]["mean"]
        ]
        lines.append(
            f"`{ours}` is behind the baseline on {len(behind)} of {len(doc['tasks'])} tasks"
            + (f": {', '.join(behind)}." if behind else ".")
        )
    return lines


def tests_table(doc: dict) -> list[str]:
    header = ["comparison", "pairs (task, seed)", "wins", "losses", "mean difference"]
    rows = [
        [
            name,
            str(t["n_pairs"]),
            str(t["wins"]),
            str(t["losses"]),
            f"{t['mean_difference']:+.4f}",
            f"{t['wilcoxon_p']:.3g}",
        ]
        for name, t in doc["tests"].items()
    ]
    return markdown_table([*header, "Wilcoxon p"], rows)


def probe_table(doc: dict) -> list[str]:
    probes = [a for a in next(iter(doc["tasks"].values()))["arms"] if a.endswith("_probe")]
    rows = [[site, *(cell(t["arms"][a]) for a in probes)] for site, t in doc["tasks"].items()]
    rows.append(["**mean**", *(f"{mean_of(doc, a):.3f}" for a in probes)])
    return markdown_table(["site", *probes], rows)


def fidelity_table(doc: dict) -> list[str]:
    others = ("teacher", "baseline", "universal_finetuned", "centralized")
    rows = []
    for site, t in doc["tasks"].items():
        f = {"universal_minus_centralized": float("nan"), **t["fidelity"]}
        gaps = [f"{f[f'universal_minus_{o}']:+.3f}" for o in others]
        rows.append([site, f"{f['teacher_test']:.3f}", *gaps])
    header = ["site", "last-stage site teacher", *(f"universal - {o}" for o in others)]
    return markdown_table(header, rows)


def adapt_table(doc: dict) -> list[str]:
    """Per unseen site: each encoder's probe and fine-tune at every label fraction."""
    lines: list[str] = []
    columns = [f"{e}_{m}" for e in ("baseline", "universal") for m in ("probe", "finetune")]
    for site, entry in doc.get("adapt_results", {}).items():
        arms = entry["arms"]
        fractions = sorted({a.split("@")[1] for a in arms}, key=float)
        origin = (
            "a run of the same configuration that left it out"
            if entry.get("left_out")
            else "the encoders of the first seed's run"
        )
        seconds = entry.get("seconds") or 0
        minutes = f", {seconds / 60:.0f} min" if seconds > 120 else f", {seconds:.0f} s"
        minutes = minutes if seconds else ""
        file = entry.get("file", f"bench/results/adapt_{site.split('_')[0]}.json")
        rows = [[f"{float(f):.0%}", *(cell(arms[f"{c}@{f}"]) for c in columns)] for f in fractions]
        lines += [
            *([""] if lines else []),
            f"Unseen site `{site}`, adapted from {origin} (test {entry['metric']}, "
            f"{len(entry['seeds'])} seeds of label subsets and training, mean [95% CI]; "
            f"`{file}`, commit `{entry['commit'][:12]}`{minutes}):",
            "",
            *markdown_table(["labels", *columns], rows),
        ]
    return lines


def confirm_lines(doc: dict) -> list[str]:
    """The defaults' confirmation, seed by seed (bench/confirm.py): the targets, each task's arms,
    the last-stage teacher and the paired tests."""
    runs = ", ".join(
        f"seed {r['seed']} at `{r['commit'][:7]}` ({r['run_seconds'] / 60:.0f} min)"
        for r in doc["runs"]
    )
    lines = [
        f"**Today's defaults, confirmed seed by seed** ({len(doc['seeds'])} of 3 seeds so far; "
        f"`bench/results/confirm_defaults.json`: `{doc['command']}`; {runs} on "
        f"{doc['machine']['cpus']} CPU cores; test split, mean [95% bootstrap CI over seeds]):",
        "",
        targets_line(doc, load("competitors.json")),
        "",
    ]
    rows = [
        [
            site,
            t["metric"],
            *(cell(t["arms"][a]) for a in ARMS),
            f"{t['fidelity']['teacher_test']:.3f}",
            f"{t['fidelity']['universal_minus_teacher']:+.3f}",
        ]
        for site, t in doc["tasks"].items()
    ]
    header = ["site", "metric", *ARMS, "last-stage teacher", "universal - teacher"]
    lines += markdown_table(header, rows)
    means = ", ".join(f"{a} {mean_of(doc, a):.3f}" for a in ARMS)
    lines += ["", f"Mean over the tasks: {means}.", "", *tests_table(doc)]
    return lines + (["", *adapt_table(doc)] if doc.get("adapt_results") else [])


def section() -> str:
    lines = []
    confirm = load("confirm_defaults.json")
    if confirm is not None:
        lines += [*confirm_lines(confirm), ""]
    exp = load("shared8.json")
    if exp is not None:
        lines += [
            targets_line(exp, load("competitors.json")),
            "",
            f"`configs/shared8.toml`, {len(exp['seeds'])} seeds {exp['seeds']}, test split of each "
            "site (AUC for "
            "classification, Dice for segmentation), mean [95% bootstrap CI over seeds]. From "
            "`bench/results/shared8.json`: "
            f"`{re.sub(OUT_PATH, '--out DIR', exp['command'])}` at commit `{exp['commit'][:12]}`"
            + (
                f" (seeds trained and evaluated at commit `{exp['computed_at_commit'][:12]}`)"
                if exp.get("computed_at_commit")
                else ""
            )
            + "; each seed took "
            + ", ".join(f"{v / 60:.0f}" for v in exp["seed_seconds"].values())
            + f" minutes on {exp['machine']['cpus']} CPU cores. p: paired t-test over seeds for "
            "that task.",
            "",
            *headline_table(exp),
            "",
            "Paired tests over every (task, seed) pair (SciPy's Wilcoxon signed-rank):",
            "",
            *tests_table(exp),
            "",
            "Frozen encoders (each task's head trained alone, same schedule):",
            "",
            *probe_table(exp),
            "",
            "The universal model as is, against the site's own last-stage model (distillation "
            "fidelity) and "
            "the other arms (differences of means):",
            "",
            *fidelity_table(exp),
        ]
        if exp.get("adapt_results"):
            lines += ["", *adapt_table(exp)]
    main = load("end_to_end.json")
    if main is not None:
        variant = main["config"]["method"]["variant"]
        lines += [
            "",
            f"Issue 2's single-seed run (`configs/shared8.toml`, seed {main['seeds'][0]}, variant "
            f"`{variant}`; "
            f"`bench/results/end_to_end.json`: `{main['command']}` at commit "
            f"`{main['commit'][:12]}`, "
            f"{main['total_seconds'] / 60:.1f} minutes):",
            "",
            *task_table(main),
        ]
        others = sorted(RESULTS.glob("variant_*.json"))
        if others:
            docs = {variant: main}
            docs.update(
                {
                    d["config"]["method"]["variant"]: d
                    for d in (json.loads(p.read_text()) for p in others)
                }
            )
            files = ", ".join(f"`bench/results/{p.name}`" for p in others)
            lines += [
                "",
                "Ablation of the variants, mean over the eight tasks, same seed (chosen on the "
                "validation "
                f"columns; from `bench/results/end_to_end.json` and {files}):",
                "",
                *variant_table(docs),
            ]
    joined = load("extend.json")
    if joined is not None:
        lines += ["", *extend_lines(joined)]
    private = {f.name: load(f.name) for f in sorted(RESULTS.glob("privacy*.json"))}
    for file, doc in private.items():
        lines += ["", *privacy_lines(doc, file, row_without_dp(private, doc))]
    dp_screen = load("dp_screen.json")
    if dp_screen is not None:
        lines += ["", *dp_screen_lines(dp_screen)]
    dp_sites = load("dp_sites.json")
    if dp_sites is not None:
        lines += ["", *dp_sites_lines(dp_sites)]
    strict = load("transfer.json")
    if strict is not None:
        lines += ["", *transfer_lines(strict)]
    screen = load("ablation.json")
    if screen is not None:
        lines += [
            "",
            "Levers of the claim, screened on one seed (seed 0; choices on the validation "
            "columns, test only reported; the fidelity gap is the last-stage site teachers minus "
            f"the universal model as is); `bench/results/ablation.json` (`{screen['command']}`):",
            "",
            *screening_table(screen),
        ]
        for extra in (fidelity_by_task(screen), screening_unseen(screen)):
            lines += ["", *extra] if extra else []
    distill_screen = load("distill_screen.json")
    if distill_screen is not None:
        lines += ["", *distill_screen_lines(distill_screen)]
    rivals = load("competitors.json")
    if rivals is not None:
        lines += ["", "The competitors (issue 14):", "", *competitor_lines(rivals)]
    speed = load("throughput.json")
    if speed is not None:
        lines += [
            "",
            "Encoder + head throughput, images/s, fp32, forward + backward + AdamW (inference in "
            "brackets); "
            f"`bench/results/throughput.json` (`{speed['command']}`):",
            "",
            *throughput_table(speed),
        ]
    utilisation = load("speed.json")
    if utilisation is not None:
        lines += ["", *speed_lines(utilisation)]
    return (
        "\n".join(lines)
        if lines
        else "No benchmark has been run yet: `python bench/end_to_end.py`."
    )


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{section()}\n{END}{tail}")


if __name__ == "__main__":
    main()
