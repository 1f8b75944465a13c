"""The recipe A/B (research/reports/recipe_ablation.md): which change makes the teacher hear time?

Every arm trains the shipped teacher's recipe (`shipped_teacher`, the 10k synthetic corpus)
from scratch for the same number of steps with the same seed and data order, changing one
thing (or the combination). Each kept checkpoint is then scored with the diagnostics the
training loop logs (`energytta.eval.diagnostics`): held-out x̂_0 error at high noise,
shuffle gap, positional spread, and type / attribute / count accuracy of clips generated
at K = 16 on validation captions. Numbers are cached next to each checkpoint, so the page
is rebuilt from the run folders in seconds and an interrupted run resumes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from argparse import Namespace
from datetime import date
from pathlib import Path
from typing import Any

from energytta.checkpoint import latest_checkpoint, list_checkpoints
from energytta.errors import UserError
from energytta.train.logging import read_metrics
from energytta.utils import atomic_path, atomic_write_text

BASE_CONFIG = "shipped_teacher"
ITERATIONS, TEMPERATURE = 16, 1.0  # the generation check's decoding settings
# (name, overrides, what it changes); the first arm is today's shipped recipe
ARMS: list[tuple[str, list[str], str]] = [
    ("base", [], "shipped recipe: learned positions, ε-prediction, chain from t = 925"),
    ("rope", ["model.pos_embed=rope"], "rotary positions (ε, chain from t = 925)"),
    ("v", ["head.prediction=v", "head.sample_max_t=-1"],
     "v-prediction, chain from t = 999 (learned positions)"),
    ("rope_v", ["model.pos_embed=rope", "head.prediction=v", "head.sample_max_t=-1"],
     "rotary positions + v-prediction"),
]
COLUMNS = [("probe_true", "x̂₀ MSE (t=900,975)", 4), ("shuffle_gap", "shuffle gap", 4),
           ("pos_spread", "pos. spread", 3), ("clip_spread", "clip spread", 3),
           ("gen_type", "type", 2), ("gen_attributes", "attributes", 2),
           ("gen_count", "count", 2)]


def arm_overrides(args: Namespace, name: str, extra: list[str]) -> list[str]:
    """energytta-train arguments of one arm (same budget, seed and data for all)."""
    return ["--config", BASE_CONFIG, f"train.steps={args.steps}",
            f"train.ckpt_every={args.ckpt_every}", "train.keep_last=100", "train.log_every=25",
            "train.sample_prompts=[]", f"train.out_dir={Path(args.runs) / name}", *extra]


def train_arm(args: Namespace, name: str, extra: list[str]) -> None:
    """Train (or resume) one arm with `energytta-train` in a child process."""
    folder = Path(args.runs) / name
    cmd = [sys.executable, "-m", "energytta.train.cli", *arm_overrides(args, name, extra)]
    if any(folder.glob("step-*")):
        cmd.append("--resume")
    print(f"[{name}] energytta-train {' '.join(cmd[3:])}", flush=True)  # after -m MODULE
    if subprocess.run(cmd).returncode != 0:
        raise UserError(f"training arm {name!r} failed; see the output above, fix, rerun "
                        "(finished arms and cached numbers are kept)")


def checkpoints(folder: Path, every: int) -> list[tuple[int, Path]]:
    """(step, step folder) of an arm's complete checkpoints at multiples of `every`."""
    found = ((int(p.name.split("-")[1]), p) for p in list_checkpoints(folder))
    return [(s, p) for s, p in found if s % every == 0]


def finished(folder: Path, steps: int) -> bool:
    """Whether an arm's run reached `steps` (an export alone may be a wall-budget stop)."""
    latest = latest_checkpoint(folder)
    return latest is not None and int(latest.name.split("-")[1]) >= steps


