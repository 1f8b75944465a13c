"""`energytta-sample`: one wav + spectrogram PNG + JSON per prompt and seed.

Only the standard library is imported at module level: `--help` and flag errors answer
without loading torch."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import signal
import sys
import tempfile
import warnings
from pathlib import Path

import energytta
from energytta.cli_help import HelpFormatter
from energytta.errors import UserError
from energytta.outputs import SLUG_MAX, output_stems, slugify  # noqa: F401 (re-exported)

EPILOG = """\
examples:
  energytta-sample --prompt "a dog barks twice" --prompt "rain on a tin roof"
  energytta-sample --prompt "a dog barks twice" --num-samples 4 --seed 10   # seeds 10-13
  echo "a bell rings" | energytta-sample --prompts -
  energytta-sample --prompts examples/prompts.txt
  energytta-sample --prompts examples/prompts.txt --ckpt runs/student_small/model.safetensors \\
      --out-dir samples/student --seed 3 --duration 4 --cfg 3 --iterations 16
  energytta-sample --prompts my.txt --ckpt runs/teacher_small --batch-size 1 --device cpu
  energytta-sample --prompts p.txt --audio in.wav --keep 0-1.5,3.0-4.0   # inpaint the rest
  energytta-sample --prompts p.txt --audio in.wav --regenerate 1.5-3.0   # the same edit
  energytta-sample --prompts p.txt --continue in.wav --duration 8        # continue a clip
  energytta-sample --prompts p.txt --duration 20 --overlap 1.0           # longer than 4 s
  energytta-sample --prompts p.txt --audio in.wav --strength 0.3 --variations 4

editing (docs/editing.md): --audio FILE is encoded by the model's codec; --keep spans are
kept as known tokens and the rest regenerated (--regenerate names the other part). Spans
are START-END seconds, comma-separated, snapped to whole tokens (0.1 s for the shipped
models); the output is the input cut to whole tokens. Kept spans hold the input's own
samples, cross-faded over 20 ms where they meet regenerated audio (--no-paste: the codec's
rendering instead). --strength S re-masks a random fraction S of the input's tokens per
variation. A --duration past the model's audio.max_seconds is generated window by window,
each window seeing the previous one's last --overlap seconds as known tokens; windows are
joined in token space and rendered in one vocoder pass, so there is no seam to fade.
A prompt "a dog barks | rain starts" on such a clip splits it evenly between its segments;
each window is conditioned on the segment at its middle.

