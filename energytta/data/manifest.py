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

A manifest is read lazily (`Manifest`, `open_manifest`): its rows are located once by a
numpy scan whose index is memory-mapped and shared by every process (`manifest_index`),
and a row is parsed and checked when one of its items is read, so a bad row is one line
naming it, met by whoever reads it: `energytta-data check` lists every one, datasets skip
it with a warning. `read_manifest` reads a small manifest whole into a list.
"""
from __future__ import annotations

import csv
import io
import json
import os
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, overload

import numpy as np

from energytta.errors import UserError

AUDIOCAPS_COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")
CLOTHO_COLUMNS = ("file_name",) + tuple(f"caption_{i}" for i in range(1, 6))
AUDIO_EXTENSIONS = (".wav", ".flac")
# shorter clips hold no whole token of the shipped models (0.1 s) and are shorter than
# the mel front-end's window: `check` lists them as bad and `cache` skips them
MIN_AUDIO_SECONDS = 0.1
MISSING_FIX = ("missing files: correct their rows (a relative path is relative to the "
               "manifest's folder), or pass --audio-dir to say where the audio is")
READ_AHEAD = 1 << 20  # bytes read at once when rows are read in order (check, iteration)


@dataclass
class Item:
    audio: Path
    caption: str
    attributes: dict[str, Any] = field(default_factory=dict)


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


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:  # json's parser recurses once per nesting level
        raise UserError(f"{where}: JSON nested too deeply; a manifest row is one flat "
                        "object with audio and caption") from None


# -------------------------------------------------------------------------------- CSV
def _csv_cells(text: str, where: str) -> list[str]:
    """The fields of one CSV row (its text may span lines inside quotes); strict quoting:
    a quote left open would otherwise swallow every later row into one caption."""
    try:
        rows = list(csv.reader(io.StringIO(text), strict=True))
    except csv.Error as e:
        if "unexpected end of data" in str(e):
            raise UserError(f"{where}: a quote opened here is never closed; close it (a "
                            "quote inside a field is written \"\")") from None
        raise UserError(f"{where}: malformed CSV ({e})") from None
    if len(rows) != 1:  # a quote inside an unquoted field made two rows look like one
        raise UserError(f"{where}: a quote inside an unquoted field; quote the whole field "
                        "(\"...\") and write a quote inside it as \"\"")
    return rows[0]


def _need(row: dict[str, str], key: str, where: str) -> str:
    value = row[key].strip()
    if not value:
        raise UserError(f"{where}: empty '{key}'")
    return value


def _audiocaps_names(row: dict[str, str]) -> list[str]:
    stems = [f"{row['youtube_id']}_{row['start_time']}", row["youtube_id"], row["audiocap_id"]]
    return [f"{s.strip()}{ext}" for s in stems for ext in AUDIO_EXTENSIONS]


def _csv_kind(path: Path, header: list[str]) -> str:
    """"audiocaps" or "clotho" from the header; one line naming what is wrong otherwise."""
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise UserError(f"{path}:1: column '{repeated[0]}' appears more than once in the "
                        "header; keep one")
    for kind, columns in (("audiocaps", AUDIOCAPS_COLUMNS), ("clotho", CLOTHO_COLUMNS)):
        if columns[0] in header:
            missing = [c for c in columns if c not in header]
            if missing:
                raise UserError(f"{path}:1: missing column(s) {', '.join(missing)} "
                                f"(expected {','.join(columns)})")
            return kind
    raise UserError(f"{path}:1: unknown CSV header ({','.join(header)}); expected AudioCaps "
                    f"({','.join(AUDIOCAPS_COLUMNS)}) or Clotho ({','.join(CLOTHO_COLUMNS)})")


# --------------------------------------------------------------------------- Manifest
class Manifest(Sequence[Item]):
    """A manifest read lazily: its rows are found once (`manifest_index`), and each row is
    read from disk, parsed and checked only when an item of it is asked for, so a
    million-row manifest costs a rank or a DataLoader worker a memory-mapped index of 24
    bytes per row, shared between processes, instead of a million Python objects.

    Args:
        path: JSONL, AudioCaps CSV or Clotho CSV manifest.
        audio_dir: folder to resolve relative audio paths / look up CSV audio in.
        need_audio: False for caption-only data: JSONL rows may be `{"caption": ...}`.
        persist: keep the row index in a file for the next process (False: in memory).
    Raises:
        UserError: missing or empty file, unknown type, bad CSV header (at once); a bad
            row when one of its items is read (`row_items` names its line).
    """

    def __init__(self, path: str | Path, audio_dir: str | Path | None = None,
                 need_audio: bool = True, persist: bool = True) -> None:
        self.path, self.need_audio, self.persist = Path(path), need_audio, persist
        self.audio_dir = Path(audio_dir) if audio_dir else None
        if self.audio_dir is not None and not self.audio_dir.is_dir():
            raise UserError(f"audio folder not found: {self.audio_dir}")
        suffix = self.path.suffix.lower()
        if suffix not in (".jsonl", ".json", ".csv"):
            raise UserError(f"{self.path}: unknown manifest type '{suffix}' (use .jsonl or .csv)")
        if not self.path.is_file():
            raise UserError(f"manifest not found: {self.path}")
        self.csv = suffix == ".csv"
        self.kind, self.header, self.per_row = "jsonl", [], 1
        self._fd, self._pid, self._ahead = -1, -1, (0, b"")
        self._rows = self._load_rows()
        self.folders = self._folders()
        if len(self._rows) == 0:
            raise UserError(f"{self.path}: empty manifest (no items)")

    def _load_rows(self) -> np.ndarray:
        """The row index (N, 3) [start, end, line], less the CSV header (read here)."""
        from energytta.data.manifest_index import load_index, scan_rows

        rows = load_index(self.path, self.csv) if self.persist else scan_rows(self.path, self.csv)
        if not self.csv:
            return rows
        if not len(rows):
            raise UserError(f"{self.path}: empty manifest (expected a CSV header line)")
        raw = self._pread(int(rows[0, 0]), int(rows[0, 1]))
        where = f"{self.path}:{int(rows[0, 2])}"
        self.header = [h.strip() for h in _csv_cells(self._decode(raw, int(rows[0, 2])), where)]
        self.kind = _csv_kind(self.path, self.header)
        self.per_row = 5 if self.kind == "clotho" else 1
        return rows[1:]

    def _folders(self) -> list[Path]:
        """Where CSV audio is looked up (first hit wins), existing folders only."""
        parent = self.path.parent
        folders = [self.audio_dir] if self.audio_dir else [parent / "audio", parent]
        return [f for f in folders if f.is_dir()] or folders[:1]

    # ---- pickling: a worker reopens the file and re-maps the index itself
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_fd=-1, _pid=-1, _ahead=(0, b""),
                     _rows=None if self.persist else self._rows)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._rows is None:
            self._rows = self._load_rows()

    def close(self) -> None:
        """Close this process's handle on the file (reopened if a row is read again)."""
        if self._fd >= 0 and self._pid == os.getpid():
            os.close(self._fd)
        self._fd, self._pid = -1, -1

    def __del__(self) -> None:
        try:
            self.close()
        except (OSError, AttributeError, TypeError):  # half-built, or interpreter shutdown
            pass

    # ---- reading rows
    @property
    def num_rows(self) -> int:
        return len(self._rows)

    def _pread(self, start: int, end: int) -> bytes:
        if self._pid != os.getpid():  # each process (a forked worker too) opens its own
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return os.pread(self._fd, end - start, start)

    def _decode(self, raw: bytes, line: int) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line += raw[:e.start].count(b"\n")
            raise UserError(f"{self.path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); "
                            "re-save the manifest as UTF-8") from None

    def line(self, row: int) -> int:
        """1-based line of the file where row `row` starts."""
        return int(self._rows[row, 2])

    def _read_ahead(self, start: int, end: int) -> bytes:
        """Bytes [start, end) through a 1 MiB read-ahead buffer (sequential reads: one
        system call per MiB, not per row)."""
        lo, buf = self._ahead
        if not (lo <= start and end <= lo + len(buf)):
            lo, buf = start, self._pread(start, max(end, start + READ_AHEAD))
            self._ahead = (lo, buf)
        return buf[start - lo:end - lo]

    def row_items(self, row: int, sequential: bool = False) -> list[Item]:
        """The items of row `row` (five for Clotho); UserError naming the line if it is bad.
        `sequential`: rows are read in order (read ahead instead of one read per row)."""
        start, end, line = self._rows[row].tolist()
        raw = self._read_ahead(start, end) if sequential else self._pread(start, end)
        text, where = self._decode(raw, line), f"{self.path}:{line}"
        if not self.csv:
            base = self.audio_dir or self.path.parent
            return [_jsonl_item(_parse_json(text, where), where, base, self.need_audio)]
        cells = _csv_cells(text, where)
        if len(cells) != len(self.header):
            raise UserError(f"{where}: expected {len(self.header)} fields "
                            f"({','.join(self.header)}), found {len(cells)}")
        row_dict = dict(zip(self.header, cells))
        return self._audiocaps(row_dict, where) if self.kind == "audiocaps" \
            else self._clotho(row_dict, where)

    def _find(self, names: list[str]) -> Path:
        for folder in self.folders:
            for name in names:
                if (folder / name).is_file():
                    return folder / name
        return self.folders[0] / names[0]

    def _audiocaps(self, row: dict[str, str], where: str) -> list[Item]:
        caption = _need(row, "caption", where)
        attrs = {k: _need(row, k, where) for k in AUDIOCAPS_COLUMNS if k != "caption"}
        return [Item(self._find(_audiocaps_names(row)), caption, attrs)]

    def _clotho(self, row: dict[str, str], where: str) -> list[Item]:
        name = _need(row, "file_name", where)
        audio = self._find([name])
        return [Item(audio, _need(row, f"caption_{i}", where),
                     {"file_name": name, "caption_index": i}) for i in range(1, 6)]

    # ---- the Sequence
    def __len__(self) -> int:
        return len(self._rows) * self.per_row

    @overload
    def __getitem__(self, index: int) -> Item: ...

    @overload
    def __getitem__(self, index: slice) -> list[Item]: ...

    def __getitem__(self, index: int | slice) -> Item | list[Item]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"item {index} of a {n}-item manifest")
        row, k = divmod(index % n, self.per_row)
        return self.row_items(row)[k]

    def __iter__(self) -> Iterator[Item]:
        for row in range(self.num_rows):
            yield from self.row_items(row, sequential=True)


