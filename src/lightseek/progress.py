"""A rich progress bar (with rate and ETA) over a known number of items, shown only when
stderr is a terminal, so piped output and tests stay clean."""

from __future__ import annotations


class progress:
    """``with progress(n, label) as step: ... step(k)`` advances the bar by k items."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label = total, label

    def __enter__(self):
        import sys

        if not sys.stderr.isatty() or self.total == 0:
            self.bar = None
            return lambda n: None
        from rich.console import Console
        from rich.progress import MofNCompleteColumn, Progress, TimeElapsedColumn

        self.bar = Progress(*Progress.get_default_columns(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=Console(stderr=True), transient=True)
        self.bar.start()
        task = self.bar.add_task(self.label, total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
