"""Audio embedders behind one interface, chosen by name (`get_embedder`).

| name | features (FD) | logits (KL / IS) | needs |
|---|---|---|---|
| `mel-stats` | per-bin mean and std of the AudioLDM log-mel frames (128-d) | - | nothing |
| `synth-classifier` | penultimate layer (128-d) | the `type` head (15) | shipped checkpoint |
| `panns-cnn14` | CNN14 `fc1` (2048-d) | `fc_audioset` (527) | `--panns-ckpt` file |
| `vggish` | 128-d per 0.96 s frame (FAD) | - | `--vggish-ckpt` file |
| `clap` | audio embedding (CLAP score; FD) | - | `--clap-model` folder |

Every embedder takes one clip at a time (clips may differ in length) as a float32 tensor
at its `sample_rate` and returns an `Embedding`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from energytta.errors import UserError

NAMES = ("mel-stats", "synth-classifier", "panns-cnn14", "vggish", "clap")


@dataclass
class Embedding:
    """features: (F, D) — one row per clip, or per frame (VGGish); logits: (C,) or None."""

    features: np.ndarray
    logits: np.ndarray | None = None


class Embedder(ABC):
    """Base class. `metric` names its FD in reports ("fd" or "fad"); `multilabel` logits
    (AudioSet's 527 sigmoid classes) also get the sigmoid KL."""

    name = ""
    sample_rate = 16000
    metric = "fd"
    has_logits = False
    multilabel = False

    @abstractmethod
    def embed(self, wav: torch.Tensor) -> Embedding:
        """wav (S,) float32 at `sample_rate` -> Embedding."""


class MelStats(Embedder):
    """Mean and standard deviation over time of each AudioLDM log-mel bin (64 + 64)."""

    name = "mel-stats"

    def __init__(self) -> None:
        from energytta.audio.mel import MelFrontend
        from energytta.config import AudioConfig

        self.frontend = MelFrontend(AudioConfig())

    @torch.no_grad()
    def embed(self, wav: torch.Tensor) -> Embedding:
        mel = self.frontend(wav[None])[0]  # (64, T)
        feats = torch.cat([mel.mean(dim=1), mel.std(dim=1)])
        return Embedding(feats[None].numpy().astype(np.float64))


class ModelEmbedder(Embedder):
    """A torch model returning (features (1, D), logits (1, C) | None) for wav (1, S)."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.model, self.device = model.to(device).eval(), device

    @abstractmethod
    def _run(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """wav (1, S) on the model's device -> features (F, D), logits (1, C) or None."""

    @torch.no_grad()
    def embed(self, wav: torch.Tensor) -> Embedding:
        feats, logits = self._run(wav.to(self.device)[None])
        return Embedding(feats.double().cpu().numpy(),
                         None if logits is None else logits[0].double().cpu().numpy())


class SynthClassifierEmbedder(ModelEmbedder):
    name, has_logits = "synth-classifier", True

    def __init__(self, path: str | Path | None, device: torch.device) -> None:
        from energytta.eval.classifier import load_classifier

        model, self.meta = load_classifier(path)
        super().__init__(model, device)

    def _run(self, wav):
        out = self.model(wav)
        return out["features"], out["logits"]["type"]

    def predict_type(self, wav: torch.Tensor) -> str:
        """The sound type (one of `synth.TYPES`) the classifier hears in wav (S,) at 16 kHz."""
        from energytta.eval.classifier import LABELS

        return LABELS["type"][int(np.argmax(self.embed(wav).logits))]


class PannsEmbedder(ModelEmbedder):
    name, has_logits, multilabel = "panns-cnn14", True, True

    def __init__(self, path: str | Path, device: torch.device) -> None:
        from energytta.eval.panns import load_cnn14

        super().__init__(_load("--panns-ckpt", path, load_cnn14), device)

    def _run(self, wav):
        out = self.model(wav)
        return out["2048"], out["logits"]


class VggishEmbedder(ModelEmbedder):
    name, metric = "vggish", "fad"

    def __init__(self, path: str | Path, device: torch.device) -> None:
        from energytta.eval.vggish import load_vggish

        super().__init__(_load("--vggish-ckpt", path, load_vggish), device)

    def _run(self, wav):
        from energytta.eval.vggish import waveform_to_examples

        return self.model(waveform_to_examples(wav[0])), None  # (frames, 128)


class ClapEmbedder(Embedder):
    """transformers' CLAP from a local folder: audio and text embeddings (CLAP score)."""

    name = "clap"

    def __init__(self, folder: str | Path, device: torch.device) -> None:
        from energytta.eval.clap import open_scorer

        if not folder:
            raise UserError("the clap embedder needs --clap-model DIR (a local transformers "
                            "CLAP folder, e.g. laion/clap-htsat-unfused saved to disk)")
        self.scorer = open_scorer(folder, device)
        self.sample_rate = self.scorer.sample_rate

    @torch.no_grad()
    def embed(self, wav: torch.Tensor) -> Embedding:
        return Embedding(self.scorer.audio_embeddings([wav.numpy()]))


def _load(flag: str, path: str | Path | None, loader: Any) -> torch.nn.Module:
    """Run `loader(path)`, turning a missing or wrong file into a UserError naming `flag`."""
    if not path:
        raise UserError(f"this embedder needs {flag} PATH (the official checkpoint file; "
                        "see docs/evaluation.md — nothing is downloaded)")
    if not Path(path).is_file():
        raise UserError(f"{flag}: file not found: {path}")
    try:
        return loader(path)
    except (RuntimeError, ValueError, KeyError, OSError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:300]
        raise UserError(f"{flag} {path}: cannot load it as the expected checkpoint ({first})"
                        ) from None


def get_embedder(name: str, device: torch.device | str = "cpu", **paths: Any) -> Embedder:
    """Build embedder `name`.

    Args:
        name: one of NAMES.
        device: where the model runs.
        paths: panns_ckpt, vggish_ckpt, clap_model, classifier_ckpt (None = shipped).
    """
    device = torch.device(device)
    if name == "mel-stats":
        return MelStats()
    if name == "synth-classifier":
        return SynthClassifierEmbedder(paths.get("classifier_ckpt"), device)
    if name == "panns-cnn14":
        return PannsEmbedder(paths.get("panns_ckpt"), device)
    if name == "vggish":
        return VggishEmbedder(paths.get("vggish_ckpt"), device)
    if name == "clap":
        return ClapEmbedder(paths.get("clap_model"), device)
    raise UserError(f"unknown embedder '{name}' (choose from {', '.join(NAMES)})")
