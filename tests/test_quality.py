"""research/quality.py end to end on tiny teacher/student checkpoints and a 12-clip corpus."""
from __future__ import annotations

import json
import shutil


def _args(tiny_ckpts, corpus, work, *extra):
    ref = str(corpus / "test.jsonl")
    return ["--teacher", str(tiny_ckpts["teacher"]), "--student", str(tiny_ckpts["student"]),
            "--reference", ref, "--real", ref, "--limit", "10", "--iterations", "1,2",
            "--batch-size", "5", "--work", str(work), *extra]


def test_rows_page_and_reuse(tiny_ckpts, corpus, tmp_path, research_command, capsys):
    tool = research_command("quality")
    work, page = tmp_path / "work", tmp_path / "quality.md"
    # K = 4 too: the tiny student's own iterations, at which the targets judge the default
    assert tool.main(_args(tiny_ckpts, corpus, work, "--out", str(page),
                           "--iterations", "1,2,4")) == 0
    row = json.loads((work / "student-k2.json").read_text())
    assert row["key"]["iterations"] == 2 and row["generation"]["clips"] == 10
    assert len(list((work / "teacher-k1").glob("*.wav"))) == 10
    assert row["attributes"]["all"]["type"]["n"] == 10
    text = page.read_text()
    for cells in ("| teacher | 2 |", "| teacher | 1 |", "| student | 2 |", "| real clips | – |",
                  "| real → mel → GL | – |"):
        assert cells in text
    # the vocoder's ceiling: real clips through mel -> Griffin-Lim, as long as generations,
    # and far closer to the test clips than an untrained tiny model's
    import soundfile as sf
    vocoded = json.loads((work / "real-vocoded.json").read_text())
    first = sorted((work / "real-vocoded").glob("*.wav"))
    assert len(first) == 10
    assert sf.info(first[0]).frames == sf.info(next((work / "student-k2").glob("*.wav"))).frames
    assert vocoded["metrics"]["mel-stats"]["fd"] < row["metrics"]["mel-stats"]["fd"]
    from energytta.checkpoint import DEFAULT_NAME
    # the default model is judged at its own iterations (the tiny config's 4)
    assert tool.module.default_iterations({DEFAULT_NAME: tiny_ckpts["student"]}) == 4
    assert f"- The default model ({DEFAULT_NAME}, K = 4): sound type " in text
    assert "- Active fraction (frames above −30 dBFS) " in text
    assert "Energy-score student" not in text  # needs teacher and student at K = 64
    assert 0.0 <= row["active"] <= 1.0 and 0.0 < vocoded["active"] <= 1.0
    assert "sampling defaults (teacher CFG " in text and "; student CFG " in text
    capsys.readouterr()
    # a second run reuses every row; another seed recomputes them
    assert tool.main(_args(tiny_ckpts, corpus, work, "--models", "student")) == 0
    assert capsys.readouterr().err.count("reusing") == 2
    assert tool.main(_args(tiny_ckpts, corpus, work, "--models", "student", "--iterations", "1",
                           "--seed", "5")) == 0
    assert "reusing" not in capsys.readouterr().err
    assert json.loads((work / "student-k1.json").read_text())["key"]["seed"] == 5
    # rows follow the checkpoint's content, not its path: a copy elsewhere reuses them
    copy = tmp_path / "elsewhere" / "student.safetensors"
    copy.parent.mkdir()
    shutil.copy(tiny_ckpts["student"], copy)
    moved = {**tiny_ckpts, "student": copy}
    assert tool.main(_args(moved, corpus, work, "--models", "student", "--iterations", "2")) == 0
    err = capsys.readouterr().err
    assert "reusing" in err and "generating" not in err


def test_targets_are_judged_from_the_k64_rows(tiny_ckpts, corpus, tmp_path):
    from research import quality_report as report

    def row(fd, acc):
        return {"metrics": {"synth-classifier": {"fd": fd}},
                "attributes": {"all": {"overall": {"accuracy": acc, "n": 10}}}}
    rows = {("teacher", 64): row(10.0, 0.80), ("student", 64): row(11.0, 0.78)}
    lines = report._targets(rows, None, "captiononly")
    assert lines[0] == "- (No row of the default model, captiononly, at its defaults.)"
    assert "2.0 points behind" in lines[-1] and "**met**" in lines[-1]
    rows[("student", 64)] = row(13.0, 0.70)
    assert "10.0 points behind" in report._targets(rows, None, "captiononly")[-1]
    assert "**not met**" in report._targets(rows, None, "captiononly")[-1]
    # the default model is judged at its own iterations, not at K = 64
    rows[("student", 32)] = row(12.0, 0.60)
    rows[("student", 32)]["attributes"]["all"]["type"] = {"accuracy": 0.9, "n": 10}
    first = report._targets(rows, None, "student", 32)[0]
    assert first == ("- The default model (student, K = 32): sound type 0.900 "
                     "(target ≥ 0.85) — **met**.")


