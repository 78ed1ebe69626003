"""DP-SGD's settings screened with bench/privacy.py, one result file per setting (each with its own
command, commit and machine), collected into bench/results/dp_screen.json for the README.

    python bench/dp_screen.py RESULT.json [RESULT.json ...]

Choose on the val columns; the test columns only report.
"""

from itertools import pairwise
import json
from pathlib import Path
import shlex
import sys

from meduniverse.core.files import write_json
from meduniverse.core.provenance import provenance

ROOT = Path(__file__).resolve().parents[1]


def overrides(command: str) -> list[str]:
    """The --set overrides of a bench/privacy.py command, but where the data lies."""
    words = shlex.split(command)
    return [v for k, v in pairwise(words) if k == "--set" and not v.startswith("data_root")]


def setting(command: str) -> str:
    """A command's overrides in one line ('defaults' if none)."""
    return " ".join(overrides(command)) or "defaults"


def screen_rows(doc: dict) -> list[dict]:
    """One row per target epsilon of a bench/privacy.py result, with its setting and provenance."""
    return [
        {
            "setting": setting(doc["command"]),
            "epsilon": r["epsilon"],
            "val_mean": r["val_mean"],
            "test_mean": r["test_mean"],
            "audit_mean": r["audit_mean"],
            "run_seconds": r["run_seconds"],
            "command": doc["command"],
            "commit": doc["commit"],
            "machine": doc["machine"],
        }
        for r in doc["rows"]
    ]


def main() -> None:
    docs = [json.loads(Path(p).read_text()) for p in sys.argv[1:]]
    if not docs:
        sys.exit(__doc__)
    if len({(d["config"], tuple(d["seeds"])) for d in docs}) != 1:
        sys.exit("dp_screen: the result files ran different configs or seeds")
    write_json(
        ROOT / "bench" / "results" / "dp_screen.json",
        {
            **provenance(__doc__, "python bench/dp_screen.py " + " ".join(sys.argv[1:])),
            "config": docs[0]["config"],
            "seeds": docs[0]["seeds"],
            "rows": [row for d in docs for row in screen_rows(d)],
        },
    )


if __name__ == "__main__":
    main()
