"""Collect an experiment with every competitor arm into bench/results/competitors.json (issue 14):
the experiment's results.json as it is, with the command that made it. The README's competitor
table and statements are generated from it (bench/readme_competitors.py).

    meduniverse experiment configs/shared8.toml --seeds N --out runs/competitors
    python bench/competitors.py runs/competitors
"""

import argparse
import json
from pathlib import Path

from meduniverse.core.files import write_json

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", type=Path, help="the experiment's directory")
    args = parser.parse_args()
    results = json.loads((args.experiment / "results.json").read_text())
    missing = [a for a in ("ditto", "fedrep", "fedavg_finetuned") if a not in results["arms"]]
    if missing:
        raise SystemExit(f"{args.experiment}: no {', '.join(missing)} arm; not a competitor run")
    write_json(RESULTS / "competitors.json", results)
    print(RESULTS / "competitors.json")


if __name__ == "__main__":
    main()
