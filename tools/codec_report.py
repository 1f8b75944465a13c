"""Reconstruction quality and speed of the codecs: wav -> latents -> mel -> wav.

The work is done by energytta/reports/codec_report.py; `python tools/codec_report.py --help`.
"""
import sys

from energytta.errors import run_cli
from energytta.reports import codec_report


def main(argv: list[str] | None = None) -> int:
    """Args: argv without the program name (None reads sys.argv)."""
    return run_cli(codec_report.main, argv)


if __name__ == "__main__":
    sys.exit(main())
