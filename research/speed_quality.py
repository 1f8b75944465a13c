"""One table of speed and quality: every generator setting's end-to-end batch
latency (tools/bench.py) next to its quality (research/quality.py's rows) of the SAME setting;
writes research/reports/speed_quality.md.

    python -m research.speed_quality --threads 1 --out research/reports/speed_quality.md

A setting is MODEL:K (decoding iterations; rendered by the checkpoint's own default,
`sample.vocoder`), MODEL:K:trained (rendered by the trained vocoder --vocoder, default the
shipped one) or MODEL:K:gl (rendered by Griffin-Lim), with MODEL one of:
teacher (diffusion head, its 100 steps, two-pass CFG), student (energy head, two-pass CFG),
guided (the guidance-distilled student: one conditional pass per step, docs/guidance.md),
captiononly (one pass in all). For each:

- quality: the row research/quality.py computes for (MODEL, K) on the test split (attribute
  accuracy, type accuracy, FD), reused from --work while its key matches;
- speed: tools/bench.py on the same checkpoint at K and --batch-sizes (CPU, --threads),
  the model's own floor beside it (same backbone passes, a head that costs nothing), saved
  as WORK/bench-MODEL-kK.json and reused while its key matches.
Batches of at most 4 clips get one warm-up and three timed runs (median); larger ones one
timed run (the teacher's batch of 32 at K = 64 takes minutes on one core).
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

from energytta.errors import UserError
from research.rows import accuracy, render_key, render_suffix, save, saved, sha256

DEFAULT_SETTINGS = ("teacher:64,teacher:32,student:32,student:8,guided:32,guided:8,"
                    "captiononly:1,student:32:gl,guided:8:gl,captiononly:1:gl")
# a setting's third field: how its clips are rendered ("": the checkpoint's own default,
# `sample.vocoder`; "trained": the --vocoder file; "gl": Griffin-Lim)
RENDERERS = ("", "trained", "gl")
BENCH_FLAG = {"teacher": "--teacher-ckpt", "student": "--ckpt", "guided": "--guided-ckpt",
              "captiononly": "--captiononly-ckpt"}
BENCH_NAME = {"teacher": "teacher", "student": "student", "guided": "guided",
              "captiononly": "captiononly"}
SMALL_BATCH = 4  # batches up to this size: 1 warm-up + 3 timed runs; larger: 1 timed run
# the speed targets (benchmarks, not tests)
TARGET_POINTS, TARGET_SPEEDUP, TARGET_X_FLOOR = 3.0, 10.0, 1.10


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m research.speed_quality",
                                description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", default=DEFAULT_SETTINGS, metavar="MODEL:K,...",
                   help=f"rows (default {DEFAULT_SETTINGS}); the first teacher row is the "
                        "reference of 'x teacher' and of the targets")
    p.add_argument("--batch-sizes", default="1,8,32", metavar="B,B")
    p.add_argument("--duration", type=float, default=4.0, metavar="S",
                   help="seconds per clip in the timings (default 4, as the quality rows)")
    p.add_argument("--threads", type=int, default=1, metavar="T",
                   help="torch CPU threads for timing and quality rows (default 1)")
    p.add_argument("--work", default="runs/quality", metavar="DIR",
                   help="saved quality and bench rows (default: runs/quality, shared with "
                        "research/quality.py)")
    p.add_argument("--reference", default="data/synth10k/test.jsonl", metavar="MANIFEST",
                   help="quality rows' test split (default: research/quality.py's)")
    p.add_argument("--limit", type=int, default=100, metavar="N",
                   help="quality rows' first N captions (default 100, as research/quality.py)")
    p.add_argument("--vocoder", default=None, metavar="FILE",
                   help="the trained vocoder of the MODEL:K:trained settings (default: the "
                        "shipped energytta/assets/vocoder.safetensors)")
    p.add_argument("--out", default=None, metavar="MD", help="write the markdown page here")
    for m in BENCH_FLAG:
        p.add_argument(f"--{m}", default=None, metavar="CKPT",
                       help=f"{m} checkpoint (default: research/quality.py's default)")
    return p


def parse_settings(text: str) -> list[tuple[str, int, str]]:
    """'teacher:64,guided:8:gl' -> [("teacher", 64, ""), ("guided", 8, "gl")] (the third
    field: one of RENDERERS); UserError if malformed."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        model, _, rest = part.partition(":")
        k, _, voc = rest.partition(":")
        if (model not in BENCH_FLAG or not k.isdigit() or int(k) < 1
                or voc not in RENDERERS):
            raise UserError(f"--settings: {part!r} is not MODEL:K[:trained|:gl] with MODEL one of "
                            f"{', '.join(BENCH_FLAG)} and K >= 1 (e.g. teacher:64, "
                            "captiononly:1:trained)")
        if model == "captiononly" and int(k) != 1:
            raise UserError(f"--settings: {part!r}: the caption-only student has one pass "
                            "(captiononly:1)")
        out.append((model, int(k), voc))
    if not out:
        raise UserError("--settings: give at least one MODEL:K")
    return out


