"""Training under faults and bad input: SIGTERM saves, a non-finite loss is one line, the
model is written before any sample, the log row spanning a checkpoint survives a resume,
caption-only runs from a JSONL of captions, and what is bit-for-bit reproducible."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import energytta.train.loop as loop
from energytta.checkpoint import latest_checkpoint
from energytta.cli import train_main
from energytta.config import load_config
from energytta.errors import UserError
from energytta.train.logging import read_metrics
from energytta.train.objectives.tokens import TokenObjective

REPO = Path(__file__).resolve().parent.parent


def _overrides(text_dir: Path, manifest: Path, out: Path, *extra: str) -> list[str]:
    return [f"text.model={text_dir}", f"data.train={manifest}", f"train.out_dir={out}",
            "train.log_every=1", "train.sample_prompts=[]", "data.batch_size=2", *extra]


def _cfg(text_dir, manifest, out, *extra):
    return load_config("tiny", _overrides(text_dir, manifest, out, *extra))


def _train_rows(out: Path) -> list[dict]:
    return read_metrics(out / "metrics.jsonl", stage="train")


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_like_ctrl_c(tiny_text_dir, tones, tmp_path):
    out = tmp_path / "run"
    extra = ("train.steps=100000", "train.ckpt_every=0")
    args = ["--config", "tiny", *_overrides(tiny_text_dir, tones, out, *extra)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "energytta.train.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while len(_train_rows(out)) < 2 and proc.poll() is None:
            assert time.monotonic() < deadline, "training never started"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "stopped by signal 15"
    saved = latest_checkpoint(out)
    assert saved is not None, "SIGTERM lost the work: no checkpoint"
    step = json.loads((saved / "state.json").read_text())["step"]
    assert step >= 2 and step == _train_rows(out)[-1]["step"]  # saved where it stopped


def test_a_prompt_matplotlib_would_parse_is_a_plain_title(tmp_path):
    from energytta.audio.plot import save_spectrogram_png

    path = tmp_path / "x.png"
    save_spectrogram_png(np.zeros((8, 20), np.float32), path, title=r"a $\foo$ x")  # mathtext
    assert path.stat().st_size > 0


@pytest.mark.slow
def test_the_model_is_written_before_any_sample(tiny_text_dir, tones, tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = _cfg(tiny_text_dir, tones, out, "train.steps=2", r"train.sample_prompts=[a $\foo$ x]",
               "sample.iterations=2", "head.sampling_steps=2")
    loop.train(cfg)  # the prompt is drawn as plain text
    assert (out / "model.safetensors").is_file() and (out / "samples" / "step-0000002"
                                                      / "00.png").is_file()

    def broken(self, model, folder):
        raise RuntimeError("a sample that fails")

    monkeypatch.setattr(TokenObjective, "generate", broken)
    out2 = tmp_path / "run2"
    with pytest.raises(RuntimeError, match="a sample that fails"):
        loop.train(_cfg(tiny_text_dir, tones, out2, "train.steps=2"))
    assert (out2 / "model.safetensors").is_file()  # a failing sample loses no model


def test_a_diverging_run_is_one_line_naming_the_knobs(tiny_text_dir, tones, tmp_path, capsys):
    out = tmp_path / "run"
    extra = ("train.steps=6", "train.lr=1e30", "train.warmup_steps=0")
    args = ["--config", "tiny", *_overrides(tiny_text_dir, tones, out, *extra)]
    assert train_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: training diverged: the loss is nan")
    assert "train.lr=1e+30" in err[0] and "train.grad_clip" in err[0]


def test_a_failed_start_leaves_no_config_behind(tiny_text_dir, tones, tmp_path):
    missing = f"data.val={tmp_path / 'missing.jsonl'}"
    out = tmp_path / "new"
    with pytest.raises(UserError, match="data.val"):
        loop.train(_cfg(tiny_text_dir, tones, out, "train.val_every=2", missing))
    assert not out.exists()  # the folder it made is gone again
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="data.val"):
        loop.train(_cfg(tiny_text_dir, tones, mine, "train.val_every=2", missing))
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_a_device_flag_for_training_is_one_usage_line(capsys):
    # the device comes from accelerate (CUDA_VISIBLE_DEVICES, accelerate launch), not a flag
    with pytest.raises(SystemExit) as e:
        train_main(["--config", "tiny", "--device", "meta"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unrecognized arguments: --device" in err
    assert "Traceback" not in err


ROW_SPAN = ("train.steps=6", "train.log_every=4", "train.ckpt_every=2", "model.dropout=0.1")


@pytest.fixture(scope="module")
def straight_rows(tiny_text_dir, tones, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("straight") / "run"
    loop.train(_cfg(tiny_text_dir, tones, out, *ROW_SPAN))
    return _train_rows(out)


class _Killed(BaseException):
    """Stands for `kill -9` right after a checkpoint: nothing after it runs."""


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["killed-after-checkpoint", "ctrl-c"])
def test_the_log_row_spanning_a_checkpoint_is_the_same_after_resume(
        stop, tiny_text_dir, tones, straight_rows, tmp_path, monkeypatch):
    """Rows at steps 4 and 6 (log_every 4, and the last step); checkpoints at 2 and 4, or
    a Ctrl-C at 3: the resumed run must log the row at 4 over steps 1-4, as if never
    stopped, not over the steps after the resume only."""
    out = tmp_path / "run"
    if stop == "ctrl-c":
        real = loop.Trainer._stop_everywhere
        monkeypatch.setattr(loop.Trainer, "_stop_everywhere",
                            lambda self, s: self.step == 3 or real(self, s))
        expected = KeyboardInterrupt
    else:
        real = loop.Trainer.save

        def save_then_die(self):
            real(self)
            if self.step == 2:
                raise _Killed
        monkeypatch.setattr(loop.Trainer, "save", save_then_die)
        expected = _Killed
    with pytest.raises(expected):
        loop.train(_cfg(tiny_text_dir, tones, out, *ROW_SPAN))
    monkeypatch.undo()
    assert _train_rows(out) == []  # nothing logged yet: the row in progress was in memory
    loop.train(_cfg(tiny_text_dir, tones, out, *ROW_SPAN), resume=True)
    rows = _train_rows(out)
    assert [r["step"] for r in rows] == [r["step"] for r in straight_rows] == [4, 6]
    for key in ("loss", "diffusion", "lr", "grad_norm"):
        assert [r[key] for r in rows] == [r[key] for r in straight_rows], key


@pytest.fixture
def two_threads():
    """torch at 2 CPU threads for the test (conftest pins 1), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_the_same_thread_count_twice_trains_identical_weights_and_losses(
        tiny_text_dir, tones, tmp_path, two_threads):
    """What docs/training.md promises: same seed, settings, batch size and thread count ->
    the same weights and logged losses (here at 2 threads, not the suite's 1)."""
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        model = loop.train(_cfg(tiny_text_dir, tones, out, "train.steps=3",
                                "model.dropout=0.1"))
        runs.append((model.state_dict(), [r["loss"] for r in _train_rows(out)]))
    (wa, la), (wb, lb) = runs
    assert la == lb and len(la) == 3
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_the_same_thread_count_twice_samples_identical_audio(tiny_ckpts, two_threads):
    from energytta.pipeline import TextToAudio

    pipe = TextToAudio.from_pretrained(tiny_ckpts["teacher"], "cpu")
    first, _ = pipe(["a bell rings", "rain"], seed=5, iterations=2, cfg=2.0)
    again, _ = pipe(["a bell rings", "rain"], seed=5, iterations=2, cfg=2.0)
    assert np.array_equal(first, again)
