"""Markdown for research/reports/quality.md from the rows `quality` computed (no computing here)."""
from __future__ import annotations

from typing import Any

from energytta.checkpoint import DEFAULT_NAME
from research.rows import accuracy, display_path

# The quality targets, each model at its defaults (the headline rows below).
TARGET_K = 64  # IMPACT's iterations: teacher and student are compared here
TARGET_STUDENT_POINTS = 3.0  # energy-score student at most this far behind the teacher
TARGET_TYPE, TARGET_ATTRIBUTE, TARGET_COUNT = 0.85, 0.75, 0.50  # the default model
TARGET_HELDOUT_POINTS = 8.0  # held-out combinations at most this far behind seen ones
TARGET_ACTIVE_RATIO = 0.25  # active fraction within this share of the real clips'
ATTRIBUTE_CHECKS = ("loudness", "pitch", "tempo", "direction", "envelope")

COLUMNS = ("model", "K", "FD clf ↓", "FD mel ↓", "KL ↓", "IS ↑", "attributes ↑", "seen ↑",
           "held-out ↑", "type ↑", "all right ↑", "active", "wall s/clip", "CPU s/clip")


# Where the unmet targets go next: what the training curves and the rows above point at.
NEXT_LEVERS = [
    "## Where the curves stand, and the next levers",
    "",
    "The validation curves of the shipped teacher, student and caption-only student "
    "(`python -m research.val_curves runs/teacher_long runs/student_long "
    "runs/captiononly_long --out research/reports/img/val_curves.png`; "
    "[training log](training_log.md#the-student-recipe-on-the-long-teacher)):",
    "",
    "![validation curves](img/val_curves.png)",
    "",
    "- **The teacher is the ceiling.** The student trained until its checks were flat and "
    "stands level with its teacher at its default iterations and at 64, "
    "and the caption-only student "
    "levelled off below it; the teacher's held-out loss was still falling and its type "
    "check still rising when its CPU budget ended. The next lever is a longer and wider "
    "teacher run: `scripts/gpu_teacher.sh` is the prepared one-command bf16 run of this "
    "recipe on a GPU, then the students again on it.",
    "- **Counts and held-out combinations** move with the teacher's training length (both "
    "rose with it) but stay far below the other checks; a count is a property of the "
    "whole clip, which a per-token head sees only through the backbone. Levers: more "
    "count-bearing captions in the corpus, and a clip-level count loss on the backbone "
    "features, A/B-tested on the validation count check.",
    "- **Activity.** The students' clips are less eventful than real ones (the `active` "
    "column); the caption-only student's are as eventful but less often right. The cheap "
    "levers are spent: over the sweep's CFG scales and temperatures the student's active "
    "fraction moves by about 0.02 and stays below the real clips' "
    "([sampling_sweep.md](sampling_sweep.md), which chose its CFG and temperature for the "
    "attribute checks). What remains is the model: the same teacher lever, and a loss that "
    "weighs the rare loud tokens more.",
]


def _headline(rows: dict) -> list[tuple[str, dict]]:
    """(model, row) compared with real clips and per check: teacher and student at
    TARGET_K, the caption-only student at its one pass."""
    keys = [("teacher", TARGET_K), ("student", TARGET_K), ("guided", TARGET_K),
            ("captiononly", 1)]
    return [(m, rows[(m, k)]) for m, k in keys if (m, k) in rows]


