"""User-facing errors: one line that names the problem and what to do.

Every installed command (`energytta/cli.py`), `tools/bench.py` and every report command runs its
`main(argv)` through `run_cli`, the one place where failing is turned into exit codes:
bad input (`UserError`) becomes `error: <message>` on stderr and exit code 2, Ctrl-C
becomes `interrupted` and exit code 130 (the shell's code for SIGINT; a training run that
saved and stopped on SIGTERM exits 143, as the shell reports it), and a full disk met
outside an atomic write (a log append) is one line too, never a traceback.
"""
from __future__ import annotations

import errno
import os
import shutil
import sys
from pathlib import Path
from typing import Callable

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """Bad input from the user (file, flag, config); the message is shown as is."""


class ConfigError(UserError, ValueError):
    """A bad config file, key or value; the message is one line meant for the user."""


def run_cli(main: Callable[[list[str]], int | None], argv: list[str] | None = None) -> int:
    """Run a command's `main(argv)` and return its exit code.

    Args:
        main: parses `argv` (without the program name) and does the work; may raise
            `UserError` or be interrupted. Returning None means success (0).
        argv: the arguments; None reads `sys.argv[1:]`.
    Returns:
        main's code, EXIT_USER_ERROR after a UserError, EXIT_INTERRUPTED after Ctrl-C.
        argparse's own exits (`--help`, a malformed flag) pass through as SystemExit.
    """
    try:
        return int(main(sys.argv[1:] if argv is None else argv) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as e:
        # a command that stopped cleanly on SIGTERM says so in its code (143), as the shell would
        code = getattr(e, "exit_code", EXIT_INTERRUPTED)
        print("interrupted" if code == EXIT_INTERRUPTED else f"stopped by signal {code - 128}",
              file=sys.stderr)
        return code
    except OSError as e:
        if not is_disk_full(e):
            raise
        where = f" writing {e.filename}" if e.filename else ""
        print(f"error: disk full{where}. {DISK_FULL_HINT}", file=sys.stderr)
        return EXIT_USER_ERROR


_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_HINT = ("Free some space and rerun: energytta-train --resume continues from the "
                  "last checkpoint, energytta-sample skips the prompts it finished")
# how writers that do not raise OSError word it: safetensors ("... (os error 28)"), libc
_FULL_WORDS = ("no space left on device", "os error 28", "disk quota exceeded")
# a write that failed while less than this is free is taken to be a full disk (libsndfile
# reports ENOSPC as an opaque "LibsndfileError(2, '')")
_NEARLY_FULL = 1 << 20


# a folder we may not write to (not a full disk, whatever space it reports: /proc has none)
_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
_UNWRITABLE_WORDS = ("permission denied", "os error 13)", "read-only file system",
                     "os error 30)", "operation not permitted", "os error 1)")


def is_unwritable(exc: BaseException) -> bool:
    """Whether `exc` says permission was refused (EACCES, EPERM, EROFS), by errno or by the
    words writers that wrap it use (safetensors: "Permission denied (os error 13)")."""
    if isinstance(exc, OSError) and exc.errno in _UNWRITABLE:
        return True
    return any(w in str(exc).lower() for w in _UNWRITABLE_WORDS)


def is_disk_full(exc: BaseException, folder: str | Path | None = None) -> bool:
    """Whether `exc` (raised while writing into `folder`) means the disk or quota is full."""
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
        return True
    if any(w in str(exc).lower() for w in _FULL_WORDS):
        return True
    if folder is None or not isinstance(exc, (OSError, RuntimeError)) or is_unwritable(exc):
        return False
    if isinstance(exc, OSError) and exc.errno is not None:
        return False  # the errno says what it is, and it is not ENOSPC
    try:  # an opaque error (libsndfile) where a writable folder has no room left
        return (shutil.disk_usage(folder).free < _NEARLY_FULL
                and os.access(folder, os.W_OK))
    except OSError:
        return False
