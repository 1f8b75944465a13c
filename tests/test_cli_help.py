"""Every installed command's --help: each option shows its default, the help answers
without importing torch, and subcommands name themselves."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from energytta.data.cli import _parser as data_parser
from energytta.eval.cli import build_parser as eval_parser
from energytta.eval.train_classifier import build_parser as classifier_parser
from energytta.export import build_parser as export_parser
from energytta.serve.cli import build_parser as serve_parser
from energytta.sample_cli import build_parser as sample_parser
from energytta.train.cli import build_parser as train_parser


def _parsers() -> list[argparse.ArgumentParser]:
    data = data_parser()
    subs = next(a for a in data._actions if isinstance(a, argparse._SubParsersAction))
    return [sample_parser(), train_parser(), eval_parser(), classifier_parser(),
            export_parser(), serve_parser(), data, *subs.choices.values()]


@pytest.mark.parametrize("parser", _parsers(), ids=lambda p: p.prog)
def test_every_option_shows_its_default(parser):
    formatter = parser._get_formatter()
    for action in parser._actions:
        if (not action.option_strings or action.nargs == 0 or action.required
                or isinstance(action, argparse._HelpAction)):
            continue  # flags, required options and positionals have no default to show
        assert action.help, f"{parser.prog} {action.option_strings[0]} has no help"
        shown = formatter._expand_help(action)
        assert "default" in shown.lower(), f"{parser.prog} {action.option_strings[0]}: {shown}"


HELP_SCRIPT = """
import contextlib, io, sys
from energytta import cli
calls = [(cli.sample_main, []), (cli.train_main, []), (cli.data_main, ["synth"]),
         (cli.data_main, ["check"]), (cli.data_main, ["cache"]), (cli.eval_main, []),
         (cli.eval_main, ["train-classifier"]), (cli.export_main, [])]
for main, argv in calls:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main(argv + ["--help"])
    print(out.getvalue().splitlines()[0])
print("torch loaded:", "torch" in sys.modules)
"""


def test_help_never_imports_torch_and_names_each_command():
    # a fresh interpreter: this one has torch loaded already
    done = subprocess.run([sys.executable, "-c", HELP_SCRIPT], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "torch loaded: False", done.stdout
    usage = [line.split()[1:3] for line in lines[:-1]]
    assert usage[0][0] == "energytta-sample" and usage[1][0] == "energytta-train"
    assert usage[2] == ["energytta-data", "synth"]
    assert usage[6] == ["energytta-eval", "train-classifier"]
    assert usage[7][0] == "energytta-export"


def test_the_server_serves_the_package_default_model():
    from energytta.checkpoint import DEFAULT_NAME
    from energytta.serve.options import ServeOptions

    assert ServeOptions().ckpt == DEFAULT_NAME
