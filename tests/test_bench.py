"""tools/bench.py (energytta.bench) keeps working: tiny config, one batch size, every
generator."""
from __future__ import annotations

import json

import pytest

from energytta import bench


def test_bench_tiny_writes_rows(tmp_path, tiny_text_dir):
    out = tmp_path / "bench.json"
    rows = bench.run([
        "--config", "tiny", "--batch-sizes", "2", "--iterations", "3", "--duration", "1",
        "--warmup", "0", "--repeats", "1", "--json", str(out),
        "--markdown", str(tmp_path / "b.md"), f"text.model={tiny_text_dir}"])
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["generator"] for r in lines] == ["student", "guided", "teacher", "captiononly",
                                               "floor"]
    by = {r["generator"]: r for r in rows}
    for r in lines:
        assert r["batch_size"] == 2 and r["total_s"] > 0 and r["torch"] and r["device"] == "cpu"
        assert set(r["stages_s"]) >= {"text", "backbone", "latent_decode", "vocoder"}
        assert r["audio_seconds"] == pytest.approx(2.0)
    assert by["floor"]["x_floor"] == pytest.approx(1.0)
    table = (tmp_path / "b.md").read_text().splitlines()
    assert table[0].startswith("`python tools/bench.py --config tiny")
    assert sum(line.startswith("| student | 2 |") for line in table) == 1
    assert by["floor"]["stages_s"]["head"] < by["teacher"]["stages_s"]["head"]
    assert by["teacher"]["head_steps"] == 4 and by["student"]["head_steps"] == 1
    # the caption-only student decodes in one pass, not --iterations, and has no floor ratio
    assert by["captiononly"]["decode_iterations"] == 1 and by["captiononly"]["x_floor"] is None
    assert by["captiononly"]["stages_s"]["backbone"] < by["student"]["stages_s"]["backbone"]
    # the guided student runs one backbone row per clip; the floor (the student's) two
    assert by["guided"]["one_pass_cfg"] and not by["student"]["one_pass_cfg"]
    assert by["guided"]["x_floor"] is None and by["student"]["x_floor"] is not None


def test_bench_bad_batch_sizes_is_one_line(capsys):
    assert bench.main(["--batch-sizes", "one,two"]) == 2
    assert capsys.readouterr().err.startswith("error: --batch-sizes")


@pytest.mark.parametrize("argv", [["--batch-sizes", ""], ["--batch-sizes", ","],
                                  ["--batch-sizes", "0"], ["--batch-sizes", "1,-1"],
                                  ["--duration", "nan"], ["--duration", "inf"],
                                  ["--duration", "0"], ["--iterations", "0"]])
def test_bench_bad_sizes_and_durations_are_one_line_before_any_work(argv, capsys, tmp_path):
    out = tmp_path / "b.json"
    assert bench.main(["--config", "tiny", "--json", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {argv[0]}"), err
    assert not out.exists()  # no empty table written with exit 0


def test_gpu_bench_script_runs_its_plan_on_cpu(tmp_path, tiny_text_dir):
    """scripts/gpu_bench.sh, prepared for a GPU, in its CPU smoke-test settings."""
    import os
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "CONFIG": "tiny", "DEVICE": "cpu", "DTYPE": "fp32", "BATCHES": "2",
           "KS": "2 1", "COMPILE": "0", "DURATION": "1", "REPEATS": "1",
           "OMP_NUM_THREADS": "1", "EXTRA": f"--warmup 0 text.model={tiny_text_dir}"}
    out = tmp_path / "bench"
    proc = subprocess.run(["bash", str(repo / "scripts" / "gpu_bench.sh"), str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "bench.jsonl").read_text().splitlines()]
    assert sorted({(r["iterations"], r["generator"]) for r in rows}) == sorted(
        (k, g) for k in (1, 2) for g in ("student", "guided", "teacher", "captiononly",
                                         "floor"))
    assert (out / "bench-k2-compile0.md").is_file() and (out / "env.txt").is_file()
