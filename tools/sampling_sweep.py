"""A checkpoint's sampling defaults: CFG scale x temperature on the validation split.

The work is done by energytta/reports/sampling_sweep.py; `python tools/sampling_sweep.py --help`.
"""
import sys

from energytta.errors import run_cli
from energytta.reports import sampling_sweep


def main(argv: list[str] | None = None) -> int:
    """Args: argv without the program name (None reads sys.argv)."""
    return run_cli(sampling_sweep.main, argv)


if __name__ == "__main__":
    sys.exit(main())
