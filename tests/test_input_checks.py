"""Inputs of the editing API and the commands: arrays of any common layout, numbers out of
range, outputs that cannot be written, too-short clips, malformed CSV and running out of
memory are mixed, scaled or refused in one line, never a traceback or silently cut data."""
import errno
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from energytta import editing
from energytta.cli import data_main, eval_main, export_main, sample_main
from energytta.errors import UserError
from energytta.pipeline import SHIPPED, TextToAudio
from energytta.utils import pick_device

SR = 16000


def _clip(seconds: float = 1.0) -> np.ndarray:
    """(S,) float32 tone, peak 0.5."""
    t = np.arange(int(seconds * SR)) / SR
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def _error_line(capsys) -> str:
    """The one `error:` line on stderr (warnings may come before it; no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def read_only(tmp_path, monkeypatch) -> Path:
    """A folder nobody may write in. Root ignores mode bits, so for root the refusal a
    user would meet (EACCES on creating anything inside it) is injected."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    probe = folder / "probe"
    try:
        probe.mkdir()
    except OSError:
        pass  # a real read-only folder
    else:
        probe.rmdir()

        def refuse(real):
            def call(path, *args, **kwargs):
                if Path(os.fsdecode(path)).resolve().parent == folder.resolve():
                    raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
                return real(path, *args, **kwargs)
            return call
        monkeypatch.setattr(os, "mkdir", refuse(os.mkdir))
        monkeypatch.setattr(os, "open", refuse(os.open))
    yield folder
    folder.chmod(0o755)


