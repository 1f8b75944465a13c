"""Editing and long audio with the shipped models on the synthetic test split: writes
docs/editing.md and its spectrogram strip.

    energytta-data synth --out data/synth_edit --num 400 --seconds 4   # the corpus, once
    python -m research.editing_report --out docs/editing.md

For each model (teacher, student) and the first --limit test clips (their captions as the
prompts), it generates and scores with energytta-eval's caption-attribute checks (the
analytic detectors plus the synth classifier's type check, `runner.attribute_accuracy`):
- full: every clip generated from scratch (the baseline);
- inpaint: each test clip with its middle half (1-3 s of 4 s) regenerated, the rest kept;
  whole clips scored, and the kept samples compared with the input's (exact preservation);
- continue: each test clip kept and continued from 4 s to 8 s; the new 4-8 s scored;
- long: the first --long captions as 20 s clips (seven 4 s windows, 1 s overlap), scored
  4 s segment by segment (0-4 s, 4-8 s, ...).
The test clips themselves are scored too, as the checks' ceiling. Rows are saved under
--work (keyed by the checkpoint's sha256 and every setting) and reused on a rerun.
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from energytta.errors import UserError
from research.rows import accuracy, save, saved, sha256

MODELS = ("teacher", "student")
CORPUS_HINT = "energytta-data synth --out data/synth_edit --num 400 --seconds 4"
CLIP_SECONDS = 4.0  # the corpus's clips and the shipped models' window
REGENERATE = "1-3"  # the middle half of a 4 s clip
CONTINUE_TO = 8.0
LONG_SECONDS = 20.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m research.editing_report",
                                description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", default="data/synth_edit/test.jsonl", metavar="MANIFEST",
                   help="synthetic test split (default: data/synth_edit/test.jsonl)")
    p.add_argument("--models", default="teacher,student", metavar="A,B")
    p.add_argument("--limit", type=int, default=24, metavar="N",
                   help="test clips for full / inpaint / continue (default 24)")
    p.add_argument("--long", type=int, default=3, metavar="N",
                   help="captions generated as 20 s clips (default 3)")
    p.add_argument("--iterations", type=int, default=16, metavar="K",
                   help="decoding iterations per window (default 16)")
    p.add_argument("--overlap", type=float, default=1.0, metavar="SECONDS")
    p.add_argument("--seed", type=int, default=0, metavar="N")
    p.add_argument("--batch-size", type=int, default=8, metavar="B")
    p.add_argument("--threads", type=int, default=1, metavar="T", help="torch CPU threads")
    p.add_argument("--work", default="runs/editing", metavar="DIR",
                   help="wavs and saved rows (default: runs/editing)")
    p.add_argument("--out", default=None, metavar="MD", help="write the page here")
    p.add_argument("--figure", default="docs/img/editing_long.png", metavar="PNG",
                   help="spectrogram strip of one 20 s clip (default docs/img/editing_long.png)")
    return p


# ------------------------------------------------------------------ generation
def _items(reference: str, limit: int) -> list[tuple[str, Any]]:
    from energytta.data.manifest import read_manifest
    from energytta.eval.runner import by_stem

    return list(by_stem(read_manifest(reference)).items())[:limit]


def _write(folder: Path, stem: str, wav: np.ndarray, sr: int) -> None:
    from energytta.audio.io import write_wav

    write_wav(folder / f"{stem}.wav", wav, sr)


def gen_full(pipe: Any, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Every caption from scratch, CLIP_SECONDS long."""
    items = _items(args.reference, args.limit)
    s = pipe.settings(seed=args.seed, iterations=args.iterations, duration=CLIP_SECONDS,
                      batch_size=args.batch_size)
    start = time.process_time()
    out = pipe.generate([it.caption for _, it in items], s)
    for (stem, _), wav in zip(items, out.wavs):
        _write(folder, stem, wav, out.sample_rate)
    return {"cpu_s_per_clip": (time.process_time() - start) / len(items)}


