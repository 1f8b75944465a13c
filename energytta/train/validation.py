"""The validation stage: fixed held-out batches, scored by the objective, comparably.

Every `train.val_every` steps and at the end of training the main process scores the
first `train.val_batches` batches of `data.val` (file order, eval crops, built once and
turned into model inputs exactly as training batches are) with the EMA model (the raw one
for objectives without EMA) in eval mode under `torch.no_grad()`, with a generator seeded
afresh from (train.seed, VAL_SEED). The global RNG states are put back afterwards, so
validation moves no training stream: a run trains the same with validation on or off,
and its numbers are comparable across steps and identical after a resume.
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from energytta.config import Config
from energytta.errors import UserError
from energytta.train.objectives.base import Objective, ValContext
from energytta.train.seeds import VAL_SEED, derive_seed
from energytta.train.stream import first_batches


@contextmanager
def rng_restored(device: torch.device) -> Iterator[None]:
    """Run a block and put python's, numpy's and torch's global RNG states back."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield
    random.setstate(py)
    np.random.set_state(npy)


def val_dataset(cfg: Config) -> Any:
    """`build_dataset(cfg, "val")` (eval crops), or one UserError line saying what to set."""
    from energytta.data.dataset import build_dataset

    try:
        return build_dataset(cfg, "val")
    except UserError as e:
        raise UserError(f"{e} (train.val_every={cfg.train.val_every} validates on data.val; "
                        "set train.val_every=0 to train without)") from None


class Validation:
    """The fixed validation batches of a run and the stage that scores them.

    Args:
        cfg: the full config (`train.val_batches`, `data.batch_size`, `train.seed`).
        dataset: `val_dataset(cfg)`; collate: its collate function.
        objective: the run's objective (its `inputs` turn batches into model inputs).
        device: where the model is.
    """

    def __init__(self, cfg: Config, dataset: Any, collate: Any, objective: Objective,
                 device: torch.device) -> None:
        self.cfg, self.objective, self.device = cfg, objective, device
        items = getattr(dataset, "items", None)
        self.batches = []
        with rng_restored(device), torch.no_grad():
            for idx, batch in first_batches(dataset, collate, cfg.data.batch_size,
                                            max(1, cfg.train.val_batches)):
                batch["items"] = [items[i] for i in idx] if items is not None else None
                self.batches.append({**objective.inputs(batch), "captions": batch["captions"],
                                     "items": batch["items"]})

    def run(self, model: nn.Module) -> dict[str, float]:
        """The objective's numbers for `model` (put in eval mode, then back)."""
        modules = [m for m in (model, self.objective) if isinstance(m, nn.Module)]
        modes = [m.training for m in modules]
        try:
            with rng_restored(self.device), torch.no_grad():
                for m in modules:
                    m.eval()
                g = torch.Generator(device=self.device).manual_seed(
                    derive_seed(self.cfg.train.seed, VAL_SEED))
                ctx = ValContext(self.cfg, self.batches, self.objective.codec,
                                 self.objective.text, self.device, g)
                return self.objective.validate(model, ctx)
        finally:
            for m, mode in zip(modules, modes):
                m.train(mode)
