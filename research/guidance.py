"""docs/guidance.md: single-pass guidance distillation, its A/B and its cost in quality.

    python -m research.guidance --out docs/guidance.md

Reads, computes nothing new: each arm's validation rows (`val/guide_residual`, the
generation check) from RUN/metrics.jsonl, and the quality rows research/quality.py saved for
the plain student (two-pass CFG) and the guided student (one pass) at each K. Missing
rows are named with the command that makes them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from energytta.errors import UserError
from research.rows import accuracy

ARMS = "runs/guidance,runs/guidance_attn"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m research.guidance",
                                description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default=ARMS, metavar="DIR,DIR",
                   help=f"the arms' run folders (default {ARMS})")
    p.add_argument("--work", default="runs/quality", metavar="DIR",
                   help="research/quality.py's saved rows (default runs/quality)")
    p.add_argument("--iterations", default="64,32,16,8,4,2", metavar="K,K")
    p.add_argument("--sweep", default="runs/sweep", metavar="DIR",
                   help="research/sampling_sweep.py's cells (--work) of the guided student on "
                        "the validation split, one run per K (default runs/sweep)")
    p.add_argument("--guided", default="guided", metavar="CKPT",
                   help="the guided checkpoint whose sweep cells to read (default: shipped)")
    p.add_argument("--out", required=True, metavar="MD")
    return p


def arm_rows(run: Path) -> tuple[str, list[dict]]:
    """(guidance head kind, the run's validation records) of one arm; each validation
    record gets "wall_s", the training row's clock at that step (seconds since start)."""
    from energytta.config import load_config
    from energytta.train.logging import read_metrics

    if not (run / "metrics.jsonl").is_file():
        raise UserError(f"--runs: {run} has no metrics.jsonl (train it: energytta-train "
                        "--config guidance train.out_dir=...)")
    cfg = load_config(str(run / "config.yaml"), [])
    clock = {r["step"]: r["time"] for r in read_metrics(run / "metrics.jsonl", "train")
             if "time" in r}
    rows = read_metrics(run / "metrics.jsonl", "val")
    return cfg.model.guidance_head, [{**r, "wall_s": clock.get(r["step"])} for r in rows]


def arm_table(arms: list[tuple[str, str, list[dict]]]) -> list[str]:
    lines = ["| arm (`model.guidance_head`) | run | step | wall s | guide residual ↓ | "
             "val attributes ↑ | val type ↑ |", "|---|---|---|---|---|---|---|"]
    for head, run, rows in arms:
        for r in rows:
            wall = "–" if r.get("wall_s") is None else f"{r['wall_s']:.0f}"
            lines.append(f"| {head} | `{run}` | {r['step']} | {wall} | "
                         f"{r.get('val/guide_residual', float('nan')):.3f} | "
                         f"{r.get('val/gen_attributes', float('nan')):.3f} | "
                         f"{r.get('val/gen_type', float('nan')):.3f} |")
    return lines


def quality_table(work: Path, ks: list[int]) -> tuple[list[str], list[str], list[dict]]:
    """(table lines, missing rows, records) of student (two-pass) vs guided (one pass) per
    K; a record is {"k", "student", "guided"} with each side's attributes / type / fd /
    cpu (seconds per clip)."""
    import json

    lines = ["| K | student attributes ↑ | guided attributes ↑ | student type ↑ | "
             "guided type ↑ | student FD ↓ | guided FD ↓ | student CPU s/clip | "
             "guided CPU s/clip |", "|---|---|---|---|---|---|---|---|---|"]
    missing, recs = [], []
    for k in ks:
        rows = {}
        for m in ("student", "guided"):
            path = work / f"{m}-k{k}.json"
            if path.is_file():
                rows[m] = json.loads(path.read_text())
            else:
                missing.append(f"{m} K={k}")
        if len(rows) < 2:
            continue
        s, g = rows["student"], rows["guided"]
        recs.append({"k": k, **{m: {"attributes": accuracy(r, "all"),
                                    "type": accuracy(r, "all", "type"),
                                    "fd": r["metrics"]["synth-classifier"]["fd"],
                                    "cpu": r["generation"]["cpu_s_per_clip"]}
                                for m, r in rows.items()}})
        lines.append("| " + " | ".join([
            str(k), *(f"{accuracy(r, 'all'):.3f}" for r in (s, g)),
            *(f"{accuracy(r, 'all', 'type'):.3f}" for r in (s, g)),
            *(f"{r['metrics']['synth-classifier']['fd']:.1f}" for r in (s, g)),
            *(f"{r['generation']['cpu_s_per_clip']:.2f}" for r in (s, g))]) + " |")
    return lines, missing, recs


def sweep_table(sweep: Path, ckpt: Path, cfg: float) -> tuple[list[str], list[dict]]:
    """(table lines, records) of the guided student's validation cells at CFG `cfg`, one
    per K found (`research/sampling_sweep.py CKPT --cfg X --iterations K --work SWEEP`)."""
    import json
    import re

    from research.rows import sha256

    folder = sweep / sha256(ckpt)[:12]
    recs = []
    for path in sorted(folder.glob(f"k*-cfg{cfg:g}-t1.json")):
        m = re.match(r"k(\d+)-", path.name)
        row = json.loads(path.read_text())
        recs.append({"k": int(m.group(1)), "attributes": accuracy(row, "all"),
                     "type": accuracy(row, "all", "type"),
                     "fd": row["metrics"]["synth-classifier"]["fd"],
                     "cpu": row["generation"]["cpu_s_per_clip"],
                     "n": row["attributes"]["all"]["overall"]["n"]})
    recs.sort(key=lambda r: -r["k"])
    lines = ["| K | attributes ↑ | type ↑ | FD ↓ | CPU s/clip |", "|---|---|---|---|---|"]
    lines += [f"| {r['k']} | {r['attributes']:.3f} | {r['type']:.3f} | {r['fd']:.1f} | "
              f"{r['cpu']:.2f} |" for r in recs]
    return lines, recs


def main(argv: list[str]) -> int:
    """Write the page from the saved rows (see the module docstring)."""
    from energytta.utils import atomic_write_text

    args = build_parser().parse_args(argv)
    try:
        ks = [int(k) for k in args.iterations.split(",") if k.strip()]
    except ValueError:
        raise UserError(f"--iterations {args.iterations!r}: give integers like 64,8") from None
    arms = []  # (guidance head kind, run folder, validation rows) per arm
    for run in (r.strip() for r in args.runs.split(",") if r.strip()):
        head, rows = arm_rows(Path(run))
        arms.append((head, run, rows))
    table, missing, recs = quality_table(Path(args.work), ks)
    from energytta.checkpoint import resolve_checkpoint
    from research.guidance_page import render

    guided = resolve_checkpoint(args.guided)
    sweep = sweep_table(Path(args.sweep), guided, 5.0) if guided.is_file() else ([], [])
    command = "python -m research.guidance " + " ".join(argv)
    atomic_write_text(args.out, render(command, arms, arm_table(arms), table, missing, recs,
                                       args.work, sweep))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from energytta.errors import run_cli

    raise SystemExit(run_cli(main))
