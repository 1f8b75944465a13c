"""`python tools/export.py ...` = `energytta-export ...` (energytta/export.py),
kept for old commands."""
import sys

from energytta.cli import export_main as main

if __name__ == "__main__":
    sys.exit(main())
