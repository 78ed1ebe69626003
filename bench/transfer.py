"""Strict transfer against weights: the same run with sites sending their model's weights and
with sites sending only their logits on the public pool (`privacy.transfer`); test metrics, bytes
each way and time; writes bench/results/transfer.json.

    python bench/transfer.py [--config CONFIG] [--set KEY=VALUE ...] [--work DIR]

Without --config the bundled synthetic demo is used.
"""

import argparse
from pathlib import Path
import time

import numpy as np

from meduniverse.core.config_file import load_config
from meduniverse.interfaces.cli import demo_config_path
from meduniverse.results.run import run
from rows import write_rows

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("baseline", "universal", "universal_finetuned")


def row(transfer: str, results: dict, seconds: float) -> dict:
    tasks, stages = results["tasks"], results["stages"].values()
    return {
        "transfer": transfer,
        "test_mean": {
            arm: float(np.mean([t["arms"][arm]["mean"] for t in tasks.values()])) for arm in ARMS
        },
        "test": {s: {arm: t["arms"][arm]["mean"] for arm in ARMS} for s, t in tasks.items()},
        "bytes_to_sites": sum(sum(s.get("bytes_to_sites", {}).values()) for s in stages),
        "bytes_from_sites": sum(sum(s.get("bytes_from_sites", {}).values()) for s in stages),
        "run_seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_transfer")
    parser.add_argument("--result", type=Path, default=ROOT / "bench" / "results" / "transfer.json")
    args = parser.parse_args()
    rows = []
    for transfer in ("weights", "outputs"):
        config = load_config(
            args.config or demo_config_path(), [*args.overrides, f"privacy.transfer='{transfer}'"]
        )
        started = time.perf_counter()
        results = run(config, args.work / transfer, show_progress=False)
        rows.append(row(transfer, results, time.perf_counter() - started))
        print(f"{transfer}: {rows[-1]['test_mean']}, {rows[-1]['bytes_from_sites']} bytes back")
    write_rows(args.result, __doc__, "transfer.py", args.config, config.seed, rows)


if __name__ == "__main__":
    main()
