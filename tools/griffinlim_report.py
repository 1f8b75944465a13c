"""How well Griffin-Lim inverts our log-mels: docs/reports/griffinlim.md.

The work is done by energytta/reports/griffinlim_report.py;
`python tools/griffinlim_report.py --help`.
"""
import sys

from energytta.errors import run_cli
from energytta.reports import griffinlim_report


def main(argv: list[str] | None = None) -> int:
    """Args: argv without the program name (None reads sys.argv)."""
    return run_cli(griffinlim_report.main, argv)


if __name__ == "__main__":
    sys.exit(main())