prompts: --prompt TEXT (repeatable), or --prompts FILE ('-' = standard input): UTF-8, one
prompt per line (lines end at \\n or \\r\\n only); blank lines and lines starting with '#'
are skipped. Each prompt i and seed S gives DIR/iii-<slug>-seedS.wav, .png (spectrogram)
and .json (prompt, seed, every setting and the checkpoint's sha256). --num-samples N runs
the prompts with seeds S, S+1, ..., S+N-1: the file of seed S+j is exactly what --seed S+j
writes. Unset options come from the checkpoint's `sample` config. The same seed and
settings give byte-identical files; with --batch-size 1 each prompt's audio depends only
on (seed, its index among the prompts). Files are written batch by batch as they finish;
a rerun skips the samples already written by the same checkpoint (same sha256) with the
same settings, says how many, and regenerates the rest (--overwrite regenerates all).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="energytta-sample", epilog=EPILOG, formatter_class=HelpFormatter,
        description="Generate audio from text prompts with an energytta student or teacher.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", dest="prompt_texts", action="append", metavar="TEXT",
                     default=None, help="a prompt; repeat for more (default: none, give "
                                        "--prompt or --prompts)")
    src.add_argument("--prompts", metavar="FILE", default=None,
                     help="text file, one prompt a line; '-' reads standard input "
                          "(default: none, give --prompt or --prompts)")
    p.add_argument("--ckpt", metavar="PATH", default=None,
                   help="a shipped model: student (the default: the energy-head "
                        "student), captiononly (the caption-only one-pass student), teacher, "
                        "guided (guidance distilled into one pass); or an inference "
                        ".safetensors, step-XXXXXXX/ folder or run folder")
    p.add_argument("--out-dir", metavar="DIR", default="samples", help="output folder")
    p.add_argument("--num-samples", type=int, default=1, metavar="N",
                   help="takes per prompt, with seeds --seed, --seed+1, ... (each seed's "
                        "files carry it in their name)")
    unset = "default: the checkpoint's sample.%s"
    p.add_argument("--seed", type=int, default=None, metavar="N", help=unset % "seed")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="clip length; past the model's audio.max_seconds it is generated "
                        "window by window (see --overlap); " + unset % "duration")
    p.add_argument("--cfg", type=float, default=None, metavar="X",
                   help="classifier-free guidance scale (1 = none); " + unset % "cfg")
    p.add_argument("--iterations", type=int, default=None, metavar="K",
                   help="parallel decoding iterations; " + unset % "iterations")
    p.add_argument("--temperature", type=float, default=None, metavar="T",
                   help="scale of the head's sampling noise (lower: less varied); "
                        + unset % "temperature")
    p.add_argument("--batch-size", type=int, default=None, metavar="B",
                   help="prompts per batch; " + unset % "batch_size")
    p.add_argument("--device", default="auto", metavar="D", help="auto | cpu | cuda | cuda:1")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="autocast precision of text encoding and decoding (bf16 on GPUs)")
    p.add_argument("--vocoder", default=None, metavar="V",
                   help="default: the checkpoint's sample.vocoder | checkpoint (the codec's "
                        "own; Griffin-Lim for the shipped models) | "
                        "griffin-lim | trained (the shipped trained vocoder: far faster on "
                        "CPU, research/reports/speed_quality.md) | a vocoder .safetensors")
    p.add_argument("--two-pass-cfg", dest="one_pass_cfg", action="store_const", const=False,
                   default=None,
                   help="guide a guidance-distilled checkpoint with the two-pass CFG "
                        "(cond + uncond rows) instead of its one conditional pass")
    p.add_argument("--negative-prompt", default=None, metavar="TEXT",
                   help="text for the unconditional CFG branch (default: the learned null "
                        "text)")
    p.add_argument("--no-spectrograms", dest="spectrograms", action="store_false",
                   help="write wav + json only (the PNGs cost more than generation on "
                        "long prompt lists)")
    e = p.add_argument_group("editing and long audio (docs/editing.md)")
    e.add_argument("--audio", metavar="FILE", default=None,
                   help="input clip to edit with --keep, --regenerate or --strength "
                        "(resampled to the model's rate, with a warning)")
    spans = e.add_mutually_exclusive_group()
    spans.add_argument("--keep", metavar="SPANS", default=None,
                       help="keep these spans of --audio, regenerate the rest: START-END "
                            "seconds, comma-separated (0-1.5,3.0-4.0), snapped to whole "
                            "tokens (0.1 s for the shipped models)")
    spans.add_argument("--regenerate", metavar="SPANS", default=None,
                       help="regenerate these spans of --audio, keep the rest")
    e.add_argument("--continue", dest="continue_from", metavar="FILE", default=None,
                   help="keep this clip and continue it to --duration seconds")
    e.add_argument("--strength", type=float, default=None, metavar="S",
                   help="variations: re-mask a random fraction S in (0, 1] of --audio's "
                        "tokens and regenerate them")
    e.add_argument("--variations", type=int, default=None, metavar="N",
                   help="with --strength: N takes per prompt (files ...-v0 ... -v<N-1>; "
                        "default 1)")
    e.add_argument("--overlap", type=float, default=None, metavar="SECONDS",
                   help="seconds of the previous window each window past the first sees "
                        "(default 1; used when the output exceeds audio.max_seconds)")
    e.add_argument("--no-paste", dest="paste", action="store_false",
                   help="kept spans: the codec's rendering of the kept tokens instead of "
                        "the input's own samples")
    p.add_argument("--overwrite", action="store_true",
                   help="regenerate samples a previous run already wrote with the same "
                        "checkpoint and settings (default: skip them, so an interrupted "
                        "run continues)")
    return p


