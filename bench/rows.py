"""The JSON of a benchmark that runs the demo (or a given config) once per row, and the entry an
adaptation run (`meduniverse adapt`) adds to a collected experiment."""

from pathlib import Path
import sys

from meduniverse.core.files import write_json
from meduniverse.core.provenance import provenance


def write_rows(
    path: Path, doc: str, script: str, config: str | None, seed: int, rows: list
) -> None:
    """Write `rows` with the provenance of `script` (its docstring `doc`, the command line) and the
    config they ran (None: the bundled synthetic demo)."""
    write_json(
        path,
        {
            **provenance(doc, f"python bench/{script} " + " ".join(sys.argv[1:])),
            "seeds": [seed],
            "config": config or "demo (bundled, synthetic)",
            "rows": rows,
        },
    )


def adapt_entries(adapt: dict, file: str) -> dict[str, dict]:
    """Per unseen site of one `meduniverse adapt` results.json: its arms, tests and provenance, as
    the README's adaptation table and target 5 read them; `file` is where it is collected."""
    command = adapt.get("command", "")
    return {
        site: {
            "arms": t["arms"],
            "metric": t["metric"],
            "tests": adapt["tests"],
            "seeds": adapt["seeds"],
            "commit": adapt["commit"],
            "command": command,
            "left_out": "--leave-out" in command,
            "seconds": adapt.get("seconds"),
            "file": file,
        }
        for site, t in adapt["tasks"].items()
    }
