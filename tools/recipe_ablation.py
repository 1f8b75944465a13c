"""Recipe A/B of the teacher (positions, prediction type): docs/reports/recipe_ablation.md.

The work is done by energytta/reports/ablation.py; `python tools/recipe_ablation.py --help`.
"""
import sys

from energytta.errors import run_cli
from energytta.reports import ablation


def main(argv: list[str] | None = None) -> int:
    """Args: argv without the program name (None reads sys.argv)."""
    return run_cli(ablation.main, argv)


if __name__ == "__main__":
    sys.exit(main())
