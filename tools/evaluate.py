"""`python tools/evaluate.py ...` = `energytta-eval ...` (energytta/eval/cli.py),
kept for old commands."""
import sys

from energytta.cli import eval_main as main

if __name__ == "__main__":
    sys.exit(main())
