"""Single-pass guidance distillation, its A/B and its cost in quality: docs/guidance.md.

The work is done by energytta/reports/guidance.py; `python tools/guidance_report.py --help`.
"""
import sys

from energytta.errors import run_cli
from energytta.reports import guidance


def main(argv: list[str] | None = None) -> int:
    """Args: argv without the program name (None reads sys.argv)."""
    return run_cli(guidance.main, argv)


if __name__ == "__main__":
    sys.exit(main())
