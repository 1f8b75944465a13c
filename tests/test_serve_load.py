"""research.serve_load end to end at a toy size: real server processes on 127.0.0.1,
the batched and unbatched arms, overload and memory measured, the page written with its
command on top (the teacher arm is the same code with another --ckpt: skipped here to
save a server start)."""
from __future__ import annotations

import re

import pytest


@pytest.mark.slow
def test_load_script_measures_every_arm_and_writes_the_page(tiny_ckpts, tmp_path,
                                                            research_command):
    out = tmp_path / "serving.md"
    argv = ["--out", str(out), "--ckpt", str(tiny_ckpts["student"]), "--teacher", "",
            "--concurrency", "1,3", "--duration", "0.6",
            "--level-requests", "6", "--requests", "8",
            "--memory-duration", "0.6", "--memory-concurrency", "2", "--max-batch", "2",
            "--queue-size", "1", "--overload-rounds", "1", "--window-ms", "50",
            "--deadline", "60"]
    assert research_command("serve_load").main(argv) == 0
    text = out.read_text()
    assert "python -m research.serve_load --out" in text.splitlines()[3]
    assert "| batched |" in text and "| unbatched |" in text and "| teacher" not in text
    rows = re.findall(r"^\| \| (\d+) \| ([\d.]+) \|.*\| ([\d.]+) \| (\d+) / (\d+) \|$",
                      text, re.M)
    assert len(rows) == 4 and all(float(r[1]) > 0 and r[4] == "0" for r in rows)
    assert all(float(r[2]) == 1.0 for r in rows[2:])  # unbatched: one clip per call
    overload = re.search(r"\*\*(\d+) answered 200, (\d+) answered 503\*\*.*?, (\d+) lost", text)
    assert overload and int(overload[1]) + int(overload[2]) == 6 and overload[3] == "0"
    assert "every answer within it" in text
    assert re.search(r"^\| 8 \| \d+ \|$", text, re.M)  # the memory table reached the end


def test_bad_arguments_are_one_line(tmp_path, capsys, research_command):
    argv = ["--out", str(tmp_path / "x.md"), "--concurrency", "0"]
    assert research_command("serve_load").main(argv) == 2
    assert capsys.readouterr().err.count("\n") == 1
