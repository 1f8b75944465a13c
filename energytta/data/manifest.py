"""Manifests: which audio file goes with which caption.

Three formats are read, picked by file extension and CSV header:

- **JSONL** (`.jsonl`/`.json`): one object per line with `"audio"` (path) and `"caption"`;
  an `"attributes"` object and any other keys are kept in `Item.attributes`.
- **AudioCaps CSV**: columns `audiocap_id,youtube_id,start_time,caption`; one Item per row.
- **Clotho CSV**: columns `file_name,caption_1..caption_5`; one Item per caption.

Relative audio paths are relative to the manifest's folder. CSV manifests name no file, so
the audio is looked up (first hit wins) in `audio_dir` when given, else in
`<manifest folder>/audio/` and then the manifest folder itself. AudioCaps tries the names
`<youtube_id>_<start_time>.wav`, `<youtube_id>.wav`, `<audiocap_id>.wav` (and `.flac`);
Clotho uses `file_name` as is. An item whose file is not found keeps the first candidate
path, so `energytta-data check` can list it as missing and datasets skip it.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from energytta.errors import UserError

AUDIOCAPS_COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")
CLOTHO_COLUMNS = ("file_name",) + tuple(f"caption_{i}" for i in range(1, 6))
AUDIO_EXTENSIONS = (".wav", ".flac")
# shorter clips hold no whole token of the shipped models (0.1 s) and are shorter than
# the mel front-end's window: `check` lists them as bad and `cache` skips them
MIN_AUDIO_SECONDS = 0.1


@dataclass
class Item:
    audio: Path
    caption: str
    attributes: dict[str, Any] = field(default_factory=dict)


def _read_text(path: Path) -> str:
    """Whole file as UTF-8 text; a decode error names the line."""
    if not path.is_file():
        raise UserError(f"manifest not found: {path}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); "
                        "re-save the manifest as UTF-8") from None


def _resolve(path: str, base: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base / p


# ------------------------------------------------------------------------------ JSONL
def _jsonl_item(obj: Any, where: str, base: Path, need_audio: bool = True) -> Item:
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object with \"audio\" and \"caption\"")
    for key in ("audio", "caption") if need_audio else ("caption",):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            raise UserError(f"{where}: missing or empty \"{key}\" (a non-empty string)")
    attrs = obj.get("attributes", {})
    if not isinstance(attrs, dict):
        raise UserError(f"{where}: \"attributes\" must be a JSON object")
    extra = {k: v for k, v in obj.items() if k not in ("audio", "caption", "attributes")}
    audio = obj.get("audio")  # captions only: a row may name no audio (an empty Path then)
    audio = _resolve(audio, base) if isinstance(audio, str) and audio.strip() else Path()
    return Item(audio, obj["caption"].strip(), {**attrs, **extra})


def _read_jsonl(path: Path, audio_dir: Path | None, need_audio: bool = True) -> list[Item]:
    base = audio_dir or path.parent
    items = []
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n}: invalid JSON ({e.msg} at column {e.colno})") from None
        except RecursionError:  # json's parser recurses once per nesting level
            raise UserError(f"{path}:{n}: JSON nested too deeply; a manifest row is one flat "
                            "object with audio and caption") from None
        items.append(_jsonl_item(obj, f"{path}:{n}", base, need_audio))
    return items


# -------------------------------------------------------------------------------- CSV
class _Finder:
    """Looks up file names in a few folders, listing each folder once (fast for 50k rows)."""

    def __init__(self, folders: list[Path]):
        self.folders = [f for f in folders if f.is_dir()] or folders[:1]
        self._names = {f: set(os.listdir(f)) if f.is_dir() else set() for f in self.folders}

    def find(self, names: list[str]) -> Path:
        for folder in self.folders:
            for name in names:
                if name in self._names[folder]:
                    return folder / name
        return self.folders[0] / names[0]


def _finder(path: Path, audio_dir: Path | None) -> _Finder:
    return _Finder([audio_dir] if audio_dir else [path.parent / "audio", path.parent])


def _csv_rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and (line number, row) pairs; rows with a wrong field count, a repeated
    column and malformed quoting are errors (strict: a quote left open would otherwise
    swallow every later row into one caption)."""
    reader = csv.reader(io.StringIO(_read_text(path)), strict=True)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise UserError(f"{path}: empty manifest (expected a CSV header line)") from None
    except csv.Error as e:
        raise UserError(f"{path}:1: malformed CSV header ({e})") from None
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise UserError(f"{path}:1: column '{repeated[0]}' appears more than once in the "
                        "header; keep one")
    rows = []
    start = reader.line_num + 1  # where the row being read begins (a quoted field spans lines)
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                if len(row) != len(header):
                    raise UserError(f"{path}:{start}: expected {len(header)} fields "
                                    f"({','.join(header)}), found {len(row)}")
                rows.append((start, dict(zip(header, row))))
            start = reader.line_num + 1
    except csv.Error as e:
        if "unexpected end of data" in str(e):
            raise UserError(f"{path}:{start}: a quote opened here is never closed; close "
                            "it (a quote inside a field is written \"\")") from None
        raise UserError(f"{path}:{start}: malformed CSV ({e})") from None
    return header, rows


