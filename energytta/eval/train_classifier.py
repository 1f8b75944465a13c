"""Train the synth-classifier embedder: a thin forwarder to the one training loop.

The classifier trains as an objective of `energytta-train`
(`energytta.train.objectives.classifier`), configured by the typed `classifier:` section:

    energytta-train --config synth_classifier

This module keeps the older entry point (`energytta-eval train-classifier` calls `main`),
mapping its flags onto config overrides and copying the checkpoint to `--out`:

    python -m energytta.eval.train_classifier --train data/synth/train.jsonl \
        --val data/synth/val.jsonl --out energytta/assets/synth_classifier.safetensors
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from energytta.cli_help import DefaultsHelpFormatter
from energytta.config import CONFIG_HELP
from energytta.errors import run_cli

PROG = "python -m energytta.eval.train_classifier"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """Args: prog: the command name usage and errors show (`energytta-eval
    train-classifier` when reached through energytta-eval)."""
    p = argparse.ArgumentParser(
        prog=prog, formatter_class=DefaultsHelpFormatter,
        description="Train the synth-classifier evaluation embedder (energytta-train "
                    "--config synth_classifier, with these flags as overrides).")
    p.add_argument("--config", default="synth_classifier", help=CONFIG_HELP)
    p.add_argument("--train", default="data/synth/train.jsonl", metavar="MANIFEST",
                   help="training manifest")
    p.add_argument("--val", default="data/synth/val.jsonl", metavar="MANIFEST",
                   help="validation manifest")
    p.add_argument("--out", default="energytta/assets/synth_classifier.safetensors",
                   help="where the trained checkpoint is copied")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--resume", action="store_true", help="continue the run in train.out_dir")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. train.steps=100 train.out_dir=runs/c2")
    return p


def train_and_copy(argv: list[str], prog: str = PROG) -> int:
    """Parse, train the classifier in the one loop, copy its export to --out (raises
    UserError on bad input; `main` turns that into the exit code)."""
    args = build_parser(prog).parse_args(argv)  # before the heavy imports: --help is instant
    import torch

    from energytta.config import load_config
    from energytta.eval.classifier import load_classifier
    from energytta.train.loop import train
    from energytta.train.objectives.classifier import EXPORT_FILE
    from energytta.utils import atomic_path

    cfg = load_config(args.config, [f"data.train={args.train}", f"data.val={args.val}",
                                    "train.objective=classifier", *args.overrides])
    torch.set_num_threads(args.threads)
    train(cfg, resume=args.resume)
    trained = Path(cfg.train.out_dir) / EXPORT_FILE
    with atomic_path(args.out) as tmp:
        shutil.copyfile(trained, tmp)
    print(json.dumps({"val_accuracy": load_classifier(args.out)[1]["val_accuracy"],
                      "out": args.out}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Args: argv without the program name (None reads sys.argv). Returns the exit code."""
    return run_cli(train_and_copy, argv)


if __name__ == "__main__":
    sys.exit(main())
