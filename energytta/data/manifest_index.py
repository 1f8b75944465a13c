"""Row index of a manifest: where each row starts and ends, built once, memory-mapped.

A million-row manifest parsed into Python objects costs each rank and each DataLoader
worker over a gigabyte (reference counting touches every object, so forked workers
lose the copy-on-write sharing). Instead a manifest is scanned once with numpy into an
(N, 3) int64 array [start byte, end byte, line number] of its non-blank rows; a row is
read (`os.pread`) and parsed only when asked for. The array is saved as `.npy` and
memory-mapped, so every process on a machine shares the same page-cache pages: 24 bytes
per row, no Python objects. (Arrow through HF `datasets` would do the same with a large
dependency and a copy of the manifest; numpy offsets need neither.)

The index file sits beside the manifest (`.<name>.<key>.rows.npy`), or in the user cache
folder when the manifest's folder is read-only. Its name carries a key of the manifest's
size, mtime and a hash of its first and last 64 KiB, so an edited manifest never meets
a stale index: it gets a new name and is rebuilt. Writes are atomic (several ranks may
build the same index at once; each renames a complete file).

Rows end at `\\n` (a `\\r` before it is part of the row and ignored by the parsers). In a
CSV manifest a newline inside a quoted field does not end the row: a newline ends a row
only after an even number of `"` (a quote inside a field is written `""`, so the count
stays even exactly outside quoted fields).
"""
from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path

import numpy as np

from energytta.errors import UserError

FORMAT = 1  # bump when the layout or the row rules change: old index files are ignored
SAMPLE = 1 << 16  # bytes of head and tail hashed into the key
CHUNK = 1 << 22  # bytes scanned at a time (bounded memory on any manifest size)
BLANK = np.frombuffer(b" \t\r\n\x0b\x0c", np.uint8)  # a row of only these is skipped
BOM = b"\xef\xbb\xbf"


def index_key(path: Path, csv: bool) -> str:
    """16 hex digits naming this exact version of the manifest (and the row rules)."""
    st = path.stat()
    h = hashlib.sha256(f"{FORMAT}:{csv}:{st.st_size}:{st.st_mtime_ns}".encode())
    with open(path, "rb") as f:
        h.update(f.read(SAMPLE))
        f.seek(max(0, st.st_size - SAMPLE))
        h.update(f.read(SAMPLE))
    return h.hexdigest()[:16]


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "energytta" / "manifest-index"


def index_paths(path: Path, key: str) -> list[Path]:
    """Where the index may live, in the order tried: beside the manifest, the user cache."""
    name = f".{path.name}.{key}.rows.npy"
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    return [path.parent / name, _cache_dir() / f"{digest}{name}"]


def _row_bounds(data: np.ndarray, csv: bool, final: bool) -> tuple[np.ndarray, int]:
    """Rows of `data` (which starts at a row start): (k, 3) [start, end, newlines before
    start] of its complete non-blank rows, and the index of the last row end (-1: none).
    With `final`, the last byte ends a row whatever the quotes say (EOF). Temporaries are
    one bool per byte and a few ints per row or quote, never an int per byte."""
    nl = np.flatnonzero(data == 10)  # every newline, quoted or not
    ends = nl
    if csv:  # a newline inside quotes (after an odd number of quotes) does not end the row
        quotes = np.flatnonzero(data == 34)
        ends = nl[np.searchsorted(quotes, nl) % 2 == 0]
    if final and (not len(ends) or ends[-1] != len(data) - 1):
        ends = np.append(ends, len(data) - 1)
    if not len(ends):
        return np.zeros((0, 3), np.int64), -1
    starts = np.concatenate([[0], ends[:-1] + 1])
    # non-blank bytes of each row (a row and its newline: never an empty segment)
    content = np.add.reduceat(~np.isin(data[:ends[-1] + 1], BLANK), starts, dtype=np.int64)
    lines = np.searchsorted(nl, starts)
    return np.stack([starts, ends, lines], axis=1)[content > 0], int(ends[-1])


def scan_rows(path: Path, csv: bool) -> np.ndarray:
    """(N, 3) int64 [start byte, end byte (its newline, or EOF), 1-based line] of every
    non-blank row, scanning CHUNK bytes at a time (memory bounded by the chunk and the
    longest row)."""
    parts, carry, offset, line0 = [], b"", 0, 0
    with open(path, "rb") as f:
        if f.read(len(BOM)) != BOM:
            f.seek(0)
        offset = f.tell()
        while True:
            block = f.read(CHUNK)
            final = not block
            buf = carry + block + (b"\n" if final else b"")
            data = np.frombuffer(buf, np.uint8)
            rows, last = _row_bounds(data, csv, final)
            if last >= 0:
                rows[:, :2] += offset
                rows[:, 2] += line0 + 1
                parts.append(rows)
                line0 += int(np.count_nonzero(data[:last + 1] == 10))
                offset += last + 1
            carry = buf[last + 1:]  # a row still open: continued by the next chunk
            if final:
                break
    return np.concatenate(parts) if parts else np.zeros((0, 3), np.int64)


def load_index(path: Path, csv: bool) -> np.ndarray:
    """The manifest's row index, memory-mapped from its index file (built when missing)."""
    key = index_key(path, csv)
    places = index_paths(path, key)
    for place in places:
        try:
            return np.load(place, mmap_mode="r")
        except (OSError, ValueError):  # absent, or a foreign/corrupt file: rebuild
            continue
    rows = scan_rows(path, csv)
    for place in places:
        try:
            _write(place, rows)
        except (OSError, UserError):  # a read-only folder or a full disk: the next place
            continue
        _remove_stale(place, key)
        return np.load(place, mmap_mode="r")
    return rows  # nowhere writable: keep it in memory (still no Python objects per row)


def _write(place: Path, rows: np.ndarray) -> None:
    from energytta.utils import atomic_path  # torch comes with it: keep the module light

    place.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(place) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, rows)


def _remove_stale(place: Path, key: str) -> None:
    """Drop the index files of earlier versions of the same manifest (same name, other key)."""
    head, tail = place.name.split(key)
    for old in place.parent.glob(f"{glob.escape(head)}*{tail}"):
        if old != place and len(old.name) == len(place.name):
            try:
                old.unlink()
            except OSError:  # another process removed it first, or a read-only file
                pass