def _f(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def cells(name: str, k: str, result: dict, gen: dict | None) -> list[str]:
    clf, mel = result["metrics"]["synth-classifier"], result["metrics"]["mel-stats"]
    is_ = f"{clf['is_mean']:.2f} ± {clf['is_std']:.2f}" if "is_mean" in clf else "–"
    return [name, k, _f(clf["fd"]), _f(mel["fd"]), _f(clf.get("kl_softmax"), 3), is_,
            _f(accuracy(result, "all"), 3), _f(accuracy(result, "seen"), 3),
            _f(accuracy(result, "heldout"), 3), _f(accuracy(result, "all", "type"), 3),
            _f(accuracy(result, "all", "clips_all_correct"), 3), _f(result.get("active"), 3),
            _f(gen and gen["wall_s_per_clip"]), _f(gen and gen["cpu_s_per_clip"])]


def _knobs(rows: dict) -> str:
    """'teacher CFG 5, temperature 1, Griffin-Lim; student CFG 3, ...' from the rows."""
    seen: dict[str, list[str]] = {}
    for (m, _), r in rows.items():
        g = r["generation"]
        voc = g.get("vocoder", "griffin-lim")
        knob = f"CFG {g['cfg']:g}{' in one pass' if g.get('one_pass_cfg') else ''}, " \
            f"temperature {g['temperature']:g}, " + (
                "Griffin-Lim" if voc == "griffin-lim" else f"the trained vocoder `{voc}`")
        if knob not in seen.setdefault(m, []):
            seen[m].append(knob)
    return "; ".join(f"{m} {' or '.join(k)}" for m, k in seen.items())


def markdown_table(header: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows)]


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def _targets(rows: dict, real: dict | None, default: str,
             default_k: int | None = None) -> list[str]:
    """One line per target: the default model's checks at its own iterations `default_k`
    (None: its headline row), its activity against the real clips', and the energy-score
    student against the teacher at K = TARGET_K."""
    out = []
    row = (rows.get((default, default_k)) if default_k is not None
           else dict(_headline(rows)).get(default))
    if row is None:
        out.append(f"- (No row of the default model, {default}, at its defaults.)")
    else:
        at = f", K = {default_k}" if default_k is not None else ""
        typ = accuracy(row, "all", "type")
        out.append(f"- The default model ({default}{at}): sound type {_f(typ, 3)} (target ≥ "
                   f"{TARGET_TYPE:g}) — {_verdict(typ is not None and typ >= TARGET_TYPE)}.")
        checks = {n: accuracy(row, "all", n) for n in (*ATTRIBUTE_CHECKS, "count")}
        low = [f"{n} {v:.3f}" for n, v in checks.items() if v is not None and v < (
            TARGET_COUNT if n == "count" else TARGET_ATTRIBUTE)]
        out.append(f"- Every attribute check ≥ {TARGET_ATTRIBUTE:g}, counts ≥ {TARGET_COUNT:g}"
                   f" — {_verdict(not low)}" + (f" (below: {', '.join(low)})." if low else "."))
        seen, held = accuracy(row, "seen"), accuracy(row, "heldout")
        if seen is not None and held is not None:
            gap = 100 * (seen - held)
            out.append(f"- Held-out combinations {held:.3f} vs seen {seen:.3f}, {gap:.1f} points"
                       f" (target ≤ {TARGET_HELDOUT_POINTS:g}) — "
                       f"{_verdict(gap <= TARGET_HELDOUT_POINTS)}.")
        if real and row.get("active") is not None and real.get("active"):
            ratio = row["active"] / real["active"]
            out.append(f"- Active fraction (frames above −30 dBFS) {row['active']:.3f} vs real "
                       f"clips {real['active']:.3f}, {ratio:.2f}× (target within "
                       f"{100 * TARGET_ACTIVE_RATIO:g} %) — "
                       f"{_verdict(abs(ratio - 1) <= TARGET_ACTIVE_RATIO)}.")
    t, s = rows.get(("teacher", TARGET_K)), rows.get(("student", TARGET_K))
    if t and s:
        ta, sa = accuracy(t, "all"), accuracy(s, "all")
        gap = 100 * (ta - sa)
        where = f"{gap:.1f} points behind" if gap > 0 else f"{-gap:.1f} points ahead"
        out.append(f"- Energy-score student {sa:.3f} vs teacher {ta:.3f} at K = {TARGET_K}, "
                   f"{where} (target: at most {TARGET_STUDENT_POINTS:g} behind) — "
                   f"{_verdict(gap <= TARGET_STUDENT_POINTS)}.")
    return out


def _against_real(rows: dict, real: dict | None) -> list[str]:
    """One plain sentence per model: how far its headline row is from the real clips."""
    if not real:
        return []
    ra, rf = accuracy(real, "all"), real["metrics"]["synth-classifier"]["fd"]
    out = []
    for m, r in _headline(rows):
        if r:
            out.append(f"- Against real clips, the {m}: attribute accuracy "
                       f"{accuracy(r, 'all'):.3f} vs {ra:.3f}, type "
                       f"{accuracy(r, 'all', 'type'):.3f} vs "
                       f"{accuracy(real, 'all', 'type'):.3f}, FD "
                       f"{r['metrics']['synth-classifier']['fd']:.1f} vs {rf:.1f}.")
    return out


def _per_attribute(rows: dict, real: dict | None, vocoded: dict | None,
                   trained: dict | None = None) -> list[str]:
    cols = _headline(rows)
    cols += [(name, r) for name, r in (("real clips", real), ("real → mel → GL", vocoded),
                                       ("real → mel → trained vocoder", trained)) if r]
    names = []
    for _, r in cols:
        names += [n for n in (r.get("attributes") or {}).get("all", {}) if n not in names]
    out = []
    for n in names:
        cells = [n]
        for _, r in cols:
            for split in ("seen", "heldout"):
                a = (r.get("attributes") or {}).get(split, {}).get(n)
                cells.append("–" if a is None else f"{a['accuracy']:.3f} ({a['n']})")
        out.append(cells)
    header = ("check", *(f"{name} {split}" for name, _ in cols for split in ("seen", "held-out")))
    return markdown_table(header, out)


