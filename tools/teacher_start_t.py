"""A diffusion teacher's `head.sample_max_t`: sampled token scale per start.

The work is done by energytta/reports/teacher_start_t.py; `python tools/teacher_start_t.py --help`.
"""
import sys

from energytta.errors import run_cli
from energytta.reports import teacher_start_t


def main(argv: list[str] | None = None) -> int:
    """Args: argv without the program name (None reads sys.argv)."""
    return run_cli(teacher_start_t.main, argv)


if __name__ == "__main__":
    sys.exit(main())
