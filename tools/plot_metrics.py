"""A run's loss curve (PNG) and a Markdown table of it, from metrics.jsonl.

The work is done by energytta/reports/plot_metrics.py; `python tools/plot_metrics.py --help`.
"""
import sys

from energytta.errors import run_cli
from energytta.reports import plot_metrics


def main(argv: list[str] | None = None) -> int:
    """Args: argv without the program name (None reads sys.argv)."""
    return run_cli(plot_metrics.main, argv)


if __name__ == "__main__":
    sys.exit(main())
