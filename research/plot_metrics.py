"""Plot a run's loss curve from `metrics.jsonl` and print a Markdown table of it.

    python -m research.plot_metrics runs/teacher_small \
        --out research/reports/img/teacher_loss.png --rows 12
"""
from __future__ import annotations

import argparse
from pathlib import Path

from energytta.errors import UserError
from energytta.utils import atomic_path

SKIP = {"step", "lr", "grad_norm", "steps_per_s", "time"}


def plot(records: list[dict], out: Path, title: str) -> None:
    """Loss terms (left axis, log scale) and the learning rate (right axis) against step."""
    # the object API, not pyplot: no global figure state or backend switch in a library
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = [r["step"] for r in records]
    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for key in sorted({k for r in records for k in r} - SKIP):
        ax.plot(steps, [r.get(key, float("nan")) for r in records], label=key)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    lr_ax = ax.twinx()
    lr_ax.plot(steps, [r["lr"] for r in records], color="gray", ls="--", lw=1, label="lr")
    lr_ax.set_ylabel("learning rate")
    lines = ax.get_legend_handles_labels()
    lr_lines = lr_ax.get_legend_handles_labels()
    ax.legend(lines[0] + lr_lines[0], lines[1] + lr_lines[1], loc="upper right")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def table(records: list[dict], rows: int, mean_over: int = 1) -> str:
    """Markdown table of about `rows` evenly spaced records (always the first and last).

    mean_over > 1: each row's loss is the mean over the last `mean_over` logged records up
    to it (one-batch losses are noisy; a mean shows the trend).
    """
    every = max(1, len(records) // max(1, rows - 1))
    picked = list(range(0, len(records), every))
    if picked[-1] != len(records) - 1:
        picked.append(len(records) - 1)
    loss = "loss" if mean_over <= 1 else f"loss (mean of {mean_over} logs)"
    lines = [f"| step | {loss} | lr | grad norm | steps/s | time (s) |",
             "|---|---|---|---|---|---|"]
    for i in picked:
        r, window = records[i], records[max(0, i - mean_over + 1):i + 1]
        mean = sum(w["loss"] for w in window) / len(window)
        lines.append(f"| {r['step']} | {mean:.4f} | {r['lr']:.2e} | {r['grad_norm']:.3f} "
                     f"| {r['steps_per_s']:.3f} | {r['time']:.0f} |")
    return "\n".join(lines)


def term_ranges(records: list[dict]) -> str:
    """Min and max of each logged loss term over the run (the table shows only the total;
    a term logs unweighted, e.g. the student's `distill` before its weight λ). "" when the
    run logs no terms besides the total."""
    keys = sorted({k for r in records for k in r} - SKIP - {"loss"})
    parts = [f"{k} {min(v):.3g} to {max(v):.3g}" for k in keys
             if (v := [r[k] for r in records if k in r])]
    if not parts:
        return ""
    return "loss terms over the run (one-batch values as logged): " + ", ".join(parts)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m research.plot_metrics", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="run folder (with metrics.jsonl) or the file itself")
    p.add_argument("--out", type=Path, default=None, help="PNG path (default RUN/loss.png)")
    p.add_argument("--rows", type=int, default=12, help="rows in the printed table")
    p.add_argument("--mean-over", type=int, default=1, metavar="N",
                   help="table loss = mean of the last N logged records (default 1: as logged)")
    return p


def main(argv: list[str]) -> int:
    """Plot the run's loss and print its table.

    Args:
        argv: arguments without the program name.
    Returns:
        0; a missing or empty metrics file raises UserError.
    """
    from energytta.train.logging import read_metrics

    args = build_parser().parse_args(argv)
    path = args.run / "metrics.jsonl" if args.run.is_dir() else args.run
    records = read_metrics(path, stage="train")  # validation rows have no lr or loss
    if not records:
        raise UserError(f"{path}: no metrics (missing or empty); train first")
    out = args.out or path.with_name("loss.png")
    plot(records, out, f"{path.parent.name}: training loss")
    print(table(records, args.rows, args.mean_over))
    if ranges := term_ranges(records):
        print("\n" + ranges)
    print(f"\nplot: {out}")
    return 0


if __name__ == "__main__":
    from energytta.errors import run_cli

    raise SystemExit(run_cli(main))
