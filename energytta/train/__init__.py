"""Training: one `accelerate` loop (`loop.train`) for the teacher and the student.

`cli.main` is `energytta-train`; `objectives` picks the loss from `head.kind`; `ema`,
`optim` and `logging` are the loop's parts; `distill` is the student's objective.
"""
from __future__ import annotations

from typing import Any


def train(cfg: Any, resume: bool = False) -> Any:
    """See `energytta.train.loop.train` (imported lazily: it pulls in accelerate)."""
    from energytta.train.loop import train as _train

    return _train(cfg, resume)


__all__ = ["train"]
