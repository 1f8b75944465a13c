"""The synth-classifier: a small CNN over the AudioLDM log-mel with one head per attribute
of the synthetic corpus (energytta.data.synth). It gives in-domain features (penultimate
layer, for FD/FAD) and logits (the `type` head, for KL/IS) on the embedded benchmark, the
way PANNs CNN14 does for AudioSet-like audio.

Checkpoint: one .safetensors file; its header metadata "energytta_synth_classifier" holds
JSON (model settings, label vocabularies, validation accuracy). No pickle.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from energytta.config import AudioConfig, ClassifierConfig
from energytta.data import synth
from energytta.errors import UserError

META_KEY = "energytta_synth_classifier"
DEFAULT_CKPT = Path(__file__).resolve().parent.parent / "assets" / "synth_classifier.safetensors"
# Label vocabularies; None (the attribute is not named) is a class of its own where the
# generator leaves it unlabelled (medium pitch, normal level, no fade, ...).
LABELS: dict[str, list[Any]] = {
    "type": list(synth.TYPES),
    "pitch": ["low", None, "high"],
    "count": [1, 2, 3, 4, 5],
    "tempo": ["fast", None, "slow"],
    "loudness": ["soft", None, "loud"],
    "direction": ["rising", None, "falling"],
    "envelope": ["fade_in", None, "fade_out"],
    "background": [None, *synth.BACKGROUND_TYPES],
}
IGNORE = -100  # target of a head that does not apply to a clip (cross_entropy's ignore_index)


def applies(head: str, attrs: dict[str, Any]) -> bool:
    """Whether attribute `head` is defined for a clip of this type (see synth.py)."""
    kind = attrs["type"]
    return {"type": True, "loudness": True, "background": True,
            "pitch": kind in synth.PITCH,
            "count": kind in synth.EVENT_TYPES,
            "tempo": kind in synth.EVENT_TYPES or kind in synth.TEMPO_TEXTURES,
            "direction": kind in synth.DIRECTION_TYPES,
            "envelope": kind in synth.TEXTURE_TYPES}[head]


def targets(attrs: dict[str, Any]) -> dict[str, int]:
    """Class index per head for one clip's attributes (IGNORE where the head does not apply)."""
    out = {}
    for head, vocab in LABELS.items():
        value = attrs.get(head)
        out[head] = vocab.index(value) if applies(head, attrs) and value in vocab else IGNORE
    return out


class SynthClassifier(nn.Module):
    """wav (B, S) at 16 kHz -> {"features": (B, F), "logits": {head: (B, classes)}}.

    A 1-D CNN over time with the 64 mel bins as input channels: counts, tempi and fades are
    temporal patterns, and pitch is which bins light up, so full-resolution time with cheap
    channel mixing fits these labels (and trains in minutes on one CPU thread).

    Args:
        cfg: widths; the front-end is energytta's AudioLDM log-mel (64 bins, hop 160).
    """

    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__()
        from energytta.audio.mel import MelFrontend

        self.cfg = cfg
        self.sample_rate = AudioConfig().sample_rate
        self.frontend = MelFrontend(AudioConfig())
        self.bn0 = nn.BatchNorm1d(self.frontend.n_mels)  # per-bin input normalisation
        blocks, cin = [], self.frontend.n_mels
        for c in cfg.channels:
            blocks += [nn.Conv1d(cin, c, cfg.kernel, padding=cfg.kernel // 2, bias=False),
                       nn.BatchNorm1d(c), nn.ReLU(), nn.MaxPool1d(2)]
            cin = c
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(2 * cin, cfg.features)  # mean + max pooled over time
        self.dropout = nn.Dropout(cfg.dropout)
        # "type" is an nn.Module method, so ModuleDict keys carry a suffix.
        self.heads = nn.ModuleDict({f"{h}_head": nn.Linear(cfg.features, len(v))
                                    for h, v in LABELS.items()})

    def forward(self, wav: torch.Tensor) -> dict[str, Any]:
        return self.forward_mel(self.frontend(wav))

    def forward_mel(self, mel: torch.Tensor) -> dict[str, Any]:
        """log-mel (B, 64, T) -> features and logits (training caches the mels)."""
        x = self.bn0(mel)  # (B, 64, T)
        x = self.blocks(x)  # (B, C, T / 2^k)
        x = torch.cat([x.mean(dim=2), x.amax(dim=2)], dim=1)  # (B, 2C)
        feats = F.relu(self.fc(x))  # (B, F)
        h = self.dropout(feats)
        return {"features": feats, "logits": {k: self.heads[f"{k}_head"](h) for k in LABELS}}


def save_classifier(model: SynthClassifier, path: str | Path, extra: dict[str, Any]) -> None:
    """Write weights + JSON metadata (settings, vocabularies, `extra`) atomically."""
    from safetensors.torch import save_file

    from energytta.utils import atomic_path

    meta = {"config": asdict(model.cfg), "labels": LABELS, **extra}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={META_KEY: json.dumps(meta)})


def load_classifier(path: str | Path | None = None) -> tuple[SynthClassifier, dict[str, Any]]:
    """(model in eval mode, metadata) from a checkpoint; None = the shipped one."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path) if path else DEFAULT_CKPT
    if not path.is_file():
        raise UserError(f"synth-classifier checkpoint not found: {path} (train one with "
                        "`energytta-train --config synth_classifier`, see docs/evaluation.md)")
    with safe_open(str(path), "pt") as f:
        raw = (f.metadata() or {}).get(META_KEY)
    if raw is None:
        raise UserError(f"{path} is not a synth-classifier checkpoint (no {META_KEY} metadata)")
    meta = json.loads(raw)
    if meta["labels"] != json.loads(json.dumps(LABELS)):
        raise UserError(f"{path}: label vocabulary differs from this energytta version; retrain")
    model = SynthClassifier(ClassifierConfig(**meta["config"]))
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval(), meta