def open_manifest(path: str | Path, audio_dir: str | Path | None = None,
                  need_audio: bool = True) -> Manifest:
    """The lazy `Manifest` of `path`, its row index kept beside it for the next process."""
    return Manifest(path, audio_dir, need_audio)


def read_manifest(path: str | Path, audio_dir: str | Path | None = None,
                  need_audio: bool = True) -> list[Item]:
    """Read a whole JSONL, AudioCaps CSV or Clotho CSV manifest into a list (small
    manifests; datasets use `open_manifest`, which reads rows when asked for).

    Args:
        path: the manifest file.
        audio_dir: folder to resolve relative audio paths / look up CSV audio in
            (default: see the module docstring).
        need_audio: False for caption-only data: JSONL rows may be `{"caption": ...}`.
    Returns:
        items: one Item per (audio, caption) pair, in file order.
    Raises:
        UserError: missing/empty/malformed file or row, non-UTF-8 text, missing column.
    """
    manifest = Manifest(path, audio_dir, need_audio, persist=False)
    try:
        return list(manifest)
    finally:
        manifest.close()


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


class CheckStats:
    """What `check` learns while it streams a manifest, in bounded memory: 16 bytes per
    item in numpy-backed arrays (file hash, seconds) and the bad rows and files (one line
    each); a file named by several rows is counted once."""

    def __init__(self) -> None:
        self.items = 0
        self.hashes, self.seconds = array("q"), array("d")  # per item with a good file
        self.rates: set[int] = set()
        self.bad_files: dict[str, tuple[str, str]] = {}  # path -> (problem, first row)
        self.bad_rows: list[str] = []  # "manifest:line: problem"

    def add(self, info: AudioInfo, where: str) -> None:
        """Count one item whose file is `info`; `where` (file:line) names its row."""
        self.items += 1
        if info.problem:
            self.bad_files.setdefault(str(info.path), (info.problem, where))
            return
        self.hashes.append(hash(str(info.path)))
        self.seconds.append(info.frames / info.sample_rate)
        self.rates.add(info.sample_rate)

    def good_seconds(self) -> np.ndarray:
        """Duration of each distinct good file."""
        hashes = np.frombuffer(self.hashes, np.int64) if self.hashes else np.zeros(0, np.int64)
        _, first = np.unique(hashes, return_index=True)
        return np.frombuffer(self.seconds, np.float64)[first] if len(first) else np.zeros(0)


