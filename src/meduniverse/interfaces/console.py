"""What the command line prints: tables, messages and errors (as plain text: messages hold
[brackets])."""

from typing import NoReturn

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text
import typer

stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)


def say(message: str) -> None:
    """A line on standard output, printed as it is (no rich markup)."""
    stdout.print(Text(message))


def fail(exc: Exception) -> NoReturn:
    """Print 'error: MESSAGE' on standard error and exit with status 1."""
    stderr.print(Text.assemble(("error: ", "red"), str(exc)))
    raise typer.Exit(code=1)


def print_table(rows: list[list[str]], title: str) -> None:
    """A table: the first row is the header."""
    table = Table(
        title=title,
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        pad_edge=False,
        show_edge=False,
        collapse_padding=True,
    )
    first = max(len(row[0]) for row in rows)
    for i, header in enumerate(rows[0]):  # names stay whole; other columns wrap if they must
        table.add_column(
            header, overflow="fold", no_wrap=i == 0, min_width=first if i == 0 else None
        )
    for row in rows[1:]:
        table.add_row(*row)
    stdout.print(table)