def test_per_check_table_names_columns_like_the_main_table():
    from research import quality_report as report

    def row(acc):
        checks = {"type": {"accuracy": acc, "n": 4}}
        return {"attributes": {"all": checks, "seen": checks, "heldout": {}}}
    lines = report._per_attribute({("student", 64): row(0.5)}, row(1.0), row(0.75))
    assert lines[0].startswith("| check | student seen | student held-out | real clips seen |")
    assert "| real → mel → GL seen | real → mel → GL held-out |" in lines[0]
    assert lines[2] == "| type | 0.500 (4) | – | 1.000 (4) | – | 0.750 (4) | – |"


def test_a_trained_vocoder_gets_its_own_real_clips_row(tiny_ckpts, corpus, tmp_path,
                                                       research_command, capsys):
    from energytta.audio.vocoder import VOCODER_KEYS, save_part, trained_vocoder
    from energytta.config import load_config

    cfg = load_config("tiny", ["codec.vocoder_width=16", "codec.vocoder_depth=1",
                               "codec.vocoder_mag_prior=true"])
    voc = save_part(tmp_path / "voc.safetensors", trained_vocoder(cfg).state_dict(), cfg,
                    "vocoder", VOCODER_KEYS)
    tool = research_command("quality")
    work, page = tmp_path / "work", tmp_path / "q.md"
    assert tool.main(_args(tiny_ckpts, corpus, work, "--models", "student", "--iterations",
                           "1", "--vocoder", str(voc), "--out", str(page))) == 0
    text = page.read_text()
    assert "| real → mel → GL | – |" in text and "| real → mel → trained vocoder | – |" in text
    row = json.loads((work / "real-vocoded-trained.json").read_text())
    assert row["key"]["vocoder"] and row["vocode_s_per_clip"] > 0
    assert len(list((work / "real-vocoded-trained").glob("*.wav"))) == 10
    assert tool.main(_args(tiny_ckpts, corpus, work, "--models", "student", "--iterations",
                           "1", "--vocoder", str(tmp_path / "no.safetensors"), "--out",
                           str(page))) == 2  # a missing file is one line
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: ")


def test_errors(tiny_ckpts, corpus, tmp_path, research_command, capsys):
    tool = research_command("quality")
    assert tool.main(_args(tiny_ckpts, corpus, tmp_path, "--models", "teacher,oracle")) == 2
    assert "unknown" in capsys.readouterr().err
    assert tool.main(_args(tiny_ckpts, corpus, tmp_path, "--iterations", "8,x")) == 2
    assert tool.main(["--reference", str(tmp_path / "none.jsonl")]) == 2
    assert "energytta-data synth" in capsys.readouterr().err
    # a student checkpoint passed as the teacher is refused, not mislabelled
    args = _args(tiny_ckpts, corpus, tmp_path, "--models", "teacher")
    args[1] = str(tiny_ckpts["student"])
    assert tool.main(args) == 2
    assert "holds a student" in capsys.readouterr().err


def test_teacher_start_t_scan(tiny_ckpts, tiny_text_dir, tmp_path, research_command,
                              capsys):
    from energytta.cli import data_main
    from energytta.data import synth
    from research.teacher_start_t import scan

    synth.generate(tmp_path / "corpus", num=5, seconds=1.0, seed=0, workers=1, progress=False)
    cache = tmp_path / "cache"
    assert data_main(
        ["cache", "--manifest", str(tmp_path / "corpus" / "train.jsonl"), "--out", str(cache),
         "--config", "tiny", "--device", "cpu", f"text.model={tiny_text_dir}"]) == 0
    tool = research_command("teacher_start_t")
    rows = scan(str(tiny_ckpts["teacher"]), str(cache), 2, [999, 500], 0)
    assert [r["start"] for r in rows] == ["real", 999, 500]
    assert all(len(r["stats"]) == 2 and all(s > 0 for s in r["stats"]) for r in rows)
    assert tool.main([str(tiny_ckpts["teacher"]), "--data", str(cache), "--starts", "999"]) == 0
    assert "| 999 |" in capsys.readouterr().out
    assert tool.main([str(tiny_ckpts["student"]), "--data", str(cache)]) == 2
    assert "holds a student" in capsys.readouterr().err


