"""energytta-sample's prompts and output files (names, seeds, takes, stale samples, clean-up)
and the Python API's `num_samples`, `Generation.save` and `audio_write`."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import energytta
from energytta.cli import sample_main
from energytta.errors import UserError
from energytta.pipeline import TextToAudio
from energytta.sample_cli import read_prompts

FAST = ("--device", "cpu", "--iterations", "2", "--no-spectrograms", "--batch-size", "1")


def _run(out: Path, ckpt: Path, *extra: str) -> int:
    return sample_main(["--ckpt", str(ckpt), "--out-dir", str(out), *FAST, *extra])


def _other_student(path: Path, tiny_text_dir: Path) -> Path:
    """A tiny student of the same config as conftest's, with other weights."""
    from energytta.audio.codec import build_codec
    from energytta.checkpoint import save_inference
    from energytta.config import load_config
    from energytta.models.tta import TTAModel

    cfg = load_config("tiny", ["head.kind=energy", f"text.model={tiny_text_dir}"])
    torch.manual_seed(1)
    model = TTAModel(cfg, 32)
    for p in model.head.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return save_inference(path, model, build_codec(cfg), cfg, "student")


# ------------------------------------------------------------------ prompts
def test_prompt_flags_and_standard_input(tiny_ckpts, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert _run(out, tiny_ckpts["student"], "--prompt", "a dog barks twice",
                "--prompt", "rain") == 0
    assert sorted(p.name for p in out.glob("*.wav")) == [
        "000-a-dog-barks-twice-seed0.wav", "001-rain-seed0.wav"]
    stdin = io.TextIOWrapper(io.BytesIO("# c\na bell rings\n".encode()))
    monkeypatch.setattr("sys.stdin", stdin)
    assert _run(tmp_path / "in", tiny_ckpts["student"], "--prompts", "-") == 0
    record = json.loads((tmp_path / "in" / "000-a-bell-rings-seed0.json").read_text())
    assert record["prompt"] == "a bell rings"
    capsys.readouterr()
    assert _run(tmp_path / "x", tiny_ckpts["student"], "--prompt", "  ") == 2
    assert "--prompt number 1 is empty" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one of --prompt / --prompts, not both (argparse)
        sample_main(["--prompt", "a", "--prompts", "p.txt"])
    assert not (tmp_path / "x").exists()


def test_prompt_files_split_at_newlines_only(tmp_path):
    path = tmp_path / "p.txt"
    # a form feed, NEL and LINE SEPARATOR inside prompts: str.splitlines broke there
    path.write_bytes("a\x0cb\r\nc\x85d\ne\u2028f\n".encode("utf-8"))
    assert read_prompts(path) == ["a\x0cb", "c\x85d", "e\u2028f"]


# ------------------------------------------------------------------ seeds and takes
def test_num_samples_are_the_next_seeds_and_names_keep_seeds_apart(
        tiny_ckpts, tmp_path, capsys):
    ckpt, out = tiny_ckpts["student"], tmp_path / "out"
    assert _run(out, ckpt, "--prompt", "a beep", "--seed", "5", "--num-samples", "3") == 0
    names = sorted(p.name for p in out.glob("*.wav"))
    assert names == [f"000-a-beep-seed{s}.wav" for s in (5, 6, 7)]
    # take j of --seed 5 is exactly what --seed 5+j writes, so a rerun overlapping those
    # seeds skips them and says how many; another seed never overwrites them
    single = tmp_path / "single"
    assert _run(single, ckpt, "--prompt", "a beep", "--seed", "6") == 0
    assert ((single / "000-a-beep-seed6.wav").read_bytes()
            == (out / "000-a-beep-seed6.wav").read_bytes())
    before = {n: (out / n).read_bytes() for n in names}
    capsys.readouterr()
    assert _run(out, ckpt, "--prompt", "a beep", "--seed", "6", "--num-samples", "3") == 0
    assert "skipping 2 sample(s)" in capsys.readouterr().err
    assert {n: (out / n).read_bytes() for n in names} == before
    assert (out / "000-a-beep-seed8.wav").is_file()
    assert _run(out, ckpt, "--prompt", "a beep", "--num-samples", "0") == 2


# ------------------------------------------------------------------ stale samples
def test_a_rerun_regenerates_samples_another_model_wrote_to_the_same_path(
        tiny_ckpts, tiny_text_dir, tmp_path, capsys):
    ckpt, out = tmp_path / "model.safetensors", tmp_path / "out"
    shutil.copyfile(tiny_ckpts["student"], ckpt)
    assert _run(out, ckpt, "--prompt", "a beep") == 0
    first = (out / "000-a-beep-seed0.wav").read_bytes()
    record = json.loads((out / "000-a-beep-seed0.json").read_text())
    assert len(record["checkpoint_sha256"]) == 64
    capsys.readouterr()
    assert _run(out, ckpt, "--prompt", "a beep") == 0  # same model: skipped
    assert "skipping 1 sample(s)" in capsys.readouterr().err
    _other_student(ckpt, tiny_text_dir)  # re-exported to the same path
    assert _run(out, ckpt, "--prompt", "a beep") == 0
    err = capsys.readouterr().err
    assert "skipping" not in err and "regenerating 1 sample(s)" in err
    assert (out / "000-a-beep-seed0.wav").read_bytes() != first
    assert json.loads((out / "000-a-beep-seed0.json").read_text())["checkpoint_sha256"] != \
        record["checkpoint_sha256"]


def test_the_checkpoint_hash_covers_a_run_folders_newest_step(tmp_path):
    from energytta.outputs import checkpoint_sha256

    run = tmp_path / "run"
    for step, data in ((10, b"a"), (20, b"b")):
        folder = run / f"step-{step:07d}"
        folder.mkdir(parents=True)
        (folder / "state.json").write_text("{}")
        (folder / "ema.safetensors").write_bytes(data)
        (folder / "optim.safetensors").write_bytes(data)
    newest = checkpoint_sha256(run)
    assert newest == checkpoint_sha256(run / "step-0000020") != checkpoint_sha256(
        run / "step-0000010")
    (run / "step-0000020" / "optim.safetensors").write_bytes(b"other")  # never in the audio
    assert checkpoint_sha256(run) == newest
    (run / "step-0000020" / "ema.safetensors").write_bytes(b"c")
    assert checkpoint_sha256(run) != newest
    assert checkpoint_sha256(tmp_path / "missing") is None


# ------------------------------------------------------------------ failures
def test_a_sigterm_before_any_file_leaves_no_folder(tiny_ckpts, tmp_path, monkeypatch):
    # a handler that ignores SIGTERM stands in for the default one (which would end
    # pytest): without the sampler's own handler the run would finish and write files
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        def terminated(self, *args, **kwargs):
            os.kill(os.getpid(), signal.SIGTERM)
            return real(self, *args, **kwargs)
        real = TextToAudio.generate_batch
        monkeypatch.setattr(TextToAudio, "generate_batch", terminated)
        out = tmp_path / "out"
        with pytest.raises(SystemExit) as stop:
            _run(out, tiny_ckpts["student"], "--prompt", "a beep")
        assert stop.value.code == 128 + signal.SIGTERM
        assert not out.exists()  # not even the lock file
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_an_empty_segment_fails_before_the_first_batch(tiny_ckpts, tmp_path, capsys):
    out = tmp_path / "out"
    code = _run(out, tiny_ckpts["student"], "--prompt", "a beep", "--prompt", "rain | ",
                "--duration", "3")
    assert code == 2 and "segment between '|' is empty" in capsys.readouterr().err
    assert not out.exists()  # the first prompt's batch was not written either


def test_an_unknown_checkpoint_name_lists_the_shipped_ones(tmp_path, capsys):
    assert sample_main(["--prompt", "a", "--ckpt", "studnet", "--out-dir",
                        str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: checkpoint not found: studnet")
    assert "student, teacher, captiononly, guided" in err


# ------------------------------------------------------------------ Python API
def test_num_samples_and_save_in_python(tiny_ckpts, tmp_path):
    pipe = TextToAudio.from_pretrained(tiny_ckpts["student"], "cpu")
    wavs, sr = pipe(["a beep", "rain"], seed=3, iterations=2, num_samples=2, batch_size=1)
    assert wavs.shape[0] == 4  # prompt-major: beep@3, beep@4, rain@3, rain@4
    alone, _ = pipe(["a beep", "rain"], seed=4, iterations=2, batch_size=1)
    assert np.array_equal(wavs[1], alone[0]) and np.array_equal(wavs[3], alone[1])
    assert not np.array_equal(wavs[0], wavs[1])
    with pytest.raises(UserError, match="num_samples"):
        pipe(["a beep"], num_samples=0)
    path = energytta.audio_write(tmp_path / "clips" / "beep", wavs[0], sr, {"seed": 3})
    assert path == tmp_path / "clips" / "beep.wav"
    data, rate = sf.read(path)
    assert rate == sr and len(data) == wavs.shape[1]
    assert json.loads(path.with_suffix(".json").read_text()) == {"seed": 3}
    with pytest.raises(UserError, match="NaN"):
        energytta.audio_write(tmp_path / "bad", np.full(10, np.nan), sr)
    out = pipe.generate(["a beep", "rain"], pipe.settings(seed=3, iterations=2))
    paths = out.save(tmp_path / "gen" / "take", ["a beep", "rain"])
    assert [p.name for p in paths] == ["take-0.wav", "take-1.wav"]
    record = json.loads((tmp_path / "gen" / "take-1.json").read_text())
    assert record["prompt"] == "rain" and record["seed"] == 3 and record["sample_rate"] == sr
