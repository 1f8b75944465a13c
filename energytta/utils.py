"""Small shared helpers: atomic file writes, device choice."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch

# the disk-full test lives with the errors it becomes (re-exported for writers here)
from energytta.errors import DISK_FULL_HINT, is_disk_full, is_unwritable


# Every temporary `atomic_path` makes is a hidden folder named with this prefix that holds
# the marker file below: the only folders `sweep_temporaries` ever removes. A user's own
# hidden folders (`.notes.old/`, `.cfg.abcd1234/`) look like nothing else we write.
TEMP_PREFIX = ".energytta-tmp."
TEMP_MARKER = ".energytta-temporary"
_MARKER_TEXT = "energytta atomic-write temporary: safe to delete when no energytta runs\n"
_OLD = ".replaced"  # inside the temporary: the folder a swap is replacing


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only on success.

    Works for files and folders: write whatever you like at the yielded path. A crash
    or exception leaves `path` untouched (old contents kept) and removes the temporary.
    A full disk (at any point: the temporary folder, the write, the rename) becomes a
    one-line `UserError` saying so, after the partial temporary is removed. The yielded
    path lies in a tagged folder (`TEMP_PREFIX`, `TEMP_MARKER`) that a process killed
    mid-write leaves behind for `sweep_temporaries`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=path.parent))
    except OSError as e:  # nothing written yet: whatever the error, this folder refuses
        raise_if_disk_full(e, path)
        raise _unwritable(path, e.strerror or str(e)) from None
    tmp = work / path.name
    try:
        (work / TEMP_MARKER).write_text(_MARKER_TEXT, encoding="utf-8")
        yield tmp
        _apply_umask(tmp)
        if path.is_dir() and tmp.is_dir():
            os.replace(path, work / _OLD)  # the old folder goes into the temporary ...
            os.replace(tmp, path)
        else:
            os.replace(tmp, path)
    except Exception as e:
        if (work / _OLD).exists() and not path.exists():  # the swap failed half-way
            os.replace(work / _OLD, path)
        shutil.rmtree(work, ignore_errors=True)  # first: the check measures free space
        raise_if_disk_full(e, path)
        if is_unwritable(e):
            raise _unwritable(path, getattr(e, "strerror", None) or str(e)) from None
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)  # ... and leaves with it


def _unwritable(path: Path, reason: str) -> Exception:
    from energytta.errors import UserError

    return UserError(f"cannot write {path} ({reason}); choose a folder you can write to")


def raise_if_disk_full(exc: BaseException, path: str | Path) -> None:
    """Raise a one-line `UserError` from `exc` if it was a full disk while writing `path`."""
    from energytta.errors import UserError

    path = Path(path)
    folder = next((p for p in (path.parent, *path.parents) if p.is_dir()), None)
    if isinstance(exc, UserError) or not is_disk_full(exc, folder):
        return
    raise UserError(f"disk full: could not write {path}; the partial file was removed and "
                    f"earlier files are intact. {DISK_FULL_HINT}") from None


def _is_temporary(entry: Path) -> bool:
    """Whether `entry` is a folder `atomic_path` made: prefix, and the marker inside."""
    if not entry.name.startswith(TEMP_PREFIX) or entry.is_symlink() or not entry.is_dir():
        return False
    marker = entry / TEMP_MARKER
    try:
        return not marker.is_symlink() and marker.read_text(encoding="utf-8") == _MARKER_TEXT
    except (OSError, UnicodeDecodeError):
        return False


def _finish_swap(work: Path) -> None:
    """A writer killed between the two renames of a folder swap left the target missing,
    the old folder in `work/_OLD` and the new, complete one beside it: put the new in."""
    if not (work / _OLD).exists():
        return
    new = [p for p in work.iterdir() if p.name not in (TEMP_MARKER, _OLD)]
    if len(new) == 1 and not (work.parent / new[0].name).exists():
        os.replace(new[0], work.parent / new[0].name)


def sweep_temporaries(folder: str | Path, depth: int = 2) -> list[Path]:
    """Remove the temporaries `atomic_path` leaves when its process is killed (`kill -9`,
    power), in `folder` and up to `depth` levels of visible sub-folders: only folders it
    tagged (`TEMP_PREFIX` and the `TEMP_MARKER` file), never another file or folder. Call
    it only while holding the folder's lock (`energytta.locks`), when no writer can be
    mid-write. Returns the removed paths."""
    removed: list[Path] = []
    folder = Path(folder)
    if depth < 0 or not folder.is_dir() or folder.is_symlink():
        return removed
    for entry in sorted(folder.iterdir()):
        if _is_temporary(entry):
            _finish_swap(entry)
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
        elif entry.is_dir() and not entry.is_symlink() and not entry.name.startswith("."):
            removed += sweep_temporaries(entry, depth - 1)
    return removed


def require_safetensors(folder: str | Path, key: str) -> None:
    """Refuse in one line a model folder whose weights are pickle only (`pytorch_model.bin`).

    Why: model parts are named by configs, and a checkpoint carries its own config, so a
    downloaded file could point a loader at any folder; loading a pickle runs whatever
    it holds. Parts load from safetensors only (`use_safetensors=True`).

    Args:
        folder: the model folder (transformers / diffusers `save_pretrained` output).
        key: the config key that named it, for the message (e.g. "text.model").
    """
    from energytta.errors import UserError

    if not any(Path(folder).glob("*.safetensors*")):
        raise UserError(f"{key}={folder} has no safetensors weights (only pickle files such "
                        "as pytorch_model.bin, which energytta never loads); convert it once "
                        "with from_pretrained(folder).save_pretrained(folder) and retry")


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


def check_writable(path: str | Path, flag: str, folder: bool = False) -> None:
    """Refuse, in one line and before any work, an output that could not be written.

    Args:
        path: the file (or with `folder`, the folder) a command will write; the folders
            above it that do not exist yet are made later, by the write itself.
        flag: the option that named it (`--out`, `--json`), for the message.
    Raises:
        UserError: `path` is a folder where a file is wanted (or a file where a folder
            is), a file stands where a folder above it should be, or the nearest existing
            folder above it cannot be written in (read-only, no permission).
    """
    from energytta.errors import UserError

    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder; pick another {flag}")
    if not folder and path.is_dir():
        raise UserError(f"{flag} {path} is a folder; name the file to write inside it")
    base = path if folder else path.parent
    existing = next(p for p in (base, *base.parents) if p.exists() or p == Path(p.anchor))
    if not existing.is_dir():
        raise UserError(f"{flag} {path}: {existing} is a file, not a folder; pick another "
                        f"{flag}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-test-", dir=existing))
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot write in {existing} "
                        f"({e.strerror or e}); pick a writable place") from None


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
    elif device.type == "meta":  # tensors without data: every sample would be a traceback
        raise UserError(f"device '{name}' holds no data and cannot run a model; use --device "
                        "cpu, cuda or auto")
    elif device.type not in ("cpu", "mps"):
        raise UserError(f"device '{name}' is not supported; use auto, cpu, cuda or cuda:N")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device '{name}': MPS is not available here; use --device cpu")
    return device
