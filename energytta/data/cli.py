"""`energytta-data`: build the synthetic corpus (`synth`) and check manifests (`check`).

`energytta.cli.data_main` calls `main(argv)` and turns `UserError` into one error line.
"""
from __future__ import annotations

import argparse
import os
import time

from energytta.errors import UserError

DESCRIPTION = """\
Data tools for energytta.

  synth   write the procedural captioned corpus (the embedded default dataset):
          DIR/audio/*.wav, DIR/{train,val,test}.jsonl, DIR/heldout_combinations.json
  check   read a manifest (JSONL, AudioCaps CSV or Clotho CSV) and verify every audio file

examples:
  energytta-data synth --out data/synth --num 2000 --seconds 4 --seed 0
  energytta-data check data/synth/train.jsonl
  energytta-data check audiocaps/train.csv --audio-dir /datasets/audiocaps/wav
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="energytta-data", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="{synth,check}")
    s = sub.add_parser(
        "synth", help="generate the synthetic captioned corpus",
        description="Generate the procedural corpus: 15 sound types with audible, captioned "
        "attributes (pitch, count, tempo, loudness, fade, direction, background). Output is "
        "identical for a given --seed, whatever --workers is. 80/10/10 train/val/test; the "
        "test split also holds attribute combinations never seen in train/val.")
    s.add_argument("--out", required=True, help="output folder (created)")
    s.add_argument("--num", type=int, default=2000, help="number of clips (default 2000)")
    s.add_argument("--seconds", type=float, default=4.0, help="clip length, >= 1 (default 4)")
    s.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    s.add_argument("--workers", type=int, default=0,
                   help="processes (default 0 = number of CPUs); does not change the output")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    c = sub.add_parser(
        "check", help="verify a manifest and its audio files",
        description="Read MANIFEST (.jsonl, AudioCaps .csv or Clotho .csv), report item "
        "counts, total/min/max duration and sample rates, and list every missing, unreadable "
        "or empty audio file. Exit code 1 if any file is bad.")
    c.add_argument("manifest", help="manifest file")
    c.add_argument("--audio-dir", default=None,
                   help="folder holding the audio (CSV manifests; default: see docs)")
    return p


def _synth(args: argparse.Namespace) -> int:
    from energytta.data.synth import generate

    if args.num < 1:
        raise UserError(f"--num must be >= 1, got {args.num}")
    if args.seconds < 1.0:
        raise UserError(f"--seconds must be >= 1 (events need room), got {args.seconds}")
    workers = args.workers or os.cpu_count() or 1
    t0 = time.perf_counter()
    counts = generate(args.out, args.num, args.seconds, args.seed, workers,
                      progress=not args.no_progress)
    split = ", ".join(f"{k} {v}" for k, v in counts.items())
    print(f"wrote {args.num} clips to {args.out} ({split}) in "
          f"{time.perf_counter() - t0:.1f} s with {workers} workers")
    return 0


def _check(args: argparse.Namespace) -> int:
    from energytta.data.manifest import check_manifest

    return check_manifest(args.manifest, audio_dir=args.audio_dir)


def main(argv: list[str]) -> int:
    """Parse `argv` (without the program name) and run the subcommand; returns exit code."""
    args = _parser().parse_args(argv)
    return {"synth": _synth, "check": _check}[args.command](args)