def vocoder_file(args: argparse.Namespace, settings: list[tuple[str, int, str]]) -> str:
    """The trained vocoder file of the :trained settings ("" when none asks for it)."""
    if not any(v == "trained" for _, _, v in settings):
        return ""
    from energytta.checkpoint import SHIPPED_VOCODER

    path = Path(args.vocoder) if args.vocoder else SHIPPED_VOCODER
    if not path.is_file():
        raise UserError(f"--vocoder {path}: file not found (train one: energytta-train "
                        "--config vocoder)")
    return str(path)


# ------------------------------------------------------------------ rows
def quality_args(args: argparse.Namespace) -> argparse.Namespace:
    """research/quality.py's arguments for the same rows (work folder, threads, checkpoints)."""
    from research import quality

    qargv = ["--work", args.work, "--threads", str(args.threads), "--reference",
             args.reference, "--limit", str(args.limit)]
    for m in BENCH_FLAG:
        if getattr(args, m):
            qargv += [f"--{m}", getattr(args, m)]
    return quality.build_parser().parse_args(qargv)


def renderer(variant: str, vocoder: str) -> str:
    """What `from_pretrained`/bench get for a setting's renderer ("" = the checkpoint's)."""
    return {"": "", "trained": vocoder, "gl": "griffin-lim"}[variant]


def quality_rows(qargs: argparse.Namespace, settings: list[tuple[str, int, str]],
                 vocoder: str) -> dict:
    """{(model, K, renderer): research/quality.py row}, computed where not saved."""
    from energytta.eval.embedders import get_embedder
    from research import quality
    from research.rows import EMBEDDERS, MemoEmbedder

    if not Path(qargs.reference).is_file():
        raise UserError(f"--reference {qargs.reference} not found; make the corpus with "
                        "`energytta-data synth --out data/synth10k --num 10000 --seconds 4`")
    embedders = {n: MemoEmbedder(get_embedder(n, "cpu")) for n in EMBEDDERS}
    return {(m, k, v): quality.get_row(qargs, m, checkpoint(qargs, m), k, embedders,
                                       vocoder=renderer(v, vocoder))
            for m, k, v in settings}


def checkpoint(qargs: argparse.Namespace, model: str) -> Path:
    """The checkpoint path of `model` as research/quality.py resolves it."""
    from energytta.checkpoint import resolve_checkpoint

    path = resolve_checkpoint(getattr(qargs, model))
    if not path.exists():
        raise UserError(f"--{model} {path}: no such checkpoint"
                        + (" (train it: energytta-train --config guidance)"
                           if model == "guided" else ""))
    return path


