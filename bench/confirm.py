"""Confirm the shared8 defaults seed by seed: runs of `meduniverse run configs/shared8.toml` as is
(one per seed, `--set seed=N`; they may be made in different sessions) merged into one
experiment-style document: per task and arm the test value of every seed, the last-stage teachers
(fidelity) and the paired tests over (task, seed) pairs, so the claim's targets 1-4 can be read as
the seeds accumulate. A run that changed any setting is refused: this file confirms the defaults.
`--adapt` attaches the adaptation of such a run (or of a leave-one-site-out run of the defaults)
to an unseen site (target 5), replacing that site's earlier entry.

    python bench/confirm.py bench/results/confirm_defaults.json [RUN_DIR ...] \
        [--commit RUN_NAME=SHA ...] [--command "how the runs were started"] [--adapt ADAPT_DIR ...]
"""

import json
from pathlib import Path
from statistics import mean

from meduniverse.core.files import write_json
from meduniverse.core.provenance import machine_info
from meduniverse.core.tasks import task_type
from meduniverse.results.analysis import statistics
from meduniverse.results.statistics import bootstrap_ci
from rows import adapt_entries
from screen import changes, parse_runs, run_row

ARMS = ("baseline", "universal", "universal_finetuned")


def seed_row(run_dir: Path, defaults: dict, commit: str | None) -> dict:
    """One seed's run (bench/screen.py's row, which names its seed), refused unless it ran
    the defaults."""
    row = run_row(run_dir, defaults, commit)
    if row["changes"]:
        raise SystemExit(f"{run_dir}: not the default configuration ({row['changes']})")
    return row


def adapt_of_defaults(adapt_dir: Path, defaults: dict) -> dict:
    """One `meduniverse adapt` results.json, refused unless its source run ran the defaults (a
    leave-one-site-out run differs only in its sites and in the pool's, less the left-out site)."""
    adapt = json.loads((adapt_dir / "results.json").read_text())
    source = Path(adapt["source_run"])
    run = source if (source / "results.json").is_file() else source.parent
    changed = changes(defaults, json.loads((run / "results.json").read_text())["config"])
    pool_sites = [s for s in defaults["pool"]["sites"] if s not in adapt["tasks"]]
    if changed.get("pool.sites") == pool_sites:
        del changed["pool.sites"]
    if changed:
        raise SystemExit(f"{adapt_dir}: adapted from {run}, not the defaults ({changed})")
    return adapt


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
        __doc__.splitlines()[0], "meduniverse run configs/shared8.toml --set seed=N", adapt=True
    )
    old = json.loads(args.out.read_text()) if args.out.is_file() else {}
    kept = old.get("runs", [])
    new = [seed_row(r, defaults, commits.get(r.name)) for r in args.runs]
    by_seed = {r["seed"]: r for r in kept} | {r["seed"]: r for r in new}
    rows = [by_seed[s] for s in sorted(by_seed)]
    tasks = tasks_block(rows, defaults)
    tests, per_task = statistics(tasks)
    adapted = old.get("adapt_results", {})
    for adapt_dir in args.adapt:
        adapt = adapt_of_defaults(adapt_dir, defaults)
        adapted |= adapt_entries(adapt, f"bench/results/{args.out.name}")
    write_json(
        args.out,
        {
            "what": __doc__.splitlines()[0],
            "command": args.command if args.runs else old.get("command", args.command),
            "machine": machine_info(),
            "config": "configs/shared8.toml at each run's commit, no setting changed",
            "seeds": sorted(by_seed),
            "runs": rows,
            "tasks": tasks,
            "tests": tests,
            "per_task_tests": per_task,
            "adapt_results": adapted,
        },
    )
    for arm in ARMS:
        print(f"{arm:20s} test {mean(t['arms'][arm]['mean'] for t in tasks.values()):.3f}")
    print(json.dumps(tests, indent=1))


if __name__ == "__main__":
    main()
