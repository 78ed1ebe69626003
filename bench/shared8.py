"""Collect the shared8 experiment into bench/results: shared8.json (with the variant ablation and
the unseen-site
curves), adapt_covid.json and the report's figures; rebuild the report. The numbers come from the
runs only.

    meduniverse experiment configs/shared8.toml --seeds 3 --out runs/shared8
    meduniverse adapt runs/shared8/seed_0 --data ../shared/data/covid_xray.npz --task multiclass \\
        --classes COVID-19,"no finding",pneumonia --seeds 3 --out runs/adapt_covid
    python bench/shared8.py runs/shared8 --adapt runs/adapt_covid [--computed-at COMMIT]
"""

import argparse
import json
from pathlib import Path
import shutil

from meduniverse.core.config_file import load_config
from meduniverse.core.files import write_json
from meduniverse.interfaces.report import build_report
from rows import adapt_entries

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def mean(doc: dict, arm: str, split: str) -> float:
    values = [
        t["arms"][arm]["val"]["mean"] if split == "val" else t["arms"][arm]["mean"]
        for t in doc["tasks"].values()
    ]
    return sum(values) / len(values)


def ablation_rows() -> list[dict]:
    """The variant runs of the method (one seed each, same config otherwise), mean over the eight
    tasks."""
    rows = []
    for path in [RESULTS / "end_to_end.json", *sorted(RESULTS.glob("variant_*.json"))]:
        doc = json.loads(path.read_text())
        rows.append(
            {
                "variant": doc["config"]["method"]["variant"],
                "file": f"bench/results/{path.name}",
                "seeds": doc["seeds"],
                "commit": doc["commit"],
                **{
                    f"{split}_{arm}": mean(doc, arm, split)
                    for split in ("val", "test")
                    for arm in ("baseline", "universal", "universal_finetuned")
                },
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("experiment", type=Path)
    parser.add_argument("--adapt", type=Path, action="append", default=[])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "shared8.toml")
    parser.add_argument(
        "--computed-at",
        help="commit that trained and evaluated the seeds, when the results were "
        "assembled (resumed) later at another commit",
    )
    args = parser.parse_args()
    results = json.loads((args.experiment / "results.json").read_text())
    if args.computed_at:
        results["computed_at_commit"] = args.computed_at
    results["ablation"] = {"rows": ablation_rows()}
    for adapt_dir in args.adapt:
        adapt = json.loads((adapt_dir / "results.json").read_text())
        results.setdefault("adapt", {}).update(adapt["adapt"])
        site = next(iter(adapt["tasks"]))
        results.setdefault("adapt_results", {}).update(
            adapt_entries(adapt, f"bench/results/adapt_{site.split('_')[0]}.json")
        )
    write_json(RESULTS / "shared8.json", results)
    build_report(args.experiment, results, load_config(args.config))
    figures = RESULTS / "shared8_figures"
    figures.mkdir(parents=True, exist_ok=True)
    for png in (args.experiment / "figures").glob("*.png"):
        shutil.copy2(png, figures / png.name)
    print(f"{RESULTS / 'shared8.json'}, {figures}, report: {args.experiment / 'report.html'}")


if __name__ == "__main__":
    main()
