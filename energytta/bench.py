"""Batch-latency benchmark: one-step student vs diffusion teacher vs the backbone floor
(and the caption-only one-pass student).

    python tools/bench.py --config default --batch-sizes 1,8 --iterations 16 --duration 4
    python tools/bench.py --ckpt runs/student/model.safetensors \
        --teacher-ckpt runs/teacher/model.safetensors --device cuda --dtype bf16 --json b.json

Three generators share one backbone shape and one decoding loop (energytta.sampling.decode):
- student: the energy-score head, one pass per token;
- guided: the guidance-distilled student (docs/guidance.md): the same head, CFG in ONE
  conditional backbone row per clip instead of two;
- teacher: the diffusion head, `head.sampling_steps` (default 100) steps, CFG on ε;
- captiononly: the caption-only student (docs/captiononly.md): ONE backbone pass and one
  head pass per clip, whatever `--iterations` is (its rows record `decode_iterations`);
- floor: the head replaced by nothing (it returns zeros): backbone passes + scheduling only.
With `--config` all weights are random (any shape can be timed, e.g. impact_base);
with `--ckpt`/`--guided-ckpt`/`--teacher-ckpt`/`--captiononly-ckpt` the trained models
are used. The floor shares the first generator's backbone (and so its one or two rows).

For every batch size and generator: warm-up runs, then `--repeats` timed runs (median,
min, max) of the whole generation (text → decode → latents → mel → waveform), with device
synchronisation around the timings, and a split into stages (text, backbone, head, latent
decode, vocoder): on CUDA from one extra instrumented run, on CPU from the timed runs.
Output: a rich table and, with `--json`, one JSON line per (generator, batch size) with
machine/device/dtype/torch version.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from energytta.errors import UserError, run_cli
from energytta.pipeline import DTYPES  # the pipeline's autocast choices, timed as it runs them

GENERATORS = ("student", "guided", "teacher", "captiononly", "floor")
ONE_PASS = 1  # the caption-only student's decoding iterations


# ------------------------------------------------------------------------------ timing
class Clock:
    """Accumulates seconds per stage; synchronises the device around every measurement."""

    active = True

    def __init__(self, device: torch.device) -> None:
        self.device, self.stages = device, {}

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, key: str, fn, *args, **kwargs):
        self.sync()
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        self.sync()
        self.stages[key] = self.stages.get(key, 0.0) + time.perf_counter() - start
        return out


class NullHead(torch.nn.Module):
    """The floor: a head that costs nothing (returns zeros of the token shape)."""

    def __init__(self, token_dim: int) -> None:
        super().__init__()
        self.token_dim = token_dim

    def sample(self, z, temperature, generator, z_uncond=None, cfg_scale=1.0):
        return z.new_zeros(z.shape[0], self.token_dim)


class _TimedBackbone:
    def __init__(self, backbone, clock: Clock) -> None:
        self.backbone, self.clock = backbone, clock
        self.token_dim = getattr(backbone, "token_dim", None)
        # the sampler draws a one-pass generator's input noise when its backbone has this
        self.noise_proj = getattr(backbone, "noise_proj", None)
        # and guides in one conditional pass when it has this (a guidance-distilled student)
        self.guidance_proj = getattr(backbone, "guidance_proj", None)

    def __call__(self, *args, **kwargs):
        return self.clock.timed("backbone", self.backbone, *args, **kwargs)


class _TimedHead:
    def __init__(self, head, clock: Clock) -> None:
        self.head, self.clock, self.token_dim = head, clock, head.token_dim

    def sample(self, *args, **kwargs):
        return self.clock.timed("head", self.head.sample, *args, **kwargs)


class _TimedCodec:
    """The codec's two rendering stages, timed as "latent_decode" and "vocoder"."""

    def __init__(self, codec, clock) -> None:
        self.codec, self.clock = codec, clock

    def decode(self, latents):
        return self.clock.timed("latent_decode", self.codec.decode, latents)

    def vocode(self, mel, generator=None):
        return self.clock.timed("vocoder", self.codec.vocode, mel, generator=generator)

    def full_scale_db(self) -> float:
        return self.codec.full_scale_db()


