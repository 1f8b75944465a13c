"""Training logs: a rich progress bar (main process) and `metrics.jsonl` (one JSON per log).

`metrics.jsonl` is appended to; on resume, lines past the resumed step (written by the
interrupted run after its last checkpoint) are dropped first so the file reads as one run.
Training rows carry the loss terms, lr, grad_norm, steps/s and time; validation rows are
`{"step", "stage": "val", "val/<name>": value, ...}` (`read_metrics(path, stage=...)`).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from energytta.utils import atomic_write_text


def make_progress(console: Console | None = None, disable: bool = False) -> Progress:
    """Bar with step count, elapsed, ETA and a free-text field for loss / lr / steps/s."""
    return Progress(
        TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("ETA"),
        TimeRemainingColumn(), console=console, disable=disable, transient=False)


def read_metrics(path: str | Path, stage: str | None = None) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (skipping a torn last line).

    Args:
        path: the file.
        stage: None = every record; "train" = the training rows; "val" = validation rows.
    """
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    if stage is None:
        return out
    return [r for r in out if r.get("stage", "train") == stage]


class MetricsLog:
    """Appends records to `out_dir/metrics.jsonl`.

    Args:
        path: the JSONL file.
        resume_step: drop existing records with step > resume_step (None: keep all).
    """

    def __init__(self, path: str | Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.is_file():
            keep = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))
        self.start = time.time()

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


class Window:
    """Running means of the loss terms between two log lines, and the step rate.

    The sums travel in the training state (`state()` / `load()`), so a log row whose steps
    span a checkpoint reads the same after a `--resume` as in an uninterrupted run.
    """

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0
        self.timed = 0  # steps added in this process (the rate ignores restored ones)
        self.t0 = time.perf_counter()

    def add(self, logs: dict[str, Any]) -> None:
        for k, v in logs.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.count += 1
        self.timed += 1

    def means(self) -> dict[str, float]:
        return {k: v / max(1, self.count) for k, v in self.sums.items()}

    def steps_per_s(self) -> float:
        return self.timed / max(1e-9, time.perf_counter() - self.t0)

    def reset(self) -> None:
        self.__init__()

    def state(self) -> dict[str, Any]:
        """JSON-able sums and count (floats round-trip exactly through JSON)."""
        return {"sums": dict(self.sums), "count": self.count}

    def load(self, state: dict[str, Any]) -> None:
        """Continue the sums of `state()`; an older checkpoint without them (or with a
        malformed entry: only one log row's mean depends on it) starts an empty row."""
        self.reset()
        try:
            sums = {str(k): float(v) for k, v in state["sums"].items()}
            count = int(state["count"])
        except (KeyError, TypeError, ValueError, AttributeError):
            return
        self.sums, self.count = sums, count


def format_stats(means: dict[str, float], lr: float, steps_per_s: float) -> str:
    loss = means.get("loss", float("nan"))
    return f"loss {loss:.4f}  lr {lr:.2e}  {steps_per_s:.2f} it/s"
