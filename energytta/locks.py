"""One writer per output folder: an advisory lock file that names its holder.

Why: two `energytta-train` runs with the same `train.out_dir` both exited 0 with one
run's weights under the other's config and interleaved metrics; two `energytta-sample`
runs into one `--out-dir` paired one run's wav with the other's png. The lock
is `flock(2)` on `FOLDER/.energytta.lock`: the kernel drops it when its process dies
(even under `kill -9`), so a stale lock file left behind is simply taken over; it keeps
the holder's pid for the refusal message and is removed on a clean exit. The new holder
also sweeps the temporaries a killed holder's atomic writes left (`sweep_temporaries`).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from energytta.errors import UserError
from energytta.utils import sweep_temporaries

LOCK_NAME = ".energytta.lock"


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str, fix: str) -> Iterator[Path]:
    """Hold the folder's lock for the `with` block, or refuse in one line.

    Args:
        folder: the output folder (created if missing).
        what: the holder's name for the message, e.g. "energytta-train".
        fix: how the user picks another folder, e.g. "set train.out_dir=NEW_FOLDER".
    Yields:
        the lock file's path.
    """
    folder = Path(folder)
    path = folder / LOCK_NAME
    fd = _acquire(folder, path, what, fix)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        sweep_temporaries(folder)  # a killed holder's half-written files; none is writing now
        yield path
    finally:
        # unlink before unlocking: a waiter that opened this inode sees it is gone (below)
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)  # closing the descriptor releases the flock


def _acquire(folder: Path, path: Path, what: str, fix: str) -> int:
    """Open and flock the lock file; retry when its holder unlinked it meanwhile."""
    while True:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:  # a file in the way, a read-only disk, no permission
            raise UserError(f"cannot use {folder} as the output folder ({e.strerror}); "
                            f"{fix}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UserError(f"{folder} is in use by another {what} (pid {holder}); wait for "
                            f"it to finish or {fix}") from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # we locked a file its holder had just removed: take the new one