# ------------------------------------------------------------------------------ setup
@dataclass
class Generator:
    """Everything one generator needs; `backbone`/`head` may be wrapped for timing."""

    name: str
    model: torch.nn.Module  # TTAModel (its backbone is shared by the floor)
    head: torch.nn.Module
    codec: torch.nn.Module
    cfg: object
    extra: dict = field(default_factory=dict)


def _random_model(cfg, kind: str, text_dim: int, device: torch.device,
                  guided: bool = False):
    from energytta.audio.codec import build_codec
    from energytta.config import from_dict, with_head_kind
    from energytta.models.tta import TTAModel

    data = cfg.to_dict()
    data["head"] = asdict(with_head_kind(from_dict(data).head, kind))
    data["model"]["noise_inputs"] = kind == "onestep"  # the caption-only student's input
    data["model"]["guidance_embed"] = guided  # the guidance-distilled student's output head
    cfg_k = from_dict(data)
    torch.manual_seed(0)
    model = TTAModel(cfg_k, text_dim).to(device).eval()
    return cfg_k, model, build_codec(cfg_k).to(device).eval()


def build_generators(args, overrides: list[str], device: torch.device
                     ) -> tuple[dict[str, Generator], torch.nn.Module]:
    """Student/teacher from checkpoints when given, else random weights at the config shape.

    Returns the generators to time and the text encoder (from the models' config).
    """
    from energytta.checkpoint import load_model
    from energytta.config import load_config
    from energytta.sampling import one_pass_guidance
    from energytta.text import build_text_encoder

    gens: dict[str, Generator] = {}
    paths = (("student", args.ckpt), ("guided", args.guided_ckpt),
             ("teacher", args.teacher_ckpt), ("captiononly", args.captiononly_ckpt))
    if any(path for _, path in paths):
        for name, path in paths:
            if path:
                cfg, kind, model, codec = load_model(path, device)
                gens[name] = Generator(name, model, model.head, codec, cfg,
                                       {"ckpt": str(path)})
        text_cfg = next(iter(gens.values())).cfg.text
        text_encoder = build_text_encoder(text_cfg).to(device)
    else:
        base = load_config(args.config, overrides)
        text_encoder = build_text_encoder(base.text).to(device)
        for name, kind in (("student", "energy"), ("guided", "energy"),
                           ("teacher", "diffusion"), ("captiononly", "onestep")):
            cfg, model, codec = _random_model(base, kind, text_encoder.dim, device,
                                              guided=name == "guided")
            gens[name] = Generator(name, model, model.head, codec, cfg)
    if "captiononly" in gens:
        gens["captiononly"].extra["decode_iterations"] = ONE_PASS
    chosen = [k for k in GENERATORS if k in gens and k in args.generators]
    ref = gens[(chosen or [k for k in GENERATORS if k in gens])[0]]  # floor shares its backbone
    gens["floor"] = Generator("floor", ref.model, NullHead(ref.model.token_dim), ref.codec,
                              ref.cfg)
    for gen in gens.values():  # decode's own rule (no negative prompt here)
        gen.extra["one_pass_cfg"] = one_pass_guidance(gen.model.backbone, gen.cfg.sample.cfg)
    return {k: gens[k] for k in GENERATORS if k in gens and k in args.generators}, text_encoder


def set_vocoder(gens: dict[str, Generator], vocoder: str | None) -> None:
    """Give every generator's codec the vocoder `vocoder` names (see --vocoder; None: each
    checkpoint's `sample.vocoder`, as the pipeline does); rows record it as "vocoder"."""
    from energytta.pipeline import apply_vocoder

    for gen in gens.values():
        v = vocoder or gen.cfg.sample.vocoder
        gen.extra["vocoder"] = (gen.cfg.codec.vocoder if v == "checkpoint"
                                else apply_vocoder(gen.codec, gen.cfg, v))


