"""`python -m energytta.serve` == `energytta-serve`."""
from energytta.serve.cli import main

raise SystemExit(main())
