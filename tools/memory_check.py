"""Resident memory of energytta-sample over a long prompt list: docs/reports/memory.md.

The work is done by energytta/reports/memory.py; `python tools/memory_check.py --help`.
"""
import sys

from energytta.errors import run_cli
from energytta.reports import memory


def main(argv: list[str] | None = None) -> int:
    """Args: argv without the program name (None reads sys.argv)."""
    return run_cli(memory.main, argv)


if __name__ == "__main__":
    sys.exit(main())
