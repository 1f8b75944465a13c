"""Batch latency of the generators beside the backbone floor: `python tools/bench.py --help`.

The work is done by the installed module `energytta.bench`.
"""
import sys

from energytta.bench import main

if __name__ == "__main__":
    sys.exit(main())
