"""`energytta-eval`: score text-to-audio output with the AudioCaps metrics (audioldm_eval
conventions), offline, plus caption-attribute accuracy on the synthetic corpus.

    energytta-eval --generated samples/eval --reference data/synth/test.jsonl \
        --embedders mel-stats,synth-classifier --json eval.json
    energytta-eval --ckpt runs/student_small/model.safetensors --iterations 16 \
        --generated samples/eval --reference data/synth/test.jsonl --json eval.json
    energytta-eval train-classifier --train data/synth/train.jsonl \
        --out energytta/assets/synth_classifier.safetensors

`energytta.cli.eval_main` calls `main(argv)` and turns `UserError` into one error line.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from energytta.cli_help import HelpFormatter
from energytta.errors import UserError

SUBCOMMAND = "train-classifier"
USAGE = ("%(prog)s --generated DIR --reference MANIFEST [options]\n"
         f"       %(prog)s {SUBCOMMAND} [--help] [options]")

EPILOG = """\
pairing:
  Generated file DIR/<stem>.wav (or .flac) is paired with the reference manifest item whose
  audio file has the same stem: data/synth/audio/001800.wav <-> DIR/001800.wav. Every
  generated file must have a reference item; reference items without a generated file
  only count in FD/FAD. KL, CLAP score and attribute accuracy use the pairs.
  --generated may also be a manifest (e.g. reference vs reference sanity checks).

embedders (comma-separated; nothing is ever downloaded):
  mel-stats         log-mel statistics, always available             -> FD
  synth-classifier  the shipped in-domain classifier                 -> FD, KL, IS
  panns-cnn14       needs --panns-ckpt Cnn14_16k_mAP=0.438.pth       -> FD, KL, IS
  vggish            needs --vggish-ckpt vggish-10086976.pth          -> FAD
  clap              needs --clap-model DIR (transformers CLAP)       -> CLAP score, FD

audio: first channel, DC removed, resampled to each embedder's rate, padded to >= 2 s and
cut to --max-seconds (audioldm_eval conventions).

generation mode: with --ckpt, the reference captions are first generated into --generated
(one DIR/<stem>.wav per reference item) with energytta's TextToAudio; the settings go into
the JSON.

train-classifier: `energytta-eval train-classifier --help` (trains the synth-classifier
  embedder; energytta.eval.train_classifier).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="energytta-eval", usage=USAGE, epilog=EPILOG,
                                formatter_class=HelpFormatter,
                                description="FD, FAD, KL, IS, CLAP score and caption-attribute "
                                            "accuracy of generated audio.")
    p.add_argument("--generated", required=True, metavar="DIR",
                   help="folder of <stem>.wav files (or a manifest); with --ckpt, the output")
    p.add_argument("--reference", required=True, metavar="MANIFEST",
                   help="JSONL / AudioCaps CSV / Clotho CSV manifest of the real audio")
    p.add_argument("--embedders", default="mel-stats,synth-classifier", metavar="A,B",
                   help="embedders to score with (see below)")
    p.add_argument("--panns-ckpt", metavar="P", help="official CNN14 16 kHz checkpoint")
    p.add_argument("--vggish-ckpt", metavar="P", help="torchvggish state dict")
    p.add_argument("--clap-model", metavar="DIR",
                   help="local transformers CLAP folder, or one energytta-data convert-clap "
                        "made of a LAION-CLAP / MS-CLAP checkpoint")
    p.add_argument("--classifier-ckpt", metavar="P",
                   help="synth-classifier checkpoint (default: the shipped one)")
    p.add_argument("--max-seconds", type=float, default=10.0, metavar="S",
                   help="cut longer clips (default 10, the AudioCaps length; 0 = no cut)")
    p.add_argument("--no-attributes", action="store_true",
                   help="skip caption-attribute accuracy")
    p.add_argument("--strict-attributes", action="store_true",
                   help="also check attributes the caption omits against their default "
                        "(not loud/soft, medium pitch, no fade, ...): the calibration mode")
    p.add_argument("--kid", action="store_true", help="also kernel inception distance")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="use the first N reference items only")
    p.add_argument("--device", default="cpu", metavar="D", help="cpu | cuda | cuda:1 | auto")
    p.add_argument("--json", metavar="OUT", help="write the results here")
    g = p.add_argument_group("generation mode")
    g.add_argument("--ckpt", metavar="P",
                   help="generate the reference captions first with this checkpoint (a "
                        "path or a shipped name: student, teacher, captiononly, guided)")
    unset = "default: the checkpoint's sample.%s"
    for flag, kind, meta in (("iterations", int, "K"), ("cfg", float, "X"),
                             ("temperature", float, "T"), ("duration", float, "S"),
                             ("seed", int, "N"), ("batch-size", int, "B")):
        g.add_argument(f"--{flag}", type=kind, default=None, metavar=meta,
                       help=unset % flag.replace("-", "_"))
    return p


def check_args(args: argparse.Namespace) -> None:
    """The numbers, the device and the --json destination, before any work (an hour of
    scoring must not end in an error about where to write it)."""
    import math

    from energytta.utils import check_writable, pick_device

    if not (math.isfinite(args.max_seconds) and args.max_seconds >= 0):
        raise UserError(f"--max-seconds {args.max_seconds} must be a finite number of "
                        "seconds > 0 (or 0 for no cut)")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit} must be >= 1 (leave it out to use every "
                        "reference item)")
    pick_device(args.device)  # an unknown or data-less device ('meta') is one line
    if args.json:
        check_writable(args.json, "--json")


