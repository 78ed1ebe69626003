"""Differential privacy's price and effect: one run per target epsilon (and one without DP), each
audited by membership inference; writes bench/results/privacy.json.

    python bench/privacy.py [--config CONFIG] [--epsilons none,8,3,1] [--set KEY=VALUE ...]
        [--references 2] [--work DIR]

Per run: the universal model's and the fine-tuned arm's test metrics (mean over tasks; val means
too, to choose settings on), the epsilon each site spent, and both attacks' AUC per site. Without
--config the bundled synthetic demo is used.
"""

import argparse
from pathlib import Path

import numpy as np

from meduniverse.core.config_file import load_config
from meduniverse.interfaces.cli import demo_config_path
from meduniverse.results.audit import AuditSettings, audit_run
from meduniverse.results.run import run
from rows import write_rows

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("baseline", "universal", "universal_finetuned")


def dp_settings(epsilon: str) -> list[str]:
    """Config overrides for one target epsilon ('none': no DP); every row keeps only the federated
    competitors whose local training DP-SGD covers (they do not run here, but the config is
    checked); every row trains `local_epochs` passes, the fixed step count DP-SGD spends its budget
    over."""
    same = ['competitors.federated=["fedavg", "fedbn"]', "method.local_training='epochs'"]
    if epsilon == "none":
        return [*same, "privacy.dp=false"]
    return [*same, "privacy.dp=true", f"privacy.epsilon={float(epsilon)}"]


def row(epsilon: str, results: dict, audit: dict) -> dict:
    tasks = results["tasks"]
    sites = audit["sites"]
    return {
        "epsilon": epsilon,
        "test_mean": {
            arm: float(np.mean([t["arms"][arm]["mean"] for t in tasks.values()])) for arm in ARMS
        },
        "val_mean": {
            arm: float(np.mean([t["arms"][arm]["val"]["mean"] for t in tasks.values()]))
            for arm in ARMS
        },
        "test": {s: {arm: t["arms"][arm]["mean"] for arm in ARMS} for s, t in tasks.items()},
        "spent": (results.get("privacy") or {}).get("epsilon"),
        "audit": sites,
        "audit_mean": {
            k: float(np.mean([e[k] for e in sites.values()]))
            for k in ("loss_auc", "reference_auc")
            if all(k in e for e in sites.values())
        },
        "run_seconds": results["run_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("--epsilons", default="none,8,3,1")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--references", type=int, default=2)
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_privacy")
    parser.add_argument("--result", type=Path, default=ROOT / "bench" / "results" / "privacy.json")
    args = parser.parse_args()
    rows = []
    for epsilon in args.epsilons.split(","):
        overrides = [*args.overrides, *dp_settings(epsilon)]
        config = load_config(args.config or demo_config_path(), overrides)
        out = args.work / f"epsilon_{epsilon}"
        results = run(config, out, show_progress=False)  # its run_seconds: every attempt's work
        audit = audit_run(out, AuditSettings(args.references, args.limit, 0), show_progress=False)
        rows.append(row(epsilon, results, audit))
        print(f"epsilon {epsilon}: {rows[-1]['test_mean']} audit {rows[-1]['audit_mean']}")
        write_rows(args.result, __doc__, "privacy.py", args.config, config.seed, rows)


if __name__ == "__main__":
    main()