def diagnose_step(args: Namespace, folder: Path) -> dict[str, float]:
    """Diagnostics of one checkpoint, cached as diagnostics.json inside its folder."""
    cache = folder / "diagnostics.json"
    key = {"version": 2, "data": str(args.data), "batches": args.batches, "generate": args.generate,
           "iterations": ITERATIONS, "cfg": args.cfg}
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return saved["numbers"]
    from energytta.eval.diagnostics import diagnose

    numbers = diagnose(str(folder), data=str(args.data), batches=args.batches, batch_size=32,
                       generate=args.generate, iterations=ITERATIONS, cfg_scale=args.cfg,
                       temperature=TEMPERATURE)
    atomic_write_text(cache, json.dumps({"key": key, "numbers": numbers}, sort_keys=True))
    return numbers


def wall_clock(folder: Path) -> float | None:
    """Seconds of training steps of a run (its last training row's `time`)."""
    rows = [r for r in read_metrics(folder / "metrics.jsonl", stage="train") if "time" in r]
    return rows[-1]["time"] if rows else None


def collect(args: Namespace, arms: list[tuple[str, list[str], str]]) -> dict[str, Any]:
    """{arm: {"curve": [(step, numbers)], "what", "seconds"}} for the arms with checkpoints."""
    out = {}
    for name, _extra, what in arms:
        folder = Path(args.runs) / name
        curve = [(s, diagnose_step(args, p)) for s, p in checkpoints(folder, args.score_every)]
        if curve:
            out[name] = {"curve": curve, "what": what, "seconds": wall_clock(folder)}
    return out


def _fmt(x: float | None, digits: int) -> str:
    return "–" if x is None or x != x else f"{x:.{digits}f}"


def render(args: Namespace, results: dict[str, Any], command: str, plot: str) -> str:
    """The Markdown page."""
    head = "| arm | changes | steps | CPU min | " + " | ".join(c[1] for c in COLUMNS) + " |"
    lines = [
        "# Recipe A/B: which change makes the teacher hear time?", "",
        f"Regenerate: `{command}` (trains missing arms with `--train`; numbers are cached "
        f"per checkpoint). Written {date.today().isoformat()}.", "",
        f"Each arm trains `{BASE_CONFIG}` from scratch on the 10k synthetic corpus for the same "
        f"{args.steps} steps (seed 0, same data order; one CPU thread each). Scored on "
        f"`{args.data}` (validation split): {args.batches} batches of 32 clips for the x̂₀ error "
        "and the shuffle gap (70 % of tokens masked, visible tokens at their true vs shuffled "
        "positions, paired), the positional spread (features at masked positions with half the "
        "clip visible: std along the clip vs across clips), and "
        f"{args.generate} captions generated at K = 16 (CFG {args.cfg}, temperature 1) whose "
        "decoded mels the synth-classifier scores (type, every named attribute, counts). "
        f"One binomial standard error of the type accuracy near 0.5 is "
        f"{0.5 / max(args.generate, 1) ** 0.5:.2f} at {args.generate} captions (counts rest on "
        "the fewer captions that name one); the x̂₀ error and the gap are paired over "
        f"{32 * args.batches} clips.", "",
        "## Final checkpoints", "", head, "|" + "---|" * (4 + len(COLUMNS))]
    for name, r in results.items():
        step, last = r["curve"][-1]
        cpu = _fmt(r["seconds"] / 60 if r["seconds"] else None, 0)
        lines.append(f"| {name} | {r['what']} | {step} | {cpu} | "
                     + " | ".join(_fmt(last.get(k), d) for k, _, d in COLUMNS) + " |")
    lines += ["", "## Curves", "", f"![diagnostics against steps]({plot})", ""]
    for key, label, digits in (("shuffle_gap", "shuffle gap", 4), ("gen_type", "type", 2),
                               ("gen_attributes", "attributes", 2)):
        steps = sorted({s for r in results.values() for s, _ in r["curve"]})
        lines += [f"{label} by step:", "", "| arm | " + " | ".join(map(str, steps)) + " |",
                  "|---|" + "---|" * len(steps)]
        for name, r in results.items():
            by = dict(r["curve"])
            lines.append(f"| {name} | " + " | ".join(
                _fmt(by[s].get(key), digits) if s in by else "–" for s in steps) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_curves(results: dict[str, Any], path: Path) -> None:
    """Shuffle gap and generated-type accuracy against steps, one line per arm."""
    from matplotlib.figure import Figure  # the object API: no global pyplot backend

    fig = Figure(figsize=(12, 3.2))
    axes = fig.subplots(1, 3)
    for ax, (key, label) in zip(axes, (("shuffle_gap", "shuffle gap (x̂₀ MSE)"),
                                       ("gen_type", "type accuracy, K=16"),
                                       ("gen_attributes", "attribute accuracy, K=16"))):
        for name, r in results.items():
            ax.plot([s for s, _ in r["curve"]], [n.get(key) for _, n in r["curve"]], "o-",
                    label=name)
        ax.set_xlabel("training step")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)


