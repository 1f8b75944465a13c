"""Student vs teacher at several decoding-iteration counts: docs/reports/quality.md.

The work is done by energytta/reports/quality.py; `python tools/quality.py --help`.
"""
import sys

from energytta.errors import run_cli
from energytta.reports import quality


def main(argv: list[str] | None = None) -> int:
    """Args: argv without the program name (None reads sys.argv)."""
    return run_cli(quality.main, argv)


if __name__ == "__main__":
    sys.exit(main())
