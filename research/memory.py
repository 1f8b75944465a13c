"""Memory over a long prompt list: does `energytta-sample`'s resident memory stay flat?

    python -m research.memory --out research/reports/memory.md [--prompts 1000]

Runs the real command (`energytta-sample`, in this process) on N prompts with the shipped
student at cheap settings (short clips, few iterations: memory, not quality, is measured)
while a thread reads the process's resident set size (VmRSS) every 0.2 s. A
2,000-prompt run once grew from 523 to 592 MB in 60 s; a leak shows as a steady slope over
the second half of the run, once the model, the text encoder and the allocator's pools
are warm. Writes a markdown page with RSS against prompts written.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from energytta.errors import UserError
from energytta.utils import atomic_write_text

# the synthetic corpus's wording (research/reports/quality.md); varied so that prompts differ
CAPTIONS = ("a high beep repeats three times", "a dog barks twice", "steady rain",
            "a low bell rings four times, getting quieter", "a siren rises",
            "footsteps at a fast tempo", "wind with birds in the background",
            "an engine hums, getting louder")
# growth over the second half below this is "flat" (allocator noise is a few MB)
FLAT_MB = 20.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m research.memory",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--out", required=True, help="markdown page to write")
    p.add_argument("--prompts", type=int, default=1000, help="prompt count (default 1000)")
    p.add_argument("--ckpt", default="student", help="checkpoint (default: the shipped student)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--duration", type=float, default=1.0, help="seconds per clip (default 1)")
    p.add_argument("--iterations", type=int, default=4, help="decoding iterations (default 4)")
    p.add_argument("--spectrograms", action=argparse.BooleanOptionalAction, default=True,
                   help="write the PNGs too (default on, as the command does)")
    return p


def rss_mb() -> float:
    """This process's resident set size in MB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise UserError("no VmRSS in /proc/self/status: this check needs Linux")


class Sampler(threading.Thread):
    """Reads (seconds, RSS MB, finished prompts) every `every` s until stopped."""

    def __init__(self, folder: Path, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.folder, self.every, self.rows = folder, every, []
        self.done = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self.done.is_set():
            written = sum(1 for _ in self.folder.glob("*.json")) if self.folder.is_dir() else 0
            self.rows.append((time.monotonic() - self.t0, rss_mb(), written))
            self.done.wait(self.every)


def measure(args: argparse.Namespace) -> tuple[list[tuple[float, float, int]], float]:
    """Run energytta-sample on the prompts -> (RSS rows, seconds)."""
    from energytta import sample_cli

    work = Path(tempfile.mkdtemp(prefix="energytta-memory-"))
    try:
        prompts = work / "prompts.txt"
        prompts.write_text("".join(f"{CAPTIONS[i % len(CAPTIONS)]}\n"
                                   for i in range(args.prompts)), encoding="utf-8")
        out = work / "out"
        sampler = Sampler(out)
        sampler.start()
        argv = ["--prompts", str(prompts), "--out-dir", str(out), "--ckpt", args.ckpt,
                "--batch-size", str(args.batch_size), "--duration", str(args.duration),
                "--iterations", str(args.iterations)]
        if not args.spectrograms:
            argv.append("--no-spectrograms")
        code = sample_cli.main(argv)
        sampler.done.set()
        sampler.join()
        sampler.rows.append((time.monotonic() - sampler.t0, rss_mb(),
                             sum(1 for _ in out.glob("*.json"))))
        if code != 0:
            raise UserError(f"energytta-sample exited with {code}")
        return sampler.rows, sampler.rows[-1][0]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def quarters(rows: list[tuple[float, float, int]], total: int) -> list[dict[str, float]]:
    """Per quarter of the prompts written: its end time, median and peak RSS (medians
    smooth the within-batch swing of the activations)."""
    import statistics

    out = []
    for q in range(4):
        lo, hi = q * total / 4, (q + 1) * total / 4
        inside = [r for r in rows if lo <= r[2] < hi or (q == 3 and r[2] >= hi)]
        if inside:
            out.append({"prompts": hi, "end_s": inside[-1][0],
                        "median": statistics.median(r[1] for r in inside),
                        "peak": max(r[1] for r in inside)})
    return out


def page(args: argparse.Namespace, rows: list, seconds: float) -> str:
    """The markdown page: settings, RSS per quarter of the run, the second half's growth."""
    qs = quarters(rows, args.prompts)
    growth = qs[-1]["median"] - qs[1]["median"]
    verdict = ("flat" if growth < FLAT_MB
               else "**growing** (a leak: look for state kept per batch)")
    lines = [
        "# Memory over a long prompt list", "",
        "Regenerate: `python -m research.memory --out research/reports/memory.md "
        f"--prompts {args.prompts}` ({seconds / 60:.1f} min here).", "",
        f"`energytta-sample` on {args.prompts} prompts (`--ckpt {args.ckpt} --batch-size "
        f"{args.batch_size} --duration {args.duration} --iterations {args.iterations}`"
        f"{'' if args.spectrograms else ' --no-spectrograms'}), run in one process while a "
        "thread reads its resident set size (VmRSS) every 0.2 s. The settings are cheap on "
        "purpose: the per-batch work that could leak (text encoding, decoding, the vocoder, "
        "wav/png/json writes) runs once per batch whatever the clip length.", "",
        "| prompts written | by second | median RSS (MB) | peak RSS (MB) |",
        "|---:|---:|---:|---:|",
        *[f"| up to {q['prompts']:.0f} | {q['end_s']:.0f} | {q['median']:.0f} | "
          f"{q['peak']:.0f} |" for q in qs], "",
        f"RSS when sampling began (torch imported, no model yet): {rows[0][1]:.0f} MB. "
        "Median RSS from the "
        f"second quarter to the last: {growth:+.1f} MB, {verdict} (threshold "
        f"{FLAT_MB:.0f} MB).", "",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.prompts < 4 * args.batch_size:
        raise UserError(f"--prompts must be at least 4 batches ({4 * args.batch_size}) for "
                        "a slope to mean anything")
    rows, seconds = measure(args)
    text = page(args, rows, seconds)
    atomic_write_text(args.out, text)
    print(text, file=sys.stderr)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    from energytta.errors import run_cli

    raise SystemExit(run_cli(main))
