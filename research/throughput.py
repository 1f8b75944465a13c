"""Learning per CPU-minute of the teacher recipe under each throughput lever.

Every arm is the shipped teacher recipe (`teacher_rope_v`) with one change, trained from the
same seed on the same cached corpus for the same budget of **CPU time** (the training
thread's own clock, `time.thread_time`, with torch pinned to one thread): CPU time, unlike
wall time, does not move when other work shares the machine, so arms run side by side and
at different moments stay comparable. Every `--eval-every` CPU-seconds the arm's held-out
loss (the raw weights, fixed validation batches and noise, the objective's own loss) is
recorded; the page shows that curve per arm, steps per CPU-second, and the loss reached at
the budget.

Levers (one each, against `base`):
  batch_mul2 / batch_mul4   MAR's noise draws per token: one backbone pass teaches the head
                            2x / 4x (MAR's default is 4)
  batch16 / batch64         batch size at the same lr
  compile                   torch.compile (inductor, CPU) of backbone and head, compile
                            time included in the budget
  workers1                  one data-loader worker beside the training thread (its CPU
                            time is not counted: it shows whether data feeding matters)
  threads2                  two intra-op threads (measured on the wall clock instead, in a
                            quiet moment only; CPU time cannot show it)

    python -m research.throughput --out research/reports/throughput.md           # all arms
    python -m research.throughput --arms base,batch_mul4 --cpu-minutes 2 --json t.json

Each arm runs in its own process (`--jobs` at a time); results are cached per arm in
`--work` so an interrupted study continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = "teacher_rope_v"
ARMS: dict[str, list[str]] = {
    "base": [],
    "batch_mul2": ["head.batch_mul=2"],
    "batch_mul4": ["head.batch_mul=4"],
    "batch16": ["data.batch_size=16"],
    "batch64": ["data.batch_size=64"],
    "compile": [],  # overrides none: the arm compiles (see _run_arm)
    "workers1": ["data.num_workers=1"],
    "threads2": [],
    # compact tokens: 5 mel frames x 64 bins on their top 64 principal components
    "pca64": ["codec.name=pca", "codec.pca_dim=64", "codec.pca_frames=5", "model.patch_t=1",
              "model.patch_f=1"],  # on its own cache: --pca-train
}
ARM_NOTES = {
    "base": "the shipped teacher recipe (batch 32, 1 noise draw per token, eager)",
    "batch_mul2": "2 noise draws per token (head.batch_mul=2)",
    "batch_mul4": "4 noise draws per token (head.batch_mul=4, MAR's default)",
    "batch16": "batch 16 (data.batch_size=16)",
    "batch64": "batch 64 (data.batch_size=64)",
    "compile": "torch.compile (inductor) of backbone and head, compile time counted",
    "workers1": "one data-loader worker (data.num_workers=1)",
    "threads2": "two intra-op threads (wall clock)",
    "pca64": "64-dim tokens: mel patches on their top 64 principal components (codec.name=pca)",
}
# The student's A/B (AudioDEAR): the energy head on the teacher's frozen backbone (the shipped
# recipe, `student_rope_v`) against the backbone trained too, from the teacher's weights,
# with λ · feature distillation toward the frozen teacher (the paper's main recipe)
STUDENT_CONFIG = "student_rope_v"
STUDENT_ARMS: dict[str, list[str]] = {
    "freeze": [],
    "joint_l100": ["distill.freeze_backbone=false", "distill.weight=100"],
    "joint_l1000": ["distill.freeze_backbone=false", "distill.weight=1000"],
}
STUDENT_NOTES = {
    "freeze": "energy head on the teacher's frozen backbone (the shipped student's recipe)",
    "joint_l100": "backbone trained too, λ = 100 feature distillation toward the teacher",
    "joint_l1000": "backbone trained too, λ = 1000 feature distillation toward the teacher",
}
STUDIES = {"teacher": (BASE_CONFIG, ARMS, ARM_NOTES),
           "student": (STUDENT_CONFIG, STUDENT_ARMS, STUDENT_NOTES)}
# x̂₀ error of the masked tokens (70 % masked) at these training timesteps, in normalised-mel
# units per value: comparable across token spaces, unlike each arm's own loss
X0_TIMESTEPS = (500, 900)


# ------------------------------------------------------------------ one arm (child process)
def _run_arm(arm: str, args: argparse.Namespace) -> dict:
    """Train one arm for `args.cpu_minutes` of training-thread CPU time -> its record."""
    import torch

    threads = 2 if arm == "threads2" else 1
    torch.set_num_threads(threads)
    clock = time.perf_counter if threads > 1 else time.thread_time
    from energytta.config import load_config
    from energytta.train.loop import Trainer

    config, arms, notes = STUDIES[args.study]
    out = Path(args.work) / arm
    overrides = [f"train.out_dir={out}", f"data.train={args.train}", f"data.val={args.val}",
                 "train.val_every=0", "train.ckpt_every=0", "train.log_every=1000000",
                 f"train.steps={args.max_steps}", *args.set, *arms[arm]]
    if arm == "pca64":  # compact tokens are cached by their own codec
        overrides.append(f"data.train={args.pca_train}")
    cfg = load_config(args.config or config, overrides)
    trainer = Trainer(cfg, resume=False)
    if arm == "compile":
        import torch._inductor.config as inductor

        inductor.compile_threads = 1  # compile in this thread, so its CPU time is counted
        model = trainer.model
        model.backbone.forward = torch.compile(model.backbone.forward, dynamic=True)
        model.head.forward = torch.compile(model.head.forward, dynamic=True)
    val = _val_context(cfg, trainer, args)
    budget, every = 60 * args.cpu_minutes, args.eval_every
    curve, used, next_eval, t_first = [], 0.0, every, None
    floor = _truncation_floor(trainer, cfg)
    curve.append({"cpu_s": 0.0, "step": 0, "val_loss": _held_out(trainer, val),
                  "x0_mel": _x0_mel(trainer, val, floor)})
    while used < budget and trainer.step < args.max_steps:
        t0 = clock()
        trainer._train_step()
        dt = clock() - t0
        used += dt
        t_first = dt if t_first is None else t_first
        if used >= next_eval or used >= budget:
            curve.append({"cpu_s": round(used, 2), "step": trainer.step,
                          "val_loss": _held_out(trainer, val),
                          "x0_mel": _x0_mel(trainer, val, floor)})
            next_eval += every
            print(f"[{arm}] {used:7.1f} s  step {trainer.step:5d}  "
                  f"val {curve[-1]['val_loss']:.4f}  x0 {curve[-1]['x0_mel']}", flush=True)
    return {"arm": arm, "overrides": arms[arm], "note": notes[arm], "threads": threads,
            "clock": "wall" if threads > 1 else "cpu", "batch_size": cfg.data.batch_size,
            "steps": trainer.step, "seconds": round(used, 2), "first_step_s": round(t_first, 2),
            "steps_per_s": round(trainer.step / max(used, 1e-9), 4),
            "samples_per_s": round(trainer.step * cfg.data.batch_size / max(used, 1e-9), 2),
            "truncation_floor": round(floor, 5), "curve": curve,
            "generation": _generation(trainer, val, args.generate)}


def _generation(trainer, validation, n: int) -> dict[str, float]:
    """The validation stage's generation check (sound type, attributes, counts, how eventful)
    of the raw weights at the end of the budget, on the first `n` validation captions."""
    if n <= 0:
        return {}
    import torch

    from energytta.eval.diagnostics import generation_check

    pairs = [(it, lat) for b in validation.batches
             for it, lat in zip(b.get("items") or [], b["latents"]) if it.attributes][:n]
    if not pairs:
        return {}
    items, real = zip(*pairs)
    model = trainer.model.eval()
    with torch.no_grad():
        out = generation_check(trainer.cfg, model, trainer.objective.codec,
                               trainer.objective.text, list(items),
                               trainer.cfg.train.val_iterations, seed=trainer.cfg.train.seed,
                               real=torch.stack(real))
    return {k: round(float(v), 4) for k, v in out.items()}


def _val_context(cfg, trainer, args):
    """Fixed held-out batches as model inputs (the validation stage's, without diagnostics)."""
    from energytta.train.validation import Validation, val_dataset

    cfg.train.val_batches = args.val_batches
    return Validation(cfg, val_dataset(cfg), trainer.collate, trainer.objective,
                      trainer.device)


def _held_out(trainer, validation) -> float:
    """Mean held-out loss of the raw weights on the fixed batches, seeded noise."""
    import torch

    from energytta.train.objectives.base import mean_loss
    from energytta.train.validation import rng_restored

    model = trainer.model
    mode = model.training
    try:
        with rng_restored(trainer.device), torch.no_grad():
            model.eval()
            g = torch.Generator().manual_seed(1234)
            ctx = _ctx(validation, trainer, g)
            return round(mean_loss(trainer.objective, model, ctx)["loss"], 5)
    finally:
        model.train(mode)


def _token_to_mel(codec) -> float:
    """Squared error per token value -> per normalised-mel value (1 for the mel codec; a
    pca codec's k components, one scale s, over frames x n_mels values: k·s²/D)."""
    if not hasattr(codec, "pca_basis"):
        return 1.0
    D, k = codec.pca_basis.shape
    return float(k * codec.pca_scale ** 2 / D)


def _truncation_floor(trainer, cfg) -> float:
    """Per-value squared error a compact codec can never recover (the variance its
    components leave out, on the first validation batch's mels); 0 for the mel codec."""
    codec = trainer.objective.codec
    if not hasattr(codec, "pca_basis"):
        return 0.0
    from energytta.data.dataset import build_dataset
    from energytta.train.stream import first_batches

    import torch

    (_, batch), = first_batches(build_dataset(cfg, "val"), trainer.collate, 32, 1)
    with torch.no_grad():
        mel = codec.mel(batch["wav"])
        z = codec.normalize(mel)
        p = codec._patches(z) - codec.pca_mean
        rest = p - p @ codec.pca_basis @ codec.pca_basis.T
    return float(rest.square().mean())


def _x0_mel(trainer, validation, floor: float) -> float | None:
    """x̂₀ MSE of 70 %-masked held-out tokens at X0_TIMESTEPS (fixed masks and noise), in
    normalised-mel units per value, plus the codec's truncation floor (None for a head
    without a noise chain to probe: the energy student)."""
    import torch

    if not hasattr(trainer.model.head, "probe_error"):
        return None
    from energytta.masking import ratio_mask

    model, errs = trainer.model, []
    mode = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i, b in enumerate(validation.batches):
                tokens = model.geometry.patchify(b["latents"])
                B, N, _ = tokens.shape
                g = torch.Generator().manual_seed(77 + i)
                mask = ratio_mask(B, N, 0.7, g)
                z = model.backbone(tokens, mask, b["text"], b["text_mask"])
                errs += [float(model.head.probe_error(z, tokens, mask, g, t))
                         for t in X0_TIMESTEPS]
    finally:
        model.train(mode)
    return round(sum(errs) / len(errs) * _token_to_mel(trainer.objective.codec) + floor, 5)


def _ctx(validation, trainer, generator):
    from energytta.train.objectives.base import ValContext

    return ValContext(validation.cfg, validation.batches, trainer.objective.codec,
                      trainer.objective.text, trainer.device, generator)


# ------------------------------------------------------------------ the study (parent)
def _child(arm: str, args: argparse.Namespace, log: Path) -> subprocess.Popen:
    absolute = [str(Path(p).resolve()) for p in (args.work, args.train, args.val,
                                                 args.pca_train)]
    cmd = [sys.executable, "-m", "research.throughput", "--_arm", arm, "--study", args.study,
           "--config", args.config, "--generate", str(args.generate), "--work", absolute[0],
           "--train", absolute[1], "--val", absolute[2],
           "--pca-train", absolute[3],
           "--cpu-minutes", str(args.cpu_minutes),
           "--eval-every", str(args.eval_every), "--val-batches", str(args.val_batches),
           "--max-steps", str(args.max_steps), *(f"--set={kv}" for kv in args.set)]
    env = {**os.environ, "OMP_NUM_THREADS": "2" if arm == "threads2" else "1",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)


def run_study(args: argparse.Namespace) -> list[dict]:
    """Every arm's record, from the cache in `--work` or by running it (`--jobs` at once)."""
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    arms, table = _arms(args), STUDIES[args.study][1]
    unknown = [a for a in arms if a not in table]
    if unknown:
        raise SystemExit(f"unknown arm(s) {unknown}; choose from {', '.join(table)}")
    todo = [a for a in arms if not (work / f"{a}.json").is_file()]
    running: dict[str, subprocess.Popen] = {}
    while todo or running:
        while todo and len(running) < args.jobs:
            arm = todo.pop(0)
            running[arm] = _child(arm, args, work / f"{arm}.log")
        time.sleep(2)
        for arm, proc in list(running.items()):
            if proc.poll() is not None:
                del running[arm]
                if proc.returncode != 0:
                    print(f"arm {arm} failed (see {work / (arm + '.log')})", file=sys.stderr)
    return [json.loads((work / f"{a}.json").read_text()) for a in arms
            if (work / f"{a}.json").is_file()]


def _arms(args: argparse.Namespace) -> list[str]:
    """The arms asked for (default: all of the study's, but the wall-clock one)."""
    if args.arms:
        return [a.strip() for a in args.arms.split(",") if a.strip()]
    return [a for a in STUDIES[args.study][1] if a != "threads2"]


def _loss_at(curve: list[dict], seconds: float, key: str = "val_loss") -> float:
    """The curve's `key` at `seconds` of the arm's clock, linearly interpolated."""
    pts = [(p["cpu_s"], p[key]) for p in curve]
    for (s0, l0), (s1, l1) in zip(pts, pts[1:]):
        if s0 <= seconds <= s1:
            return l0 + (l1 - l0) * (seconds - s0) / max(s1 - s0, 1e-9)
    return pts[-1][1]


def render_student(records: list[dict], args: argparse.Namespace) -> str:
    """The student A/B's page: speed, held-out energy score and the generation check."""
    cmd = " ".join(["python -m research.throughput", *sys.argv[1:]])
    common = min(r["seconds"] for r in records)
    teacher = next((kv.split("=", 1)[1] for kv in args.set if kv.startswith("teacher.ckpt=")),
                   "")
    lines = [
        "# The student A/B: frozen teacher backbone vs backbone + feature distillation", "",
        f"Regenerate: `{cmd}` (arms run as separate processes, {args.jobs} at a time, each on",
        f"{args.cpu_minutes:g} CPU-minutes of its training thread, torch pinned to one thread).",
        "",
        f"Base: `{args.config or STUDENT_CONFIG}` (the shipped student's recipe: the energy head "
        "on the", (f"teacher `{teacher}`'s" if teacher else "shipped teacher's")
        + f" backbone) on `{args.train}`. Held-out energy score on "
        f"the first {args.val_batches} batches", f"of `{args.val}` (fixed noise; lower is "
        "better), then the validation stage's generation check of",
        f"the raw weights at the budget: {args.generate} validation captions at K = 16, sound "
        "type, every named", "attribute and counts by the shipped synth-classifier, and how "
        "eventful the clips are (frames", "above −30 dB of full scale) against the same "
        "captions' real clips.", "",
        f"| arm | change | steps | steps / CPU-s | energy score at {common:.0f} CPU-s | type | "
        "attributes | count | active (real) | events (real) |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        g = r.get("generation") or {}
        cell = (lambda k: f"{g[k]:.3f}" if k in g else "–")
        lines.append(f"| {r['arm']} | {r['note']} | {r['steps']} | {r['steps_per_s']:.3f} | "
                     f"{_loss_at(r['curve'], common):.4f} | {cell('gen_type')} | "
                     f"{cell('gen_attributes')} | {cell('gen_count')} | "
                     f"{cell('gen_active')} ({cell('real_active')}) | "
                     f"{cell('gen_events')} ({cell('real_events')}) |")
    with_gen = [r for r in records if r.get("generation")]
    if with_gen:
        best = max(with_gen, key=lambda r: (r["generation"].get("gen_attributes", 0.0),
                                            -_loss_at(r["curve"], common)))
        lines += ["", f"**Best at this budget: `{best['arm']}`** (most attribute checks "
                  f"right). With {args.generate} clips, two standard errors of the type check "
                  f"are up to {100 / max(1, args.generate) ** 0.5:.0f} points, of the attribute "
                  "checks (a few per clip) fewer: read the ranking as a lead to test at a "
                  "longer budget, not a verdict."]
    return "\n".join(lines) + "\n"


def render(records: list[dict], args: argparse.Namespace) -> str:
    """The page: one row per arm, the curve points, and the choice."""
    if args.study == "student":
        return render_student(records, args)
    cmd = " ".join(["python -m research.throughput", *sys.argv[1:]])
    by = {r["arm"]: r for r in records}
    common = min((r["seconds"] for r in records if r["clock"] == "cpu"), default=0.0)
    lines = [
        "# Learning per CPU-minute: the teacher recipe under each throughput lever", "",
        f"Regenerate: `{cmd}` (arms run as separate processes, {args.jobs} at a time; each",
        "arm's budget is CPU time of its training thread, torch pinned to one thread, so the",
        "arms stay comparable while other work shares the machine).", "",
        f"Base: `{args.config or BASE_CONFIG}` (the shipped teacher recipe) on `{args.train}`. "
        "Two held-out",
        f"numbers on the first {args.val_batches} batches of `{args.val}`, raw weights (the EMA",
        "of a run this short lags its weights), fixed masks and noise: the arm's own loss",
        "(v-MSE; comparable between arms on the same tokens) and the **x̂₀ error** of 70 %-",
        f"masked tokens at t = {', '.join(map(str, X0_TIMESTEPS))}, in normalised-mel units per",
        "value plus the variance a compact codec leaves out (its truncation floor), which",
        "compares every arm, compact tokens included.", "",
        f"| arm | change | steps | steps / CPU-s | clips / CPU-s | first step (s) | "
        f"loss at {common:.0f} CPU-s | x̂₀ error at {common:.0f} CPU-s | x̂₀ error at its "
        "budget (floor) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        cpu = r["clock"] == "cpu"
        at = _loss_at(r["curve"], common) if cpu else float("nan")
        x0 = _loss_at(r["curve"], common, "x0_mel") if cpu else float("nan")
        lines.append(f"| {r['arm']} | {r['note']} | {r['steps']} | {r['steps_per_s']:.3f} | "
                     f"{r['samples_per_s']:.1f} | {r['first_step_s']:.1f} | {at:.4f} | "
                     f"{x0:.4f} | {r['curve'][-1]['x0_mel']:.4f} "
                     f"({r.get('truncation_floor', 0.0):.4f}) |")
    cpu_arms = [r for r in records if r["clock"] == "cpu"]
    if cpu_arms:
        best = min(cpu_arms, key=lambda r: _loss_at(r["curve"], common, "x0_mel"))
        lines += ["", f"**Most learned per CPU-minute: `{best['arm']}`** (lowest x̂₀ error at "
                  f"{common:.0f} CPU-s, the budget every arm reached). A budget this short "
                  f"({by.get('base', best)['steps']} steps of the base recipe) ranks what "
                  "learns fastest now; a lever that pays off only later in a run (more noise "
                  "draws per token) would need a longer arm to show it."]
    if "threads2" in by and "base" in by:
        b, t = by["base"], by["threads2"]
        lines += ["", f"Two threads: {t['steps_per_s']:.3f} steps per wall-second against "
                  f"{b['steps_per_s']:.3f} per CPU-second on one thread "
                  f"({t['steps_per_s'] / b['steps_per_s']:.2f}x the speed for 2x the cores)."]
    lines += ["", "## x̂₀ error against CPU time", "",
              "| CPU-s | " + " | ".join(r["arm"] for r in records if r["clock"] == "cpu") + " |",
              "|---" * (1 + sum(r["clock"] == "cpu" for r in records)) + "|"]
    marks = [k * args.eval_every for k in range(int(common // args.eval_every) + 1)]
    for s in marks + ([common] if common - marks[-1] > 0.5 else []):
        row = [f"{_loss_at(r['curve'], s, 'x0_mel'):.4f}" for r in records
               if r["clock"] == "cpu"]
        lines.append(f"| {s:.0f} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--study", choices=tuple(STUDIES), default="teacher",
                   help="teacher: the throughput levers; student: the student A/B")
    p.add_argument("--arms", default="", help="comma-separated (default: the study's all)")
    p.add_argument("--config", default="", help="the recipe every arm changes (default: "
                   f"{BASE_CONFIG} / {STUDENT_CONFIG} by study)")
    p.add_argument("--generate", type=int, default=0, help="validation captions generated "
                   "and checked at the end of each arm (0 = none)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every arm (repeatable)")
    p.add_argument("--cpu-minutes", type=float, default=6.0, help="budget per arm")
    p.add_argument("--eval-every", type=float, default=60.0, help="CPU-seconds between evals")
    p.add_argument("--val-batches", type=int, default=4)
    p.add_argument("--max-steps", type=int, default=100000)
    p.add_argument("--train", default="data/cache/synth10k_train")
    p.add_argument("--val", default="data/synth10k/val.jsonl")
    p.add_argument("--pca-train", default="data/cache/synth10k_pca_train",
                   help="the pca64 arm's training data (a cache made with its codec)")
    p.add_argument("--work", default="runs/throughput", help="per-arm results (a cache)")
    p.add_argument("--jobs", type=int, default=2, help="arms at a time")
    p.add_argument("--out", default="", help="the markdown page")
    p.add_argument("--json", default="", help="all records as JSON")
    p.add_argument("--_arm", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._arm:
        record = _run_arm(args._arm, args)
        path = Path(args.work) / f"{args._arm}.json"
        path.write_text(json.dumps(record, indent=1))
        return 0
    records = run_study(args)
    if not records:
        raise SystemExit("no arm finished (see the logs in --work)")
    page = render(records, args)
    if args.out:
        Path(args.out).write_text(page)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))
    print(page)
    return 0 if len(records) == len(_arms(args)) else 1


if __name__ == "__main__":
    sys.exit(main())
