"""`python tools/cache_latents.py ...` = `energytta-data cache ...` (energytta/data/cache.py),
kept for old commands."""
import sys

from energytta.cli import data_main


def main(argv: list[str] | None = None) -> int:
    """Args: argv without the program name (None reads sys.argv)."""
    return data_main(["cache", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