def check_stream(manifest: Manifest, progress: bool = True,
                 cache_size: int = 1 << 14) -> CheckStats:
    """Read every row of `manifest` once and probe its audio (an LRU of `cache_size` probes
    spares files named by consecutive or nearby rows); bad rows and files are recorded,
    never raised."""
    from rich.progress import Progress

    # keyed by the path's text: hashing a Path re-parses it, a str caches its hash
    probe = lru_cache(maxsize=cache_size)(lambda name: probe_audio(Path(name)))
    stats, step = CheckStats(), 4096
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("checking", total=manifest.num_rows)
        for row in range(manifest.num_rows):
            try:
                items = manifest.row_items(row, sequential=True)
            except UserError as e:
                stats.bad_rows.append(str(e))
                items = []
            for item in items:
                info = probe(str(item.audio))
                stats.add(info, f"{manifest.path}:{manifest.line(row)}" if info.problem else "")
            if row % step == step - 1:
                bar.advance(task, step)
    return stats


def check_summary(path: Path, stats: CheckStats) -> dict[str, Any]:
    """What `energytta-data check --json` prints: counts, durations, rates, bad files, bad
    rows."""
    secs = stats.good_seconds()
    return {"manifest": str(path), "items": stats.items,
            "audio_files": len(secs) + len(stats.bad_files), "good": len(secs),
            "bad": [{"file": f, "problem": p, "row": w}
                    for f, (p, w) in stats.bad_files.items()],
            "bad_rows": stats.bad_rows,
            "total_seconds": round(float(secs.sum()), 3),
            "min_seconds": round(float(secs.min()), 3) if len(secs) else None,
            "max_seconds": round(float(secs.max()), 3) if len(secs) else None,
            "sample_rates": sorted(stats.rates)}