def _need(row: dict[str, str], key: str, where: str) -> str:
    value = row[key].strip()
    if not value:
        raise UserError(f"{where}: empty '{key}'")
    return value


def _audiocaps_names(row: dict[str, str]) -> list[str]:
    stems = [f"{row['youtube_id']}_{row['start_time']}", row["youtube_id"], row["audiocap_id"]]
    return [f"{s.strip()}{ext}" for s in stems for ext in AUDIO_EXTENSIONS]


def _read_audiocaps(path: Path, rows: list, audio_dir: Path | None) -> list[Item]:
    finder = _finder(path, audio_dir)
    items = []
    for n, row in rows:
        where = f"{path}:{n}"
        caption = _need(row, "caption", where)
        attrs = {k: _need(row, k, where) for k in AUDIOCAPS_COLUMNS if k != "caption"}
        items.append(Item(finder.find(_audiocaps_names(row)), caption, attrs))
    return items


def _read_clotho(path: Path, rows: list, audio_dir: Path | None) -> list[Item]:
    finder = _finder(path, audio_dir)
    items = []
    for n, row in rows:
        where = f"{path}:{n}"
        name = _need(row, "file_name", where)
        audio = finder.find([name])
        for i in range(1, 6):
            caption = _need(row, f"caption_{i}", where)
            items.append(Item(audio, caption, {"file_name": name, "caption_index": i}))
    return items


def _read_csv(path: Path, audio_dir: Path | None) -> list[Item]:
    header, rows = _csv_rows(path)
    for columns, reader in ((AUDIOCAPS_COLUMNS, _read_audiocaps), (CLOTHO_COLUMNS, _read_clotho)):
        if columns[0] in header:
            missing = [c for c in columns if c not in header]
            if missing:
                raise UserError(f"{path}:1: missing column(s) {', '.join(missing)} "
                                f"(expected {','.join(columns)})")
            return reader(path, rows, audio_dir)
    raise UserError(f"{path}:1: unknown CSV header ({','.join(header)}); expected AudioCaps "
                    f"({','.join(AUDIOCAPS_COLUMNS)}) or Clotho ({','.join(CLOTHO_COLUMNS)})")


