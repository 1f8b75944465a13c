"""Train the synth-classifier embedder on the synthetic corpus's attribute labels.

    python -m energytta.eval.train_classifier --config configs/synth_classifier.yaml \
        --train data/synth/train.jsonl --val data/synth/val.jsonl \
        --out energytta/assets/synth_classifier.safetensors

Loss: the sum over heads of the cross-entropy on the clips a head applies to. The log-mels
of all clips are computed once (1,600 4-s clips are ~160 MB); each batch takes a random
crop of `train.crop_seconds` (a crop could cut off an event, so the default is the whole
clip). The checkpoint keeps the per-head validation accuracy.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from energytta.errors import UserError
from energytta.eval.classifier import (IGNORE, LABELS, ClassifierConfig, SynthClassifier,
                                       save_classifier, targets)


def load_split(manifest: str | Path, seconds: float
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(log-mels (N, 64, T) of the clips cut/padded to `seconds`, {head: (N,) classes})."""
    from energytta.audio.mel import MelFrontend
    from energytta.config import AudioConfig

    from energytta.audio.io import crop_or_pad, load_audio
    from energytta.data.manifest import read_manifest

    items = read_manifest(manifest)
    if any("type" not in it.attributes for it in items):
        raise UserError(f"{manifest}: items need synth \"attributes\" (a `energytta-data synth` "
                        "manifest)")
    n = int(round(seconds * 16000))
    wavs = np.stack([crop_or_pad(load_audio(it.audio, 16000), n) for it in items])
    ys = [targets(it.attributes) for it in items]
    frontend = MelFrontend(AudioConfig())
    with torch.no_grad():
        mels = torch.cat([frontend(torch.from_numpy(wavs[i:i + 64]))
                          for i in range(0, len(wavs), 64)])
    return mels, {h: torch.tensor([y[h] for y in ys]) for h in LABELS}


def loss_fn(logits: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> torch.Tensor:
    total = logits["type"].new_zeros(())
    for head, out in logits.items():
        if (y[head] != IGNORE).any():
            total = total + F.cross_entropy(out, y[head], ignore_index=IGNORE)
    return total


@torch.no_grad()
def accuracy(model: SynthClassifier, mels: torch.Tensor, y: dict[str, torch.Tensor],
             batch: int = 64) -> dict[str, float]:
    """Per-head accuracy over the clips each head applies to (mels (N, 64, T))."""
    model.eval()
    preds: dict[str, list] = {h: [] for h in LABELS}
    for i in range(0, len(mels), batch):
        out = model.forward_mel(mels[i:i + batch])["logits"]
        for h in LABELS:
            preds[h].append(out[h].argmax(dim=1))
    res = {}
    for h in LABELS:
        p, t = torch.cat(preds[h]), y[h]
        keep = t != IGNORE
        res[h] = float((p[keep] == t[keep]).float().mean()) if keep.any() else float("nan")
    return res


def train(cfg: dict, train_path: str, val_path: str, out: str, log=print) -> dict[str, float]:
    """Train, write the checkpoint to `out`, return the validation accuracy per head."""
    tc = cfg["train"]
    g = torch.Generator().manual_seed(int(tc["seed"]))
    torch.manual_seed(int(tc["seed"]))
    xtr, ytr = load_split(train_path, 4.0)
    xva, yva = load_split(val_path, 4.0)
    model = SynthClassifier(ClassifierConfig(**cfg["model"]))
    opt = torch.optim.AdamW(model.parameters(), lr=float(tc["lr"]),
                            weight_decay=float(tc["weight_decay"]))
    steps = int(tc["epochs"]) * (len(xtr) // int(tc["batch_size"]))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, float(tc["lr"]), total_steps=steps)
    crop = int(float(tc["crop_seconds"]) * 100)  # mel frames (hop 160 at 16 kHz)
    start = time.time()
    for epoch in range(int(tc["epochs"])):
        model.train()
        order = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(order) - int(tc["batch_size"]) + 1, int(tc["batch_size"])):
            idx = order[i:i + int(tc["batch_size"])]
            off = int(torch.randint(0, xtr.shape[-1] - crop + 1, (1,), generator=g))
            loss = loss_fn(model.forward_mel(xtr[idx, :, off:off + crop])["logits"],
                           {h: v[idx] for h, v in ytr.items()})
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        acc = accuracy(model, xva, yva)
        log(f"epoch {epoch + 1}: loss {loss.item():.3f}  val "
            + " ".join(f"{h} {a:.3f}" for h, a in acc.items()) + f"  ({time.time() - start:.0f} s)")
    save_classifier(model, out, {"val_accuracy": acc, "train_manifest": str(train_path),
                                 "val_manifest": str(val_path), "train": tc,
                                 "train_seconds": round(time.time() - start, 1)})
    return acc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m energytta.eval.train_classifier",
                                description="Train the synth-classifier evaluation embedder.")
    p.add_argument("--config", default="configs/synth_classifier.yaml")
    p.add_argument("--train", default="data/synth/train.jsonl", metavar="MANIFEST")
    p.add_argument("--val", default="data/synth/val.jsonl", metavar="MANIFEST")
    p.add_argument("--out", default="energytta/assets/synth_classifier.safetensors")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = p.parse_args(argv)
    try:
        if not Path(args.config).is_file():
            raise UserError(f"config not found: {args.config}")
        cfg = yaml.safe_load(Path(args.config).read_text())
        torch.set_num_threads(args.threads)
        acc = train(cfg, args.train, args.val, args.out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"val_accuracy": acc, "out": args.out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
