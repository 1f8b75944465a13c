"""Speed and quality of every generator setting in one table: docs/reports/speed_quality.md.

The work is done by energytta/reports/speed_quality.py; `python tools/speed_quality.py --help`.
"""
import sys
from pathlib import Path

from energytta.errors import run_cli
from energytta.reports import speed_quality


def main(argv: list[str] | None = None) -> int:
    """Args: argv without the program name (None reads sys.argv)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    bench = Path(__file__).resolve().with_name("bench.py")
    return run_cli(speed_quality.main, argv + ["--bench-script", str(bench)])


if __name__ == "__main__":
    sys.exit(main())