def read_manifest(path: str | Path, audio_dir: str | Path | None = None,
                  need_audio: bool = True) -> list[Item]:
    """Read a JSONL, AudioCaps CSV or Clotho CSV manifest.

    Args:
        path: the manifest file.
        audio_dir: folder to resolve relative audio paths / look up CSV audio in
            (default: see the module docstring).
        need_audio: False for caption-only data: JSONL rows may be `{"caption": ...}`.
    Returns:
        items: one Item per (audio, caption) pair, in file order.
    Raises:
        UserError: missing/empty/malformed file, non-UTF-8 text, missing column.
    """
    path = Path(path)
    audio_dir = Path(audio_dir) if audio_dir else None
    if audio_dir is not None and not audio_dir.is_dir():
        raise UserError(f"audio folder not found: {audio_dir}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        items = _read_jsonl(path, audio_dir, need_audio)
    elif suffix == ".csv":
        items = _read_csv(path, audio_dir)
    else:
        raise UserError(f"{path}: unknown manifest type '{suffix}' (use .jsonl or .csv)")
    if not items:
        raise UserError(f"{path}: empty manifest (no items)")
    return items


# ------------------------------------------------------------------------------ check
@dataclass
class AudioInfo:
    path: Path
    frames: int = 0
    sample_rate: int = 0
    problem: str = ""  # "" when the file is fine


def probe_audio(path: Path) -> AudioInfo:
    """Header-level check of one audio file: exists, readable, at least
    MIN_AUDIO_SECONDS long."""
    import soundfile as sf

    if not path.is_file():
        return AudioInfo(path, problem="missing")
    try:
        info = sf.info(str(path))
    except Exception as e:  # libsndfile raises several types for corrupt files
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        return AudioInfo(path, problem=f"unreadable: {reason}")
    if info.frames <= 0:
        return AudioInfo(path, info.frames, info.samplerate, problem="empty (0 samples)")
    if info.frames < MIN_AUDIO_SECONDS * info.samplerate:
        return AudioInfo(path, info.frames, info.samplerate,
                         problem=f"too short ({info.frames} samples; under "
                                 f"{MIN_AUDIO_SECONDS:g} s)")
    return AudioInfo(path, info.frames, info.samplerate)


def _probe_all(paths: list[Path], progress: bool = True) -> list[AudioInfo]:
    from rich.progress import Progress

    out = []
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("checking audio", total=len(paths))
        for p in paths:
            out.append(probe_audio(p))
            bar.advance(task)
    return out


def _report(path: Path, items: list[Item], infos: list[AudioInfo]) -> None:
    from rich.console import Console
    from rich.table import Table

    good = [i for i in infos if not i.problem]
    secs = [i.frames / i.sample_rate for i in good]
    rates = sorted({i.sample_rate for i in good})
    table = Table(title=f"manifest {path}", show_header=False)
    table.add_row("items (audio, caption)", str(len(items)))
    table.add_row("audio files", f"{len(infos)} ({len(good)} good, {len(infos) - len(good)} bad)")
    if secs:
        table.add_row("total duration", f"{sum(secs) / 3600:.2f} h ({sum(secs):.1f} s)")
        table.add_row("min / max duration", f"{min(secs):.2f} s / {max(secs):.2f} s")
    table.add_row("sample rates", ", ".join(f"{r} Hz" for r in rates) or "-")
    console = Console()
    console.print(table)
    bad = [i for i in infos if i.problem]
    if bad:
        errors = Table(title=f"{len(bad)} bad audio file(s)")
        errors.add_column("file", overflow="fold")
        errors.add_column("problem")
        for info in bad:
            errors.add_row(str(info.path), info.problem)
        console.print(errors)


def check_summary(path: Path, items: list[Item], infos: list[AudioInfo]) -> dict[str, Any]:
    """What `energytta-data check --json` prints: counts, durations, rates, bad files."""
    good = [i for i in infos if not i.problem]
    secs = [i.frames / i.sample_rate for i in good]
    return {"manifest": str(path), "items": len(items), "audio_files": len(infos),
            "good": len(good), "bad": [{"file": str(i.path), "problem": i.problem}
                                       for i in infos if i.problem],
            "total_seconds": round(sum(secs), 3),
            "min_seconds": round(min(secs), 3) if secs else None,
            "max_seconds": round(max(secs), 3) if secs else None,
            "sample_rates": sorted({i.sample_rate for i in good})}


def check_manifest(path: str | Path, audio_dir: str | Path | None = None,
                   as_json: bool = False) -> int:
    """Print counts, durations, sample rates and every bad file (a table, or one JSON
    document for scripts: no wrapping, no progress bar); return 1 if any is bad."""
    items = read_manifest(path, audio_dir)
    paths = list(dict.fromkeys(i.audio for i in items))  # unique, in order
    infos = _probe_all(paths, progress=not as_json)
    if as_json:
        print(json.dumps(check_summary(Path(path), items, infos), indent=1))
    else:
        _report(Path(path), items, infos)
    return 1 if any(i.problem for i in infos) else 0
