"""research.call_paths: the package files one training step and one generation pass through."""
from __future__ import annotations

import numpy as np
import pytest

from energytta.masking import cosine_num_masked


def test_trace_counts_package_files_and_functions_only(research_command):
    trace = research_command("call_paths").module.trace
    files, funcs = trace(lambda: cosine_num_masked(0, 4, 16))
    assert files == {"energytta/masking.py"}
    assert funcs == {"energytta/masking.py:cosine_num_masked"}
    assert trace(lambda: np.zeros(3).sum()) == (set(), set())  # numpy is not the package


@pytest.mark.slow
def test_the_command_counts_every_path(research_command, capsys):
    assert research_command("call_paths").main(["--files"]) == 0
    out = capsys.readouterr().out
    table, lists = out[out.index("| path |"):].split("\n\n", 1)
    rows = [line.split("|") for line in table.splitlines()[2:]]
    assert [r[1].strip().split(",")[0] for r in rows] == ["training step"] * 2 + ["generation"] * 2
    assert all(int(r[2]) > 5 and int(r[3]) > int(r[2]) for r in rows)
    student_generation = lists.split("generation, student")[1].split("\n\n")[0]
    assert "energytta/models/energy_head.py" in student_generation
    assert "teachers/" not in student_generation  # a student never runs diffusion code
