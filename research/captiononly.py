"""Caption-only distillation study: docs/captiononly.md.

    python -m research.captiononly --train --out docs/captiononly.md

Trains (with --train; resumed when a run stopped early, reused when finished) each arm of
the ablation into RUNS/<arm> with `energytta-train --config captiononly` and the arm's
overrides, all at the same step budget, seed and captions, then scores every arm's export
at one decoding iteration (its one pass) and the shipped teacher and paired-data student
at --iterations, with the scoring of research/reports/quality.md (the first --limit captions
of the synthetic test split; rows cached in WORK and reused while the checkpoint and
settings are unchanged). The page also shows each arm's validation curve (the generation
check the loop logs: type / attribute accuracy of clips generated from 32 validation
captions).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from energytta.errors import UserError

# arm -> (what it changes, overrides on top of configs/captiononly.yaml). "step0" is the
# generator before any VSD step (the teacher's head read once at t = T-1): what the method
# starts from. Every other arm changes one thing from "main".
ARMS: dict[str, tuple[str, list[str]]] = {
    "step0": ("no VSD step: the teacher read once at t = T-1",
              ["train.steps=1", "train.lr=1e-12", "train.warmup_steps=0"]),
    "main": ("the recipe: real CFG 4.5, LoRA rank 8, no TV", []),
    "tv-l1": ("+ TV, L1, λ_TV = 0.03", ["vsd.tv_weight=0.03", "vsd.tv_norm=l1"]),
    "tv-l1-small": ("+ TV, L1, λ_TV = 0.01", ["vsd.tv_weight=0.01", "vsd.tv_norm=l1"]),
    "tv-l2": ("+ TV, L2, λ_TV = 0.03", ["vsd.tv_weight=0.03", "vsd.tv_norm=l2"]),
    "rank4": ("LoRA rank 4", ["vsd.lora_rank=4", "vsd.lora_alpha=4"]),
    "cfg1": ("no guidance on the real score (real CFG 1)", ["vsd.real_cfg=1"]),
    "captions1k": ("1,000 training captions", ["data.train={captions1k}"]),
    "long": ("the recipe at 3× the steps (450)", ["train.steps=450"]),
}
CAPTIONS_1K = 1000


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="research/captiononly.py",
                                description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, metavar="MD", help="write the markdown page here")
    p.add_argument("--train", action="store_true", help="train the arms that are missing")
    p.add_argument("--arms", default=",".join(ARMS), help="arms to train / report")
    p.add_argument("--steps", type=int, default=150, help="VSD steps per arm (default 150)")
    p.add_argument("--runs", default="runs/vsd", metavar="DIR", help="arm run folders")
    p.add_argument("--captions", default="data/synth10k/train.jsonl", metavar="MANIFEST",
                   help="caption source of the arms (its audio is never opened)")
    p.add_argument("--reference", default="data/synth10k/test.jsonl", metavar="MANIFEST")
    p.add_argument("--limit", type=int, default=100, metavar="N")
    p.add_argument("--iterations", type=int, default=16,
                   help="decoding iterations of the teacher and paired-student rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default="runs/captiononly_rows", metavar="DIR")
    return p


# ------------------------------------------------------------------ training
def arm_overrides(args: argparse.Namespace, arm: str) -> list[str]:
    """The arm's full override list (same budget, seed and captions for every arm)."""
    extra = [o.format(captions1k=_captions_1k(args)) if "{captions1k}" in o else o
             for o in ARMS[arm][1]]
    base = [f"train.out_dir={Path(args.runs) / arm}", f"train.steps={args.steps}",
            f"data.train={args.captions}", "train.sample_prompts=[]",
            f"train.val_every={max(1, args.steps // 3)}"]
    return base + extra  # later keys win: step0's train.steps=1