def bench_rows(args: argparse.Namespace, bench, model: str, ckpt: Path, k: int,
               batches: list[int], vocoder: str = "") -> list[dict]:
    """bench.run's rows (generator and its floor) for one setting, saved and reused;
    `vocoder`: "griffin-lim" or a trained vocoder file rendering both ("" : each
    checkpoint's `sample.vocoder`)."""
    key = {"model": model, "sha256": sha256(ckpt), "iterations": k, "batches": batches,
           "threads": args.threads, "duration": args.duration,
           "bench": sha256(Path(bench.__file__))}
    if vocoder:
        key["vocoder"] = render_key(vocoder)
    path = Path(args.work) / f"bench-{model}-k{k}{render_suffix(vocoder)}.json"
    row = saved(path, key)
    if row is not None:
        print(f"bench {model} K={k}: reusing {path}", file=sys.stderr)
        return row["rows"]
    rows = []
    common = [BENCH_FLAG[model], str(ckpt), "--iterations", str(k), "--duration",
              str(args.duration), "--threads", str(args.threads),
              "--generators", f"{BENCH_NAME[model]},floor",
              *(["--vocoder", vocoder] if vocoder else [])]
    for group in ([b for b in batches if b <= SMALL_BATCH], [b for b in batches
                                                             if b > SMALL_BATCH]):
        if not group:
            continue
        small = group[0] <= SMALL_BATCH
        print(f"bench {model} K={k}: batches {group} ...", file=sys.stderr)
        rows += bench.run(common + ["--batch-sizes", ",".join(map(str, group)),
                                    "--warmup", "1" if small else "0",
                                    "--repeats", "3" if small else "1"])
    save(path, {"key": key, "rows": rows})
    return rows


# ------------------------------------------------------------------ page
def _by_batch(rows: list[dict], name: str) -> dict[int, dict]:
    return {r["batch_size"]: r for r in rows if r["generator"] == name}


def combine(settings: list[tuple[str, int, bool]], quality: dict, bench: dict,
            batches: list[int]) -> list[dict[str, Any]]:
    """One record per setting: quality numbers, per-batch total/floor seconds, x teacher."""
    ref = next((s for s in settings if s[0] == "teacher"), None)
    out = []
    for m, k, v in settings:
        q, b = quality[(m, k, v)], bench[(m, k, v)]
        gen, floor = _by_batch(b, BENCH_NAME[m]), _by_batch(b, "floor")
        rec = {"model": m, "k": k, "variant": v,
               "renderer": next((r.get("vocoder") for r in b if "vocoder" in r), ""),
               "attributes": accuracy(q, "all"),
               "type": accuracy(q, "all", "type"),
               "fd": q["metrics"]["synth-classifier"]["fd"],
               "passes": 1 if m in ("guided", "captiononly") else 2,
               "total": {n: gen[n]["total_s"] for n in batches if n in gen},
               "floor": {n: floor[n]["total_s"] for n in batches if n in floor},
               "stages": {n: gen[n]["stages_s"] for n in batches if n in gen},
               "floor_stages": {n: floor[n]["stages_s"] for n in batches if n in floor},
               "audio_s_per_s": {n: gen[n]["audio_s_per_s"] for n in batches if n in gen}}
        out.append(rec)
    if ref is not None:
        t = out[settings.index(ref)]
        for rec in out:
            rec["x_teacher"] = {n: t["total"][n] / rec["total"][n] for n in rec["total"]
                                if n in t["total"]}
    return out