# ------------------------------------------------------------------------------ running
def generate(gen: Generator, text_encoder, prompts: list[str], args, clock: Clock | None,
             device: torch.device) -> None:
    """One full generation; with a clock, each stage is timed (with syncs)."""
    from energytta.audio.render import tokens_to_audio
    from energytta.sampling import DecodeSettings, decode

    clock = clock or _NoClock()
    model, s = gen.model, gen.cfg.sample
    N = model.tokens_for(args.duration)
    backbone = _TimedBackbone(model.backbone, clock) if clock.active else model.backbone
    head = _TimedHead(gen.head, clock) if clock.active else gen.head
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad(), _autocast(device, args.dtype):
        text, mask = clock.timed("text", text_encoder, prompts)
        k = gen.extra.get("decode_iterations", args.iterations)
        how = DecodeSettings.of(s, iterations=k, one_pass=None)
        tokens = decode(backbone, head, text, mask, N, how, generator=g)
        # the pipeline's own rendering path, its two stages timed
        tokens_to_audio(tokens, model.geometry, _TimedCodec(gen.codec, clock), generator=g)


class _NoClock:
    active = False

    def timed(self, key, fn, *args, **kwargs):
        return fn(*args, **kwargs)


def _autocast(device: torch.device, dtype: str):
    if DTYPES[dtype] is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=DTYPES[dtype])


