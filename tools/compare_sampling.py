"""Wall time per batch: energy-score student vs diffusion-head teacher sampling.

    python tools/compare_sampling.py --student runs/student_small/model.safetensors \
        --teacher runs/teacher_small/model.safetensors --batch-size 4 --iterations 16

For each checkpoint it times, per batch, (a) token decoding alone (`sampling.decode`: the
backbone and the head — where the two models differ) and (b) the whole pipeline batch
(text encoding, decoding, codec decode, vocoder). Both run with the same prompts, seed,
duration, iterations and guidance; one warm-up batch is discarded. Prints a table and
optionally writes JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from energytta.errors import UserError
from energytta.pipeline import TextToAudio, batch_seed
from energytta.sample_cli import read_prompts
from energytta.sampling import decode
from energytta.utils import atomic_write_text


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _time_decode(pipe: TextToAudio, prompts: list[str], s) -> float:
    """Seconds for token decoding of one batch (text encoded beforehand, not timed)."""
    states, mask = pipe.text_encoder(prompts)
    g = torch.Generator(device=pipe.device).manual_seed(batch_seed(s.seed, 0))
    n = pipe.model.tokens_for(s.duration)
    _sync(pipe.device)
    t0 = time.perf_counter()
    decode(pipe.model.backbone, pipe.model.head, states, mask, n, iterations=s.iterations,
           cfg=s.cfg, cfg_schedule=s.cfg_schedule, temperature=s.temperature, generator=g)
    _sync(pipe.device)
    return time.perf_counter() - t0


def _time_pipeline(pipe: TextToAudio, prompts: list[str], s) -> float:
    """Seconds for one full pipeline batch (text -> wav)."""
    _sync(pipe.device)
    t0 = time.perf_counter()
    pipe.generate(prompts, s)
    _sync(pipe.device)
    return time.perf_counter() - t0


def measure(path: str, prompts: list[str], args: argparse.Namespace) -> dict:
    """Median/min seconds per batch for one checkpoint."""
    pipe = TextToAudio.from_pretrained(path, args.device)
    s = pipe.settings(seed=0, duration=args.duration, iterations=args.iterations, cfg=args.cfg,
                      batch_size=len(prompts))
    _time_decode(pipe, prompts, s)  # warm-up: allocator, kernels, lazy imports
    dec = [_time_decode(pipe, prompts, s) for _ in range(args.repeats)]
    full = [_time_pipeline(pipe, prompts, s) for _ in range(args.repeats)]
    return {"checkpoint": path, "kind": pipe.kind, "head": pipe.cfg.head.kind,
            "head_sampling_steps": pipe.cfg.head.sampling_steps
            if pipe.cfg.head.kind == "diffusion" else 1,
            "batch_size": len(prompts), "iterations": s.iterations, "cfg": s.cfg,
            "duration": s.duration, "device": str(pipe.device), "threads": torch.get_num_threads(),
            "decode_s_median": statistics.median(dec), "decode_s_min": min(dec),
            "pipeline_s_median": statistics.median(full), "pipeline_s_min": min(full)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", required=True)
    p.add_argument("--teacher", required=True)
    p.add_argument("--prompts", default="examples/prompts.txt")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--iterations", type=int, default=None, help="default: each cfg.sample")
    p.add_argument("--cfg", type=float, default=None, help="default: each cfg.sample")
    p.add_argument("--duration", type=float, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    try:
        prompts = (read_prompts(args.prompts) * args.batch_size)[:args.batch_size]
        rows = [measure(args.student, prompts, args), measure(args.teacher, prompts, args)]
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{'kind':8} {'decode s/batch':>15} {'pipeline s/batch':>17}  (B={args.batch_size}, "
          f"K={rows[0]['iterations']}, median of {args.repeats})")
    for r in rows:
        print(f"{r['kind']:8} {r['decode_s_median']:15.3f} {r['pipeline_s_median']:17.3f}")
    print(f"teacher/student decode: {rows[1]['decode_s_median'] / rows[0]['decode_s_median']:.1f}x")
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