def run(args: Namespace, command: str) -> Path:
    """Train what is missing (with args.train), score every checkpoint, write the page."""
    names = [a for a in args.arms.split(",") if a]
    known = {a[0]: a for a in ARMS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"unknown arm(s) {', '.join(unknown)} (known: {', '.join(known)})")
    arms = [known[n] for n in names]
    if args.train:
        for name, extra, _ in arms:
            if not finished(Path(args.runs) / name, args.steps):
                train_arm(args, name, extra)
    results = collect(args, arms)
    if not results:
        raise UserError(f"no arm in {args.runs} has checkpoints; pass --train to train them")
    out, plot = Path(args.out), Path(args.figure)
    plot_curves(results, plot)
    rel = os.path.relpath(plot.resolve(), out.resolve().parent)
    atomic_write_text(out, render(args, results, command, Path(rel).as_posix()) + "\n")
    return out


def build_parser() -> Any:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m research.ablation",
        description="Recipe A/B of the teacher: train each arm for the same steps (with "
                    "--train), score every checkpoint with the training diagnostics, write "
                    "research/reports/recipe_ablation.md and "
                    "research/reports/img/recipe_ablation.png.")
    p.add_argument("--runs", default="runs/ablation", help="folder with one run per arm")
    p.add_argument("--arms", default=",".join(a[0] for a in ARMS),
                   help="comma-separated arms (" + ", ".join(a[0] for a in ARMS) + ")")
    p.add_argument("--train", action="store_true", help="train (or resume) missing arms")
    p.add_argument("--steps", type=int, default=1500, help="training steps per arm")
    p.add_argument("--ckpt-every", type=int, default=250, help="checkpoint every N steps")
    p.add_argument("--score-every", type=int, default=500,
                   help="score the checkpoints at multiples of N steps")
    p.add_argument("--data", default="data/synth10k/val.jsonl", help="validation manifest")
    p.add_argument("--batches", type=int, default=4, help="validation batches of 32 clips")
    p.add_argument("--generate", type=int, default=48, help="captions generated per checkpoint")
    p.add_argument("--cfg", type=float, default=3.0, help="guidance scale of the generations")
    p.add_argument("--out", default="research/reports/recipe_ablation.md")
    p.add_argument("--figure", default="research/reports/img/recipe_ablation.png")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if min(args.steps, args.ckpt_every, args.score_every, args.batches) < 1 or args.generate < 0:
        raise UserError("--steps, --ckpt-every, --score-every and --batches must be >= 1, "
                        "--generate >= 0")
    if not Path(args.data).is_file():
        raise UserError(f"--data {args.data} not found (energytta-data synth --out "
                        "data/synth10k --num 10000 --seconds 4 makes it)")
    command = "python -m research.ablation " + " ".join(argv)
    print(f"wrote {run(args, command.strip())}")
    return 0


if __name__ == "__main__":
    from energytta.errors import run_cli

    raise SystemExit(run_cli(main))