def measure(gen: Generator, text_encoder, batch: int, args, device: torch.device) -> dict:
    """Warm-up, timed repeats and the per-stage split -> a result row.

    On CUDA the stage timers synchronise around every backbone/head call, which would
    perturb the totals, so the split comes from one extra instrumented run; on CPU
    synchronising costs nothing and every timed run also records its stages (medians).
    """
    prompts = [args.prompt] * batch
    for _ in range(args.warmup):
        generate(gen, text_encoder, prompts, args, None, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    split_inline = device.type != "cuda"
    totals, cpu, splits = [], [], []
    for _ in range(args.repeats):
        clock, stages = Clock(device), (Clock(device) if split_inline else None)
        cpu_start = time.process_time()
        clock.timed("total", generate, gen, text_encoder, prompts, args, stages, device)
        cpu.append(time.process_time() - cpu_start)
        totals.append(clock.stages["total"])
        if stages is not None:
            splits.append(stages.stages)
    if not split_inline:
        stages = Clock(device)
        generate(gen, text_encoder, prompts, args, stages, device)
        splits.append(stages.stages)
    stage_s = {k: statistics.median(s.get(k, 0.0) for s in splits) for k in splits[0]}
    median = statistics.median(totals)
    audio_s = batch * gen.model.frames_for(args.duration) / gen.codec.frames_per_second
    return {
        "generator": gen.name, "batch_size": batch, "total_s": median,
        "total_min_s": min(totals), "total_max_s": max(totals),
        # process CPU time (all threads): on a shared CPU it moves less than wall time
        "cpu_s": statistics.median(cpu),
        "decode_s": stage_s.get("backbone", 0.0) + stage_s.get("head", 0.0),
        "stages_s": stage_s, "audio_seconds": audio_s,
        "audio_s_per_s": audio_s / median, "rtf": median / audio_s,
        "peak_mem_mb": (torch.cuda.max_memory_allocated(device) / 2**20
                        if device.type == "cuda" else None),
        "params_m": sum(p.numel() for p in gen.model.parameters()) / 1e6,
        "head_steps": (gen.cfg.head.sampling_steps if gen.name == "teacher" else
                       (0 if gen.name == "floor" else 1)),
        **gen.extra,
    }


def add_ratios(rows: list[dict]) -> None:
    """Times as multiples of the floor, and the student's speed-up over the teacher.

    `x_floor` compares whole generations (median of the repeats); `decode_x_floor` compares
    the decoding loop alone (backbone + head, from the instrumented run).
    """
    by = {(r["generator"], r["batch_size"]): r for r in rows}
    for r in rows:
        floor, teacher = by.get(("floor", r["batch_size"])), by.get(("teacher", r["batch_size"]))
        if (r.get("decode_iterations", r["iterations"]) != r["iterations"]
                or (floor and floor.get("one_pass_cfg") != r.get("one_pass_cfg"))):
            floor = None  # against a floor of other passes or rows the ratio would mislead
        r["x_floor"] = r["total_s"] / floor["total_s"] if floor else None
        r["cpu_x_floor"] = r["cpu_s"] / floor["cpu_s"] if floor and floor["cpu_s"] > 0 else None
        r["decode_x_floor"] = (r["decode_s"] / floor["decode_s"]
                               if floor and floor["decode_s"] > 0 else None)
        r["speedup_vs_teacher"] = teacher["total_s"] / r["total_s"] if teacher else None


def machine_info(device: torch.device, args) -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "device": str(device), "dtype": args.dtype,
            "compile": args.compile, "iterations": args.iterations, "duration": args.duration}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def markdown_table(rows: list[dict], info: dict, command: str) -> str:
    """The same table as markdown, with the command line and machine that produced it."""
    head = ("| generator | batch | total s (min–max) | text | backbone | head | latent | "
            "vocoder | CPU s | audio s/s | RTF | × floor | CPU × floor | speed-up vs teacher |")
    lines = [f"`{command}`", "",
             f"{info['device']} ({info.get('gpu', info['cpu'])}, {info['threads']} threads), "
             f"{info['dtype']}, {info['iterations']} iterations, {info['duration']} s per "
             f"prompt, torch {info['torch']}", "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        st = r["stages_s"]
        cells = [r["generator"], str(r["batch_size"]),
                 f"{r['total_s']:.2f} ({r['total_min_s']:.2f}–{r['total_max_s']:.2f})",
                 *(f"{st.get(k, 0.0):.2f}" for k in
                   ("text", "backbone", "head", "latent_decode", "vocoder")),
                 f"{r['cpu_s']:.2f}", f"{r['audio_s_per_s']:.2f}", f"{r['rtf']:.3f}",
                 *("-" if r[k] is None else f"{r[k]:.2f}" for k in ("x_floor", "cpu_x_floor")),
                 "-" if r["speedup_vs_teacher"] is None else f"{r['speedup_vs_teacher']:.2f}×"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def print_table(rows: list[dict], info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    title = (f"{info['device']} {info['dtype']} · {info['iterations']} iterations · "
             f"{info['duration']} s · torch {info['torch']}")
    table = Table(title=title)
    for col in ("gen", "B", "total s", "spread", "text", "backbone", "head", "latent", "vocoder",
                "audio s/s", "RTF", "× floor", "speed-up"):
        table.add_column(col, justify="right")
    for r in rows:
        st = r["stages_s"]
        fmt = (lambda k: f"{st.get(k, 0.0):.3f}")
        table.add_row(r["generator"], str(r["batch_size"]), f"{r['total_s']:.3f}",
                      f"{r['total_min_s']:.3f}–{r['total_max_s']:.3f}", fmt("text"),
                      fmt("backbone"), fmt("head"), fmt("latent_decode"), fmt("vocoder"),
                      f"{r['audio_s_per_s']:.2f}", f"{r['rtf']:.3f}",
                      "-" if r["x_floor"] is None else f"{r['x_floor']:.2f}",
                      "-" if r["speedup_vs_teacher"] is None else f"{r['speedup_vs_teacher']:.2f}×")
    Console(width=170).print(table)


# ------------------------------------------------------------------------------ CLI
def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Extra key=value arguments override the config (e.g. head.sampling_steps=50).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--config", default="default", help="config for random weights")
    src.add_argument("--ckpt", help="student (or any) checkpoint to time")
    p.add_argument("--guided-ckpt", help="guidance-distilled student checkpoint to time "
                   "(one conditional backbone row per clip; docs/guidance.md)")
    p.add_argument("--teacher-ckpt", help="teacher checkpoint to time beside --ckpt")
    p.add_argument("--captiononly-ckpt", help="caption-only student checkpoint to time (one "
                   "pass per clip)")
    p.add_argument("--vocoder", default=None, metavar="V",
                   help="checkpoint (each model's own codec's) | griffin-lim | trained (the "
                        "shipped trained vocoder) | a vocoder .safetensors, for every "
                        "generator (default: each checkpoint's sample.vocoder)")
    p.add_argument("--batch-sizes", default="1,8,32,64", help="comma-separated")
    p.add_argument("--iterations", type=int, default=64, help="decoding iterations K")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of audio per prompt")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0 = torch's default)")
    p.add_argument("--generators", default=",".join(GENERATORS), help="subset to time")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="timed runs (>= 1)")
    p.add_argument("--prompt", default="a high beep repeats three times quickly")
    p.add_argument("--json", help="append one JSON line per result to this file")
    p.add_argument("--markdown", help="write the table as markdown (with this command line)")
    args, rest = p.parse_known_args(argv)
    bad = [a for a in rest if "=" not in a]
    if bad:
        p.error(f"unrecognised arguments: {' '.join(bad)}")
    args.batch_sizes = _batch_sizes(args.batch_sizes)
    if not math.isfinite(args.duration) or args.duration <= 0:
        raise UserError(f"--duration {args.duration}: give a positive number of seconds, "
                        "like 4")
    if args.iterations < 1:
        raise UserError(f"--iterations {args.iterations}: give at least 1")
    if args.repeats < 1 or args.warmup < 0:
        raise UserError("--repeats must be >= 1 and --warmup >= 0")
    args.generators = [g for g in args.generators.split(",") if g]
    unknown = set(args.generators) - set(GENERATORS)
    if unknown:
        raise UserError(f"--generators: unknown {sorted(unknown)} (use {', '.join(GENERATORS)})")
    if args.ckpt or args.guided_ckpt or args.teacher_ckpt or args.captiononly_ckpt:
        given = {"student": args.ckpt, "guided": args.guided_ckpt, "teacher": args.teacher_ckpt,
                 "captiononly": args.captiononly_ckpt}
        args.generators = [g for g in args.generators if g == "floor" or given[g]]
    return args, rest


def _batch_sizes(text: str) -> list[int]:
    """"1,8,32" -> [1, 8, 32]; anything else (empty, not integers, < 1) is a UserError."""
    fix = "give positive integers like 1,8,32"
    try:
        sizes = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise UserError(f"--batch-sizes {text!r}: {fix}") from None
    if not sizes or min(sizes) < 1:
        raise UserError(f"--batch-sizes {text!r}: {fix}")
    return sizes


def run(argv: list[str]) -> list[dict]:
    from energytta.utils import pick_device

    args, overrides = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device here; use --device cpu")
    gens, text_encoder = build_generators(args, overrides, device)
    set_vocoder(gens, args.vocoder)
    if args.compile:
        for gen in gens.values():
            gen.model.backbone = torch.compile(gen.model.backbone, dynamic=True)
    info, rows = machine_info(device, args), []
    for batch in args.batch_sizes:
        for gen in gens.values():
            rows.append({**measure(gen, text_encoder, batch, args, device), **info})
    add_ratios(rows)
    print_table(rows, info)
    if args.markdown:
        from energytta.utils import atomic_write_text

        command = "python tools/bench.py " + " ".join(argv)
        atomic_write_text(args.markdown, markdown_table(rows, info, command))
    if args.json:
        with open(args.json, "a", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, sort_keys=True) + "\n")
    return rows


def _main(argv: list[str]) -> int:
    run(argv)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Args: argv without the program name (None reads sys.argv). Returns the exit code."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