def _f(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _label(rec: dict) -> str:
    names = {"teacher": "teacher (diffusion head, 100 steps)", "student": "student",
             "guided": "guided student", "captiononly": "caption-only student"}
    return names[rec["model"]] + {"trained": " + trained vocoder", "gl": " + Griffin-Lim"}.get(
        rec.get("variant", ""), "")


def headline_table(recs: list[dict], batches: list[int]) -> list[str]:
    head = ["setting", "K", "backbone rows / step", "attributes ↑", "type ↑", "FD ↓",
            *(f"s / batch {n}" for n in batches), *(f"× teacher @{n}" for n in batches),
            f"× floor @{batches[-1]}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    big = batches[-1]
    for r in recs:
        xf = r["total"][big] / r["floor"][big] if big in r["floor"] and big in r["total"] \
            else None
        cells = [_label(r), str(r["k"]), f"{r['passes']}×B", _f(r["attributes"], 3),
                 _f(r["type"], 3), _f(r["fd"], 1),
                 *(_f(r["total"].get(n)) for n in batches),
                 *(_f((r.get("x_teacher") or {}).get(n), 1) + "×" for n in batches),
                 _f(xf)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def stage_table(recs: list[dict], batch: int) -> list[str]:
    head = ["setting", "K", "total s", "text", "backbone", "head", "latent decode", "vocoder",
            "audio s/s", "floor s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in recs:
        st = r["stages"].get(batch, {})
        lines.append("| " + " | ".join([
            _label(r), str(r["k"]), _f(r["total"].get(batch)),
            *(_f(st.get(s)) for s in ("text", "backbone", "head", "latent_decode", "vocoder")),
            _f(r["audio_s_per_s"].get(batch)), _f(r["floor"].get(batch))]) + " |")
    return lines


def targets(recs: list[dict], batches: list[int]) -> list[str]:
    """The issue's CPU targets at the largest batch, each met or not, in words."""
    big = batches[-1]
    teacher = next((r for r in recs if r["model"] == "teacher"), None)
    if teacher is None or big not in teacher["total"]:
        return ["(The targets need a teacher row.)"]
    ok = {True: "**met**", False: "**not met**"}
    close = [r for r in recs if r is not teacher and r["attributes"] is not None
             and 100 * (teacher["attributes"] - r["attributes"]) <= TARGET_POINTS]
    lines = []
    if close:
        best = max(close, key=lambda r: r["x_teacher"].get(big, 0.0))
        x = best["x_teacher"][big]
        lines.append(
            f"- Fastest setting within {TARGET_POINTS:g} points of the teacher's attribute "
            f"accuracy ({teacher['attributes']:.3f} at K = {teacher['k']}): {_label(best)} "
            f"at K = {best['k']} ({best['attributes']:.3f}), {x:.1f}× faster end to end at "
            f"batch {big} (target ≥ {TARGET_SPEEDUP:g}×) — {ok[x >= TARGET_SPEEDUP]}.")
    else:
        lines.append(f"- No setting is within {TARGET_POINTS:g} points of the teacher's "
                     "attribute accuracy — **not met**.")
    for trained, gl in vocoder_pairs(recs):  # the same setting, trained vs Griffin-Lim
        if big not in trained["stages"] or big not in gl["stages"]:
            continue
        g, tr = gl["stages"][big].get("vocoder", 0.0), trained["stages"][big].get("vocoder", 0.0)
        x = g / tr if tr > 0 else float("inf")
        same = trained["attributes"] >= gl["attributes"]
        lines.append(f"- Trained vocoder vs Griffin-Lim ({_label({'model': gl['model']})}, "
                     f"K = {gl['k']}): vocoder stage {tr:.2f} s vs {g:.2f} s at batch {big} "
                     f"({x:.1f}×, target ≥ {TARGET_SPEEDUP:g}×), attribute accuracy "
                     f"{trained['attributes']:.3f} vs {gl['attributes']:.3f} (target: equal or "
                     f"better) — {ok[x >= TARGET_SPEEDUP and same]}.")
    for r in recs:
        if r["model"] in ("student", "guided") and big in r["floor"]:
            x = r["total"][big] / r["floor"][big]
            lines.append(f"- {_label(r)} at K = {r['k']}: {x:.3f}× its own floor at batch "
                         f"{big} (target ≤ {TARGET_X_FLOOR:g}×) — {ok[x <= TARGET_X_FLOOR]}"
                         + _decode_ratio(r, big) + ".")
    return lines


def vocoder_pairs(recs: list[dict]) -> list[tuple[dict, dict]]:
    """(trained-vocoder row, Griffin-Lim row) of the same model and K: a `:trained` row with
    its plain twin rendered by Griffin-Lim, or a `:gl` row with its plain twin rendered by
    a trained vocoder (the checkpoint's own `sample.vocoder`)."""
    pairs = []
    for r in recs:
        twin = next((t for t in recs if not t.get("variant")
                     and (t["model"], t["k"]) == (r["model"], r["k"])), None)
        if twin is None:
            continue
        gl_twin = twin.get("renderer", "griffin-lim") == "griffin-lim"
        if r.get("variant") == "trained" and gl_twin:
            pairs.append((r, twin))
        elif r.get("variant") == "gl" and not gl_twin:
            pairs.append((twin, r))
    return pairs


def _decode_ratio(rec: dict, batch: int) -> str:
    """'; head X s, decoding loop alone Y× its floor's' — the part of the ratio the head
    causes, free of the vocoder stage's run-to-run spread."""
    st = rec.get("stages", {}).get(batch, {})
    fl = rec.get("floor_stages", {}).get(batch, {})
    dec = st.get("backbone", 0.0) + st.get("head", 0.0)
    fdec = fl.get("backbone", 0.0) + fl.get("head", 0.0)
    if not (st and fl and fdec > 0):
        return ""
    return (f" (head {st.get('head', 0.0):.2f} s of {rec['total'][batch]:.2f} s; the "
            f"decoding loop alone {dec / fdec:.2f}× its floor's)")


def render(recs: list[dict], batches: list[int], meta: dict) -> str:
    big = batches[-1]
    return "\n".join([
        "# Speed and quality, side by side",
        "",
        "<!-- Written by research/speed_quality.py; edit that tool, not this page. -->",
        f"Regenerate with `{meta['command']}` ({meta['date']}, {meta['machine']}, "
        f"{meta['threads']} torch thread(s) per measurement). Quality rows come from "
        "`research/quality.py` (same settings, same saved rows: "
        "[quality.md](quality.md) explains the columns); timings from `tools/bench.py` on "
        f"the same checkpoints, {meta['duration']:g}-s clips, one prompt repeated. Batches "
        f"of up to {SMALL_BATCH} clips: median of 3 timed runs after a warm-up; larger: one "
        "timed run. Two benchmark processes shared the machine's two cores (one torch "
        "thread each), so a single run carries noise: identical work, the Griffin-Lim "
        "stage of a batch of 32, took from "
        f"{meta['gl_range'][0]:.1f} to {meta['gl_range'][1]:.1f} s across the rows below. "
        "Compare rows within a few percent with care; the stage table shows where each "
        "row's time went.",
        "",
        *headline_table(recs, batches),
        "",
        "Each row renders with its checkpoint's own default (`sample.vocoder`; the shipped "
        "files: the trained vocoder) unless it says `+ trained vocoder` (the --vocoder file) "
        "or `+ Griffin-Lim` (quality row and timings both). "
        "`backbone rows / step`: two-pass CFG runs a conditional and an unconditional row per "
        "clip in every backbone batch; the guided student and the caption-only student run "
        "one. `× teacher`: the first teacher row's seconds over this row's, same batch. "
        "`× floor`: this row's seconds over its own floor's (the same checkpoint and "
        "setting with a head that costs nothing).",
        "",
        f"## Where the time goes (batch {big}, seconds)",
        "",
        *stage_table(recs, big),
        "",
        f"## Targets (CPU, batch {big})",
        "",
        *targets(recs, batches),
        ""])


def main(argv: list[str]) -> int:
    """Compute (or reuse) the quality and bench rows, then with --out write the page."""
    import torch

    args = build_parser().parse_args(argv)
    settings = parse_settings(args.settings)
    try:
        batches = sorted({int(b) for b in args.batch_sizes.split(",") if b.strip()})
    except ValueError:
        raise UserError(f"--batch-sizes {args.batch_sizes!r}: give integers like 1,8,32") \
            from None
    if not batches or batches[0] < 1 or args.threads < 1:
        raise UserError("--batch-sizes must be >= 1 and --threads >= 1")
    torch.set_num_threads(args.threads)
    from energytta import bench

    vocoder = vocoder_file(args, settings)
    qargs = quality_args(args)
    quality = quality_rows(qargs, settings, vocoder)
    timings = {(m, k, v): bench_rows(args, bench, m, checkpoint(qargs, m), k, batches,
                                     renderer(v, vocoder))
               for m, k, v in settings}
    recs = combine(settings, quality, timings, batches)
    if args.out:
        from energytta.utils import atomic_write_text

        gl = [r["stages"][batches[-1]].get("vocoder", 0.0) for r in recs
              if r["renderer"] == "griffin-lim" and batches[-1] in r["stages"]]
        meta = {"command": " ".join(["python -m research.speed_quality", *argv]),
                "gl_range": (min(gl), max(gl)) if gl else (0.0, 0.0),
                "date": time.strftime("%Y-%m-%d"), "threads": args.threads,
                "duration": args.duration,
                "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch "
                           f"{torch.__version__}"}
        atomic_write_text(args.out, render(recs, batches, meta))
        atomic_write_text(Path(args.work) / "speed_quality.json",
                          json.dumps(recs, indent=1) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from energytta.errors import run_cli

    raise SystemExit(run_cli(main))
