"""Validation curves of training runs: the generation checks and held-out loss per step.

    python -m research.val_curves runs/teacher_long runs/student_long runs/captiononly_long \
        --out research/reports/img/val_curves.png

Reads each run's `metrics.jsonl` (the `val/*` rows the validation stage logs: the
synth-classifier's type check, the caption-attribute and count checks on the clips it
generates, their active fraction, and the held-out loss), plots one panel per measure with
one line per run (each run's held-out loss divided by its first row's, since objectives
measure it in different units), and prints the rows as a Markdown table. The generation
checks are on `train.val_generate` clips (32 for these runs), so a step-to-step change
under about 0.15 is noise; read the trend.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from energytta.errors import UserError
from energytta.utils import atomic_path

# (metrics key, panel title); the loss is per objective (its own units), so the figure
# shows each run's loss relative to its first validation row
MEASURES = (("val/gen_type", "sound type ↑"), ("val/gen_attributes", "attribute checks ↑"),
            ("val/gen_count", "count checks ↑"), ("val/loss", "held-out loss ↓"))


def val_rows(run: Path) -> list[dict]:
    """The `val/*` records of a run folder (or of a metrics.jsonl), in step order."""
    path = run / "metrics.jsonl" if run.is_dir() else run
    if not path.is_file():
        raise UserError(f"{run}: no metrics.jsonl (give a run folder of energytta-train)")
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line) if line.strip() else {}
        if record.get("stage") == "val":
            rows.append(record)
    if not rows:
        raise UserError(f"{path}: no validation rows (train.val_every was never reached)")
    return sorted(rows, key=lambda r: r["step"])


def plot(runs: dict[str, list[dict]], out: Path) -> None:
    """One panel per measure (2 x 2), one line per run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 6), layout="constrained")
    FigureCanvasAgg(fig)
    for i, (key, title) in enumerate(MEASURES):
        ax = fig.add_subplot(2, 2, i + 1)
        for name, rows in runs.items():
            pts = [(r["step"], r[key]) for r in rows if key in r]
            if pts and key == "val/loss":  # relative to the run's first row
                pts = [(step, v / pts[0][1]) for step, v in pts]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name)
        ax.set_title(title + (" (÷ the run's first row)" if key == "val/loss" else ""))
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=90)


def table(runs: dict[str, list[dict]]) -> str:
    """Markdown: one row per (run, validation step)."""
    lines = ["| run | step | " + " | ".join(t for _, t in MEASURES) + " |",
             "|---|---:|" + "---:|" * len(MEASURES)]
    for name, rows in runs.items():
        for r in rows:
            cells = [f"{r[k]:.3f}" if k in r else "–" for k, _ in MEASURES]
            lines.append(f"| {name} | {r['step']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m research.val_curves",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("runs", nargs="+", type=Path, help="run folders (or metrics.jsonl files)")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = [r.name if r.is_dir() else r.parent.name for r in args.runs]
    runs = {n: val_rows(r) for n, r in zip(names, args.runs)}
    plot(runs, args.out)
    print(table(runs))
    return 0


if __name__ == "__main__":
    from energytta.errors import run_cli

    raise SystemExit(run_cli(main))
