"""What every objective gives the one training loop, and what the loop gives it.

The split is audiocraft's solver split: the loop (`energytta.train.loop`) owns the data
stream, seeding, Ctrl-C, checkpoints, resume, EMA, logging and the validation stage; an
objective owns what is trained and how it is scored:

    objective = SomeObjective.build(cfg, ctx)       # builds `objective.model` (+ its parts)
    inputs = objective.inputs(batch)                # a collated batch -> model inputs
    loss, logs = objective(model, **inputs, generator=g)
    objective.fit(ctx)                              # fresh runs: data statistics
    objective.validate(model, val_ctx)              # -> {"loss": ..., ...}
    objective.generate(model, folder)               # samples, if it makes any
    objective.export(model, out_dir)                # the file users load

The trainable parameters are the model's that require grad plus, when the objective is
an `nn.Module`, its own (the student's projections, the VAE's discriminator); that module's
`state_dict` is the objective's extra state, saved as the checkpoint's
`objective.safetensors` (`model` itself is never one of its submodules).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from energytta.config import Config

META_KEYS = ("captions", "items")  # entries of a validation batch that are not model inputs


@dataclass
class TrainContext:
    """What the loop hands an objective when it is built and when it fits statistics.

    Attributes:
        device: where training runs.
        dataset: the training set (`build_dataset(cfg, "train")`); collate: its collate.
    """

    device: torch.device
    dataset: Any
    collate: Callable[[list], dict[str, Any]]


@dataclass
class ValContext:
    """What the validation stage hands `Objective.validate`.

    Attributes:
        cfg: the full config.
        batches: the fixed validation batches, each the objective's `inputs` (text-to-audio:
            latents (B,C,T,F), text (B,L,Dt), text_mask (B,L)) plus "captions" (list[str])
            and "items" (the manifest `Item`s, or None for cached latents).
        codec: the run's frozen codec (text-to-audio objectives) or None.
        text: captions -> (states (B,L,Dt), mask (B,L)), or None without a text encoder.
        device: where the model is.
        generator: seeded afresh from (train.seed, VAL_SEED) at every validation.
    """

    cfg: Config
    batches: list[dict[str, Any]]
    codec: nn.Module | None
    text: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]] | None
    device: torch.device
    generator: torch.Generator

    @property
    def items(self) -> list[Any] | None:
        """The manifest items of all batches in order, or None when there are none."""
        rows = [it for b in self.batches for it in (b.get("items") or [])]
        return rows or None


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """A validation batch without its metadata: the keyword arguments of the objective."""
    return {k: v for k, v in batch.items() if k not in META_KEYS}


@torch.no_grad()
def mean_loss(objective: Any, model: nn.Module, ctx: ValContext) -> dict[str, float]:
    """The default validation: the objective's loss on each batch, weighted by batch size."""
    total, count = 0.0, 0
    for batch in ctx.batches:
        loss, _ = objective(model, **model_inputs(batch), generator=ctx.generator)
        n = len(batch["captions"])
        total, count = total + float(loss) * n, count + n
    return {"loss": total / max(1, count)}


class Objective:
    """Defaults of the optional parts; subclasses set `kind` and implement `build`,
    `inputs`, `__call__` (or `forward` on an `nn.Module`) and `export`.

    Attributes:
        kind: "teacher" | "student" | "vae" | "vocoder" | "classifier": the checkpoints' kind.
        ema: keep an EMA of the model; it is what validation, samples and export use.
        model: the module being trained (set by `build`).
        codec: a frozen codec saved beside the model in checkpoints, or None.
        text: captions -> text states, or None; text_dim: the text width, or None.
        unused_parameters: some trainable parameter can get no gradient in a step, so
            several processes need DDP's `find_unused_parameters` (a graph walk per step).
    """

    kind = ""
    ema = False
    unused_parameters = False
    model: nn.Module
    codec: nn.Module | None = None
    text: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]] | None = None
    text_dim: int | None = None

    @classmethod
    def build(cls, cfg: Config, ctx: TrainContext) -> "Objective":
        """The objective and its model, on `ctx.device`, before any checkpoint is loaded."""
        raise NotImplementedError

    def inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A collated batch (+ "items") -> the keyword arguments of the loss, on device."""
        raise NotImplementedError

    def fit(self, ctx: TrainContext) -> None:
        """Fit data statistics at the start of a fresh run (none by default)."""

    def validate(self, model: nn.Module, ctx: ValContext) -> dict[str, float]:
        """Numbers for the validation stage; by default the mean held-out loss."""
        return mean_loss(self, model, ctx)

    def generate(self, model: nn.Module, folder: Path) -> Path | None:
        """Write samples into `folder` (none by default); returns the folder if written."""
        return None

    def export(self, model: nn.Module, out: Path) -> Path:
        """Write the file users load (from the EMA weights when `ema`) into `out`."""
        raise NotImplementedError