def read_prompts(path: str | Path) -> list[str]:
    """Non-blank, non-comment lines of a UTF-8 file ('-': standard input); UserError if
    missing/empty/not UTF-8. Lines end at '\n' or '\r\n' only (not at form feeds or
    Unicode line separators, which `str.splitlines` also breaks at), so prompt indices
    match the lines an editor numbers."""
    name = "standard input" if str(path) == "-" else f"prompts file {path}"
    try:
        if str(path) == "-":
            if sys.stdin is None:
                raise UserError("--prompts -: there is no standard input to read")
            if sys.stdin.isatty():
                print("reading prompts from standard input, one a line (end with Ctrl-D)",
                      file=sys.stderr)
            data = sys.stdin.buffer.read()
        else:
            if not Path(path).is_file():
                raise UserError(f"prompts file not found: {path} (pass --prompts FILE, one "
                                "prompt a line, or --prompt TEXT)")
            data = Path(path).read_bytes()
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{name} is not UTF-8 (bad byte at offset {e.start}); "
                        "save it as UTF-8") from None
    except OSError as e:
        raise UserError(f"cannot read {name}: {e.strerror}") from None
    prompts = [line.strip() for line in text.split("\n")]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise UserError(f"{name} holds no prompts (blank and '#' lines are skipped)")
    return prompts


def gather_prompts(args: argparse.Namespace) -> list[str]:
    """The run's prompts: the --prompt texts as given, or the --prompts file's lines."""
    if args.prompt_texts is None:
        return read_prompts(args.prompts)
    for i, text in enumerate(args.prompt_texts):
        if not text.strip():
            raise UserError(f"--prompt number {i + 1} is empty; give some text")
    return [t.strip() for t in args.prompt_texts]


def check_writable(folder: Path) -> None:
    """Create `folder` and prove we can write in it, before any generation starts."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise UserError(f"output folder {folder} is not writable ({e.strerror}); "
                        "pick another --out-dir") from None


def warn_truncated(pipe, prompts: list[str]) -> None:
    """Name every prompt the text encoder will cut at `text.max_length` tokens (stderr)."""
    limit = pipe.cfg.text.max_length
    lengths = pipe.text_encoder.token_lengths(prompts)
    for i, (prompt, n) in enumerate(zip(prompts, lengths)):
        if n > limit:
            print(f"warning: prompt {i} ({prompt[:40]!r}...) has {n} tokens; the text encoder "
                  f"keeps the first {limit} (text.max_length)", file=sys.stderr)


def _progress():
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    return Progress("[progress.description]{task.description}", BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), console=Console(stderr=True))


def _record(pipe, prompt: str, index: int, stem: str, settings,
            spectrogram: bool = True, edit: dict | None = None) -> dict:
    record = {"prompt": prompt, "index": index, **dataclasses.asdict(settings),
              "checkpoint": str(pipe.checkpoint),
              "checkpoint_sha256": pipe.checkpoint_sha256, "kind": pipe.kind,
              "device": str(pipe.device), "dtype": pipe.dtype, "vocoder": pipe.vocoder,
              "sample_rate": pipe.sample_rate, "wav": f"{stem}.wav",
              "spectrogram": f"{stem}.png" if spectrogram else None,
              "energytta_version": energytta.__version__}
    if edit is not None:  # only edits and windowed clips: plain records stay as they were
        record["edit"] = edit
    return record


def check_edit_args(args: argparse.Namespace) -> None:
    """The editing flags' combinations and ranges, before anything is loaded or written."""
    from energytta import editing

    span_flag = "--keep" if args.keep is not None else "--regenerate"
    has_spans = args.keep is not None or args.regenerate is not None
    if has_spans and args.audio is None:
        raise UserError(f"{span_flag} needs --audio FILE (the clip whose spans it names)")
    if args.strength is not None and args.audio is None:
        raise UserError("--strength needs --audio FILE (the clip to vary)")
    if args.variations is not None and args.strength is None:
        raise UserError("--variations needs --audio FILE and --strength S")
    if args.audio is not None and not has_spans and args.strength is None:
        raise UserError("--audio needs --keep SPANS, --regenerate SPANS or --strength S "
                        "(what to do with the clip)")
    if has_spans and args.strength is not None:
        raise UserError(f"give {span_flag} or --strength, not both (one edit at a time)")
    if args.continue_from is not None and args.audio is not None:
        raise UserError("give --continue FILE or --audio FILE, not both")
    if args.audio is not None and args.duration is not None:
        raise UserError("--duration does not apply to --audio edits: the output has the "
                        "input's length (use --continue FILE --duration D to extend a clip)")
    if has_spans:
        editing.parse_spans(args.keep if args.keep is not None else args.regenerate,
                            span_flag)  # syntax, empty and overlapping spans
    if args.strength is not None:
        editing.check_strength(args.strength)
    if args.variations is not None and args.variations < 1:
        raise UserError(f"--variations {args.variations} must be >= 1")
    if args.overlap is not None and not (math.isfinite(args.overlap) and args.overlap > 0):
        raise UserError(f"--overlap {args.overlap} must be a positive number of seconds")


