"""Pick a checkpoint's sampling defaults: CFG scale x temperature on the validation split.

    python -m research.sampling_sweep runs/shipped_student/model.safetensors \\
        --cfg 1,3,5,8 --temperature 0.7,1 --out research/reports/sampling_sweep.md

Each cell (cfg, temperature) generates the first --limit captions of --reference (the
validation split by default, so the test split that research/reports/quality.md reports stays unseen
while tuning) with --iterations decoding steps, then scores them like research/quality.py:
FD on the synth-classifier's and mel-stats features and caption-attribute accuracy. Cells
are saved under WORK/<sha256[:12]>/ and reused while settings and checkpoint are unchanged.
The best cell (the lowest FD clf among the cells within one standard error of the top
attribute accuracy) is marked; write it into the
checkpoint with `energytta-export CKPT --out OUT sample.cfg=X sample.temperature=T`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from energytta.errors import UserError
from research.rows import (EMBEDDERS, MemoEmbedder, accuracy, active_fraction, display_path,
                           generate_row, save, saved, score, sha256)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m research.sampling_sweep",
                                description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt", help="inference checkpoint, run folder, or 'student' / 'teacher'")
    p.add_argument("--cfg", default="1,3,5,8", metavar="X,X",
                   help="CFG scales to try (default 1,3,5,8)")
    p.add_argument("--temperature", default="1", metavar="T,T",
                   help="temperatures to try (default 1)")
    p.add_argument("--iterations", type=int, default=16, metavar="K",
                   help="decoding iterations (default 16)")
    p.add_argument("--reference", default="data/synth10k/val.jsonl", metavar="MANIFEST",
                   help="captions with synthetic attributes (default: data/synth10k/val.jsonl)")
    p.add_argument("--limit", type=int, default=100, metavar="N",
                   help="first N captions (default 100)")
    p.add_argument("--seed", type=int, default=0, metavar="N")
    p.add_argument("--batch-size", type=int, default=20, metavar="B")
    p.add_argument("--work", default="runs/sweep", metavar="DIR",
                   help="wavs and saved cells (default: runs/sweep)")
    p.add_argument("--out", default=None, metavar="MD", help="write the markdown table here")
    return p


def _floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} {text!r}: give numbers like 1,3,5") from None
    if not values or min(values) < 0:
        raise UserError(f"{flag} {text!r}: give one or more numbers >= 0")
    return values


def get_cell(args: argparse.Namespace, kind: str, ckpt: Path, digest: str, cfg: float, temp: float,
             embedders: dict) -> dict[str, Any]:
    """The saved cell for (cfg, temp), or a freshly computed (and saved) one."""
    name = f"k{args.iterations}-cfg{cfg:g}-t{temp:g}"
    work = Path(args.work) / digest[:12]
    path = work / f"{name}.json"
    key = {"sha256": digest, "iterations": args.iterations, "cfg": cfg, "temperature": temp,
           "seed": args.seed, "limit": args.limit, "batch_size": args.batch_size,
           "reference": str(args.reference)}
    cell = saved(path, key)
    if cell is not None:
        return cell
    print(f"cfg {cfg:g}, temperature {temp:g}: generating {args.limit} clips ...",
          file=sys.stderr)
    start = time.time()
    gen = generate_row(args, kind, ckpt, args.iterations, work / name, cfg=cfg,
                       temperature=temp)
    cell = {"key": key, "generation": gen,
            **score(work / name, args.reference, args.limit, embedders)}
    cell["seconds"] = round(time.time() - start, 1)
    save(path, cell)
    return cell


def _se(cell: dict) -> float:
    """The binomial standard error of a cell's attribute accuracy."""
    acc, n = accuracy(cell, "all"), cell["attributes"]["all"]["overall"]["n"]
    return (acc * (1 - acc) / n) ** 0.5


def _best(cells: dict) -> tuple[float, float]:
    """Among the cells whose attribute accuracy lies within one standard error of the top
    one (a sweep this size cannot order them), the one with the lowest FD clf."""
    top = max(cells.values(), key=lambda c: accuracy(c, "all"))
    floor = accuracy(top, "all") - _se(top)
    return min((k for k, c in cells.items() if accuracy(c, "all") >= floor),
               key=lambda k: cells[k]["metrics"]["synth-classifier"]["fd"])


