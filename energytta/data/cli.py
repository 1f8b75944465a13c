"""`energytta-data`: build the synthetic corpus (`synth`), check manifests (`check`) and
cache a manifest's latents (`cache`).

`energytta.cli.data_main` calls `main(argv)` and turns `UserError` into one error line.
"""
from __future__ import annotations

import argparse
import os
import time

from energytta.cli_help import DefaultsHelpFormatter, HelpFormatter
from energytta.config import CONFIG_HELP
from energytta.errors import UserError

DESCRIPTION = """\
Data tools for energytta.

  synth   write the procedural captioned corpus (the embedded default dataset):
          DIR/audio/*.wav, DIR/{train,val,test}.jsonl, DIR/heldout_combinations.json
  check   read a manifest (JSONL, AudioCaps CSV or Clotho CSV) and verify every audio file
  cache   encode a manifest's audio (codec) and captions (text encoder) once, into shards
          that training reads instead of the audio (data.train=DIR)

examples:
  energytta-data synth --out data/synth --num 2000 --seconds 4 --seed 0
  energytta-data check data/synth/train.jsonl
  energytta-data check audiocaps/train.csv --audio-dir /datasets/audiocaps/wav
  energytta-data cache --manifest data/synth/train.jsonl --out data/cache/train \
      --config shipped_teacher
  energytta-data cache --manifest audiocaps/train.csv --audio-dir /datasets/audiocaps/wav \
      --out data/cache/audiocaps --dtype float16 --workers 4
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="energytta-data", description=DESCRIPTION,
                                formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="{synth,check,cache}")
    s = sub.add_parser(
        "synth", help="generate the synthetic captioned corpus",
        formatter_class=DefaultsHelpFormatter,
        description="Generate the procedural corpus: 15 sound types with audible, captioned "
        "attributes (pitch, count, tempo, loudness, fade, direction, background). Output is "
        "identical for a given --seed, whatever --workers is. 80/10/10 train/val/test; the "
        "test split also holds attribute combinations never seen in train/val.")
    s.add_argument("--out", required=True, help="output folder (created)")
    s.add_argument("--num", type=int, default=2000, help="number of clips")
    s.add_argument("--seconds", type=float, default=4.0, help="clip length, 1 to 60")
    s.add_argument("--seed", type=int, default=0, help="corpus seed, >= 0")
    s.add_argument("--workers", type=int, default=0,
                   help="processes (default 0 = number of CPUs); does not change the output")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    c = sub.add_parser(
        "check", help="verify a manifest and its audio files",
        formatter_class=DefaultsHelpFormatter,
        description="Read MANIFEST (.jsonl, AudioCaps .csv or Clotho .csv), report item "
        "counts, total/min/max duration and sample rates, and list every missing, unreadable "
        "or empty audio file and every malformed row (one line each). The manifest is "
        "streamed: memory stays flat on millions of rows. Exit code 1 if anything is bad.")
    c.add_argument("manifest", help="manifest file")
    c.add_argument("--json", action="store_true",
                   help="print one JSON document instead of the tables (for scripts: "
                   "nothing wrapped, no progress bar)")
    c.add_argument("--audio-dir", default=None,
                   help="folder holding the audio (CSV manifests; default: see docs)")
    _cache_parser(sub)
    return p


def _cache_parser(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "cache", help="encode a manifest's latents and captions once",
        formatter_class=DefaultsHelpFormatter,
        description="Encode MANIFEST's audio with the configured codec and its captions with "
        "the text encoder, once, into safetensors shards in --out that training reads instead "
        "of the audio (data.train=OUT). Resumable: finished shards are kept (each is written "
        "atomically), whatever --workers; a folder made with other settings, dtype or "
        "manifest is refused. "
        "Format: energytta/data/cache.py.")
    c.add_argument("--manifest", required=True, help="JSONL / AudioCaps / Clotho manifest")
    c.add_argument("--out", required=True, help="cache folder (created; resumable)")
    c.add_argument("--config", default=None, help=CONFIG_HELP + " (default: built-in defaults)")
    c.add_argument("--audio-dir", default=None, help="audio folder for CSV manifests")
    c.add_argument("--batch-size", type=int, default=16, help="clips per encoder pass")
    c.add_argument("--shard-size", type=int, default=256, help="items per shard file")
    c.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', ...")
    c.add_argument("--dtype", default="float32", choices=("float32", "float16"),
                   help="how latents and text states are stored (float16: half the disk; "
                   "training reads them as float32)")
    c.add_argument("--workers", type=int, default=1,
                   help="processes encoding shards in parallel (one GPU each when there "
                   "are several; the result equals one process's)")
    c.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. audio.n_mels=64")


MAX_SYNTH_SECONDS = 60.0  # a clip is a few events; longer asks for memory, not realism


def _check_synth(args: argparse.Namespace) -> None:
    """Every synth flag's range and the output folder, before any clip is rendered."""
    import math

    from energytta.utils import check_writable

    if args.num < 1:
        raise UserError(f"--num must be >= 1, got {args.num}")
    if not (math.isfinite(args.seconds) and 1.0 <= args.seconds <= MAX_SYNTH_SECONDS):
        raise UserError(f"--seconds must be a number from 1 (events need room) to "
                        f"{MAX_SYNTH_SECONDS:g} (each clip is held in memory), got "
                        f"{args.seconds}")
    if not 0 <= args.seed < 2 ** 63:
        raise UserError(f"--seed must be in [0, 2**63), got {args.seed}")
    check_writable(args.out, "--out", folder=True)


def _synth(args: argparse.Namespace) -> int:
    from energytta.data.synth import generate

    _check_synth(args)
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

    return check_manifest(args.manifest, audio_dir=args.audio_dir, as_json=args.json)


def _cache(args: argparse.Namespace) -> int:
    import json

    from energytta.config import load_config
    from energytta.data.cache import cache

    cfg = load_config(args.config, args.overrides)
    index = cache(cfg, args.manifest, args.out, args.batch_size, args.shard_size,
                  args.audio_dir, args.device, dtype=args.dtype, workers=args.workers)
    info = json.loads(index.read_text(encoding="utf-8"))
    print(f"cached {info['num_items']} items in {len(info['shards'])} shard(s) -> {index}")
    return 0


def main(argv: list[str]) -> int:
    """Parse `argv` (without the program name) and run the subcommand; returns exit code."""
    args = _parser().parse_args(argv)
    return {"synth": _synth, "check": _check, "cache": _cache}[args.command](args)