def render(args: Any, rows: dict, real: dict | None, meta: dict,
           vocoded: dict | None = None, trained: dict | None = None) -> str:
    """The whole page. rows: {(model, K): saved row}; real: score() of the --real clips;
    vocoded: the same clips through the codec and Griffin-Lim (research/quality.py)."""
    any_row = next(iter(rows.values()))
    gen, key = any_row["generation"], any_row["key"]
    all_n = (any_row.get("attributes") or {}).get("all", {}).get("clips_all_correct", {})
    held = (any_row.get("attributes") or {}).get("heldout", {}).get("clips_all_correct", {})
    ckpts = {m: (display_path(meta["checkpoints"][m]), r["key"]["sha256"][:12])
             for (m, _), r in rows.items()}
    table = [cells(m, str(k), r, r["generation"]) for (m, k), r in rows.items()]
    if real:
        table.append(cells("real clips", "–", real, None))
    if vocoded:
        table.append(cells("real → mel → GL", "–", vocoded, None))
    if trained:
        table.append(cells("real → mel → trained vocoder", "–", trained, None))
    lines = [
        "# Quality: the shipped models (teacher, student, "
        + ("guided student, " if any(m == "guided" for m, _ in rows) else "")
        + "caption-only student)",
        "",
        "<!-- Written by research/quality.py; edit that tool, not this page. -->",
        f"Regenerate with `{meta['command']}` ({meta['date']}, {meta['machine']}). Rows are "
        f"saved in `{args.work}` and reused while their settings and checkpoints are "
        f"unchanged; computing the rows below took {meta['seconds']} s in all (generation "
        "and scoring, summed over rows).",
        "",
        f"Test set: the first {all_n.get('n', '?')} captions of `{key['reference']}` "
        f"({held.get('n', 0)} of them held-out attribute combinations), {gen['duration']:g} s "
        f"each, seed {key['seed']}, batch {key['batch_size']}, each checkpoint's sampling "
        f"defaults ({_knobs(rows)}; linear CFG schedule). Checkpoints: "
        + ", ".join(f"{m} `{p}` (sha256 {h}…)" for m, (p, h) in ckpts.items()) + ".",
        "",
        *markdown_table(COLUMNS, table),
        "",
        "Columns: FD on the synth-classifier's 128-d features (clf) and on log-mel statistics "
        "(mel) against the test clips; KL of the classifier's type probabilities between each "
        "test clip and its generation; IS of the type logits; caption-attribute accuracy over "
        "every check of every clip (analytic detectors for pitch, count, tempo, loudness, "
        "direction, envelope, plus the classifier's type check), split into seen and "
        "held-out combinations; `type`: the classifier's type check alone; `all right`: "
        "clips with every check right; `active`: the mean fraction of 1024-sample frames "
        "(hop 160) whose RMS is above −30 dBFS, on the audio as written, i.e. how eventful "
        "the clips a listener gets are. Latency: generation only (text, decoding, latent "
        "decode, the vocoder), wall and process-CPU seconds per clip at the batch size above, "
        f"{'/'.join(sorted({str(r.get('threads', '?')) for r in rows.values()}))} torch "
        "thread(s) per row; rows computed side by side share the machine, so read wall "
        "times as upper bounds. "
        f"`real clips`: {args.limit} real clips of `{args.real}` scored as if generated "
        "(FD between two finite samples is not 0; this is what a perfect generator gets). "
        "`real → mel → GL`: the same clips analysed to log-mels and turned back into audio by "
        "the models' codec and Griffin-Lim vocoder: what a perfect *mel* generator gets "
        "here, so the gap between it and `real clips` is the vocoder's, not the models'."
        + (" `real → mel → trained vocoder`: the same with the trained vocoder "
           f"`{display_path(args.vocoder)}` in place of Griffin-Lim; vocoder time per 4-s "
           f"clip, one at a time: Griffin-Lim {vocoded.get('vocode_s_per_clip', 0):.3f} s, "
           f"trained {trained.get('vocode_s_per_clip', 0):.3f} s." if trained and vocoded
           else ""),
        "",
        "## Targets (the default model at its own settings; the student against the teacher at "
        f"K = {TARGET_K})",
        "",
        *_targets(rows, real, meta.get("default", DEFAULT_NAME), meta.get("default_k")),
        *_against_real(rows, real),
        "",
        *NEXT_LEVERS,
        "",
        f"## Per check at K = {TARGET_K} (the caption-only student: K = 1; accuracy, number "
        "of checks)",
        "",
        *_per_attribute(rows, real, vocoded, trained),
        "",
        "FAD proper needs VGGish weights, which cannot be fetched here; the synth-classifier "
        "FD above stands in for it (docs/evaluation.md has the VGGish path for when the file "
        "is on disk).",
        ""]
    return "\n".join(lines)
