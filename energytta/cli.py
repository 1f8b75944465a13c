"""Console entry points: `energytta-train`, `energytta-sample`, `energytta-data`,
`energytta-eval`, `energytta-export`.

Each entry point hands its arguments to the module that parses and does the work, through
`energytta.errors.run_cli`: bad input becomes one `error: ...` line and exit code 2,
Ctrl-C `interrupted` and exit code 130, never a traceback. The modules are imported only
when their command runs, so one command's heavy imports never slow another down.
"""
from __future__ import annotations

from energytta.errors import run_cli


def data_main(argv: list[str] | None = None) -> int:
    """`energytta-data synth | check | cache`; argv None reads sys.argv."""
    from energytta.data.cli import main
    return run_cli(main, argv)


def train_main(argv: list[str] | None = None) -> int:
    """`energytta-train --config C [--resume] [key=value ...]`."""
    from energytta.train.cli import main
    return run_cli(main, argv)


def sample_main(argv: list[str] | None = None) -> int:
    """`energytta-sample (--prompt TEXT ... | --prompts FILE|-) [--ckpt P] ...`."""
    from energytta.sample_cli import main
    return run_cli(main, argv)


def eval_main(argv: list[str] | None = None) -> int:
    """`energytta-eval --generated DIR --reference MANIFEST ...` or `... train-classifier`."""
    from energytta.eval.cli import main
    return run_cli(main, argv)


def export_main(argv: list[str] | None = None) -> int:
    """`energytta-export SRC --out FILE [--half] [sample.key=value ...]`."""
    from energytta.export import main
    return run_cli(main, argv)
