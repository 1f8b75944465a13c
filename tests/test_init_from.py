"""`train.init_from`: a fresh run starts from a model file's weights (fresh optimizer and
schedule), and a file that cannot seed the run is one line naming what differs."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import energytta.train.loop as loop
from energytta.checkpoint import load_model
from energytta.cli import train_main
from energytta.config import load_config
from energytta.train.logging import read_metrics


def _args(text_dir: Path, tones: Path, out: Path, *extra: str) -> list[str]:
    return [f"text.model={text_dir}", f"data.train={tones}", f"data.val={tones}",
            f"train.out_dir={out}", "train.log_every=1", "train.sample_prompts=[]",
            "data.batch_size=2", *extra]


@pytest.fixture(scope="module")
def teacher_run(tiny_text_dir, tones, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("init") / "teacher"
    loop.train(load_config("tiny", _args(tiny_text_dir, tones, out, "train.steps=3")))
    return out


@pytest.mark.slow
def test_a_run_starts_from_the_files_weights_with_a_fresh_schedule(
        tiny_text_dir, tones, teacher_run, tmp_path):
    out = tmp_path / "finetune"
    cfg = load_config("tiny", _args(tiny_text_dir, tones, out, "train.steps=1",
                                    f"train.init_from={teacher_run / 'model.safetensors'}",
                                    "train.seed=5"))
    model = loop.Trainer(cfg, resume=False).model
    _, _, src, src_codec = load_model(teacher_run / "model.safetensors")
    trained = src.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    # a different seed would fit the same statistics here, but they must be the file's
    cfg2 = load_config("tiny", _args(tiny_text_dir, tones, tmp_path / "ft2", "train.steps=2",
                                     f"train.init_from={teacher_run}", "train.lr=1e-3",
                                     "train.warmup_steps=2"))
    loop.train(cfg2)
    rows = read_metrics(tmp_path / "ft2" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["lr"] == pytest.approx(5e-4)  # the new run's own warm-up, from step 0
    _, _, _, codec = load_model(tmp_path / "ft2" / "model.safetensors")
    assert all(torch.equal(v, src_codec.state_dict()[k]) for k, v in codec.state_dict().items())


@pytest.mark.slow
@pytest.mark.parametrize("extra, message", [
    (["train.init_from={missing}"], "train.init_from=.*no such file"),
    (["train.init_from={teacher}", "head.kind=energy", "teacher.ckpt={teacher}"],
     "a teacher, but this run trains a student"),
    (["train.init_from={teacher}", "model.width=48"], r"model.width=48 \(the file has 32\)"),
    (["train.init_from={teacher}", "audio.n_mels=32"], r"audio.n_mels=32 \(the file has 64\)"),
])
def test_a_file_that_cannot_seed_the_run_is_one_line(tiny_text_dir, tones, teacher_run,
                                                     tmp_path, capsys, extra, message):
    teacher = teacher_run / "model.safetensors"
    extra = [e.format(teacher=teacher, missing=tmp_path / "nope.safetensors") for e in extra]
    rc = train_main(["--config", "tiny",
                     *_args(tiny_text_dir, tones, tmp_path / "run", "train.steps=1", *extra)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1, err
    assert __import__("re").search(message, err[0]), err[0]
