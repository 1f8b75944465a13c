"""The shipped models on the synthetic test split: teacher and student at several
decoding-iteration counts, the caption-only student at its one pass; writes
research/reports/quality.md.

    python -m research.quality --out research/reports/quality.md      # every row, then the page
    python -m research.quality --models teacher --threads 1 &     # rows in two processes,
    python -m research.quality --models student --threads 1; wait # then the page from the
    python -m research.quality --out research/reports/quality.md      # rows they saved

Each row (model, K) generates the first --limit captions of --reference with K iterations
into WORK/<model>-k<K>/<stem>.wav, then scores them with energytta-eval's machinery:
FD on the synth-classifier's and mel-stats features, KL and IS of the classifier's type
logits, and caption-attribute accuracy (the analytic detectors plus the classifier's type
check) on seen and held-out combinations. A row is saved as WORK/<model>-k<K>.json and
reused while its settings and checkpoint hash are unchanged, so runs resume and rows can
be computed in parallel processes. Latency is the generation's wall and process-CPU time
per clip at --batch-size (text encoding, decoding and vocoder; not the scoring).

With --out, two reference rows join the page: the --real clips scored as if generated, and
the same clips through the models' codec and Griffin-Lim (WORK/real-vocoded.json), which
separates what the vocoder loses from what the models get wrong.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from energytta.audio.render import CEILING_DB
from energytta.errors import UserError
from research.rows import (EMBEDDERS, MemoEmbedder, accuracy, generate_row, render_key,
                           render_suffix, save, saved, score, sha256)

MODELS = ("teacher", "student", "guided", "captiononly")
# what each row's checkpoint must hold: the guidance-distilled student is a student
KIND_OF = {"guided": "student"}
# how clips are rendered and scored: rows saved under another key are recomputed
# (level.CEILING_DB: the decoded mel's frame ceiling; "active": rows carry the active fraction)
RENDER_KEY = {"ceiling_db": CEILING_DB, "scores": ["attributes", "active"]}
ONE_PASS = (1,)  # the caption-only student's iterations, whatever --iterations says


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m research.quality",
                                description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="teacher", metavar="CKPT",
                   help="teacher checkpoint (default: the shipped one)")
    p.add_argument("--student", default="student", metavar="CKPT",
                   help="student checkpoint (default: the shipped one)")
    p.add_argument("--guided", default="guided", metavar="CKPT",
                   help="guidance-distilled student (default: the shipped one; train one: "
                        "energytta-train --config guidance), sampled with its one "
                        "conditional pass per step")
    p.add_argument("--captiononly", default="captiononly", metavar="CKPT",
                   help="caption-only student checkpoint (default: the shipped one); its "
                        "rows are at K = 1")
    p.add_argument("--vocoder", default="", metavar="FILE",
                   help="a trained vocoder (.safetensors, energytta-train --config vocoder): "
                        "with --out, the real clips through it join the page as a row")
    p.add_argument("--models", default="teacher,student,captiononly", metavar="A,B",
                   help="rows to compute/report (default: teacher,student,captiononly)")
    p.add_argument("--reference", default="data/synth10k/test.jsonl", metavar="MANIFEST",
                   help="test split with synthetic attributes (default: data/synth10k/test.jsonl)")
    p.add_argument("--real", default="data/synth10k/val.jsonl", metavar="MANIFEST",
                   help="real clips scored like a generator, for scale ('' = skip)")
    p.add_argument("--limit", type=int, default=100, metavar="N",
                   help="first N reference captions (default 100; the teacher's four rows "
                        "take most of an hour on 2 CPU cores)")
    p.add_argument("--iterations", default="64,32,16,8", metavar="K,K",
                   help="decoding iterations per row (default 64,32,16,8)")
    p.add_argument("--seed", type=int, default=0, metavar="N")
    p.add_argument("--batch-size", type=int, default=20, metavar="B")
    p.add_argument("--threads", type=int, default=0, metavar="T",
                   help="torch CPU threads (default: torch's choice)")
    p.add_argument("--work", default="runs/quality", metavar="DIR",
                   help="wavs and saved rows (default: runs/quality)")
    p.add_argument("--out", default=None, metavar="MD", help="write the markdown page here")
    p.add_argument("--command", default=None, help=argparse.SUPPRESS)  # shown on the page
    return p


def row_key(args: argparse.Namespace, model: str, ckpt: Path, k: int) -> dict[str, Any]:
    """Everything a saved row depends on; a saved row with another key is recomputed. The
    checkpoint counts by content (sha256), not path, so a moved checkout or a copied file
    reuses its rows."""
    return {"model": model, "sha256": sha256(ckpt), "iterations": k,
            "seed": args.seed, "limit": args.limit, "batch_size": args.batch_size,
            "reference": str(args.reference), **RENDER_KEY}


def get_row(args: argparse.Namespace, model: str, ckpt: Path, k: int,
            embedders: dict, name: str | None = None, vocoder: str = "") -> dict[str, Any]:
    """The saved row for (model, k), or a freshly computed (and saved) one.

    `model` is the row's model (the checkpoint must hold its kind); `name` (default:
    `model`) names the row's files, so several checkpoints of one kind (an ablation's arms)
    keep their own rows; `vocoder` ("griffin-lim" or a trained vocoder file) renders the
    clips instead of the checkpoint's own default (files `<name>-k<K>-gl` / `-voc`)."""
    work, name = Path(args.work), name or model
    stem = f"{name}-k{k}{render_suffix(vocoder)}"
    path, key = work / f"{stem}.json", row_key(args, model, ckpt, k)
    if vocoder:
        key["vocoder"] = render_key(vocoder)
    row = saved(path, key)
    if row is not None:
        print(f"{name} K={k}: reusing {path}", file=sys.stderr)
        return row
    print(f"{name} K={k}: generating {args.limit} clips ...", file=sys.stderr)
    folder, start = work / stem, time.time()
    row = {"key": key, "generation": generate_row(args, KIND_OF.get(model, model), ckpt, k,
                                                  folder, vocoder or None),
           "threads": _threads(), **score(folder, args.reference, args.limit, embedders)}
    row["seconds"] = round(time.time() - start, 1)  # generation + scoring
    save(path, row)
    print(f"{name} K={k}: {_summary(row)}", file=sys.stderr)
    return row


