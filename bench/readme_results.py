"""Regenerate the README's results section from bench/results/*.json (never type numbers by hand).

    python bench/readme_results.py
"""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
START, END = "<!-- results:start -->", "<!-- results:end -->"
ARMS = ("baseline", "universal", "universal_finetuned")


def load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def mean_of(doc: dict, arm: str, split: str = "test") -> float:
    values = [t["arms"][arm]["val" if split == "val" else "mean"] for t in doc["tasks"].values()]
    values = [v["mean"] if isinstance(v, dict) else v for v in values]
    return sum(values) / len(values)


def task_table(doc: dict) -> list[str]:
    lines = ["| site | task | metric | baseline | universal | universal_finetuned | finetuned - baseline |",
             "|---|---|---|---|---|---|---|"]
    for site, t in doc["tasks"].items():
        m = {a: t["arms"][a]["mean"] for a in ARMS}
        lines.append(f"| {site} | {t['task']} | {t['metric']} | {m['baseline']:.3f} | {m['universal']:.3f} | "
                     f"{m['universal_finetuned']:.3f} | {m['universal_finetuned'] - m['baseline']:+.3f} |")
    lines.append(f"| **mean** | | | {mean_of(doc, 'baseline'):.3f} | {mean_of(doc, 'universal'):.3f} | "
                 f"{mean_of(doc, 'universal_finetuned'):.3f} | {mean_of(doc, 'universal_finetuned') - mean_of(doc, 'baseline'):+.3f} |")
    return lines


def variant_table(docs: dict[str, dict]) -> list[str]:
    lines = ["| variant | val: universal | val: universal_finetuned | test: universal | test: universal_finetuned | run time |",
             "|---|---|---|---|---|---|"]
    for name, doc in docs.items():
        lines.append(f"| `{name}` | {mean_of(doc, 'universal', 'val'):.3f} | {mean_of(doc, 'universal_finetuned', 'val'):.3f} | "
                     f"{mean_of(doc, 'universal'):.3f} | {mean_of(doc, 'universal_finetuned'):.3f} | {doc['total_seconds'] / 60:.1f} min |")
    return lines


def throughput_table(doc: dict) -> list[str]:
    lines = ["| widths | encoder parameters | head | input | 1 thread | 2 threads |", "|---|---|---|---|---|---|"]
    rows = doc["rows"]
    for r in rows:
        if r["threads"] != 1:
            continue
        two = next(x for x in rows if x["threads"] == 2 and x["widths"] == r["widths"] and x["head"] == r["head"])
        cells = [f"{x['train_images_per_second']:.0f} ({x['inference_images_per_second']:.0f})" for x in (r, two)]
        lines.append(f"| {'-'.join(map(str, r['widths']))} | {r['encoder_parameters'] / 1e6:.2f}M | {r['head']} | "
                     f"{r['size']} px | {cells[0]} | {cells[1]} |")
    return lines


def section() -> str:
    main = load("end_to_end.json")
    if main is None:
        return "No benchmark has been run yet: `python bench/end_to_end.py`."
    variant = main["config"]["method"]["variant"]
    lines = [f"`configs/shared8.toml`, one seed ({main['seeds'][0]}), variant `{variant}`, test split of each site "
             f"(AUC for classification, Dice for segmentation). From `bench/results/end_to_end.json`: "
             f"`{main['command']}` at commit `{main['commit'][:12]}`, {main['total_seconds'] / 60:.1f} minutes on "
             f"{main['machine']['cpus']} CPU cores.", "", *task_table(main)]
    others = sorted(RESULTS.glob("variant_*.json"))
    if others:
        docs = {variant: main}
        docs.update({d["config"]["method"]["variant"]: d for d in (json.loads(p.read_text()) for p in others)})
        files = ", ".join(f"`bench/results/{p.name}`" for p in others)
        lines += ["", f"Variants, mean over the eight tasks, same seed (the default is the better one on the validation "
                  f"columns; from `bench/results/end_to_end.json` and {files}):", "", *variant_table(docs)]
    speed = load("throughput.json")
    if speed is not None:
        lines += ["", f"Encoder + head throughput, images/s, fp32, forward + backward + AdamW (inference in brackets); "
                  f"`bench/results/throughput.json` (`{speed['command']}`):", "", *throughput_table(speed)]
    return "\n".join(lines)


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{section()}\n{END}{tail}")


if __name__ == "__main__":
    main()
