"""Progress bars (rich) for long steps, and the package logger."""

from collections.abc import Callable
import logging

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

log = logging.getLogger("meduniverse")
console = Console(stderr=True)


class RunProgress:
    """One bar per phase; `phase(...)` returns the on_step(done, total) callback the training
    functions take."""

    def __init__(self, enabled: bool = True):
        self.bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not enabled,
        )

    def __enter__(self) -> "RunProgress":
        self.bars.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.stop()

    def phase(self, description: str, total: int | None = None) -> Callable[[int, int], None]:
        log.info("%s", description)
        task = self.bars.add_task(description, total=total)

        def on_step(done: int, total: int) -> None:
            self.bars.update(task, completed=done, total=total)

        return on_step
