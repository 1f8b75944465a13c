"""TextToAudio + energytta-sample on a tiny student/teacher saved to a temporary folder."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from energytta.checkpoint import DEFAULT_NAME
from energytta.cli import sample_main
from energytta.errors import UserError
from energytta import pipeline
from energytta.pipeline import TextToAudio, batch_seed
from energytta.sample_cli import output_stems, read_prompts, slugify

PROMPTS = ("# a comment\n\na high beep repeats three times\n\nrain falls\n"
           "a high beep repeats three times\n")


@pytest.fixture(scope="module")
def student(tiny_ckpts) -> Path:
    return tiny_ckpts["student"]


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text(PROMPTS, encoding="utf-8")
    return path


def _sample(prompts: Path, ckpt: Path, out: Path, *extra: str) -> int:
    return sample_main(["--prompts", str(prompts), "--ckpt", str(ckpt), "--out-dir", str(out),
                        "--device", "cpu", *extra])


def test_pipeline_call_shapes_and_determinism(student):
    pipe = TextToAudio.from_pretrained(student, "cpu")
    assert pipe.kind == "student" and pipe.sample_rate == 16000
    wavs, sr = pipe(["a bell rings", "rain"], seed=1, iterations=2, cfg=2.0)
    assert wavs.dtype == np.float32 and wavs.shape[0] == 2 and sr == 16000
    assert wavs.shape[1] == pipe.model.frames_for(1.0) * pipe.cfg.audio.hop_length
    again, _ = pipe(["a bell rings", "rain"], seed=1, iterations=2, cfg=2.0)
    other, _ = pipe(["a bell rings", "rain"], seed=2, iterations=2, cfg=2.0)
    assert np.array_equal(wavs, again) and not np.array_equal(wavs, other)
    out = pipe.generate(["a bell rings"], pipe.settings(negative_prompt="a dog barks"))
    assert out.mels.shape == (1, pipe.cfg.audio.n_mels, pipe.model.frames_for(1.0))


def test_bf16_autocast_runs_and_stays_close_in_token_space(student):
    fp32 = TextToAudio.from_pretrained(student, "cpu")
    bf16 = TextToAudio.from_pretrained(student, "cpu", dtype="bf16")
    a = fp32.generate(["a bell rings"], fp32.settings(seed=3, iterations=2, cfg=2.0))
    b = bf16.generate(["a bell rings"], bf16.settings(seed=3, iterations=2, cfg=2.0))
    assert b.wavs.dtype == np.float32 and np.isfinite(b.wavs).all()
    assert b.mels.shape == a.mels.shape
    assert np.abs(a.mels - b.mels).mean() < 0.1 * np.abs(a.mels).mean() + 0.1
    with pytest.raises(UserError, match="dtype"):
        TextToAudio.from_pretrained(student, "cpu", dtype="int8")


def test_batch_size_one_result_depends_on_seed_and_index_only(student):
    pipe = TextToAudio.from_pretrained(student, "cpu")
    a, _ = pipe(["a bell rings", "rain falls"], seed=4, batch_size=1, iterations=2)
    b, _ = pipe(["a bell rings", "wind blows"], seed=4, batch_size=1, iterations=2)
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[1], b[1])
    assert len({batch_seed(0, 1), batch_seed(1, 0), batch_seed(0, 0)}) == 3


def test_settings_validation(student):
    pipe = TextToAudio.from_pretrained(student, "cpu")
    for kw in (dict(duration=1e4), dict(duration=0), dict(iterations=0), dict(batch_size=0),
               dict(temperature=-1), dict(cfg=float("inf")), dict(cfg=1e30),
               dict(temperature=float("inf")), dict(duration=float("nan")),
               dict(seed=2 ** 63), dict(seed=2 ** 70), dict(seed=-1)):
        with pytest.raises(UserError):
            pipe.settings(**kw)
    tokens = pipe.model.tokens_for(1.0)
    with pytest.warns(UserWarning, match="capped"):  # was minutes for a short clip
        assert pipe.settings(duration=1.0, iterations=100000).iterations == tokens
    with pytest.raises(UserError, match="exceeds"):  # hand-built settings are refused
        pipe.generate(["a beep"], dataclasses.replace(pipe.settings(duration=1.0),
                                                      iterations=tokens + 1))


def test_non_finite_generation_is_an_error_not_a_silent_zero_file(student, monkeypatch):
    import energytta.audio.render as render

    pipe = TextToAudio.from_pretrained(student, "cpu")
    real = render.tokens_to_audio

    def poisoned(*a, **kw):
        mel, wav = real(*a, **kw)
        return mel, wav * float("nan")
    monkeypatch.setattr(render, "tokens_to_audio", poisoned)
    with pytest.raises(UserError, match="not finite"):
        pipe(["a beep"], iterations=2)


def test_cli_writes_wav_png_json_per_prompt_and_is_byte_identical(student, prompts_file,
                                                                  tmp_path, capsys):
    out1, out2 = tmp_path / "a", tmp_path / "b"
    args = ("--seed", "3", "--iterations", "2", "--cfg", "1.5", "--batch-size", "2")
    assert _sample(prompts_file, student, out1, *args) == 0
    assert _sample(prompts_file, student, out2, *args) == 0
    stems = ["000-a-high-beep-repeats-three-times-seed3", "001-rain-falls-seed3",
             "002-a-high-beep-repeats-three-times-seed3"]
    assert sorted(p.name for p in out1.iterdir()) == sorted(
        f"{s}.{ext}" for s in stems for ext in ("wav", "png", "json"))
    for s in stems:
        assert (out1 / f"{s}.wav").read_bytes() == (out2 / f"{s}.wav").read_bytes()
        wav, sr = sf.read(out1 / f"{s}.wav")
        assert sr == 16000 and len(wav) > 0
        assert (out1 / f"{s}.png").read_bytes()[:4] == b"\x89PNG"
    record = json.loads((out1 / f"{stems[1]}.json").read_text())
    assert record["prompt"] == "rain falls" and record["seed"] == 3 and record["index"] == 1
    assert record["iterations"] == 2 and record["cfg"] == 1.5 and record["batch_size"] == 2
    assert record["kind"] == "student" and record["checkpoint"] == str(student)
    assert record["duration"] == 1.0 and record["temperature"] == 1.0  # from cfg.sample
    # the two copies of the same prompt are distinct files with distinct audio
    assert (out1 / f"{stems[0]}.wav").read_bytes() != (out1 / f"{stems[2]}.wav").read_bytes()


def test_generate_each_hands_over_each_batch_and_skips_what_it_is_told(student):
    pipe = TextToAudio.from_pretrained(student, "cpu")
    prompts = ["a bell rings", "rain", "a dog barks", "wind"]
    s = pipe.settings(seed=4, iterations=2, batch_size=2)
    whole = pipe.generate(prompts, s)
    got, ticks = {}, []
    pipe.generate_each(prompts, s, lambda first, w, m: got.setdefault(first, (w, m)),
                       lambda done, total: ticks.append((done, total)))
    assert sorted(got) == [0, 2]
    assert np.array_equal(np.concatenate([got[0][0], got[2][0]]), whole.wavs)
    assert np.array_equal(np.concatenate([got[0][1], got[2][1]]), whole.mels)
    assert ticks[-1] == (4, 4)  # two batches of two iterations
    only, ticks = {}, []
    pipe.generate_each(prompts, s, lambda first, w, m: only.setdefault(first, w),
                       lambda done, total: ticks.append((done, total)),
                       skip=lambda first, rows: first == 0 and rows == 2)
    assert list(only) == [2] and np.array_equal(only[2], got[2][0])  # seeded by its index
    assert ticks == [(1, 2), (2, 2)]  # progress counts the batches that run


def test_plain_generation_calls_the_decoder_without_an_edit_plan(student, monkeypatch):
    from energytta import editing

    pipe = TextToAudio.from_pretrained(student, "cpu")
    want, _ = pipe(["a bell rings"], seed=2, iterations=2)  # the same clip through a plan
    planned = pipe.generate(["a bell rings"], pipe.settings(seed=2, iterations=2),
                            plan=pipe.plan(pipe.settings(seed=2, iterations=2)))
    assert np.array_equal(planned.wavs, want)

    def no_editing(*args, **kwargs):
        raise AssertionError("plain generation went through the editing code")
    for name in ("plan_generate", "decode_windows", "row_known", "paste_kept", "same_grid"):
        monkeypatch.setattr(editing, name, no_editing)
    wavs, _ = pipe(["a bell rings"], seed=2, iterations=2)
    assert np.array_equal(wavs, want)
    assert pipe.generate(["a bell rings"], pipe.settings(seed=2, iterations=2)).edit is None


def test_interrupted_cli_run_keeps_finished_batches_and_a_rerun_continues(
        student, prompts_file, tmp_path, monkeypatch, capsys):
    args = ("--seed", "3", "--iterations", "2", "--batch-size", "1")
    full, out = tmp_path / "full", tmp_path / "out"
    assert _sample(prompts_file, student, full, *args) == 0
    real, calls = TextToAudio.generate_batch, []

    def interrupted(self, prompts, s, first_index, progress, *plan):
        if first_index == 2:
            raise KeyboardInterrupt  # Ctrl-C during the third batch
        calls.append(first_index)
        return real(self, prompts, s, first_index, progress, *plan)
    monkeypatch.setattr(TextToAudio, "generate_batch", interrupted)
    assert _sample(prompts_file, student, out, *args) == 130  # run_cli: interrupted
    assert sorted(p.suffix for p in out.iterdir()) == [".json"] * 2 + [".png"] * 2 + [".wav"] * 2
    monkeypatch.setattr(TextToAudio, "generate_batch", real)
    capsys.readouterr()
    assert _sample(prompts_file, student, out, *args) == 0  # the rerun does batch 3 only
    assert "skipping 2 sample(s)" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in full.iterdir())
    for p in full.glob("*.wav"):  # and the result is what one uninterrupted run wrote
        assert (out / p.name).read_bytes() == p.read_bytes()
    # other settings are not "already written": they regenerate (and overwrite)
    assert _sample(prompts_file, student, out, *args[:-1], "2") == 0
    assert "skipping" not in capsys.readouterr().err


def test_cli_without_spectrograms_writes_wav_and_json(student, prompts_file, tmp_path):
    out = tmp_path / "out"
    assert _sample(prompts_file, student, out, "--iterations", "2", "--no-spectrograms") == 0
    assert {p.suffix for p in out.iterdir()} == {".wav", ".json"}
    assert json.loads((out / "001-rain-falls-seed0.json").read_text())["spectrogram"] is None


def test_cli_works_for_a_teacher(tmp_path, tiny_ckpts, prompts_file):
    ckpt = tiny_ckpts["teacher"]
    assert _sample(prompts_file, ckpt, tmp_path / "out", "--iterations", "2") == 0
    record = json.loads((tmp_path / "out" / "001-rain-falls-seed0.json").read_text())
    assert record["kind"] == "teacher"


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_bad_prompt_files_exit_2(student, tmp_path, capsys):
    empty, latin = tmp_path / "empty.txt", tmp_path / "latin.txt"
    empty.write_text("# only a comment\n\n   \n", encoding="utf-8")
    latin.write_bytes("caf\u00e9 bells\n".encode("latin-1"))
    for path, match in ((tmp_path / "missing.txt", "not found"), (empty, "no prompts"),
                        (latin, "not UTF-8")):
        assert _sample(path, student, tmp_path / "out") == 2
        assert match in _error_line(capsys)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_bad_checkpoints_and_settings_exit_2(student, prompts_file, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00garbage" * 10)
    foreign = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(foreign))
    cases = [(["--ckpt", str(tmp_path / "none.safetensors")], "not found"),
             (["--ckpt", str(corrupt)], "corrupt"),
             (["--ckpt", str(foreign)], "not an energytta checkpoint"),
             (["--ckpt", str(student), "--duration", "1e4"], "max_seconds"),
             (["--ckpt", str(student), "--iterations", "0"], "iterations")]
    out = tmp_path / "out"
    for extra, match in cases:
        code = sample_main(["--prompts", str(prompts_file), "--out-dir", str(out),
                            "--device", "cpu", *extra])
        assert code == 2
        assert match in _error_line(capsys)
    assert not out.exists()  # nothing written before the failure, not even the folder


def test_unwritable_output_folder_exit_2(student, prompts_file, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert _sample(prompts_file, student, blocker / "sub") == 2
    assert "not writable" in _error_line(capsys)


def test_missing_shipped_model_is_user_error(monkeypatch, tmp_path):
    monkeypatch.setitem(pipeline.SHIPPED, DEFAULT_NAME, tmp_path / "gone.safetensors")
    with pytest.raises(UserError, match="reinstall energytta or pass --ckpt"):
        TextToAudio.from_pretrained(None, "cpu")


def test_shipped_models_fit_the_budget_and_generate():
    sizes = sum(p.stat().st_size for p in pipeline.ASSETS.glob("*.safetensors"))
    assert sizes <= 60 * 1024 * 1024  # every shipped weight together <= 60 MB
    for name in ("student", "teacher", "captiononly", "guided"):
        pipe = TextToAudio.from_pretrained(None if name == DEFAULT_NAME else name, "cpu")
        kind = "student" if name == "guided" else name
        assert pipe.kind == kind and pipe.checkpoint == pipeline.SHIPPED[name]
        # the guidance-distilled student guides in one pass by default, the others in two
        assert pipe.settings().one_pass_cfg == (name == "guided")
        k = 1 if name == "captiononly" else 2  # one pass: its whole point
        wavs, sr = pipe(["a bell rings twice"], seed=0, iterations=k, duration=1.0)
        assert sr == 16000 and wavs.shape == (1, 16000) and np.isfinite(wavs).all()
        assert 0.01 < np.abs(wavs).max() <= 1.0  # not silent; louder clips are scaled down


def test_the_shipped_trained_vocoder_renders_every_shipped_model():
    from energytta.audio.vocoder import MelVocoder

    for name, k in (("student", 2), ("captiononly", 1)):
        pipe = TextToAudio.from_pretrained(name, "cpu", vocoder="trained")
        assert isinstance(pipe.codec.vocoder, MelVocoder) and pipe.codec.vocoder.mag_prior
        assert pipe.vocoder == pipeline.SHIPPED_VOCODER.name
        wavs, _ = pipe(["a bell rings twice"], seed=0, iterations=k, duration=1.0)
        assert wavs.shape == (1, 16000) and np.isfinite(wavs).all()
        gl = TextToAudio.from_pretrained(name, "cpu", vocoder="griffin-lim")
        assert gl.vocoder == "griffin-lim"
        # the shipped files name the trained vocoder as their default renderer
        assert TextToAudio.from_pretrained(name, "cpu").vocoder == pipeline.SHIPPED_VOCODER.name
        ref, _ = gl(["a bell rings twice"], seed=0, iterations=k, duration=1.0)
        # the same mel through either vocoder: the same loudness within a factor of 2
        rms = [float(np.sqrt((w ** 2).mean())) for w in (wavs, ref)]
        assert rms[1] > 0 and 0.5 < rms[0] / rms[1] < 2.0, rms


def test_a_checkpoint_names_its_default_vocoder(tmp_path):
    """`sample.vocoder` in a file's config picks what renders its clips when the caller names
    none (from_pretrained, energytta-sample, energytta-serve); a named vocoder wins; a value
    outside the choices is one line naming the key."""
    from safetensors.torch import save_file

    from energytta.config import load_config
    from research.model_cards import read

    tensors, meta = read(pipeline.SHIPPED["student"])
    config = json.loads(meta["config"])
    config["sample"]["vocoder"] = "trained"
    path = tmp_path / "student-trained.safetensors"
    save_file(tensors, str(path), metadata={**meta, "config": json.dumps(config)})
    assert TextToAudio.from_pretrained(path, "cpu").vocoder == pipeline.SHIPPED_VOCODER.name
    own = TextToAudio.from_pretrained(path, "cpu", vocoder="checkpoint")
    assert own.vocoder == "griffin-lim"
    with pytest.raises(UserError, match="sample.vocoder"):
        load_config("tiny", ["sample.vocoder=hifi"])


def test_the_vocoder_can_be_chosen_per_run(student, prompts_file, tmp_path, capsys):
    from energytta.audio.griffinlim import GriffinLim
    from energytta.audio.vocoder import VOCODER_KEYS, save_part, trained_vocoder
    from energytta.config import load_config

    cfg = load_config("tiny", ["codec.vocoder_width=16", "codec.vocoder_depth=1"])
    voc = save_part(tmp_path / "v.safetensors", trained_vocoder(cfg).state_dict(), cfg,
                    "vocoder", VOCODER_KEYS)
    pipe = TextToAudio.from_pretrained(student, "cpu", vocoder=str(voc))
    assert pipe.vocoder == "v.safetensors" and not isinstance(pipe.codec.vocoder, GriffinLim)
    own = pipe.codec.vocoder
    assert pipe.use_vocoder("checkpoint") == "griffin-lim"  # the checkpoint's own is back
    assert isinstance(pipe.codec.vocoder, GriffinLim)
    assert pipe.use_vocoder(str(voc)) == "v.safetensors" and pipe.codec.vocoder is not own
    assert pipe.use_vocoder("griffin-lim") == "griffin-lim"
    assert isinstance(pipe.codec.vocoder, GriffinLim)
    out = tmp_path / "out"
    assert _sample(prompts_file, student, out, "--vocoder", str(voc), "--iterations", "2") == 0
    record = json.loads(next(out.glob("*.json")).read_text())
    assert record["vocoder"] == "v.safetensors"
    with pytest.raises(UserError, match="not found"):
        TextToAudio.from_pretrained(student, "cpu", vocoder=str(tmp_path / "none"))
    capsys.readouterr()
    assert _sample(prompts_file, student, tmp_path / "o2", "--vocoder", "nope.st") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err


def test_sample_cli_uses_the_default_model(tmp_path, capsys):
    """With no --ckpt: the shipped caption-only student (one pass)."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("a high beep repeats three times\n", encoding="utf-8")
    code = sample_main(["--prompts", str(prompts), "--out-dir", str(tmp_path / "out"),
                        "--device", "cpu", "--iterations", "2", "--duration", "1"])
    assert code == 0
    record = json.loads((tmp_path / "out" / "000-a-high-beep-repeats-three-times-seed0.json")
                        .read_text())
    assert record["kind"] == DEFAULT_NAME == "student"
    assert Path(record["checkpoint"]) == pipeline.DEFAULT_CKPT


def test_prompt_helpers(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes("\ufeff# c\n  Caf\u00e9 BELLS!!  \n\n#x\nrain\n".encode("utf-8"))
    assert read_prompts(path) == ["Caf\u00e9 BELLS!!", "rain"]
    assert slugify("Caf\u00e9 BELLS!! / ../etc") == "cafe-bells-etc"
    assert slugify("???") == "prompt" and len(slugify("beep " * 40)) <= 60
    assert output_stems(["a", "a"]) == ["000-a", "001-a"]
    assert output_stems(["a", "b"], seed=7) == ["000-a-seed7", "001-b-seed7"]


def test_long_prompt_is_truncated_with_a_warning(student, tmp_path, capsys):
    path = tmp_path / "long.txt"
    path.write_text("a bell " * 40 + "\nrain\n", encoding="utf-8")
    assert _sample(path, student, tmp_path / "out", "--iterations", "1") == 0
    err = capsys.readouterr().err
    assert "warning: prompt 0" in err and "text.max_length" in err
    assert "prompt 1" not in err
    assert (tmp_path / "out" / "001-rain-seed0.wav").is_file()