def edit_plan(args: argparse.Namespace, pipe):
    """The run's `EditPlan`: the input clip read (a rate warning as one stderr line),
    encoded and planned by the pipeline; None without an edit flag."""
    if args.continue_from is None and args.audio is None:
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if args.continue_from is not None:
            duration = pipe.cfg.sample.duration if args.duration is None else args.duration
            plan = pipe.plan_continue(args.continue_from, duration, args.paste, args.overlap)
        elif args.strength is not None:
            plan = pipe.plan_vary(args.audio, args.strength, args.variations or 1,
                                  args.overlap)
        else:
            plan = pipe.plan_inpaint(args.audio, args.keep, args.regenerate, args.paste,
                                     args.overlap)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return plan


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from energytta.locks import folder_lock  # after parsing: --help never loads torch

    check_edit_args(args)
    if args.num_samples < 1:
        raise UserError(f"--num-samples {args.num_samples} must be >= 1")
    prompts = gather_prompts(args)
    out_dir = Path(args.out_dir)
    created = not out_dir.exists()
    try:
        with _sigterm_exits():
            check_writable(out_dir)
            with folder_lock(out_dir, "energytta-sample", "pass another --out-dir"):
                return _sample(args, prompts, out_dir)
    except BaseException:
        if created:  # a run stopped before writing anything leaves no folder behind
            with contextlib.suppress(OSError):
                out_dir.rmdir()
        raise


@contextlib.contextmanager
def _sigterm_exits():
    """SIGTERM (a scheduler, `kill`, a container stop) unwinds like Ctrl-C does: the lock
    is released and a folder this run created but never wrote to is removed. Exit 143."""
    def stop(signum: int, _frame) -> None:
        print("terminated", file=sys.stderr)
        raise SystemExit(128 + signum)
    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: signals are not ours to handle
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _sample(args: argparse.Namespace, prompts: list[str], out_dir: Path) -> int:
    """Generate the prompts into `out_dir` (locked), once per seed of --num-samples; the
    pipeline hands over each batch as it finishes and its wav, png and json are written
    then. A batch whose files a previous run wrote with the same checkpoint and settings
    is skipped (so an interrupted run continues where it stopped)."""
    from energytta import editing
    from energytta.pipeline import TextToAudio, sample_seeds

    pipe = TextToAudio.from_pretrained(args.ckpt, args.device, args.dtype, args.vocoder)
    plan = edit_plan(args, pipe)
    knobs = dict(seed=args.seed, iterations=args.iterations, cfg=args.cfg,
                 temperature=args.temperature, negative_prompt=args.negative_prompt,
                 batch_size=args.batch_size, one_pass_cfg=args.one_pass_cfg)
    if plan is None:
        settings = pipe.settings(duration=args.duration, **knobs)
        plan = pipe.plan(settings, args.overlap)
    else:
        settings = pipe.edit_settings(plan, **knobs)
    editing.segment_prompts(prompts, plan.windows)  # every '|' prompt, before any batch
    warn_truncated(pipe, prompts)
    passes = [_Pass(pipe, args, prompts, plan, dataclasses.replace(settings, seed=seed))
              for seed in sample_seeds(settings.seed, args.num_samples)]
    todo = [[b for b in p.batches() if args.overwrite or not p.done(out_dir, b)]
            for p in passes]
    _report_reuse(out_dir, passes, todo)
    written = sum(len(p.batch(b)) for p, bs in zip(passes, todo) for b in bs)
    per_batch = len(plan.windows) * settings.iterations
    with _progress() as bar, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*truncated")  # named above, per prompt
        task = bar.add_task(f"sampling {written} clip(s)",
                            total=sum(map(len, todo)) * per_batch)
        base = 0
        for p, batches in zip(passes, todo):
            def write(first: int, wavs, mels, _p: _Pass = p) -> None:
                for record, wav, mel in zip(_p.records[first:], wavs, mels):
                    _write(out_dir, pipe, record, wav, mel)

            def step(done: int, _total: int, _base: int = base) -> None:
                bar.update(task, completed=_base + done)
            pipe.generate_each(p.rows, p.settings, write, step, plan,
                               skip=lambda first, _rows, _b=set(batches): first not in _b)
            base += len(batches) * per_batch
    print(f"wrote {written} sample(s) to {out_dir}")
    return 0


