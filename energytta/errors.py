"""User-facing errors: one line that names the problem and what to do.

CLIs catch `UserError` and print `error: <message>` with exit code 2, never a traceback.
"""
from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
    """Bad input from the user (file, flag, config); the message is shown as is."""


def run_cli(main: Callable[[list[str]], int], argv: list[str]) -> int:
    """Call a tool's `main(argv)`; a UserError becomes `error: ...` on stderr and exit 2."""
    try:
        return main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
