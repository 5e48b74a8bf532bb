"""Run metrics: ``metrics.jsonl`` (one JSON object per line) and the live progress display."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class MetricsLog:
    """Appends records to ``metrics.jsonl``. On resume, records after the checkpoint's step are
    dropped first, so a resumed run's file equals an uninterrupted run's."""

    def __init__(self, path: str | Path, resume_step: int | None = None, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        if not enabled:
            return
        if resume_step is None:
            self.path.write_text("", encoding="utf-8")
        elif self.path.exists():
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            tmp.replace(self.path)

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class TrainProgress:
    """A rich progress bar (step, loss, tokens/s, experts per token, MaxVio, ETA) on a terminal;
    a plain log line every ``log_every`` steps otherwise."""

    def __init__(self, total: int, start: int, enabled: bool, log_every: int):
        self.enabled = enabled
        self.log_every = log_every
        self.tty = sys.stderr.isatty()
        self.console = Console(stderr=True)
        self._progress = None
        self._t0 = time.time()
        if enabled and self.tty:
            self._progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                TimeRemainingColumn(), console=self.console, transient=False)
            self._task = self._progress.add_task("train", total=total, completed=start, info="")
            self._progress.start()

    def update(self, step: int, rec: dict) -> None:
        info = f"loss {rec['loss']:.3f}  {rec['tokens_per_s']:,.0f} tok/s"
        if "avg_k" in rec:
            info += f"  k {rec['avg_k']:.2f}  MaxVio {rec['max_vio']:.2f}"
        if self._progress is not None:
            self._progress.update(self._task, completed=step, info=info)
        elif self.enabled and (step % self.log_every == 0):
            self.console.print(f"step {step}  {info}", highlight=False)

    def print(self, msg: str) -> None:
        if self.enabled:
            self.console.print(msg, highlight=False)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
