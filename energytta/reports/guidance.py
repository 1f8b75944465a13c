"""docs/guidance.md: single-pass guidance distillation, its A/B and its cost in quality.

    python tools/guidance_report.py --out docs/guidance.md

Reads, computes nothing new: each arm's validation rows (`val/guide_residual`, the
generation check) from RUN/metrics.jsonl, and the quality rows tools/quality.py saved for
the plain student (two-pass CFG) and the guided student (one pass) at each K. Missing
rows are named with the command that makes them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from energytta.errors import UserError
from energytta.reports.rows import accuracy

ARMS = "runs/guidance,runs/guidance_attn"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/guidance_report.py",
                                description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default=ARMS, metavar="DIR,DIR",
                   help=f"the arms' run folders (default {ARMS})")
    p.add_argument("--work", default="runs/quality", metavar="DIR",
                   help="tools/quality.py's saved rows (default runs/quality)")
    p.add_argument("--iterations", default="64,32,16,8,4,2", metavar="K,K")
    p.add_argument("--out", required=True, metavar="MD")
    return p


def arm_rows(run: Path) -> tuple[str, list[dict]]:
    """(guidance head kind, the run's validation records) of one arm."""
    from energytta.config import load_config
    from energytta.train.logging import read_metrics

    if not (run / "metrics.jsonl").is_file():
        raise UserError(f"--runs: {run} has no metrics.jsonl (train it: energytta-train "
                        "--config guidance train.out_dir=...)")
    cfg = load_config(str(run / "config.yaml"), [])
    return cfg.model.guidance_head, read_metrics(run / "metrics.jsonl", "val")


def arm_table(arms: list[tuple[str, str, list[dict]]]) -> list[str]:
    lines = ["| arm (`model.guidance_head`) | run | step | guide residual ↓ | "
             "val attributes ↑ | val type ↑ |", "|---|---|---|---|---|---|"]
    for head, run, rows in arms:
        for r in rows:
            lines.append(f"| {head} | `{run}` | {r['step']} | "
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


def main(argv: list[str]) -> int:
    """Write the page from the saved rows (see the module docstring)."""
    from energytta.utils import atomic_write_text

    args = build_parser().parse_args(argv)
    try:
        ks = [int(k) for k in args.iterations.split(",") if k.strip()]
    except ValueError:
        raise UserError(f"--iterations {args.iterations!r}: give integers like 64,8") from None
    arms = [(*arm_rows(Path(r)), r) for r in args.runs.split(",") if r.strip()]
    arms = [(head, run, rows) for head, rows, run in arms]
    table, missing, recs = quality_table(Path(args.work), ks)
    from energytta.reports.guidance_page import render

    command = "python tools/guidance_report.py " + " ".join(argv)
    atomic_write_text(args.out, render(command, arms, arm_table(arms), table, missing, recs,
                                       args.work))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0
