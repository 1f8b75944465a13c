"""research.throughput: each arm trains on a CPU-time budget in its own process and the page
compares them (a toy run on the tiny config)."""
from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_the_study_runs_arms_and_writes_their_curves(tiny_text_dir, corpus, tmp_path,
                                                     research_command):
    manifest = corpus / "test.jsonl"
    out, js = tmp_path / "t.md", tmp_path / "t.json"
    argv = ["--config", "tiny", "--arms", "base,pca64", "--cpu-minutes", "0.03",
            "--eval-every", "1", "--val-batches", "1", "--jobs", "2",
            "--train", str(manifest), "--val", str(manifest), "--pca-train", str(manifest),
            "--work", str(tmp_path / "work"), "--out", str(out), "--json", str(js),
            "--set", f"text.model={tiny_text_dir}", "--set", "data.batch_size=4",
            "--set", "codec.pca_dim=16", "--set", "train.sample_prompts=[]"]
    assert research_command("throughput").main(argv) == 0
    records = {r["arm"]: r for r in json.loads(js.read_text())}
    assert set(records) == {"base", "pca64"}
    for r in records.values():
        assert r["steps"] >= 1 and r["seconds"] >= 1.8  # ran to its CPU budget
        assert [p["step"] for p in r["curve"]][0] == 0 and len(r["curve"]) >= 2
        assert all(p["x0_mel"] > 0 for p in r["curve"])
    assert records["base"]["truncation_floor"] == 0.0 < records["pca64"]["truncation_floor"]
    page = out.read_text()
    assert "| base |" in page and "| pca64 |" in page and "python -m research.throughput" in page
    # a finished arm is a cache: a rerun reads it instead of training again
    before = (tmp_path / "work" / "base.json").stat().st_mtime_ns
    assert research_command("throughput").main(argv) == 0
    assert (tmp_path / "work" / "base.json").stat().st_mtime_ns == before


@pytest.mark.slow
def test_the_student_study_scores_each_arm_with_the_generation_check(
        tiny_text_dir, tiny_ckpts, corpus, tmp_path, research_command):
    manifest = corpus / "test.jsonl"
    out, js = tmp_path / "s.md", tmp_path / "s.json"
    argv = ["--study", "student", "--config", "tiny", "--arms", "freeze,joint_l100",
            "--cpu-minutes", "0.02", "--eval-every", "1", "--val-batches", "1", "--jobs", "2",
            "--generate", "3", "--train", str(manifest), "--val", str(manifest),
            "--work", str(tmp_path / "work"), "--out", str(out), "--json", str(js),
            "--set", f"text.model={tiny_text_dir}", "--set", "data.batch_size=4",
            "--set", "head.kind=energy", "--set", f"teacher.ckpt={tiny_ckpts['teacher']}",
            "--set", "train.sample_prompts=[]", "--set", "train.val_iterations=2",
            "--set", "sample.duration=1.0"]
    assert research_command("throughput").main(argv) == 0
    records = {r["arm"]: r for r in json.loads(js.read_text())}
    assert set(records) == {"freeze", "joint_l100"}
    for r in records.values():
        assert r["steps"] >= 1 and all(p["x0_mel"] is None for p in r["curve"])
        gen = r["generation"]
        assert {"gen_type", "gen_attributes", "gen_active", "real_active"} <= set(gen)
    assert records["joint_l100"]["overrides"] == ["distill.freeze_backbone=false",
                                                  "distill.weight=100"]
    page = out.read_text()
    assert "The student A/B" in page and "| joint_l100 |" in page and "Best at this budget" in page
