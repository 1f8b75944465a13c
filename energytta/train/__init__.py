"""Training: one `accelerate` loop (`loop.train`) and pluggable objectives.

`loop` owns the data stream (`stream`), seeding (`seeds`), Ctrl-C (`interrupt`),
checkpoints, resume, EMA (`ema`), logging (`logging`) and the validation stage
(`validation`); `objectives/` holds what trains: teacher, student, vae, vocoder and
classifier behind one interface (`objectives.base.Objective`). `optim` builds AdamW and
its schedule; `cli.main` is `energytta-train`.
"""
from __future__ import annotations

from typing import Any


def train(cfg: Any, resume: bool = False) -> Any:
    """See `energytta.train.loop.train` (imported lazily: it pulls in accelerate)."""
    from energytta.train.loop import train as _train

    return _train(cfg, resume)


__all__ = ["train"]