@pytest.fixture(scope="module")
def student(tiny_ckpts) -> TextToAudio:
    return TextToAudio.from_pretrained(tiny_ckpts["student"], "cpu")


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("a high beep repeats\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------ editing API arrays
def test_stereo_arrays_are_mixed_to_mono_and_integer_pcm_is_scaled():
    x = _clip()
    both = np.stack([x, 0.5 * x])  # (2, S): the mix is 0.75 x, as a stereo file reads
    for layout in (both, both.T, x[None], x[:, None]):
        wav = editing.read_source(layout, SR).wav
        assert wav.shape == (x.size,)
    assert np.allclose(editing.read_source(both.T, SR).wav, 0.75 * x, atol=1e-6)
    for dtype, offset, scale in ((np.int16, 0, 2 ** 15), (np.int32, 0, 2 ** 31),
                                 (np.uint8, 128, 128)):
        pcm = np.round(x * (scale - 1) + offset).astype(dtype)
        wav = editing.read_source(np.stack([pcm, pcm]), SR).wav
        assert wav.shape == (x.size,) and np.abs(wav).max() <= 1.0
        assert np.allclose(wav, x, atol=2.0 / scale + 1e-6)


@pytest.mark.parametrize("array, match", [
    (np.zeros((2, 2), np.float32) + 0.5, "cannot tell channels"),
    (np.zeros((16, 4000), np.float32) + 0.5, "cannot tell channels"),
    (np.zeros((2, 2, 4000), np.float32) + 0.5, "not a clip"),
    (np.ones(4000, np.int64), "int64"),
])
def test_arrays_of_unclear_layout_or_type_are_refused_in_one_line(array, match):
    with pytest.raises(UserError, match=match):
        editing.read_source(array, SR)


def test_inpaint_of_a_stereo_int16_array_keeps_its_length_and_level(student):
    x = _clip(1.0)
    pcm = np.round(np.stack([x, x], axis=1) * 32767).astype(np.int16)  # (S, 2)
    out = student.inpaint("a beep", pcm, keep="0-0.5", seed=0, iterations=2)
    assert out.wavs.shape == (1, x.size)  # not a clip twice as long
    assert np.abs(out.wavs).max() <= 1.0
    assert np.allclose(out.wavs[0, :4000], x[:4000], atol=1e-4)  # the kept span, scaled


# ------------------------------------------------------------------ durations, devices
@pytest.mark.parametrize("duration", [math.nan, math.inf])
def test_continue_to_a_non_finite_duration_is_one_line(student, duration):
    with pytest.raises(UserError, match="finite"):
        student.continue_audio("a beep", _clip(), duration=duration)


@pytest.mark.parametrize("duration", ["nan", "inf"])
def test_cli_continue_to_a_non_finite_duration_is_one_line(tiny_ckpts, prompts_file, tmp_path,
                                                           capsys, duration):
    clip = tmp_path / "x.wav"
    sf.write(clip, _clip(), SR)
    code = sample_main(["--prompts", str(prompts_file), "--ckpt", str(tiny_ckpts["student"]),
                        "--out-dir", str(tmp_path / "out"), "--device", "cpu",
                        "--continue", str(clip), "--duration", duration])
    assert code == 2 and "--duration" in _error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_the_meta_device_is_refused_in_one_line(prompts_file, tmp_path, capsys, monkeypatch):
    with pytest.raises(UserError, match="holds no data"):
        pick_device("meta")
    assert sample_main(["--prompts", str(prompts_file), "--out-dir", str(tmp_path / "o"),
                        "--device", "meta"]) == 2
    assert "meta" in _error_line(capsys)
    _no_eval_run(monkeypatch)
    assert eval_main(["--generated", str(tmp_path), "--reference", "r.jsonl",
                      "--device", "meta"]) == 2
    assert "meta" in _error_line(capsys)
    manifest = _one_sample_manifest(tmp_path)
    assert data_main(["cache", "--manifest", str(manifest), "--out", str(tmp_path / "c"),
                      "--device", "meta"]) == 2
    assert "meta" in _error_line(capsys)


# ------------------------------------------------------------------ energytta-eval
def _no_eval_run(monkeypatch) -> None:
    """Scoring must not start: bad flags are refused before any work."""
    def run(args):
        raise AssertionError("scoring started despite a bad flag")
    monkeypatch.setattr("energytta.eval.cli.run", run)


@pytest.mark.parametrize("flags, match", [
    (["--max-seconds", "-0.5"], "--max-seconds"), (["--max-seconds", "nan"], "--max-seconds"),
    (["--max-seconds", "inf"], "--max-seconds"), (["--limit", "-1"], "--limit"),
    (["--limit", "0"], "--limit")])
def test_eval_refuses_numbers_that_would_cut_data(flags, match, tmp_path, capsys,
                                                  monkeypatch):
    _no_eval_run(monkeypatch)
    assert eval_main(["--generated", str(tmp_path), "--reference", "r.jsonl", *flags]) == 2
    assert match in _error_line(capsys)


def test_eval_json_into_a_folder_or_a_read_only_place_is_refused_first(tmp_path, read_only,
                                                                       capsys, monkeypatch):
    _no_eval_run(monkeypatch)
    for dest, match in ((tmp_path, "is a folder"), (read_only / "eval.json", "cannot write")):
        assert eval_main(["--generated", str(tmp_path), "--reference", "r.jsonl",
                          "--json", str(dest)]) == 2
        assert match in _error_line(capsys)


def test_export_into_a_read_only_folder_is_one_line(read_only, capsys):
    assert export_main([str(SHIPPED["student"]), "--out", str(read_only / "m.safetensors")]) == 2
    assert "cannot write in" in _error_line(capsys)
    assert not (read_only / "m.safetensors").exists()


# ------------------------------------------------------------------ energytta-data
@pytest.mark.parametrize("flags, match", [
    (["--seconds", "nan"], "--seconds"), (["--seconds", "inf"], "--seconds"),
    (["--seconds", "1e7"], "--seconds"), (["--seed", "-1"], "--seed")])
def test_synth_refuses_bad_numbers_before_rendering(flags, match, tmp_path, capsys,
                                                    monkeypatch):
    def generate(*args, **kwargs):
        raise AssertionError("rendering started despite a bad flag")
    monkeypatch.setattr("energytta.data.synth.generate", generate)
    assert data_main(["synth", "--out", str(tmp_path / "d"), "--num", "1", *flags]) == 2
    assert match in _error_line(capsys)


def test_synth_refuses_an_output_that_is_a_file_or_read_only(tmp_path, read_only, capsys,
                                                             monkeypatch):
    def generate(*args, **kwargs):
        raise AssertionError("rendering started despite a bad --out")
    monkeypatch.setattr("energytta.data.synth.generate", generate)
    (tmp_path / "f").write_text("x")
    for out, match in ((tmp_path / "f", "is a file"), (read_only / "d", "cannot write")):
        assert data_main(["synth", "--out", str(out), "--num", "1"]) == 2
        assert match in _error_line(capsys)


def _one_sample_manifest(tmp_path: Path) -> Path:
    sf.write(tmp_path / "one.wav", np.full(1, 0.5, np.float32), SR)
    sf.write(tmp_path / "ok.wav", _clip(0.5), SR)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio": "one.wav", "caption": "a click"}) + "\n")
    return manifest


def test_check_lists_a_one_sample_file_as_bad(tmp_path, capsys):
    assert data_main(["check", str(_one_sample_manifest(tmp_path)), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["good"] == 0 and "too short" in report["bad"][0]["problem"]


def test_cache_of_a_one_sample_file_is_one_line(tmp_path, capsys):
    manifest = _one_sample_manifest(tmp_path)
    assert data_main(["cache", "--manifest", str(manifest), "--out", str(tmp_path / "c"),
                      "--config", "tiny", "--device", "cpu"]) == 2
    assert "at least 0.1 s" in _error_line(capsys)


def test_cache_skips_a_too_short_clip_with_a_warning(tmp_path):
    from energytta.data.cache import _load_wavs
    from energytta.data.manifest import Item

    items = [Item(tmp_path / "one.wav", "a click"), Item(tmp_path / "ok.wav", "a beep")]
    _one_sample_manifest(tmp_path)
    with pytest.warns(UserWarning, match="too short"):
        assert [k for k, _ in _load_wavs(items, SR)] == [1]


HEADER = "audiocap_id,youtube_id,start_time,caption"


@pytest.mark.parametrize("text, line, match", [
    (f"{HEADER},caption\n1,a,0,a dog,rain\n", 1, "appears more than once"),
    (f'{HEADER}\n1,a,0,a dog\n2,b,0,"rain falls\n3,c,0,wind\n4,d,0,a bell\n', 3, "never closed"),
])
def test_csv_with_a_repeated_column_or_an_open_quote_names_file_and_line(tmp_path, text,
                                                                         line, match):
    from energytta.data.manifest import read_manifest

    path = tmp_path / "m.csv"
    path.write_text(text)
    with pytest.raises(UserError, match=match) as e:
        read_manifest(path)
    assert str(e.value).startswith(f"{path}:{line}:")


# ------------------------------------------------------------------ out of memory
@pytest.mark.parametrize("error", [
    MemoryError(),
    RuntimeError("[enforce fail at alloc_cpu.cpp:114] data. DefaultCPUAllocator: can't "
                 "allocate memory: you tried to allocate 1288490188 bytes. Error code 12 "
                 "(Cannot allocate memory)")])
def test_out_of_memory_while_sampling_names_the_knobs(tiny_ckpts, prompts_file, tmp_path,
                                                      capsys, monkeypatch, error):
    def decode(*args, **kwargs):
        raise error
    monkeypatch.setattr("energytta.sampling.decode", decode)
    code = sample_main(["--prompts", str(prompts_file), "--ckpt", str(tiny_ckpts["student"]),
                        "--out-dir", str(tmp_path / "out"), "--device", "cpu"])
    line = _error_line(capsys)
    assert code == 2 and "out of memory" in line
    assert "--batch-size" in line and "--duration" in line
    if isinstance(error, RuntimeError):
        assert "1.2 GiB" in line


def test_other_runtime_errors_while_sampling_are_not_called_memory(student, monkeypatch):
    def decode(*args, **kwargs):
        raise RuntimeError("shape mismatch")
    monkeypatch.setattr("energytta.sampling.decode", decode)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        student(["a beep"], iterations=2)
