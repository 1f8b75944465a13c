"""`energytta-data`: build the synthetic corpus (`synth`), check manifests (`check`),
cache a manifest's latents (`cache`), write it as tar shards (`shards`) and turn a
LAION-CLAP or MS-CLAP checkpoint into a CLAP folder (`convert-clap`).

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
  shards  write a manifest's clips and captions into webdataset tar shards
          (DIR/shard-000000.tar, ...) that training streams (data.train=DIR)
  convert-clap  turn a LAION-CLAP .pt or MS-CLAP .pth checkpoint into a folder that
          energytta-eval --clap-model reads (LAION: a transformers CLAP folder)

examples:
  energytta-data synth --out data/synth --num 2000 --seconds 4 --seed 0
  energytta-data check data/synth/train.jsonl
  energytta-data check audiocaps/train.csv --audio-dir /datasets/audiocaps/wav
  energytta-data cache --manifest data/synth/train.jsonl --out data/cache/train \
      --config shipped_teacher
  energytta-data cache --manifest audiocaps/train.csv --audio-dir /datasets/audiocaps/wav \
      --out data/cache/audiocaps --dtype float16 --workers 4
  energytta-data shards --manifest data/synth/train.jsonl --out data/shards/train \
      --per-shard 1000
  energytta-data convert-clap --from laion 630k-audioset-best.pt --out models/clap-630k \
      --tokenizer models/roberta-base
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="energytta-data", description=DESCRIPTION,
                                formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True,
                           metavar="{synth,check,cache,shards,convert-clap}")
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
    _shards_parser(sub)
    _convert_clap_parser(sub)
    return p


def _shards_parser(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "shards", help="write a manifest as webdataset tar shards",
        formatter_class=DefaultsHelpFormatter,
        description="Write MANIFEST's clips into tar shards OUT/shard-000000.tar, ... "
        "(--per-shard clips each): KEY.wav / KEY.flac (the file's bytes, not re-encoded) and "
        "KEY.json with the caption in \"text\", the layout stable-audio-tools and audiocraft "
        "read. Training streams them: data.train=OUT (or OUT/shard-{000000..000009}.tar). "
        "Format and resume rules: docs/real-data.md.")
    c.add_argument("--manifest", required=True, help="JSONL / AudioCaps / Clotho manifest")
    c.add_argument("--out", required=True, help="folder for the shards (created; empty)")
    c.add_argument("--per-shard", type=int, default=1000, help="clips per shard")
    c.add_argument("--audio-dir", default=None, help="audio folder for CSV manifests")


def _convert_clap_parser(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "convert-clap", help="LAION-CLAP / MS-CLAP checkpoint -> CLAP folder",
        formatter_class=DefaultsHelpFormatter,
        description="Write a CLAP folder that energytta-eval --clap-model reads, from a "
        "checkpoint as its authors released it. --from laion: a LAION-CLAP .pt "
        "(630k-audioset-best.pt, 630k-audioset-fusion-best.pt, "
        "music_audioset_epoch_15_esc_90.14.pt, ...; HTSAT + RoBERTa) becomes a transformers "
        "CLAP folder (ClapModel as safetensors, config, LAION's 48 kHz feature extractor, the "
        "tokenizer), also usable as text.extra_model. --from msclap: an MS-CLAP .pth "
        "(CLAP_weights_2022.pth: CNN14 + BERT; CLAP_weights_2023.pth: HTSAT + GPT-2) becomes "
        "energytta's MS-CLAP folder (msclap.json, model.safetensors, the tokenizer). The file "
        "is read without running pickled code. Format: energytta/eval/clap_convert.py.")
    c.add_argument("checkpoint", metavar="CKPT", help="the .pt / .pth file")
    c.add_argument("--from", dest="kind", required=True, choices=("laion", "msclap"),
                   help="which CLAP released CKPT")
    c.add_argument("--out", required=True, help="folder to write (must not exist yet)")
    c.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="folder with the text model's tokenizer, which a checkpoint file "
                   "does not hold: RoBERTa's for laion (roberta-base, or a transformers CLAP "
                   "folder such as laion/clap-htsat-unfused); bert-base-uncased's (2022) or "
                   "gpt2's (2023) for msclap")


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


def _shards(args: argparse.Namespace) -> int:
    from energytta.data.shards import write_shards
    from energytta.utils import check_writable

    check_writable(args.out, "--out", folder=True)
    paths = write_shards(args.manifest, args.out, args.per_shard, args.audio_dir)
    print(f"wrote {len(paths)} shard(s) to {args.out} (data.train={args.out})")
    return 0


def _convert_clap(args: argparse.Namespace) -> int:
    from pathlib import Path

    from energytta.eval.clap_convert import convert
    from energytta.utils import check_writable

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} already exists; name a new folder (nothing is "
                        "overwritten)")
    check_writable(out, "--out", folder=True)
    config = convert(args.kind, args.checkpoint, out, args.tokenizer)
    if args.kind == "laion":
        audio = config.audio_config
        what = (f"HTSAT {audio.patch_embeds_hidden_size}-dim "
                f"{'fused' if audio.enable_fusion else 'unfused'}, {config.projection_dim}-dim "
                "embeddings")
    else:
        what = (f"MS-CLAP {config['audio']['encoder'].upper()} + {config['text']['kind']}, "
                f"{config['projection_dim']}-dim embeddings")
    print(f"wrote {out}: {what}; use it as energytta-eval --clap-model {out}")
    return 0


def main(argv: list[str]) -> int:
    """Parse `argv` (without the program name) and run the subcommand; returns exit code."""
    args = _parser().parse_args(argv)
    return {"synth": _synth, "check": _check, "cache": _cache,
            "shards": _shards, "convert-clap": _convert_clap}[args.command](args)