def test_sampling_sweep_cells_table_and_reuse(tiny_ckpts, corpus, tmp_path, research_command,
                                              capsys):
    tool = research_command("sampling_sweep")
    work, page = tmp_path / "work", tmp_path / "sweep.md"
    args = [str(tiny_ckpts["student"]), "--reference", str(corpus / "test.jsonl"),
            "--limit", "10", "--iterations", "1", "--cfg", "1,3", "--temperature", "0.5",
            "--batch-size", "5", "--work", str(work), "--out", str(page)]
    assert tool.main(args) == 0
    cells = sorted(p.name for p in work.rglob("*.json"))
    assert cells == ["k1-cfg1-t0.5.json", "k1-cfg3-t0.5.json"]
    cell = json.loads(next(work.rglob("k1-cfg3-t0.5.json")).read_text())
    assert cell["generation"]["cfg"] == 3.0 and cell["generation"]["temperature"] == 0.5
    text = page.read_text()
    assert text.count("\n| ") == 3 and text.count("**best**") == 1 and "sample.cfg=" in text
    assert f"| {cell['active']:.3f} |" in text and "the real clips of these captions: 0." in text
    assert "standard error" in text and text.startswith("# Sampling defaults of the student")
    seconds = sum(json.loads(f.read_text())["seconds"] for f in work.rglob("*.json"))
    assert f"took {round(seconds)} s of generation and scoring" in text
    capsys.readouterr()
    assert tool.main(args) == 0  # every cell reused: nothing generated
    assert "generating" not in capsys.readouterr().err
    assert tool.main(args[:1] + ["--cfg", "1,x", "--reference", str(corpus / "test.jsonl")]) == 2
    assert "--cfg" in capsys.readouterr().err


def test_the_sweeps_best_cell_is_the_lowest_fd_among_those_tied_on_accuracy():
    from research.sampling_sweep import _best

    def cell(acc: float, fd: float) -> dict:  # 400 checks: a standard error of about 0.023
        return {"attributes": {"all": {"overall": {"accuracy": acc, "n": 400}}},
                "metrics": {"synth-classifier": {"fd": fd}}}

    cells = {(3, 0.5): cell(0.70, 100.0), (3, 0.8): cell(0.69, 80.0), (5, 1): cell(0.60, 50.0)}
    assert _best(cells) == (3, 0.8)  # within noise of the top, and nearer the real clips
    cells[(3, 0.8)] = cell(0.65, 80.0)  # two standard errors down: no longer a tie
    assert _best(cells) == (3, 0.5)


def _row(acc: dict, active: float, seen: float = 0.8, held: float = 0.7) -> dict:
    res = {n: {"accuracy": a, "n": 10} for n, a in acc.items()}
    return {"attributes": {"all": {**res, "overall": {"accuracy": 0.8, "n": 60}},
                           "seen": {"overall": {"accuracy": seen, "n": 40}},
                           "heldout": {"overall": {"accuracy": held, "n": 20}}},
            "active": active}


def test_targets_name_each_check_and_activity():
    from research.quality_report import _targets

    good = _row({"type": 0.9, "loudness": 0.8, "pitch": 0.9, "count": 0.6}, active=0.40)
    real = {"active": 0.42}
    lines = "\n".join(_targets({("captiononly", 1): good}, real, "captiononly"))
    assert "sound type 0.900 (target ≥ 0.85) — **met**" in lines
    assert "counts ≥ 0.5 — **met**." in lines
    assert "0.95× (target within 25 %) — **met**" in lines
    assert "10.0 points (target ≤ 8) — **not met**" in lines
    bad = _row({"type": 0.5, "loudness": 0.7, "count": 0.2}, active=0.1, seen=0.8, held=0.75)
    lines = "\n".join(_targets({("captiononly", 1): bad}, real, "captiononly"))
    assert "(below: loudness 0.700, count 0.200)" in lines
    assert "0.24× (target within 25 %) — **not met**" in lines
    assert "5.0 points (target ≤ 8) — **met**" in lines


def test_val_curves_plot_and_tabulate_the_validation_rows(tmp_path, capsys):
    """research.val_curves reads only the `val` rows of each run, in step order, and says
    in one line when a run has none."""
    import json

    import pytest

    from energytta.errors import UserError
    from research import val_curves

    run = tmp_path / "run_a"
    run.mkdir()
    rows = [{"step": 20, "stage": "val", "val/gen_type": 0.5, "val/loss": 0.2},
            {"step": 5, "loss": 3.0},
            {"step": 10, "stage": "val", "val/gen_type": 0.25, "val/gen_attributes": 0.4,
             "val/gen_count": 0.1, "val/loss": 0.3}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "curves.png"
    assert val_curves.main([str(run), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out.splitlines()
    assert printed[2].startswith("| run_a | 10 | 0.250 | 0.400 | 0.100 | 0.300 |")
    assert printed[3].startswith("| run_a | 20 | 0.500 | – | – | 0.200 |")
    (run / "metrics.jsonl").write_text(json.dumps(rows[1]) + "\n")
    with pytest.raises(UserError, match="no validation rows"):
        val_curves.main([str(run), "--out", str(out)])
