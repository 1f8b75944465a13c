"""research/speed_quality.py end to end on tiny checkpoints: quality and bench rows of the same
settings in one table, the guided student timed in one pass, reuse, targets, bad input."""
from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(scope="module")
def guided(tmp_path_factory, tiny_text_dir):
    """A tiny guidance-distilled student (random GuidanceHead so it is not a no-op)."""
    from energytta.audio.codec import build_codec
    from energytta.checkpoint import save_inference
    from energytta.config import load_config
    from energytta.models.tta import TTAModel

    cfg = load_config("tiny", [f"text.model={tiny_text_dir}", "head.kind=energy",
                               "model.guidance_embed=true"])
    torch.manual_seed(0)
    model = TTAModel(cfg, 32)
    for p in [*model.head.parameters(), *model.backbone.guidance_proj.parameters()]:
        torch.nn.init.normal_(p, std=0.05)
    folder = tmp_path_factory.mktemp("guided")
    return save_inference(folder / "guided.safetensors", model, build_codec(cfg), cfg, "student")


@pytest.fixture(scope="module")
def vocoder(tmp_path_factory):
    """A tiny trained-vocoder file (random weights, magnitude prior) for the tiny models."""
    from energytta.audio.vocoder import VOCODER_KEYS, save_part, trained_vocoder
    from energytta.config import load_config

    cfg = load_config("tiny", ["codec.vocoder_width=16", "codec.vocoder_depth=1",
                               "codec.vocoder_mag_prior=true"])
    folder = tmp_path_factory.mktemp("voc")
    return save_part(folder / "voc.safetensors", trained_vocoder(cfg).state_dict(), cfg,
                     "vocoder", VOCODER_KEYS)


def _args(tiny_ckpts, guided, corpus, work, *extra, vocoder=None):
    settings = "teacher:2,student:2,guided:2" + (",guided:2:trained" if vocoder else "")
    return ["--teacher", str(tiny_ckpts["teacher"]), "--student", str(tiny_ckpts["student"]),
            "--guided", str(guided), "--reference", str(corpus / "test.jsonl"), "--limit", "10",
            "--settings", settings, "--batch-sizes", "1,6", "--duration", "1", "--work",
            str(work), *(["--vocoder", str(vocoder)] if vocoder else []), *extra]


def test_one_table_of_speed_and_quality_and_reuse(tiny_ckpts, guided, vocoder, corpus,
                                                  tmp_path, research_command, capsys):
    tool = research_command("speed_quality")
    work, page = tmp_path / "work", tmp_path / "sq.md"
    assert tool.main(_args(tiny_ckpts, guided, corpus, work, "--out", str(page),
                           vocoder=vocoder)) == 0
    text = page.read_text()
    for cells in ("| teacher (diffusion head, 100 steps) | 2 | 2×B |", "| student | 2 | 2×B |",
                  "| guided student | 2 | 1×B |", "| guided student + trained vocoder | 2 |",
                  "s / batch 6", "× teacher @6", "## Targets (CPU, batch 6)",
                  "its own floor at batch 6", "- Trained vocoder vs Griffin-Lim (guided"):
        assert cells in text, cells
    voc = json.loads((work / "bench-guided-k2-voc.json").read_text())["rows"]
    assert {r["vocoder"] for r in voc} == {"voc.safetensors"}
    assert json.loads((work / "guided-k2-voc.json").read_text())["generation"]["vocoder"] \
        == "voc.safetensors"
    assert "python -m research.speed_quality --teacher" in text and "--bench-script" not in text
    bench = json.loads((work / "bench-guided-k2.json").read_text())
    rows = bench["rows"]
    assert {(r["generator"], r["batch_size"]) for r in rows} == {
        ("guided", 1), ("guided", 6), ("floor", 1), ("floor", 6)}
    assert all(r["one_pass_cfg"] and r["x_floor"] for r in rows)  # its own one-pass floor
    student = json.loads((work / "bench-student-k2.json").read_text())["rows"]
    assert not any(r["one_pass_cfg"] for r in student if r["generator"] == "student")
    recs = json.loads((work / "speed_quality.json").read_text())
    assert recs[0]["model"] == "teacher" and recs[0]["x_teacher"]["6"] == pytest.approx(1.0)
    assert all(r["vocoder"] == "griffin-lim" for r in rows)
    q = json.loads((work / "guided-k2.json").read_text())  # the quality row of the setting
    assert q["generation"]["one_pass_cfg"] and recs[2]["attributes"] == pytest.approx(
        q["attributes"]["all"]["overall"]["accuracy"])
    capsys.readouterr()
    assert tool.main(_args(tiny_ckpts, guided, corpus, work, vocoder=vocoder)) == 0  # reused
    err = capsys.readouterr().err
    assert err.count("reusing") == 8 and "generating" not in err


