"""What the command line prints: tables, messages and errors (as plain text: messages hold
[brackets])."""

from typing import NoReturn

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
    table = Table(title=title)
    for header in rows[0]:
        table.add_column(header, overflow="fold")
    for row in rows[1:]:
        table.add_row(*row)
    stdout.print(table)
