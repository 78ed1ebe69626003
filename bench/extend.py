"""A site that joins later (`meduniverse extend`) against a full rerun with every site from the
start: the new task's test metric both ways, the old tasks' universal metric before and after the
extension (forgetting), and the time of each; writes bench/results/extend.json.

    python bench/extend.py --site NAME [--config CONFIG] [--set KEY=VALUE ...] [--work DIR]

The run before the extension is CONFIG without the site and with one stage fewer; the extension
and the rerun both end at CONFIG's stages. Without --config the bundled synthetic demo is used.
"""

import argparse
from dataclasses import replace
from pathlib import Path
import sys
import time

from meduniverse.core.config import leave_out
from meduniverse.core.config_file import load_config
from meduniverse.core.files import write_json
from meduniverse.core.provenance import provenance
from meduniverse.interfaces.cli import demo_config_path
from meduniverse.results.extend import extend
from meduniverse.results.run import run

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("universal", "universal_finetuned")


def timed(call) -> tuple[dict, float]:
    started = time.perf_counter()
    return call(), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", required=True, help="the site that joins later")
    parser.add_argument("--config", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_extend")
    parser.add_argument("--result", type=Path, default=ROOT / "bench" / "results" / "extend.json")
    args = parser.parse_args()
    full = load_config(args.config or demo_config_path(), args.overrides)
    if full.method.stages < 2:
        sys.exit("the config needs at least 2 stages (one before the extension, one after)")
    early = leave_out(full, args.site)
    early = replace(early, method=replace(early.method, stages=full.method.stages - 1))
    before, before_s = timed(lambda: run(early, args.work / "before", show_progress=False))
    extended, extend_s = timed(
        lambda: extend(args.work / "before", full, args.work / "extended", show_progress=False)
    )
    rerun, rerun_s = timed(lambda: run(full, args.work / "rerun", show_progress=False))

    def arms(results: dict, site: str) -> dict:
        return {a: results["tasks"][site]["arms"][a]["mean"] for a in ARMS}

    old = [s.name for s in early.sites]
    doc = {
        **provenance(__doc__, "python bench/extend.py " + " ".join(sys.argv[1:])),
        "seeds": [full.seed],
        "config": args.config or "demo (bundled, synthetic)",
        "new_site": args.site,
        "stages": {"before": early.method.stages, "after": full.method.stages},
        "new_task": {"extended": arms(extended, args.site), "rerun": arms(rerun, args.site)},
        "old_tasks": {
            s: {
                "before": before["tasks"][s]["arms"]["universal"]["mean"],
                "after_extension": extended["tasks"][s]["arms"]["universal"]["mean"],
                "rerun": rerun["tasks"][s]["arms"]["universal"]["mean"],
            }
            for s in old
        },
        "seconds": {"before": before_s, "extension": extend_s, "rerun": rerun_s},
    }
    write_json(args.result, doc)
    print(f"new task {args.site}: {doc['new_task']}")
    for site, row in doc["old_tasks"].items():
        print(f"{site}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
    print(f"seconds: {doc['seconds']}")


if __name__ == "__main__":
    main()
