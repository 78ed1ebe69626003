"""DP-SGD's settings screened with bench/privacy.py, one result file per setting (each with its own
command, commit and machine), collected into bench/results/dp_screen.json for the README.

    python bench/dp_screen.py [--add] RESULT.json [RESULT.json ...]

--add keeps the rows already in bench/results/dp_screen.json (one of the same command is replaced),
so a later screen adds to an earlier one whose result files are gone. Choose on the val columns;
the test columns only report.
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
    add = sys.argv[1:2] == ["--add"]
    docs = [json.loads(Path(p).read_text()) for p in sys.argv[1 + add :]]
    if not docs:
        sys.exit(__doc__)
    out = ROOT / "bench" / "results" / "dp_screen.json"
    if add and not out.is_file():
        sys.exit(f"dp_screen: --add needs an earlier {out.relative_to(ROOT)}; run without --add")
    earlier = json.loads(out.read_text()) if add else None
    if len({(d["config"], tuple(d["seeds"])) for d in docs + ([earlier] if earlier else [])}) != 1:
        sys.exit("dp_screen: the result files ran different configs or seeds")
    rows = [row for d in docs for row in screen_rows(d)]
    if earlier:
        new = {r["command"] for r in rows}
        rows = [r for r in earlier["rows"] if r["command"] not in new] + rows
    command = "python bench/dp_screen.py " + " ".join(sys.argv[1:])
    write_json(
        out,
        {
            **provenance(__doc__, f"{earlier['command']} && {command}" if earlier else command),
            "config": docs[0]["config"],
            "seeds": docs[0]["seeds"],
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
