"""The synth-classifier objective: the evaluation embedder learns the synthetic corpus's
attribute labels (`energytta-train --config synth_classifier`).

Loss: the sum over heads of the cross-entropy on the clips a head applies to. Labels come
from the manifest items' `attributes` (an `energytta-data synth` manifest); a clip the
dataset replaced by a readable neighbour (an unreadable file) has no trustworthy labels and
is ignored. Validation reports the per-head accuracy, which the export keeps in the
checkpoint's metadata (`energytta.eval.classifier.save_classifier`).
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from energytta.config import Config
from energytta.errors import UserError
from energytta.eval.classifier import IGNORE, LABELS, SynthClassifier, save_classifier, targets
from energytta.train.logging import read_metrics
from energytta.train.objectives.base import Objective, TrainContext, ValContext, model_inputs

EXPORT_FILE = "synth_classifier.safetensors"
CLASSIFIER_RATE = 16000  # the classifier's front-end is the 16 kHz AudioLDM log-mel


def classifier_loss(logits: dict[str, torch.Tensor], y: dict[str, torch.Tensor]
                    ) -> torch.Tensor:
    """Sum over heads of the cross-entropy over the clips each head applies to."""
    total = logits["type"].new_zeros(())
    for head, out in logits.items():
        if (y[head] != IGNORE).any():
            total = total + F.cross_entropy(out, y[head], ignore_index=IGNORE)
    return total


def _check_items(items: Any, split: str) -> None:
    if items is None or any("type" not in it.attributes for it in items):
        raise UserError(f"data.{split}: the classifier needs a manifest whose items carry "
                        "synth \"attributes\" (an `energytta-data synth` manifest)")


class ClassifierObjective(Objective):
    """Cross-entropy of the synth-classifier's attribute heads.

    Args:
        cfg: `classifier.*` shapes the network; `audio.sample_rate` must be 16 kHz.
        model: the `SynthClassifier` being trained.
        device: where it trains.
    """

    kind = "classifier"

    def __init__(self, cfg: Config, model: nn.Module, device: torch.device) -> None:
        self.cfg, self.model, self.device = cfg, model, device
        self.val_accuracy: dict[str, float] = {}

    @classmethod
    def build(cls, cfg: Config, ctx: TrainContext) -> "ClassifierObjective":
        if cfg.audio.sample_rate != CLASSIFIER_RATE:
            raise UserError(f"the synth-classifier reads {CLASSIFIER_RATE} Hz audio; set "
                            f"audio.sample_rate={CLASSIFIER_RATE}")
        _check_items(getattr(ctx.dataset, "items", None), "train")
        return cls(cfg, SynthClassifier(cfg.classifier).to(ctx.device), ctx.device)

    def inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """-> wav (B, S) and labels {head: (B,) class index or IGNORE} on device."""
        items = batch.get("items")
        _check_items(items, "train/val")
        rows = [targets(it.attributes) if it.caption == caption else dict.fromkeys(LABELS, IGNORE)
                for it, caption in zip(items, batch["captions"])]
        labels = {h: torch.tensor([r[h] for r in rows], device=self.device) for h in LABELS}
        return {"wav": batch["wav"].to(self.device), "labels": labels}

    def __call__(self, model: nn.Module, wav: torch.Tensor, labels: dict[str, torch.Tensor],
                 generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """wav (B, S) at 16 kHz -> (loss, {}); dropout draws from the step's seeded RNG."""
        return classifier_loss(model(wav)["logits"], labels), {}

    @torch.no_grad()
    def validate(self, model: nn.Module, ctx: ValContext) -> dict[str, float]:
        """Mean loss and per-head accuracy ("acc_<head>") over the clips a head applies to."""
        hits: dict[str, list[torch.Tensor]] = {h: [] for h in LABELS}
        total, count = 0.0, 0
        for batch in ctx.batches:
            inputs = model_inputs(batch)
            logits = model(inputs["wav"])["logits"]
            n = inputs["wav"].shape[0]
            total, count = total + float(classifier_loss(logits, inputs["labels"])) * n, count + n
            for h, y in inputs["labels"].items():
                keep = y != IGNORE
                hits[h].append((logits[h].argmax(dim=1) == y)[keep])
        acc = {h: float(torch.cat(v).float().mean()) if torch.cat(v).numel() else float("nan")
               for h, v in hits.items()}
        self.val_accuracy = acc
        return {"loss": total / max(1, count), **{f"acc_{h}": a for h, a in acc.items()}}

    def export(self, model: nn.Module, out: Path) -> Path:
        """`out/synth_classifier.safetensors` with the last validation's accuracy."""
        path = out / EXPORT_FILE
        if not self.val_accuracy:  # a resumed run that was already validated at its last step
            rows = read_metrics(out / "metrics.jsonl", stage="val")
            self.val_accuracy = {k[len("val/acc_"):]: v for k, v in (rows[-1] if rows else {})
                                 .items() if k.startswith("val/acc_")}
        save_classifier(model, path, {"val_accuracy": self.val_accuracy,
                                      "train_manifest": self.cfg.data.train,
                                      "val_manifest": self.cfg.data.val,
                                      "train": asdict(self.cfg.train)})
        return path
