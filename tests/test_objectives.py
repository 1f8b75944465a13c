"""Objectives of the one training loop: selection, and the synth-classifier objective."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf
import torch
from torch import nn

from energytta.config import load_config
from energytta.errors import UserError
from energytta.train.logging import read_metrics
from energytta.train.objectives import objective_name
from energytta.train.objectives.base import Objective

TINY_CLASSIFIER = ["classifier.channels=[8,8]", "classifier.features=16", "train.steps=4",
                   "data.batch_size=4", "audio.crop_seconds=2.0", "train.val_every=2",
                   "train.val_batches=2", "train.warmup_steps=1", "train.log_every=1"]


@pytest.mark.parametrize("overrides,name", [
    ([], "teacher"), (["head.kind=energy"], "student"), (["codec.train=vae"], "vae"),
    (["codec.train=vocoder"], "vocoder"), (["train.objective=classifier"], "classifier"),
    (["train.objective=vae", "codec.train=vae"], "vae")])
def test_the_config_names_its_objective(overrides, name):
    assert objective_name(load_config("tiny", overrides)) == name


@pytest.mark.parametrize("overrides,words", [
    (["codec.train=gan"], "codec.train"),
    (["train.objective=student", "codec.train=vocoder"], "train.objective=student")])
def test_contradictory_objectives_are_one_line_errors(overrides, words):
    with pytest.raises(UserError, match=words) as e:
        objective_name(load_config("tiny", overrides))
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_the_classifier_trains_in_the_loop_and_exports_its_accuracy(corpus, tmp_path):
    from energytta.eval.classifier import LABELS, load_classifier
    from energytta.eval.train_classifier import main

    manifest = corpus / "test.jsonl"  # 12 synth clips with attributes (conftest)
    out = tmp_path / "shipped.safetensors"
    rc = main(["--train", str(manifest), "--val", str(manifest), "--out", str(out),
               *TINY_CLASSIFIER, f"train.out_dir={tmp_path / 'run'}"])
    assert rc == 0
    model, meta = load_classifier(out)
    assert set(meta["val_accuracy"]) == set(LABELS) and meta["config"]["features"] == 16
    val = read_metrics(tmp_path / "run" / "metrics.jsonl", stage="val")
    assert [r["step"] for r in val] == [2, 4]
    assert val[-1]["val/acc_type"] == pytest.approx(meta["val_accuracy"]["type"])
    train_rows = read_metrics(tmp_path / "run" / "metrics.jsonl", stage="train")
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    # resuming the finished run validates nothing new; the export keeps the accuracy
    assert main(["--train", str(manifest), "--val", str(manifest), "--out", str(out),
                 "--resume", *TINY_CLASSIFIER, f"train.out_dir={tmp_path / 'run'}"]) == 0
    assert load_classifier(out)[1]["val_accuracy"] == meta["val_accuracy"]


def test_the_classifier_refuses_a_manifest_without_attributes(tmp_path, capsys):
    from energytta.cli import train_main

    manifest = tmp_path / "plain.jsonl"
    manifest.write_text(json.dumps({"audio": "a.wav", "caption": "a beep"}) + "\n")
    rc = train_main(["--config", "synth_classifier", f"data.train={manifest}",
                     f"data.val={manifest}", f"train.out_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "attributes" in err
    assert not Path(tmp_path / "run" / "step-0000001").exists()


class LoudnessObjective(Objective):
    """A toy objective: a linear map learns each clip's RMS from its first samples."""

    kind = "loudness"

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @classmethod
    def build(cls, cfg, ctx):
        return cls(nn.Linear(16, 1).to(ctx.device))

    def inputs(self, batch):
        return {"wav": batch["wav"]}

    def __call__(self, model, wav, generator):
        rms = wav.square().mean(dim=1, keepdim=True).sqrt()
        loss = (model(wav[:, :16].abs()) - rms).square().mean()
        return loss, {"rms": float(rms.mean())}

    def export(self, model, out):
        path = out / "loudness.pt.json"
        path.write_text(json.dumps(model.weight.detach().flatten().tolist()))
        return path


def test_a_new_objective_plugs_into_the_loop(tmp_path, monkeypatch):
    import energytta.train.objectives as objectives
    from energytta.checkpoint import latest_checkpoint, load_training_state
    from energytta.train.loop import train

    monkeypatch.setattr(objectives, "OBJECTIVES", dict(objectives.OBJECTIVES))
    objectives.register_objective("loudness", LoudnessObjective)
    corpus = tmp_path / "corpus.jsonl"
    for i in range(4):
        sf.write(tmp_path / f"{i}.wav", 0.1 * (i + 1) * torch.ones(16000).numpy(), 16000)
    corpus.write_text("".join(json.dumps({"audio": f"{i}.wav", "caption": "a"}) + "\n"
                              for i in range(4)))
    cfg = load_config("tiny", ["train.objective=loudness", f"data.train={corpus}",
                               f"data.val={corpus}", f"train.out_dir={tmp_path / 'run'}",
                               "train.steps=3", "train.ckpt_every=2", "data.batch_size=2",
                               "train.val_every=2", "train.log_every=1"])
    model = train(cfg)
    assert isinstance(model, nn.Linear) and (tmp_path / "run" / "loudness.pt.json").is_file()
    state = load_training_state(latest_checkpoint(tmp_path / "run"))
    assert state["state"]["kind"] == "loudness" and "ema" not in state
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert {"rms", "loss"} <= set(rows[0]) and [r["step"] for r in rows if "stage" in r] == [2, 3]