def _captions_1k(args: argparse.Namespace) -> str:
    """A caption file of the first CAPTIONS_1K captions of --captions (written once)."""
    from energytta.data.captions import CaptionDataset
    from energytta.utils import atomic_write_text

    path = Path(args.runs) / "captions1k.txt"
    if not path.is_file():
        captions = CaptionDataset.from_source(args.captions).captions[:CAPTIONS_1K]
        atomic_write_text(path, "\n".join(captions) + "\n")
    return str(path)


def train_arm(args: argparse.Namespace, arm: str) -> Path:
    """Train (or finish, or reuse) one arm -> its exported model.safetensors; the wall time
    of each leg is appended to RUNS/<arm>/legs.txt."""
    from energytta.checkpoint import latest_checkpoint
    from energytta.config import load_config
    from energytta.train.loop import train

    out = Path(args.runs) / arm
    export = out / "model.safetensors"
    cfg = load_config("captiononly", arm_overrides(args, arm))
    done = latest_checkpoint(out)
    if export.is_file() and done is not None and done.name == f"step-{cfg.train.steps:07d}":
        return export
    start = time.time()
    train(cfg, resume=done is not None)
    with open(out / "legs.txt", "a", encoding="utf-8") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M')} {cfg.train.steps} steps, "
                f"{time.time() - start:.0f} s\n")
    return export


# ------------------------------------------------------------------ rows
def rows(args: argparse.Namespace, arms: list[str]) -> dict[str, dict[str, Any]]:
    """Scored rows: each arm at K = 1, the shipped teacher and student at --iterations."""
    from energytta.eval.embedders import get_embedder
    from energytta.pipeline import resolve_checkpoint
    from research.quality import get_row
    from research.rows import EMBEDDERS, MemoEmbedder

    embedders = {n: MemoEmbedder(get_embedder(n, "cpu")) for n in EMBEDDERS}
    out = {}
    for name in ("teacher", "student"):
        out[name] = get_row(args, name, resolve_checkpoint(name), args.iterations, embedders)
    shipped = resolve_checkpoint("captiononly")
    if shipped.is_file():  # the shipped file (float16 export of an arm)
        out["shipped"] = get_row(args, "captiononly", shipped, 1, embedders,
                                 name="shipped-captiononly")
    for arm in arms:
        ckpt = Path(args.runs) / arm / "model.safetensors"
        if not ckpt.is_file():
            raise UserError(f"{ckpt} is missing: train the arm first (--train)")
        out[arm] = get_row(args, "captiononly", ckpt, 1, embedders, name=f"vsd-{arm}")
    return out


def val_curve(args: argparse.Namespace, arm: str) -> list[dict[str, Any]]:
    """The arm's validation rows (step, gen_type, gen_attributes, gen_count)."""
    from energytta.train.logging import read_metrics

    return read_metrics(Path(args.runs) / arm / "metrics.jsonl", "val")


def legs(args: argparse.Namespace, arm: str) -> str:
    path = Path(args.runs) / arm / "legs.txt"
    return "; ".join(path.read_text().splitlines()) if path.is_file() else "–"


def main(argv: list[str]) -> int:
    import torch

    args = build_parser().parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise UserError(f"--arms: unknown {bad} (valid: {', '.join(ARMS)})")
    for path in (args.captions, args.reference):
        if not Path(path).is_file():
            raise UserError(f"{path} not found; make the corpus with `energytta-data synth "
                            "--out data/synth10k --num 10000 --seconds 4`")
    torch.set_num_threads(args.threads)
    if args.train:
        for arm in arms:
            train_arm(args, arm)
    scored = rows(args, arms)
    if args.out:
        from research.captiononly_page import render
        from energytta.utils import atomic_write_text

        meta = {"command": "python -m research.captiononly " + " ".join(argv),
                "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch "
                f"{torch.__version__}", "date": time.strftime("%Y-%m-%d")}
        curves = {a: val_curve(args, a) for a in arms}
        atomic_write_text(args.out, render(args, arms, scored, curves,
                                           {a: legs(args, a) for a in arms}, meta))
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from energytta.errors import run_cli

    raise SystemExit(run_cli(main))