def gen_inpaint(pipe: Any, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Each clip with REGENERATE regenerated; the kept samples checked against the input
    (outside the fades, after the 16-bit file round trip) and the kept frames' log-mel
    against the codec's analysis of the input."""
    import soundfile as sf
    import torch

    from energytta import editing

    items, diffs, mel_err = _items(args.reference, args.limit), [], []
    start = time.process_time()
    g = pipe.inpaint([it.caption for _, it in items], [it.audio for _, it in items],
                     regenerate=REGENERATE, seed=args.seed, iterations=args.iterations,
                     batch_size=args.batch_size)  # one input clip per caption
    hop, sr, S = pipe.cfg.audio.hop_length, g.sample_rate, g.wavs.shape[1]
    fade = int(round(editing.DEFAULT_CROSSFADE * sr))
    for i, ((stem, it), edit) in enumerate(zip(items, g.edit)):
        _write(folder, stem, g.wavs[i], sr)
        original = sf.read(str(it.audio), dtype="float32")[0]  # the file's own samples
        written = sf.read(str(folder / f"{stem}.wav"), dtype="float32")[0]
        kept = [(int(round(a * sr)), int(round(b * sr))) for a, b in edit["keep"]]
        for a, b in editing.interior(kept, fade, S):
            diffs.append(float(np.abs(written[a:b] - original[a:b]).max()))
        frames = np.concatenate([np.arange(a // hop, b // hop) for a, b in kept])
        ref = pipe.codec.mel(torch.from_numpy(editing.read_source(it.audio, sr).wav))[0]
        mel_err.append(float(np.abs(g.mels[i][:, frames] - ref.numpy()[:, frames]).max()))
    return {"cpu_s_per_clip": (time.process_time() - start) / len(items),
            "kept_max_abs_diff": max(diffs), "kept_lsb": max(diffs) * 32768,
            "kept_mel_max_abs_diff": max(mel_err), "kept_spans": len(diffs)}


def gen_continue(pipe: Any, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Each clip continued to CONTINUE_TO s; the new part written for scoring."""
    items = _items(args.reference, args.limit)
    start = time.process_time()
    g = pipe.continue_audio([it.caption for _, it in items], [it.audio for _, it in items],
                            duration=CONTINUE_TO, seed=args.seed, iterations=args.iterations,
                            batch_size=args.batch_size, overlap=args.overlap)
    cut = int(round(CLIP_SECONDS * g.sample_rate))
    for (stem, _), wav in zip(items, g.wavs):
        _write(folder, stem, wav[cut:], g.sample_rate)
    return {"cpu_s_per_clip": (time.process_time() - start) / len(items),
            "windows": g.edit[0]["windows"]}


def gen_long(pipe: Any, args: argparse.Namespace, folder: Path,
             figure: Path | None) -> dict[str, Any]:
    """LONG_SECONDS clips, cut into consecutive CLIP_SECONDS segments seg<k>/<stem>.wav."""
    from energytta.audio.plot import save_spectrogram_png

    items = _items(args.reference, args.long)
    s = pipe.settings(seed=args.seed, iterations=args.iterations, duration=LONG_SECONDS,
                      batch_size=args.batch_size)
    start = time.process_time()
    g = pipe.generate([it.caption for _, it in items], s, plan=pipe.plan(s, args.overlap))
    n = int(round(CLIP_SECONDS * g.sample_rate))
    for (stem, _), wav in zip(items, g.wavs):
        for k in range(int(LONG_SECONDS // CLIP_SECONDS)):
            _write(folder / f"seg{k}", stem, wav[k * n:(k + 1) * n], g.sample_rate)
    if figure is not None:
        a = pipe.cfg.audio
        caption = items[0][1].caption
        caption = caption if len(caption) <= 70 else caption[:67].rsplit(" ", 1)[0] + " ..."
        save_spectrogram_png(g.mels[0], figure, title=f"{caption} "
                             f"({LONG_SECONDS:g} s, {len(g.edit['windows'])} windows)",
                             sample_rate=a.sample_rate, hop_length=a.hop_length)
    return {"cpu_s_per_clip": (time.process_time() - start) / len(items),
            "windows": g.edit["windows"], "samples": int(g.wavs.shape[1])}


# ------------------------------------------------------------------ scoring
def attributes(folder: Path | str, args: argparse.Namespace, limit: int,
               classifier: Any) -> dict[str, Any]:
    """energytta-eval's caption-attribute accuracy of `folder`'s clips (paired by stem)."""
    from energytta.eval import runner

    data = runner.collect(folder, args.reference).limit(limit)
    return runner.attribute_accuracy(data, None, None, False, classifier)


def get_row(args: argparse.Namespace, model: str, ckpt: Path, section: str, pipe: Any,
            classifier: Any) -> dict[str, Any]:
    """The saved row (model, section), or a freshly generated, scored and saved one."""
    work = Path(args.work)
    key = {"model": model, "sha256": sha256(ckpt), "section": section,
           "reference": args.reference, "limit": args.limit, "long": args.long,
           "iterations": args.iterations, "overlap": args.overlap, "seed": args.seed,
           "batch_size": args.batch_size}
    path = work / f"{model}-{section}.json"
    row = saved(path, key)
    if row is not None:
        print(f"{model} {section}: reusing {path}", file=sys.stderr)
        return row
    print(f"{model} {section}: generating ...", file=sys.stderr)
    folder, start = work / f"{model}-{section}", time.time()
    folder.mkdir(parents=True, exist_ok=True)
    if section == "long":
        figure = Path(args.figure) if model == "student" and args.figure else None
        row = {"key": key, "generation": gen_long(pipe(), args, folder, figure)}
        row["segments"] = [attributes(folder / f"seg{k}", args, args.long, classifier)
                           for k in range(int(LONG_SECONDS // CLIP_SECONDS))]
    else:
        gen = {"full": gen_full, "inpaint": gen_inpaint, "continue": gen_continue}[section]
        row = {"key": key, "generation": gen(pipe(), args, folder)}
        row["attributes"] = attributes(folder, args, args.limit, classifier)
    row["seconds"] = round(time.time() - start, 1)  # generation + scoring
    save(path, row)
    return row


# ------------------------------------------------------------------ page
def _pct(result: dict | None, key: str = "overall") -> str:
    a = accuracy({"attributes": result}, "all", key)
    return "–" if a is None else f"{100 * a:.0f}%"


def _n(result: dict | None, key: str = "overall") -> str:
    a = (result or {}).get("all", {}).get(key)
    return "–" if a is None else str(a["n"])


def render(args: argparse.Namespace, rows: dict, real: dict, meta: dict) -> str:
    """The markdown page from the rows."""
    models = [m for m in MODELS if (m, "full") in rows]
    lines = [
        "# Editing and long audio", "",
        "Regenerated by one command (numbers, figure and all):", "",
        f"```bash\n{CORPUS_HINT}   # the corpus, once\n{meta['command']}\n```", "",
        f"{meta['date']}, {meta['machine']}, {args.threads} torch thread(s), "
        f"{meta['seconds']:.0f} s of generation and scoring. Settings: the shipped models' "
        f"sampling defaults except K = {args.iterations} iterations per window, seed "
        f"{args.seed}; the first **{args.limit}** clips of `{args.reference}` (their "
        f"captions as prompts) and the first **{args.long}** as {LONG_SECONDS:g} s clips.",
        "", "How to use it: [cli.md](cli.md#energytta-sample) (`energytta-sample --audio "
        "--keep / --regenerate / --continue / --strength / --variations / --overlap`) and "
        "`TextToAudio.inpaint / continue_audio / vary` (`duration=` past 4 s in "
        "`__call__` / `generate`); the module is `energytta/editing.py`.", "",
        "## How it works", "",
        "- The input clip is encoded by the model's own codec exactly as training encodes "
        "clips (`codec.encode` → whole time patches → `patchify`); kept spans become known "
        "tokens that the sampler shows the backbone from the first step and never changes.",
        "- Spans are snapped to whole tokens (time patches of 0.1 s for the shipped "
        "models); the output is the input cut to whole tokens.",
        "- Kept spans then hold the input's own samples (pasted back), with a 20 ms "
        "equal-power cross-fade inside each edge that meets regenerated audio, from the "
        "codec's rendering of the same kept tokens into the original; `--no-paste` keeps "
        "the codec's rendering instead (preserved up to codec reconstruction).",
        f"- Past the model's 4 s window, audio is generated window by window: each window "
        f"sees the previous one's last {args.overlap:g} s (`--overlap`) as known tokens. "
        "Windows are joined in token space (the overlap's tokens *are* the previous "
        "window's) and the whole sequence is rendered in one vocoder pass, so there is no "
        "waveform seam to cross-fade.", "",
        "## Inpainting: the middle half regenerated", "",
        f"Each test clip with {REGENERATE} s regenerated to its own caption and the rest "
        "kept, against the same captions generated from scratch, and the test clips "
        "themselves. Caption-attribute accuracy (energytta-eval's detectors, pooled over "
        "every attribute a caption names) and the synth classifier's type accuracy:", "",
        "| clips | model | attribute accuracy (checks) | type accuracy | CPU s / clip |",
        "|---|---|---|---|---|",
        f"| test clips (ceiling) | – | {_pct(real)} ({_n(real)}) | {_pct(real, 'type')} | – |"]
    for m in models:
        for section, label in (("full", "fully generated"),
                               ("inpaint", "middle half regenerated")):
            r = rows[(m, section)]
            lines.append(f"| {label} | {m} | {_pct(r['attributes'])} "
                         f"({_n(r['attributes'])}) | {_pct(r['attributes'], 'type')} | "
                         f"{r['generation']['cpu_s_per_clip']:.1f} |")
    lines += ["", "The kept half of an inpainted clip *is* the test clip, so a score above "
              "the fully generated row does not mean better generation; the row shows "
              "how far the regenerated middle pulls a clip off its caption.", "",
              "Exact preservation: the kept samples outside the fades, read back from "
              "the written 16-bit files, against the input files' samples; and the kept "
              "frames' log-mel as the model rendered them (before paste-back) against the "
              "codec's analysis of the input:", "",
              "| model | kept spans | max \\|output − input\\| (16-bit steps; 0 = identical) | "
              "max kept log-mel error (nats) |", "|---|---|---|---|"]
    for m in models:
        g = rows[(m, "inpaint")]["generation"]
        lines.append(f"| {m} | {g['kept_spans']} | {g['kept_lsb']:.2f} | "
                     f"{g['kept_mel_max_abs_diff']:.2e} |")
    lines += ["", "## Continuation: 4 s continued to 8 s", "",
              f"Each test clip kept and continued to {CONTINUE_TO:g} s (windows "
              f"{_windows(rows, models, 'continue')} s; the first is all kept, so it is "
              "skipped); the new 4–8 s scored against the caption. Count attributes "
              "describe a whole 4 s caption clip, so they are a strict test of a "
              "continuation.", "",
              "| model | continued part: attribute accuracy (checks) | type accuracy | "
              "fully generated 0–4 s, for scale | CPU s / clip |", "|---|---|---|---|---|"]
    for m in models:
        r, f = rows[(m, "continue")], rows[(m, "full")]
        lines.append(f"| {m} | {_pct(r['attributes'])} ({_n(r['attributes'])}) | "
                     f"{_pct(r['attributes'], 'type')} | {_pct(f['attributes'])} | "
                     f"{r['generation']['cpu_s_per_clip']:.1f} |")
    segs = int(LONG_SECONDS // CLIP_SECONDS)
    lines += ["", f"## Long audio: {LONG_SECONDS:g} s clips", "",
              f"The first {args.long} test caption(s) as {LONG_SECONDS:g} s clips (windows "
              f"{_windows(rows, models, 'long')} s), scored 4 s segment by segment: "
              "attribute accuracy (type accuracy). Does the sound stay the caption's "
              "sound as the clip goes on?", "",
              "| model | " + " | ".join(f"{4 * k}–{4 * k + 4} s" for k in range(segs))
              + " | samples | CPU s / clip |", "|---|" + "---|" * (segs + 2)]
    for m in models:
        r = rows[(m, "long")]
        cells = [f"{_pct(s)} ({_pct(s, 'type')})" for s in r["segments"]]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {r['generation']['samples']} | "
                     f"{r['generation']['cpu_s_per_clip']:.1f} |")
    if args.figure:
        rel = os.path.relpath(args.figure, Path(args.out).parent if args.out else ".")
        lines += ["", f"The student's first {LONG_SECONDS:g} s clip (log-mel as decoded; "
                  "window edges are where the windows above start and end):", "",
                  f"![{LONG_SECONDS:g} s clip]({rel})"]
    lines += ["", "## Limits", "",
              f"- {args.limit} clips per row and {args.long} long clip(s): a difference of "
              "several points between rows is within noise.",
              "- Per-segment prompts (`a dog barks | rain starts`: the clip split evenly "
              "between the segments, each window conditioned on the segment at its "
              "middle) work on clips past one window but are not scored here.",
              "- Rows are cached under the work folder; delete it to recompute from "
              "scratch.", ""]
    return "\n".join(lines)


def _windows(rows: dict, models: list[str], section: str) -> str:
    w = rows[(models[0], section)]["generation"]["windows"]
    return ", ".join(f"{a:g}–{b:g}" for a, b in w)


def main(argv: list[str]) -> int:
    """Compute (or reuse) the rows, then with --out write the page.

    Args:
        argv: arguments without the program name.
    Returns:
        0; bad input raises UserError.
    """
    import torch

    from energytta.eval.embedders import get_embedder
    from energytta.checkpoint import resolve_checkpoint
    from energytta.pipeline import TextToAudio
    from research.rows import MemoEmbedder

    args = build_parser().parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models or any(m not in MODELS for m in models):
        raise UserError(f"--models {args.models!r}: use teacher, student or both")
    if not Path(args.reference).is_file():
        raise UserError(f"manifest {args.reference} not found; make the corpus with "
                        f"`{CORPUS_HINT}`")
    if args.limit < 1 or args.long < 1 or args.iterations < 1:
        raise UserError("--limit, --long and --iterations must be >= 1")
    torch.set_num_threads(args.threads)
    classifier = MemoEmbedder(get_embedder("synth-classifier", "cpu"))
    rows = {}
    for m in models:
        ckpt, cache = resolve_checkpoint(m), {}

        def pipe(_m: str = m, _c: dict = cache) -> Any:  # loaded only if a row is computed
            if "p" not in _c:
                _c["p"] = TextToAudio.from_pretrained(_m, "cpu")
            return _c["p"]
        for section in ("full", "inpaint", "continue", "long"):
            rows[(m, section)] = get_row(args, m, ckpt, section, pipe, classifier)
    real = attributes(args.reference, args, args.limit, classifier)
    if args.out:
        from energytta.utils import atomic_write_text

        meta = {"command": "python -m research.editing_report " + shlex.join(argv),
                "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
                           f"torch {torch.__version__}",
                "date": time.strftime("%Y-%m-%d"),
                "seconds": sum(r.get("seconds", 0) for r in rows.values())}
        atomic_write_text(args.out, render(args, rows, real, meta))
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from energytta.errors import run_cli

    raise SystemExit(run_cli(main))