class Bar:
    """A rich progress bar with one task per label (stderr)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self.progress = Progress("[progress.description]{task.description}", BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(),
                                 console=Console(stderr=True), transient=True)
        self.tasks: dict[str, int] = {}

    def __call__(self, label: str, done: int, total: int) -> None:
        if label not in self.tasks:
            self.tasks[label] = self.progress.add_task(label, total=total)
        self.progress.update(self.tasks[label], completed=done, total=total)


def generate(args: argparse.Namespace, reference: str, limit: int | None, bar: Bar) -> dict:
    """Generate every reference caption into args.generated/<stem>.wav; return settings."""
    from energytta.audio.io import write_wav
    from energytta.data.manifest import read_manifest
    from energytta.eval.runner import by_stem
    from energytta.pipeline import TextToAudio

    items = list(by_stem(read_manifest(reference)).items())[:limit]
    pipe = TextToAudio.from_pretrained(args.ckpt, args.device)
    s = pipe.settings(args.seed, args.duration, args.iterations, args.cfg, args.temperature,
                      None, args.batch_size)
    out = Path(args.generated)
    if out.exists() and not out.is_dir():
        raise UserError(f"--generated {out}: with --ckpt this is the output folder, "
                        "but it is a file")
    out.mkdir(parents=True, exist_ok=True)
    result = pipe.generate([it.caption for _, it in items], s,
                           progress=lambda d, t: bar("generating", d, t))
    for (stem, _), wav in zip(items, result.wavs):
        write_wav(out / f"{stem}.wav", wav, result.sample_rate)
    return {"checkpoint": str(args.ckpt), "kind": pipe.kind, **dataclasses.asdict(s)}


def run(args: argparse.Namespace) -> dict:
    """Score args.generated against args.reference (generating it first with --ckpt).

    Returns the result written by --json: counts, metrics per embedder, attributes."""
    from energytta.eval import runner
    from energytta.eval.embedders import get_embedder
    from energytta.utils import pick_device

    names = [n.strip() for n in args.embedders.split(",") if n.strip()]
    max_s = args.max_seconds or None
    bar = Bar()
    result: dict = {"generated": str(args.generated), "reference": str(args.reference),
                    "embedders": names, "max_seconds": max_s}
    paths = dict(panns_ckpt=args.panns_ckpt, vggish_ckpt=args.vggish_ckpt,
                 clap_model=args.clap_model, classifier_ckpt=args.classifier_ckpt)
    device = pick_device(args.device)
    embedders = [get_embedder(n, device, **paths) for n in names]  # fail before work
    with bar.progress:
        if args.ckpt:
            result["generation"] = generate(args, args.reference, args.limit, bar)
        data = runner.collect(args.generated, args.reference)
        if args.limit:
            data = data.limit(args.limit)
        result.update(num_reference=len(data.reference), num_generated=len(data.generated),
                      num_paired=len(data.paired))
        result["metrics"] = {}
        for emb in embedders:
            m = runner.embedder_metrics(emb, data, max_s, args.kid, bar)
            if emb.name == "clap":
                m.update(runner.clap_metrics(emb, data, max_s, bar))
            result["metrics"][emb.name] = m
        if not args.no_attributes:
            typer = next((e for e in embedders if e.name == "synth-classifier"), None)
            result["attributes"] = runner.attribute_accuracy(data, max_s, bar,
                                                             args.strict_attributes, typer)
    return result


def print_tables(result: dict) -> None:
    """The metrics and the caption-attribute accuracy as rich tables (stdout)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=f"{result['generated']} vs {result['reference']} "
                    f"({result['num_paired']} pairs)")
    for col in ("embedder", "metric", "value"):
        t.add_column(col)
    for name, ms in result["metrics"].items():
        for k, v in ms.items():
            t.add_row(name, k, f"{v:.4f}")
    console.print(t)
    attrs = result.get("attributes")
    if attrs:
        a = Table(title="caption-attribute accuracy (n = checks)")
        a.add_column("attribute")
        for split in attrs:
            a.add_column(split)
        for key in attrs["all"]:
            a.add_row(key, *(f"{attrs[s][key]['accuracy']:.3f} ({attrs[s][key]['n']})"
                             if key in attrs[s] else "-" for s in attrs))
        console.print(a)


def main(argv: list[str]) -> int:
    """Score (or generate, then score), or with `train-classifier` first, train the
    synth-classifier embedder.

    Args:
        argv: arguments without the program name.
    Returns:
        the exit code; bad input raises UserError.
    """
    if argv[:1] == [SUBCOMMAND]:
        from energytta.eval.train_classifier import train_and_copy as train_classifier

        return train_classifier(argv[1:], f"energytta-eval {SUBCOMMAND}")
    args = build_parser().parse_args(argv)
    check_args(args)
    start = time.time()
    result = run(args)
    result["seconds"] = round(time.time() - start, 1)
    print_tables(result)
    if args.json:
        from energytta.utils import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