class _Pass:
    """One seed's pass over the prompts (with --variations: N rows each): its rows,
    settings and the record each row's json will hold."""

    def __init__(self, pipe, args: argparse.Namespace, prompts: list[str], plan,
                 settings) -> None:
        stems, edit = output_stems(prompts, settings.seed), plan.public_record()
        takes = int(plan.record.get("variations", 1))  # --variations: each prompt N times
        if takes > 1 or plan.mode == "vary":
            prompts = [p for p in prompts for _ in range(takes)]
            stems = [f"{stem}-v{j}" for stem in stems for j in range(takes)]
        self.rows, self.settings = prompts, settings
        self.records = [_record(pipe, p, i, stem, settings, args.spectrograms,
                                _edit_of_row(edit, plan.mode, i, takes))
                        for i, (p, stem) in enumerate(zip(prompts, stems))]

    def batches(self) -> range:
        """Each batch's first row."""
        return range(0, len(self.rows), self.settings.batch_size)

    def batch(self, first: int) -> list[dict]:
        return self.records[first:first + self.settings.batch_size]

    def done(self, out_dir: Path, first: int) -> bool:
        return all(_done(out_dir, r) for r in self.batch(first))


def _report_reuse(out_dir: Path, passes: list[_Pass], todo: list[list[int]]) -> None:
    """Say how many samples are skipped, and how many found files are regenerated because
    another checkpoint or other settings wrote them (stderr)."""
    runs = [r for p, bs in zip(passes, todo) for b in bs for r in p.batch(b)]
    skipped = sum(len(p.records) for p in passes) - len(runs)
    stale = sum((out_dir / _json_name(r)).is_file() and not _done(out_dir, r) for r in runs)
    if skipped:
        print(f"skipping {skipped} sample(s) already in {out_dir} from this checkpoint "
              "with these settings (--overwrite regenerates them)", file=sys.stderr)
    if stale:
        print(f"regenerating {stale} sample(s) in {out_dir} that another checkpoint or "
              "other settings wrote", file=sys.stderr)


def _edit_of_row(edit: dict | None, mode: str, row: int, takes: int) -> dict | None:
    """The edit record of output row `row` (a variation also records which take it is)."""
    if edit is None or mode != "vary":
        return edit
    return {**edit, "variation": row % takes}


def _json_name(record: dict) -> str:
    return Path(record["wav"]).stem + ".json"


def _done(out_dir: Path, record: dict) -> bool:
    """The sample's files exist and its json (written last) records the same checkpoint
    (content hash) and settings."""
    files = [record["wav"], record["spectrogram"]] if record["spectrogram"] else [record["wav"]]
    json_path = out_dir / _json_name(record)
    if not (json_path.is_file() and all((out_dir / f).is_file() for f in files)):
        return False
    try:
        return json.loads(json_path.read_text()) == record
    except (OSError, ValueError):
        return False


def _write(out_dir: Path, pipe, record: dict, wav, mel) -> None:
    """wav, then png, then json: each atomic, the json last as the prompt's commit mark."""
    from energytta.audio.io import write_wav
    from energytta.audio.plot import save_spectrogram_png
    from energytta.utils import atomic_write_text

    audio = pipe.cfg.audio
    write_wav(out_dir / record["wav"], wav, pipe.sample_rate)
    if record["spectrogram"]:
        save_spectrogram_png(mel, out_dir / record["spectrogram"],
                             title=record["prompt"][:80], sample_rate=audio.sample_rate,
                             hop_length=audio.hop_length)
    stem = Path(record["wav"]).stem
    atomic_write_text(out_dir / f"{stem}.json", json.dumps(record, indent=2) + "\n")
