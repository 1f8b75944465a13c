"""Editing and long audio (energytta/editing.py) on the tiny teacher and student:
inpainting, continuation, variations, windowed generation, the CLI's records and its
one-line refusals of bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from energytta import editing
from energytta.cli import sample_main
from energytta.errors import UserError
from energytta.pipeline import TextToAudio

SR = 16000


@pytest.fixture(scope="module")
def pipes(tiny_ckpts) -> dict[str, TextToAudio]:
    return {k: TextToAudio.from_pretrained(p, "cpu") for k, p in tiny_ckpts.items()}


def _clip(seconds: float = 1.5, seed: int = 0) -> np.ndarray:
    """(S,) a 440 Hz tone with beeps and a little noise, peak ~0.6."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    gate = (np.sin(2 * np.pi * 2.0 * t) > 0).astype(np.float64)
    wav = 0.5 * np.sin(2 * np.pi * 440 * t) * gate + 0.02 * rng.standard_normal(t.size)
    return wav.astype(np.float32)


@pytest.fixture
def clip_file(tmp_path) -> Path:
    path = tmp_path / "in.wav"
    sf.write(path, _clip(), SR, subtype="PCM_16")
    return path


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("a high beep repeats\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------ pure functions
def test_spans_parse_snap_and_mask():
    assert editing.parse_spans("3.0-4.0, 0-1.5", "--keep") == [(0.0, 1.5), (3.0, 4.0)]
    for bad, match in (("abc", "START-END"), ("1-1", "empty"), ("2-1", "empty"),
                       ("0-2,1-3", "overlap"), ("", "START-END")):
        with pytest.raises(UserError, match=match):
            editing.parse_spans(bad, "--keep")
    assert editing.complement([(0.5, 1.0)], 2.0) == [(0.0, 0.5), (1.0, 2.0)]
    assert editing.snap([(0.04, 0.96), (1.0, 1.5)], 0.1, 12, "--keep") == [(0, 12)]
    assert editing.snap([(0.0, 0.44)], 0.1, 12, "--keep") == [(0, 4)]
    with pytest.raises(UserError, match="shorter than one token"):
        editing.snap([(0.52, 0.54)], 0.1, 12, "--keep")
    with pytest.raises(UserError, match="after the clip's end"):
        editing.check_within([(0.0, 2.0)], 1.5, "--keep")
    mask = editing.patch_mask([(1, 3)], 4, 2)  # time-major: 2 tokens per time patch
    assert mask.tolist() == [False, False, True, True, True, True, False, False]


def test_windows_cover_the_clip_with_the_overlap():
    assert editing.plan_windows(15, 20, 5) == [(0, 15)]
    windows = editing.plan_windows(61, 20, 5)
    assert windows[0] == (0, 20) and windows[-1] == (41, 61)
    assert all(b - a == 20 for a, b in windows)
    assert all(a1 <= b0 - 5 for (_, b0), (a1, _) in zip(windows, windows[1:]))
    with pytest.raises(UserError, match="overlap"):
        editing.overlap_patches(2.0, 0.1, 20)  # as long as the window


def test_decode_windows_hands_each_window_the_previous_tail_as_known():
    calls = []

    def fake_decode(n, known, mask, step, window):
        calls.append((known.clone(), mask.clone()))
        out = known.clone()
        out[~mask] = float(len(calls))  # window w writes w into its new tokens
        step(2, 2)
        return out

    plan = editing.EditPlan("generate", 50, 2, 1600, SR, editing.plan_windows(50, 20, 5))
    known, kept = editing.row_known([plan], 3, torch.Generator(), torch.device("cpu"))
    tokens = editing.decode_windows(fake_decode, plan, known, kept, None, 2)
    assert len(calls) == len(plan.windows) == 3
    for (k, m), (a, _b), (pa, pb) in zip(calls[1:], plan.windows[1:], plan.windows):
        seen = (pb - a) * 2  # tokens of the previous window inside this one
        assert m[0, :seen].all() and not m[0, seen:].any()
        assert (k[0, :seen] == tokens[0, a * 2:pb * 2]).all()
    assert (tokens != 0).all()


def test_segment_prompts_give_each_window_its_part_of_the_clip():
    windows = editing.plan_windows(200, 40, 10)  # 20 s in 4 s windows, 1 s overlap
    texts, per_window = editing.segment_prompts(["a dog barks | rain starts", "wind"], windows)
    assert texts == ["a dog barks", "rain starts", "wind"]
    assert [w[0] for w in per_window] == [0, 0, 0, 1, 1, 1, 1]  # by the window's middle
    assert all(w[1] == 2 for w in per_window)
    assert editing.segment_prompts(["a dog barks"], windows) is None
    with pytest.raises(UserError, match="empty"):
        editing.segment_prompts(["a dog | "], windows)
    with pytest.raises(UserError, match="longer than the model's window"):
        editing.segment_prompts(["a | b"], [(0, 40)])


def test_segment_prompts_condition_each_window_on_its_segment(pipes, monkeypatch):
    import energytta.sampling as sampling

    pipe, calls = pipes["student"], []
    real = sampling.decode

    def spy(backbone, head, text, *a, **kw):
        calls.append(text.clone())
        return real(backbone, head, text, *a, **kw)
    monkeypatch.setattr(sampling, "decode", spy)
    wavs, _ = pipe("a beep | rain falls", seed=0, duration=6.0, iterations=2)
    assert wavs.shape == (1, 6 * SR) and len(calls) == 5  # 2 s windows, 1 s overlap
    states, _ = pipe.text_encoder(["a beep", "rain falls"])
    assert torch.equal(calls[0], states[:1]) and torch.equal(calls[-1], states[1:])


# ------------------------------------------------------------------ latent space
@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_known_tokens_are_identical_after_sampling(pipes, kind, monkeypatch):
    import energytta.audio.render as render

    pipe, seen = pipes[kind], {}
    real = render.tokens_to_audio

    def spy(tokens, *a, **kw):
        seen["tokens"] = tokens.clone()
        return real(tokens, *a, **kw)
    monkeypatch.setattr(render, "tokens_to_audio", spy)
    source = editing.read_source(_clip(), SR)
    plan = editing.plan_inpaint(pipe.model.geometry, pipe.codec, source, pipe.device,
                                keep="0-0.5,1.0-1.5")
    out = pipe.generate(["a beep", "rain"], pipe.edit_settings(plan, seed=1, iterations=3),
                        plan=plan)
    tokens, kept = seen["tokens"], plan.kept
    assert tokens.shape == (2, plan.num_tokens, pipe.model.token_dim)
    assert torch.equal(tokens[:, kept], plan.known[kept].expand(2, -1, -1))
    assert (tokens[:, ~kept] != plan.known[~kept]).any(dim=-1).all()  # regenerated
    assert out.edit["keep"] == [[0.0, 0.5], [1.0, 1.5]] and out.edit["mode"] == "inpaint"


def test_kept_spans_hold_the_input_or_its_codec_rendering(pipes):
    pipe, wav = pipes["student"], _clip()
    out = pipe.inpaint("a beep", wav, regenerate="0.5-1.0", seed=2, iterations=3)
    S = out.wavs.shape[1]
    assert S == 15 * 1600  # 1.5 s in whole tokens
    fade = int(editing.DEFAULT_CROSSFADE * SR)
    for a, b in editing.interior([(0, 8000), (16000, 24000)], fade, S):
        assert np.array_equal(out.wavs[0, a:b], wav[a:b])  # exactly the input's samples
    assert not np.allclose(out.wavs[0, 8000 + fade:16000 - fade], wav[8000 + fade:16000 - fade],
                           atol=1e-2)
    # --no-paste: the kept frames are the codec's reconstruction of the input
    raw = pipe.inpaint("a beep", wav, regenerate="0.5-1.0", paste=False, seed=2, iterations=3)
    ref = pipe.codec.mel(torch.from_numpy(wav)).numpy()  # (1, n_mels, T)
    frames = np.r_[0:50, 100:150]
    assert np.allclose(raw.mels[0][:, frames], ref[0][:, frames], atol=1e-4)
    assert not np.allclose(raw.mels[0][:, 60:90], ref[0][:, 60:90], atol=1e-1)


def test_regenerate_is_the_complement_of_keep(pipes):
    pipe, wav = pipes["teacher"], _clip()
    kept = pipe.inpaint("a beep", wav, keep="0-0.5,1.0-1.5", seed=5, iterations=2)
    regen = pipe.inpaint("a beep", wav, regenerate="0.5-1.0", seed=5, iterations=2)
    assert np.array_equal(kept.wavs, regen.wavs) and kept.edit["keep"] == regen.edit["keep"]
    assert regen.edit["requested"] == {"regenerate": "0.5-1.0"}


def test_one_input_clip_per_prompt_shares_a_batch(pipes):
    pipe, a, b = pipes["student"], _clip(seed=0), 0.5 * _clip(seed=1)[::-1].copy()
    out = pipe.inpaint(["a beep", "rain"], [a, b], keep="0-0.5", seed=0, iterations=2,
                       batch_size=2)
    fade = int(editing.DEFAULT_CROSSFADE * SR)
    assert np.array_equal(out.wavs[0, :8000 - fade], a[:8000 - fade])
    assert np.array_equal(out.wavs[1, :8000 - fade], b[:8000 - fade])
    assert [e["audio_sha256"] for e in out.edit] == [
        editing.read_source(x, SR).sha256 for x in (a, b)]
    with pytest.raises(UserError, match="one length"):
        pipe.inpaint(["a", "b"], [a, _clip(1.0)], keep="0-0.5")
    with pytest.raises(UserError, match="one per prompt"):
        pipe.inpaint(["a", "b", "c"], [a, b], keep="0-0.5")


# ------------------------------------------------------------------ long audio, seeds
def _seam_ratio(wav: np.ndarray, seams: list[int], radius: int = 320) -> float:
    """Largest |x[s] - x[s-1]| at a seam s, in units of the RMS sample step within
    `radius` samples of it: a click is a step many times the local ones."""
    d = np.diff(wav.astype(np.float64))
    return max(abs(d[s - 1]) / np.sqrt(np.mean(d[s - radius:s + radius] ** 2)) for s in seams)


CLICK_RATIO = 4.0  # white noise steps past 4 RMS once in ~16,000 samples


def test_three_windows_give_the_length_and_no_click_at_the_seams(pipes):
    pipe = pipes["teacher"]
    window = pipe.cfg.audio.max_seconds
    out = pipe.generate("rain falls", pipe.settings(seed=0, duration=3 * window, iterations=2),
                        plan=pipe.plan(pipe.settings(duration=3 * window), overlap=0.5))
    assert out.wavs.shape == (1, int(3 * window * SR))
    assert len(out.edit["windows"]) == 4 and out.edit["overlap"] == 0.5
    seams = [int(a * SR) for a, _ in out.edit["windows"][1:]]
    seams += [int(b * SR) for _, b in out.edit["windows"][:-1]]
    assert _seam_ratio(out.wavs[0], seams) < CLICK_RATIO
    clicked = out.wavs[0].copy()  # the check sees a real click: a step at a seam
    step = 10 * np.sqrt(np.mean(np.diff(clicked[seams[0] - 320:seams[0] + 320]) ** 2))
    clicked[seams[0]:] += step
    assert _seam_ratio(clicked, seams) > CLICK_RATIO
    again, _ = pipe("rain falls", seed=0, duration=3 * window, iterations=2, overlap=0.5)
    assert np.array_equal(again, out.wavs)


def test_seeds_are_deterministic_and_variations_differ(pipes):
    pipe, wav = pipes["student"], _clip()
    a = pipe.vary("a beep", wav, strength=0.5, variations=2, seed=3, iterations=2)
    b = pipe.vary("a beep", wav, strength=0.5, variations=2, seed=3, iterations=2)
    c = pipe.vary("a beep", wav, strength=0.5, variations=2, seed=4, iterations=2)
    assert a.wavs.shape[0] == 2 and np.array_equal(a.wavs, b.wavs)
    assert not np.array_equal(a.wavs[0], a.wavs[1]) and not np.array_equal(a.wavs, c.wavs)
    assert a.edit["strength"] == 0.5 and a.edit["variations"] == 2
    plan = editing.plan_vary(pipe.model.geometry, pipe.codec, editing.read_source(wav, SR),
                             0.25, pipe.device)
    _, kept = editing.row_known([plan] * 2, 1, torch.Generator().manual_seed(0), pipe.device)
    assert (~kept).sum(1).tolist() == [round(0.25 * plan.num_tokens)] * 2
    assert not torch.equal(kept[0], kept[1])  # each variation re-masks its own tokens


def test_continue_audio_keeps_the_clip_and_reaches_the_duration(pipes):
    pipe, wav = pipes["teacher"], _clip(1.0)
    out = pipe.continue_audio("a beep", wav, duration=3.0, seed=0, iterations=2)
    assert out.wavs.shape == (1, 3 * SR) and out.edit["keep"] == [[0.0, 1.0]]
    assert len(out.edit["windows"]) == 2  # 3 s > the tiny model's 2 s window
    fade = int(editing.DEFAULT_CROSSFADE * SR)
    assert np.array_equal(out.wavs[0, :SR - fade], wav[:SR - fade])
    with pytest.raises(UserError, match="longer than the clip"):
        pipe.continue_audio("a beep", wav, duration=1.0)


# ------------------------------------------------------------------ CLI
def _run(prompts: Path, ckpt: Path, out: Path, *extra: str) -> int:
    return sample_main(["--prompts", str(prompts), "--ckpt", str(ckpt), "--out-dir", str(out),
                        "--device", "cpu", "--iterations", "2", "--no-spectrograms", *extra])


def test_cli_records_the_edit_and_reruns_only_changed_settings(tiny_ckpts, prompts_file,
                                                               clip_file, tmp_path, capsys):
    out, ckpt = tmp_path / "out", tiny_ckpts["student"]
    assert _run(prompts_file, ckpt, out, "--audio", str(clip_file), "--keep", "0-0.52") == 0
    record = json.loads((out / "000-a-high-beep-repeats-seed0.json").read_text())
    edit = record["edit"]
    assert edit["mode"] == "inpaint" and edit["keep"] == [[0.0, 0.5]]
    assert edit["requested"] == {"keep": "0-0.52"} and edit["audio"] == str(clip_file)
    assert edit["audio_sha256"] == __import__("hashlib").sha256(clip_file.read_bytes()).hexdigest()
    assert record["duration"] == pytest.approx(1.5)
    capsys.readouterr()
    assert _run(prompts_file, ckpt, out, "--audio", str(clip_file), "--keep", "0-0.52") == 0
    assert "skipping 1" in capsys.readouterr().err
    assert _run(prompts_file, ckpt, out, "--audio", str(clip_file), "--keep", "0-0.8") == 0
    assert "skipping" not in capsys.readouterr().err
    assert _run(prompts_file, ckpt, tmp_path / "var", "--audio", str(clip_file),
                "--strength", "0.3", "--variations", "2") == 0
    takes = sorted(p.name for p in (tmp_path / "var").glob("*.json"))
    assert takes == ["000-a-high-beep-repeats-seed0-v0.json",
                     "000-a-high-beep-repeats-seed0-v1.json"]
    assert json.loads((tmp_path / "var" / takes[1]).read_text())["edit"]["variation"] == 1
    assert _run(prompts_file, tiny_ckpts["teacher"], tmp_path / "cont", "--continue",
                str(clip_file), "--duration", "2") == 0
    wav, sr = sf.read(tmp_path / "cont" / "000-a-high-beep-repeats-seed0.wav")
    assert sr == SR and len(wav) == 2 * SR


def test_cli_resamples_another_rate_with_a_warning(tiny_ckpts, prompts_file, tmp_path, capsys):
    path = tmp_path / "in22k.wav"
    from energytta.audio.resample import resample

    sf.write(path, resample(_clip(1.2), SR, 22050), 22050, subtype="PCM_16")
    assert _run(prompts_file, tiny_ckpts["student"], tmp_path / "out", "--audio", str(path),
                "--regenerate", "0.5-1.0") == 0
    err = capsys.readouterr().err
    assert "warning: --audio" in err and "22050 Hz; resampled to the model's 16000 Hz" in err
    record = json.loads((tmp_path / "out" / "000-a-high-beep-repeats-seed0.json").read_text())
    assert record["edit"]["audio_sample_rate"] == 22050


def test_bad_edit_input_is_one_line_and_writes_nothing(tiny_ckpts, prompts_file, clip_file,
                                                       tmp_path, capsys):
    silent, garbage = tmp_path / "silent.wav", tmp_path / "garbage.wav"
    sf.write(silent, np.zeros(SR, dtype=np.float32), SR)
    garbage.write_bytes(b"RIFF\x00garbage" * 8)
    audio = ["--audio", str(clip_file)]
    cases = [(["--audio", str(tmp_path / "none.wav"), "--keep", "0-1"], "not found"),
             (["--audio", str(garbage), "--keep", "0-1"], "cannot read audio file"),
             (["--audio", str(silent), "--keep", "0-0.5"], "silent"),
             ([*audio, "--keep", "0-0.5,1.0-2.5"], "after the clip's end"),
             ([*audio, "--keep", "0-1,0.5-1.2"], "overlap"),
             ([*audio, "--keep", "1-1"], "empty"),
             ([*audio, "--keep", "0-1.5"], "nothing is left to regenerate"),
             ([*audio, "--strength", "0"], "(0, 1]"),
             ([*audio, "--strength", "1.5"], "(0, 1]"),
             (["--keep", "0-1"], "--keep needs --audio"),
             (["--regenerate", "0-1"], "--regenerate needs --audio"),
             (audio, "--audio needs --keep"),
             (["--variations", "2"], "--variations needs"),
             (["--continue", str(clip_file), "--duration", "1"], "longer than the clip"),
             (["--duration", "1e4"], "limit of windowed generation"),
             (["--duration", "5", "--overlap", "3"], "--overlap")]
    out = tmp_path / "out"
    for extra, match in cases:
        assert _run(prompts_file, tiny_ckpts["teacher"], out, *extra) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and match in err[0], (extra, err)
        assert not out.exists(), extra  # nothing written, not even the folder
