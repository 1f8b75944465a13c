"""The frame ceiling A/B: generated clips rendered with and without it
(`energytta/audio/render.py`).

For each model, the first `--limit` captions of `--reference` are generated twice with the
same seed, once with decoded mel frames above a full-scale sine's held to that level (what
rendering does) and once without (`CEILING_DB = inf`); the page gives the active fraction
(frames above −30 dBFS on the audio as written) against the real clips of the same
captions, and the attribute checks.

    python -m research.ceiling_ab --models captiononly --limit 96 --out research/reports/ceiling.md
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np


def _row(wavs: np.ndarray, items: list) -> dict:
    import torch

    from energytta.eval.activity import waveform_active_fraction
    from energytta.eval.detectors import check_clip

    checks = [check_clip(w, it.attributes) for w, it in zip(wavs, items)]
    pooled = [v for c in checks for v in c.values()]
    per = {}
    for name in ("loudness", "pitch", "count", "tempo", "direction", "envelope"):
        vals = [c[name] for c in checks if name in c]
        per[name] = (float(np.mean(vals)), len(vals)) if vals else None
    active = float(waveform_active_fraction(torch.as_tensor(np.stack(wavs))).mean())
    return {"attributes": float(np.mean(pooled)), "per": per, "active": active}


def run_model(name: str, items: list, seed: int, duration: float) -> dict[str, dict]:
    import energytta.audio.render as render
    from energytta.pipeline import TextToAudio

    pipe = TextToAudio.from_pretrained(name, "cpu")
    out, kept = {}, render.CEILING_DB
    try:
        for arm, ceiling in (("without", math.inf), ("with", kept)):
            render.CEILING_DB = ceiling
            gen = pipe.generate([it.caption for it in items],
                                pipe.settings(seed=seed, duration=duration))
            out[arm] = _row(list(gen.wavs), items)
    finally:
        render.CEILING_DB = kept
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m research.ceiling_ab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="captiononly", help="comma-separated shipped names")
    p.add_argument("--reference", default="data/synth10k/val.jsonl",
                   help="manifest of captions with synth attributes")
    p.add_argument("--limit", type=int, default=96, help="captions (the first N)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="", help="markdown page (default: print)")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)

    import torch

    from energytta.audio.io import crop_or_pad, load_audio
    from energytta.data.manifest import read_manifest
    from energytta.utils import atomic_write_text

    items = read_manifest(args.reference)[:args.limit]
    duration = 4.0
    real = [crop_or_pad(load_audio(it.audio, 16000), int(duration * 16000), offset=0)
            for it in items]
    rows = {"real clips": {"-": _row(real, items)}}
    start = time.time()
    for name in args.models.split(","):
        rows[name] = run_model(name, items, args.seed, duration)
    lines = [
        "# The frame ceiling: generated clips rendered with and without it", "",
        "<!-- Written by research/ceiling_ab.py; edit that tool, not this page. -->",
        f"Regenerate with `python -m research.ceiling_ab --models {args.models} --limit "
        f"{args.limit} --out {args.out or 'PAGE'}` ({time.strftime('%Y-%m-%d')}, "
        f"{torch.get_num_threads()} thread(s), {time.time() - start:.0f} s).", "",
        f"The first {len(items)} captions of `{args.reference}`, {duration:g} s, seed "
        f"{args.seed}, each model at its defaults. `active`: frames (1024 samples, hop 160) "
        "above −30 dBFS on the audio as written; `attributes`: every named check of the "
        "analytic detectors pooled (accuracy, number of checks per attribute).", "",
        "| model | ceiling | active | attributes | loudness | pitch | count | tempo | "
        "direction | envelope |", "|" + "---|" * 10]
    for name, arms in rows.items():
        for arm, r in arms.items():
            cells = [f"{r['per'][k][0]:.3f} ({r['per'][k][1]})" if r["per"][k] else "–"
                     for k in ("loudness", "pitch", "count", "tempo", "direction", "envelope")]
            lines.append(f"| {name} | {arm} | {r['active']:.3f} | {r['attributes']:.3f} | "
                         + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if args.out:
        atomic_write_text(args.out, text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    from energytta.errors import run_cli

    sys.exit(run_cli(main))
