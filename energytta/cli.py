"""Console entry points: `energytta-train`, `energytta-sample`, `energytta-data`.

Each entry point parses its flags and hands off to the module that does the work.
`UserError` (bad input) becomes one `error: ...` line and exit code 2, never a traceback.
"""
from __future__ import annotations

import sys
from typing import Callable

from energytta.errors import UserError


def _run(fn: Callable[[list[str]], int | None], argv: list[str] | None) -> int:
    try:
        return int(fn(sys.argv[1:] if argv is None else argv) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def data_main(argv: list[str] | None = None) -> int:
    from energytta.data.cli import main
    return _run(main, argv)


def train_main(argv: list[str] | None = None) -> int:
    from energytta.train.cli import main
    return _run(main, argv)


def sample_main(argv: list[str] | None = None) -> int:
    from energytta.sample_cli import main
    return _run(main, argv)
