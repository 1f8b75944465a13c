"""Small shared helpers: atomic file writes, seeding, device choice."""
from __future__ import annotations

import contextlib
import os
import re
import random
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

# the disk-full test lives with the errors it becomes (re-exported for writers here)
from energytta.errors import DISK_FULL_HINT, is_disk_full


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only on success.

    Works for files and folders: write whatever you like at the yielded path. A crash
    or exception leaves `path` untouched (old contents kept) and removes the temporary.
    A full disk (at any point: the temporary folder, the write, the rename) becomes a
    one-line `UserError` saying so, after the partial temporary is removed.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    except OSError as e:
        raise_if_disk_full(e, path)
        raise
    try:
        yield tmp
        _apply_umask(tmp)
        if path.is_dir() and tmp.is_dir():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except Exception as e:
        shutil.rmtree(tmp.parent, ignore_errors=True)  # first: the check measures free space
        raise_if_disk_full(e, path)
        raise
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def raise_if_disk_full(exc: BaseException, path: str | Path) -> None:
    """Raise a one-line `UserError` from `exc` if it was a full disk while writing `path`."""
    from energytta.errors import UserError

    path = Path(path)
    folder = next((p for p in (path.parent, *path.parents) if p.is_dir()), None)
    if isinstance(exc, UserError) or not is_disk_full(exc, folder):
        return
    raise UserError(f"disk full: could not write {path}; the partial file was removed and "
                    f"earlier files are intact. {DISK_FULL_HINT}") from None


_TEMP = re.compile(r"^\.(?P<name>.+)\.(?:[a-z0-9_]{8}|old)$")


def sweep_temporaries(folder: str | Path, depth: int = 2) -> list[Path]:
    """Remove what `atomic_path` leaves when its process is killed (`kill -9`, power):
    hidden `.NAME.xxxxxxxx/` folders holding at most `NAME`, and `.NAME.old/`. Call it
    only while holding the folder's lock (`energytta.locks`), when no writer can be
    mid-write. Returns the removed paths."""
    removed: list[Path] = []
    folder = Path(folder)
    if depth < 0 or not folder.is_dir():
        return removed
    for entry in sorted(folder.iterdir()):
        m = _TEMP.match(entry.name)
        if entry.is_dir() and not entry.is_symlink() and m:
            inside = [p.name for p in entry.iterdir()]
            if inside in ([], [m["name"]]) or entry.name.endswith(".old"):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
                continue
        if entry.is_dir() and not entry.is_symlink() and not entry.name.startswith("."):
            removed += sweep_temporaries(entry, depth - 1)
    return removed


def _apply_umask(path: Path) -> None:
    """Give the files under `path` the mode a plain `open()` would have (0o666 & ~umask).

    Some writers (safetensors' `save_file`) create files owner-only (0o600); an exported
    model or checkpoint should be as readable as any other file its user writes.
    """
    umask = os.umask(0)
    os.umask(umask)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for f in files:
        os.chmod(f, 0o666 & ~umask)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a CPU generator seeded with `seed`."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if available else cpu; anything else must name a device this torch
    can use (a UserError in one line otherwise, not torch's traceback)."""
    from energytta.errors import UserError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device '{name}': this torch has no usable CUDA (build "
                            f"{torch.__version__}); use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device '{name}': only {torch.cuda.device_count()} CUDA "
                            "device(s) visible")
    elif device.type not in ("cpu", "mps", "meta"):
        raise UserError(f"device '{name}' is not supported; use auto, cpu, cuda or cuda:N")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device '{name}': MPS is not available here; use --device cpu")
    return device
