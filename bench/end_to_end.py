"""Full shared8 run (baseline + all stages + evaluation, one seed), timed: writes
bench/results/end_to_end.json.

python bench/end_to_end.py [--config configs/shared8.toml] [--out runs/bench_e2e] [--set key=value
...]
"""

import argparse
from pathlib import Path
import sys
import time

from meduniverse.core.config_file import load_config
from meduniverse.core.files import write_json
from meduniverse.core.provenance import machine_info
from meduniverse.results.run import run

ROOT = Path(__file__).resolve().parents[1]


def phase_speeds(stages: dict) -> dict:
    """Images per second of each phase, from the checkpoint records."""
    out = {"mim_pretraining": stages["0"]["images_per_second"]}
    for stage, record in stages.items():
        if stage == "0":
            continue
        out[f"stage_{stage}_distillation"] = record["distill"]["images_per_second"]
        out[f"stage_{stage}_local_training"] = {
            s: m["train-images-per-second"] for s, m in record["sites"].items()
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(ROOT / "configs" / "shared8.toml"))
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_e2e"))
    parser.add_argument("--result", default=str(ROOT / "bench" / "results" / "end_to_end.json"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)
    if (Path(args.out) / "checkpoints").exists():
        sys.exit(
            f"{args.out} holds an earlier run: total_seconds must time a fresh run, give a new "
            "--out"
        )
    started = time.perf_counter()
    results = run(config, Path(args.out), show_progress=sys.stderr.isatty())
    total = time.perf_counter() - started
    stages = results["stages"]
    document = {
        "total_seconds": total,
        "command": " ".join(["python", "bench/end_to_end.py", *sys.argv[1:]]),
        "machine": machine_info(),
        "stage_seconds": {s: r["seconds"] for s, r in stages.items()},
        "images_per_second": phase_speeds(stages),
        **results,
    }
    write_json(Path(args.result), document)
    print(f"{args.result}: {total:.0f} s")


if __name__ == "__main__":
    main()
