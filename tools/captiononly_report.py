"""Caption-only distillation study: docs/captiononly.md.

The work is done by energytta/reports/captiononly.py; `python tools/captiononly_report.py --help`.
"""
import sys

from energytta.errors import run_cli
from energytta.reports import captiononly


def main(argv: list[str] | None = None) -> int:
    """Args: argv without the program name (None reads sys.argv)."""
    return run_cli(captiononly.main, argv)


if __name__ == "__main__":
    sys.exit(main())
