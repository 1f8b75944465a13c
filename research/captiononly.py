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
from research.quality_report import COLUMNS, cells, markdown_table
from research.rows import accuracy

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
    p = argparse.ArgumentParser(prog="python -m research.captiononly",
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
    from energytta.checkpoint import resolve_checkpoint
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


# ------------------------------------------------------------------ page
# Markdown for docs/captiononly.md from the rows computed above (no computing here).
METHOD = """\
## Method, and every choice made adapting it to a MAR teacher

SwiftBrush (Nguyen & Tran 2024) and SwiftAudio distil a one-step generator from a
pretrained diffusion model with **variational score distillation** (VSD, ProlificDreamer):
the generator's samples are pushed along the difference between the frozen teacher's score
and the score of a second, LoRA-adapted copy of the teacher that is trained on the
generator's own samples. No training image or audio is read, only captions.
Code: `energytta/train/objectives/captiononly.py` (the objective, in the one training
loop), `teachers/onestep.py` (the generator's head), `teachers/lora.py` (the fake-score
teacher), `energytta/data/captions.py` (the caption-only data); config
`energytta/configs/captiononly.yaml`.

- **Generator G, one backbone pass (K = 1).** G has the teacher's shapes and starts as
  the teacher: the backbone is copied, and the head *is* the teacher's diffusion head read
  once at t = T − 1 on pure noise x_T, its v-prediction turned into x̂₀ = √ᾱ·x_T − √(1−ᾱ)·v̂
  (SwiftBrush's x₀ reparameterisation; `head.kind: onestep`). Every token is masked, so the
  encoder sees only the text. Per-token head noise alone cannot coordinate tokens (each
  would be drawn independently), so Gaussian noise (B, N, d) also enters the decoder:
  projected by a zero-initialised linear layer and added to the mask tokens
  (`model.noise_inputs`); at step 0 G is exactly the teacher's one-step prediction. The
  sampler draws that noise once per clip. The energy-head student can be trained by the
  same objective (`head.kind=energy vsd.init=student`, one pass); the few-iteration
  (K = 2–8) route needs gradients through several decoding steps and is not built.
- **The VSD gradient on a MAR teacher.** A diffusion-head MAR models p(masked tokens |
  visible tokens, text), so a sample is scored on those conditionals: draw MAR's training
  mask (ratio ~ truncnorm[0.7, 1]) over G's tokens x, give the teacher the visible tokens
  of sg(x) and the text, noise the masked tokens at t ~ U[20, 980] (one t per token, as
  the head was trained), and take ∇ = w(t)·(ε_teacher − ε_LoRA) on the masked tokens, with
  w(t) = 1 − ᾱ_t (SwiftBrush). ε is read from either network's v-prediction through x̂₀.
  G's loss is SwiftBrush's surrogate ½‖x − sg(x − ∇)‖² (mean over the masked tokens'
  elements), whose gradient with respect to x is ∇. Classifier-free guidance 4.5 on the
  frozen teacher (null text for the unconditional branch), none on the LoRA teacher
  (`vsd.real_cfg`, `vsd.fake_cfg`); DMD's x₀-space normalised gradient is an option
  (`vsd.weighting=dmd`), not studied.
- **LoRA fake-score teacher.** A deep copy of the frozen teacher with rank-8, α = 8
  adapters on the q and v rows of every attention's fused qkv projection (encoder and
  decoder) and on every linear layer of the head (B = 0 at start: the copy starts as the
  teacher, so ∇ = 0 without guidance; a test checks it). It is trained with the teacher's
  own objective (MAR mask, v-prediction denoising loss, 10 % caption dropout) on sg(x).
  Both losses are summed and stepped together: their gradients touch disjoint parameters,
  so this is SwiftBrush's student step then LoRA step on the same batch, except that the
  LoRA step sees the samples from before the student's update. LoRA learning rate 100×
  the student's (SwiftBrush: 1e-3 vs 1e-6).
- **Temporal TV regulariser.** λ_TV × the mean |Δ| (L1) or Δ² (L2) of G's latent (C, T,
  F) between neighbouring latent frames (`vsd.tv_weight`, `vsd.tv_norm`).
- **Data.** `data.kind: captions`: the captions of `data/synth10k/train.jsonl` (8,000)
  or of a caption `.txt`; no audio file is opened (a test trains on a manifest whose
  audio does not exist, with soundfile's readers replaced by a failing stub). Codec
  statistics come from the teacher's checkpoint.
"""


def _delta(a: float | None, b: float | None, digits: int = 3) -> str:
    return "–" if a is None or b is None else f"{a - b:+.{digits}f}"


def _fd(row: dict) -> float:
    return row["metrics"]["synth-classifier"]["fd"]


def _results(args: Any, arms: list[str], rows: dict) -> list[str]:
    body = [cells(f"teacher (K = {args.iterations})", str(args.iterations), rows["teacher"],
                  rows["teacher"]["generation"]),
            cells("paired-data student", str(args.iterations), rows["student"],
                  rows["student"]["generation"])]
    body += [cells(f"caption-only `{a}`", "1", rows[a], rows[a]["generation"]) for a in arms]
    if "shipped" in rows:
        body.append(cells("shipped `--ckpt captiononly` (float16)", "1", rows["shipped"],
                          rows["shipped"]["generation"]))
    return markdown_table(("model",) + COLUMNS[1:], body)


def _ablation(arms: list[str], rows: dict) -> list[str]:
    base = rows.get("main")
    out = []
    for a in arms:
        r = rows[a]
        out.append([f"`{a}`", ARMS[a][0], f"{accuracy(r, 'all'):.3f}",
                    _delta(accuracy(r, "all"), base and accuracy(base, "all")),
                    f"{accuracy(r, 'all', 'type'):.3f}",
                    _delta(accuracy(r, "all", "type"), base and accuracy(base, "all", "type")),
                    f"{_fd(r):.1f}", _delta(_fd(r), base and _fd(base), 1)])
    return markdown_table(("arm", "change", "attributes", "Δ vs main", "type", "Δ vs main",
                           "FD clf", "Δ vs main"), out)


def _curves(arms: list[str], curves: dict) -> list[str]:
    out = []
    for a in arms:
        for r in curves[a]:
            out.append([f"`{a}`", str(r["step"]), f"{r.get('val/gen_type', float('nan')):.3f}",
                        f"{r.get('val/gen_attributes', float('nan')):.3f}",
                        f"{r.get('val/gen_count', float('nan')):.3f}"])
    return markdown_table(("arm", "step", "type", "attributes", "count"), out)


def _final_val(curve: list[dict]) -> float | None:
    return curve[-1].get("val/gen_attributes") if curve else None


def _verdict(args: Any, arms: list[str], rows: dict, curves: dict) -> list[str]:
    """Plain statements read off the numbers above."""
    acc = {a: accuracy(rows[a], "all") for a in arms}
    trained = [a for a in arms if a != "step0"]
    lines = []
    n = rows[arms[0]]["attributes"]["all"]["overall"].get("n") if arms else None
    if n:
        p = acc[arms[0]]
        lines.append(f"- Noise level: each row scores about {n} attribute checks, so one "
                     f"accuracy has a standard error of about "
                     f"{100 * (p * (1 - p) / n) ** 0.5:.1f} points; one seed per arm.")
    if "step0" in acc and trained:
        best = max(trained, key=acc.get)
        lines.append(f"- VSD against the teacher: the generator starts (`step0`) at attribute "
                     f"accuracy {acc['step0']:.3f}; the best arm on the test split, "
                     f"`{best}`, reaches {acc[best]:.3f} ({acc[best] - acc['step0']:+.3f}) "
                     f"after {args.steps} steps.")
    if "main" in acc:
        tv = [a for a in trained if a.startswith("tv")]
        if tv and all(acc[a] < acc["main"] for a in tv):
            worst = min(tv, key=acc.get)
            deltas = ", ".join(f"`{a}` {acc[a] - acc['main']:+.3f}" for a in tv)
            lines.append(f"- The temporal TV term hurts at every weight and norm tried "
                         f"({deltas}); "
                         f"the strongest (`{worst}`) keeps the generator near its start: the "
                         "one-step start is already smooth, and TV resists the sharpening "
                         "VSD brings.")
        if "cfg1" in acc and "step0" in acc:
            lines.append(f"- Guidance on the teacher's score is what moves the generator: "
                         f"without it (`cfg1`) attributes are {acc['cfg1']:.3f} "
                         f"(`step0`: {acc['step0']:.3f}, `main`: {acc['main']:.3f}). With "
                         "equal guidance on both scores the VSD gradient starts at exactly 0 "
                         "(the LoRA teacher starts as the teacher) and only grows as the "
                         "LoRA teacher drifts.")
    finals = {a: _final_val(curves.get(a, [])) for a in trained}
    finals = {a: v for a, v in finals.items() if v is not None}
    if finals and SHIPPED_ARM in finals:
        pick, mine = max(finals, key=finals.get), finals[SHIPPED_ARM]
        lines.append(f"- Shipped (`--ckpt captiononly`, the last row of the results table): "
                     f"the float16 export of `{SHIPPED_ARM}`, the recipe at the largest budget, "
                     f"chosen when it finished. Its last validation row has attribute accuracy "
                     f"{mine:.3f}; the best last row is `{pick}`'s {finals[pick]:.3f}, within "
                     f"the validation check's noise (32 captions, a standard error of about "
                     f"{100 * (mine * (1 - mine) / VAL_CHECKS) ** 0.5:.0f} points).")
    if trained:
        best = max(trained, key=acc.get)
        s, t = accuracy(rows["student"], "all"), accuracy(rows["teacher"], "all")
        sc, cc = (rows[x]["generation"]["cpu_s_per_clip"] for x in ("student", best))
        cnt = {a: accuracy(rows[a], "all", "count") for a in (best, "teacher")}
        lines.append(f"- Against paired data: the best caption-only arm gets {acc[best]:.3f} "
                     f"vs the paired-data student's {s:.3f} and the teacher's {t:.3f} (both at "
                     f"K = {args.iterations}), at {cc:.2f} vs {sc:.2f} CPU s per clip.")
        if None not in cnt.values():
            lines.append(f"- What does not improve: counts ({cnt[best]:.3f} for `{best}`, "
                         f"{cnt['teacher']:.3f} for the teacher): the student inherits its "
                         "teacher's weakness at event timing.")
    return lines


SHIPPED_ARM = "long"  # the arm exported to energytta/assets/captiononly.safetensors
VAL_CHECKS = 104  # attribute checks of the 32 validation captions (the loop's val rows)

NOT_DONE = """\
How the learning rates were chosen, before the arms (60 steps each, validation at 30 and
60; `energytta-train --config captiononly train.steps=60 train.val_every=30
train.sample_prompts=[] train.lr=LR train.out_dir=runs/vsd_probe/lrLR`, the LoRA teacher
at 100× LR): LR = 1e-5 left the generator where it started (validation attribute accuracy
0.231 at step 0, 0.192 at 60), 1e-4 moved it (0.298 at 60), 1e-3 collapsed it (type 0.031).

Not done or not studied: the few-iteration (K = 2–8) energy-head route (needs gradients
through several decoding steps); DMD's normalised x₀-space gradient (`vsd.weighting=dmd`,
implemented, tested only for a zero gradient between equal teachers); several LoRA steps
per student step; teacher CFG scales other than 1 and 4.5; more than one seed per arm.
Run folders are git-ignored; `--train` retrains any arm that is missing.
"""


def render(args: Any, arms: list[str], rows: dict, curves: dict, legs: dict,
           meta: dict) -> str:
    lines = [
        "# Caption-only distillation (SwiftAudio / SwiftBrush on the MAR teacher)", "",
        "<!-- Written by research/captiononly.py; edit that tool, not this page. -->",
        f"Regenerate with `{meta['command']}` ({meta['date']}, {meta['machine']}). "
        f"Arms: `energytta-train --config captiononly` plus each arm's overrides, "
        f"{args.steps} steps of batch 16 each, seed 0, on the captions of "
        f"`{args.captions}`; run folders under `{args.runs}/`.", "",
        METHOD,
        "## Results on the synthetic test split", "",
        f"The first {args.limit} captions of `{args.reference}`, scored exactly as in "
        "[research/reports/quality.md](../research/reports/quality.md) (whose column notes "
        "apply); caption-only "
        "arms at their one pass (K = 1, no CFG at sampling: the guidance is distilled in), "
        f"the shipped teacher and paired-data student at K = {args.iterations} with their "
        "defaults.", "",
        *_results(args, arms, rows), "",
        "## Ablation (one change from `main` each, same budget)", "",
        *_ablation(arms, rows), "",
        "## Validation during training", "",
        "The loop's generation check on 32 validation captions at K = 1 (type, attribute "
        "and count accuracy of the decoded mels), logged every third of the run.", "",
        *_curves(arms, curves), "",
        "## What works and what does not", "",
        *_verdict(args, arms, rows, curves), "",
        NOT_DONE,
        "Training time per arm (wall clock, 1 thread, legs of `RUNS/<arm>/legs.txt`): " +
        "; ".join(f"`{a}` {legs[a]}" for a in arms) + ".", "",
    ]
    return "\n".join(lines)


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