def _report(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"manifest {doc['manifest']}", show_header=False)
    table.add_row("items (audio, caption)", str(doc["items"]))
    table.add_row("audio files", f"{doc['audio_files']} ({doc['good']} good, "
                                 f"{len(doc['bad'])} bad)")
    if doc["bad_rows"]:
        table.add_row("bad rows", str(len(doc["bad_rows"])))
    if doc["good"]:
        total = doc["total_seconds"]
        table.add_row("total duration", f"{total / 3600:.2f} h ({total:.1f} s)")
        table.add_row("min / max duration",
                      f"{doc['min_seconds']:.2f} s / {doc['max_seconds']:.2f} s")
    table.add_row("sample rates", ", ".join(f"{r} Hz" for r in doc["sample_rates"]) or "-")
    console = Console()
    console.print(table)
    if doc["bad"]:
        errors = Table(title=f"{len(doc['bad'])} bad audio file(s)")
        errors.add_column("file", overflow="fold")
        errors.add_column("problem")
        errors.add_column("first row", overflow="fold")
        for bad in doc["bad"]:
            errors.add_row(bad["file"], bad["problem"], bad["row"])
        console.print(errors)
        if any(bad["problem"] == "missing" for bad in doc["bad"]):
            print(MISSING_FIX)
    for line in doc["bad_rows"]:  # one plain line each: `path:line: problem`, never wrapped
        print(f"bad row: {line}")


def check_manifest(path: str | Path, audio_dir: str | Path | None = None,
                   as_json: bool = False) -> int:
    """Stream the manifest once: print counts, durations, sample rates, every bad file and
    every bad row (a table and one line per bad row, or one JSON document for scripts: no
    wrapping, no progress bar); return 1 if any is bad. Memory stays flat: rows are read
    one at a time and the row index is not kept."""
    manifest = Manifest(path, audio_dir, persist=False)
    stats = check_stream(manifest, progress=not as_json)
    manifest.close()
    doc = check_summary(Path(path), stats)
    if as_json:
        print(json.dumps(doc, indent=1))
    else:
        _report(doc)
    return 1 if doc["bad"] or doc["bad_rows"] else 0