def real_row(args: argparse.Namespace, embedders: dict) -> dict[str, Any] | None:
    """The --real clips scored as if generated: what a perfect generator would get."""
    if not args.real:
        return None
    return score(args.real, args.reference, args.limit, embedders, attributes_of=args.real)


def vocoded_row(args: argparse.Namespace, ckpt: Path, embedders: dict,
                vocoder: str = "") -> dict[str, Any] | None:
    """The --real clips through the shipped codec and vocoder (mel -> Griffin-Lim; or the
    trained `vocoder` file), scored as if generated: the best any model that predicts mels
    can get here with that vocoder. Saved as WORK/real-vocoded[-trained].json and reused
    like a model row."""
    if not args.real:
        return None
    work, name = Path(args.work), "real-vocoded" + ("-trained" if vocoder else "")
    path = work / f"{name}.json"
    key = {"real": str(args.real), "limit": args.limit, "seed": args.seed,
           "sha256": sha256(ckpt), "reference": str(args.reference), **RENDER_KEY}
    if vocoder:
        key["vocoder"] = sha256(Path(vocoder))
    row = saved(path, key)
    if row is not None:
        return row
    print(f"real clips -> mel -> {vocoder or 'Griffin-Lim'}: {args.limit} clips ...",
          file=sys.stderr)
    start = time.time()
    manifest, seconds = vocode_clips(args, ckpt, work / name, vocoder)
    row = {"key": key, "vocode_s_per_clip": seconds,
           **score(manifest, args.reference, args.limit, embedders, attributes_of=manifest)}
    row["seconds"] = round(time.time() - start, 1)
    save(path, row)
    return row


def vocode_clips(args: argparse.Namespace, ckpt: Path, folder: Path, vocoder: str = ""
                 ) -> tuple[Path, float]:
    """Write the first --limit --real clips, analysed to log-mels and vocoded back with the
    checkpoint's codec (its vocoder replaced by the trained `vocoder` file if given) to
    `folder` (same length and peak handling as generation), and a manifest of them with
    the originals' captions and attributes; returns its path and the vocoder's seconds per
    clip (one clip at a time)."""
    import torch

    from energytta.audio.io import crop_or_pad, load_audio, write_wav
    from energytta.data.manifest import read_manifest
    from energytta.eval.runner import by_stem
    from energytta.pipeline import TextToAudio, batch_seed
    from energytta.utils import atomic_write_text

    pipe = TextToAudio.from_pretrained(ckpt, "cpu", vocoder=vocoder or "checkpoint")
    sr, length = pipe.sample_rate, int(round(pipe.settings().duration * pipe.sample_rate))
    folder.mkdir(parents=True, exist_ok=True)
    lines, spent = [], 0.0
    for i, (stem, it) in enumerate(list(by_stem(read_manifest(args.real)).items())[:args.limit]):
        wav = torch.from_numpy(crop_or_pad(load_audio(it.audio, sr), length, offset=0))
        g = torch.Generator().manual_seed(batch_seed(args.seed, i))
        mel = pipe.codec.mel(wav)
        start = time.perf_counter()
        with torch.no_grad():
            out = pipe.codec.vocode(mel, generator=g)[0]  # (S,)
        spent += time.perf_counter() - start
        write_wav(folder / f"{stem}.wav", out / out.abs().max().clamp(min=1.0), sr)
        lines.append(json.dumps({"audio": f"{stem}.wav", "caption": it.caption,
                                 "attributes": it.attributes}))
    manifest = folder / "manifest.jsonl"
    atomic_write_text(manifest, "\n".join(lines) + "\n")
    return manifest, spent / max(1, len(lines))


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _summary(row: dict) -> str:
    fd = row["metrics"]["synth-classifier"]["fd"]
    return f"FD {fd:.2f}, attribute accuracy {accuracy(row, 'all'):.3f}"


