"""The JSON of a benchmark that runs the demo (or a given config) once per row."""

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