def test_targets_read_the_rows():
    from research.speed_quality import targets

    def rec(model, acc, total, floor):
        return {"model": model, "k": 8, "attributes": acc, "total": {32: total},
                "floor": {32: floor}, "x_teacher": {32: 100.0 / total},
                "stages": {32: {"backbone": 2.0, "head": total - floor}},
                "floor_stages": {32: {"backbone": 2.0, "head": 0.0}}}
    lines = targets([rec("teacher", 0.5, 100.0, 90.0), rec("guided", 0.48, 8.0, 7.5),
                     rec("student", 0.40, 5.0, 4.0)], [1, 32])
    assert "guided student at K = 8 (0.480), 12.5× faster" in lines[0]
    assert lines[0].endswith("**met**.")  # the student is faster but 10 points behind
    assert "1.067× its own floor" in lines[1] and "**met**" in lines[1]
    assert "head 0.50 s of 8.00 s; the decoding loop alone 1.25× its floor's" in lines[1]
    assert "1.250× its own floor" in lines[2] and "**not met**" in lines[2]


@pytest.mark.parametrize("bad", [["--settings", "teacher:0"], ["--settings", "vae:4"],
                                 ["--settings", "captiononly:8"], ["--batch-sizes", "a"],
                                 ["--settings", "guided:8:hifigan"],
                                 ["--settings", "guided:8:trained", "--vocoder", "no.st"],
                                 ["--reference", "nope.jsonl"]])
def test_bad_input_is_one_line(bad, tiny_ckpts, guided, corpus, tmp_path, research_command,
                               capsys):
    tool = research_command("speed_quality")
    assert tool.main(_args(tiny_ckpts, guided, corpus, tmp_path / "w") + bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err


def test_settings_name_a_renderer_and_pair_trained_with_griffin_lim():
    """A setting renders with its checkpoint's default, the --vocoder file (:trained) or
    Griffin-Lim (:gl); the trained-vs-Griffin-Lim target pairs a :gl row with a plain row
    only when the plain row's checkpoint renders with a trained vocoder, and a :trained row
    only with a plain Griffin-Lim twin."""
    from research.speed_quality import parse_settings, vocoder_pairs

    assert parse_settings("student:32,student:32:gl,guided:8:trained") == [
        ("student", 32, ""), ("student", 32, "gl"), ("guided", 8, "trained")]

    def rec(model, variant, renderer):
        return {"model": model, "k": 8, "variant": variant, "renderer": renderer}
    plain_trained, gl = rec("student", "", "vocoder.safetensors"), rec("student", "gl",
                                                                       "griffin-lim")
    plain_gl, trained = rec("guided", "", "griffin-lim"), rec("guided", "trained", "v.st")
    pairs = vocoder_pairs([plain_trained, gl, plain_gl, trained])
    assert pairs == [(plain_trained, gl), (trained, plain_gl)]
    assert vocoder_pairs([rec("student", "", "griffin-lim"), gl]) == []