def _noise(cells: dict) -> str:
    """How far the top attribute accuracy stands above the others, in standard errors."""
    top = max(cells, key=lambda k: accuracy(cells[k], "all"))
    acc, se = accuracy(cells[top], "all"), _se(cells[top])
    close = [f"cfg {c:g} / temperature {t:g}" for (c, t), cell in cells.items()
             if (c, t) != top and accuracy(cell, "all") >= acc - se]
    return (f"The top attribute accuracy, {acc:.3f} (cfg {top[0]:g} / temperature "
            f"{top[1]:g}), has a standard error of about {se:.3f} "
            f"({cells[top]['attributes']['all']['overall']['n']} checks); within one "
            "standard error of it: " + (", ".join(close) if close else "no other cell") + ".")


def render(args: argparse.Namespace, kind: str, ckpt: Path, digest: str, cells: dict,
           command: str, real_active: float) -> str:
    """The page: one table row per cell, the best marked, how far apart cells are, and
    how eventful the cells' clips are beside the real ones (`real_active`)."""
    best = _best(cells)
    lines = [f"# Sampling defaults of the {kind}: CFG scale × temperature", "",
             "<!-- Written by research/sampling_sweep.py; edit that tool, not this page. -->",
             f"Regenerate with `{command}` ({time.strftime('%Y-%m-%d')}; cells are saved in "
             f"`{args.work}` and reused; computing the cells below took "
             f"{round(sum(c.get('seconds', 0) for c in cells.values()))} s of generation and "
             "scoring, summed over cells).", "",
             f"Checkpoint `{display_path(str(ckpt))}` (sha256 {digest[:12]}…), "
             f"K = {args.iterations}, the first "
             f"{args.limit} captions of `{args.reference}`, seed {args.seed}. Columns as in "
             "[quality.md](quality.md).", "",
             "| cfg | temperature | FD clf ↓ | FD mel ↓ | attributes ↑ | type ↑ | all right ↑ "
             "| active |",
             "|---|---|---|---|---|---|---|---|"]
    for (cfg, temp), c in cells.items():
        mark = " **best**" if (cfg, temp) == best else ""
        lines.append(f"| {cfg:g}{mark} | {temp:g} | {c['metrics']['synth-classifier']['fd']:.2f} "
                     f"| {c['metrics']['mel-stats']['fd']:.2f} | {accuracy(c, 'all'):.3f} "
                     f"| {accuracy(c, 'all', 'type'):.3f} "
                     f"| {accuracy(c, 'all', 'clips_all_correct'):.3f} | {c['active']:.3f} |")
    lines += ["", f"`active`: the mean fraction of frames above −30 dBFS; the real clips of "
              f"these captions: {real_active:.3f}."]
    lines += ["", f"Best (lowest FD clf among the cells within one standard error of the top "
              f"attribute accuracy): cfg {best[0]:g}, "
              f"temperature {best[1]:g}. Write it into a checkpoint with `energytta-export "
              f"CKPT --out OUT sample.cfg={best[0]:g} sample.temperature={best[1]:g}`.", "",
              _noise(cells)]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """Compute (or reuse) every cell, print the table and with --out write it.

    Args:
        argv: arguments without the program name.
    Returns:
        0; bad input raises UserError.
    """
    from energytta.checkpoint import load_model, resolve_checkpoint
    from energytta.data.manifest import read_manifest
    from energytta.eval.embedders import get_embedder

    args = build_parser().parse_args(argv)
    cfgs, temps = _floats(args.cfg, "--cfg"), _floats(args.temperature, "--temperature")
    if args.iterations < 1 or args.limit < 10 or args.batch_size < 1:
        raise UserError("--iterations and --batch-size must be >= 1 and --limit >= 10")
    if not Path(args.reference).is_file():
        raise UserError(f"manifest {args.reference} not found; make the corpus with "
                        "`energytta-data synth --out data/synth10k --num 10000 --seconds 4`")
    ckpt = resolve_checkpoint(args.ckpt)
    if not ckpt.exists():
        raise UserError(f"{ckpt}: no such checkpoint")
    kind, digest = load_model(ckpt, "cpu")[1], sha256(ckpt)
    embedders = {n: MemoEmbedder(get_embedder(n, "cpu")) for n in EMBEDDERS}
    cells = {(c, t): get_cell(args, kind, ckpt, digest, c, t, embedders)
             for c in cfgs for t in temps}
    command = "python -m research.sampling_sweep " + " ".join(argv)
    real = [item.audio for item in read_manifest(args.reference)][:args.limit]
    table = render(args, kind, ckpt, digest, cells, command, active_fraction(real))
    print(table)
    if args.out:
        from energytta.utils import atomic_write_text

        atomic_write_text(args.out, table)
    return 0


if __name__ == "__main__":
    from energytta.errors import run_cli

    raise SystemExit(run_cli(main))
