"""Confirm the shared8 defaults seed by seed: runs of `meduniverse run configs/shared8.toml` as is
(one per seed, `--set seed=N`; they may be made in different sessions) merged into one
experiment-style document: per task and arm the test value of every seed, the last-stage teachers
(fidelity) and the paired tests over (task, seed) pairs, so the claim's targets 1-4 can be read as
the seeds accumulate. A run that changed any setting is refused: this file confirms the defaults.

    python bench/confirm.py bench/results/confirm_defaults.json RUN_DIR [RUN_DIR ...] \
        [--commit RUN_NAME=SHA ...] [--command "how the runs were started"]
"""

import json
from pathlib import Path
from statistics import mean

from meduniverse.core.files import write_json
from meduniverse.core.provenance import machine_info
from meduniverse.core.tasks import task_type
from meduniverse.results.analysis import statistics
from meduniverse.results.statistics import bootstrap_ci
from screen import parse_runs, run_row

ARMS = ("baseline", "universal", "universal_finetuned")


def seed_row(run_dir: Path, defaults: dict, commit: str | None) -> dict:
    """One seed's run (bench/screen.py's row, which names its seed), refused unless it ran
    the defaults."""
    row = run_row(run_dir, defaults, commit)
    if row["changes"]:
        raise SystemExit(f"{run_dir}: not the default configuration ({row['changes']})")
    return row


def last_stage(row: dict) -> dict:
    return row["stages"][max(row["stages"], key=int)]


def tasks_block(rows: list[dict], defaults: dict) -> dict:
    """Per site: task, metric, each arm's test value per seed and mean, and the fidelity of the
    universal model to the last stage's site teacher on test (means over seeds)."""
    tasks = {}
    for site in defaults["sites"]:
        name, kind = site["name"], task_type(site["task"])
        arms = {}
        for arm in ARMS:
            values = [r["arms"][arm]["test_per_task"][name] for r in rows]
            arms[arm] = {"per_seed": values, "mean": mean(values), "ci95": bootstrap_ci(values)}
        teacher = mean(last_stage(r)["teacher_test_per_task"][name] for r in rows)
        tasks[name] = {
            "task": site["task"],
            "metric": kind.primary,
            "arms": arms,
            "fidelity": {
                "teacher_test": teacher,
                "universal_minus_teacher": arms["universal"]["mean"] - teacher,
            },
        }
    return tasks


def main() -> None:
    args, commits, defaults = parse_runs(
        __doc__.splitlines()[0], "meduniverse run configs/shared8.toml --set seed=N"
    )
    kept = json.loads(args.out.read_text())["runs"] if args.out.is_file() else []
    new = [seed_row(r, defaults, commits.get(r.name)) for r in args.runs]
    by_seed = {r["seed"]: r for r in kept} | {r["seed"]: r for r in new}
    rows = [by_seed[s] for s in sorted(by_seed)]
    tasks = tasks_block(rows, defaults)
    tests, per_task = statistics(tasks)
    write_json(
        args.out,
        {
            "what": __doc__.splitlines()[0],
            "command": args.command,
            "machine": machine_info(),
            "config": "configs/shared8.toml at each run's commit, no setting changed",
            "seeds": sorted(by_seed),
            "runs": rows,
            "tasks": tasks,
            "tests": tests,
            "per_task_tests": per_task,
        },
    )
    for arm in ARMS:
        print(f"{arm:20s} test {mean(t['arms'][arm]['mean'] for t in tasks.values()):.3f}")
    print(json.dumps(tests, indent=1))


if __name__ == "__main__":
    main()