def default_iterations(ckpts: dict[str, Path]) -> int | None:
    """The default model's own `sample.iterations` (its file's config), when it is one of
    the scored models: the targets judge it at its defaults."""
    from energytta.checkpoint import DEFAULT_NAME, load_inference

    path = ckpts.get(DEFAULT_NAME)
    if path is None or not path.is_file():
        return None
    return load_inference(path)[0].sample.iterations  # the config, migrated if old


def _parse(argv: list[str]
           ) -> tuple[argparse.Namespace, list[str], list[int], dict[str, Path]]:
    from energytta.checkpoint import resolve_checkpoint

    args = build_parser().parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        raise UserError(f"--models: unknown {bad or models} (valid: {', '.join(MODELS)})")
    try:
        ks = sorted({int(k) for k in args.iterations.split(",") if k.strip()}, reverse=True)
    except ValueError:
        raise UserError(f"--iterations {args.iterations!r}: give integers like "
                        "64,32,16,8") from None
    if not ks or min(ks) < 1 or args.limit < 10 or args.batch_size < 1:
        raise UserError("--iterations must be >= 1, --limit >= 10 (IS uses 10 splits) and "
                        "--batch-size >= 1")
    for path in [args.reference] + ([args.real] if args.real else []):
        if not Path(path).is_file():
            raise UserError(f"manifest {path} not found; make the corpus with "
                            "`energytta-data synth --out data/synth10k --num 10000 --seconds 4`")
    if args.vocoder and not Path(args.vocoder).is_file():
        raise UserError(f"--vocoder {args.vocoder}: file not found (train one: "
                        "energytta-train --config vocoder)")
    ckpts = {m: resolve_checkpoint(getattr(args, m)) for m in models}
    for m, c in ckpts.items():
        if not c.exists():
            raise UserError(f"--{m} {c}: no such checkpoint")
    return args, models, ks, ckpts


def main(argv: list[str]) -> int:
    """Compute (or reuse) the rows, then with --out write the page.

    Args:
        argv: arguments without the program name.
    Returns:
        0; bad input raises UserError.
    """
    import torch

    from energytta.eval.embedders import get_embedder

    args, models, ks, ckpts = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    embedders = {n: MemoEmbedder(get_embedder(n, "cpu")) for n in EMBEDDERS}
    rows = {(m, k): get_row(args, m, ckpts[m], k, embedders) for m in models
            for k in (ONE_PASS if m == "captiononly" else ks)}
    if args.out:
        from research.quality_report import render
        from energytta.utils import atomic_write_text

        real = real_row(args, embedders)
        # the paired models' codec and vocoder (the caption-only student shares them)
        paired = ckpts[([m for m in models if m != "captiononly"] or models)[-1]]
        vocoded = vocoded_row(args, paired, embedders)
        trained = vocoded_row(args, paired, embedders, args.vocoder) if args.vocoder else None
        command = args.command or "python -m research.quality " + " ".join(argv)
        meta = {"command": command, "machine": f"{platform.machine()}, {os.cpu_count()} "
                f"CPU cores, torch {torch.__version__}",
                "date": time.strftime("%Y-%m-%d"),
                "checkpoints": {m: str(c) for m, c in ckpts.items()},
                "default_k": default_iterations(ckpts),
                "seconds": round(sum(r.get("seconds", 0) for r in rows.values()))}
        atomic_write_text(args.out, render(args, rows, real, meta, vocoded, trained))
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from energytta.errors import run_cli

    raise SystemExit(run_cli(main))
