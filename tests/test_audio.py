"""Audio front-end: resampler, AudioLDM mel, Griffin-Lim, mel codec, I/O, plots."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.signal import resample_poly

from energytta.audio.codec import MelCodec, build_codec
from energytta.audio.griffinlim import GriffinLim
from energytta.audio.io import (crop_or_pad, load_audio, loudness_normalize, peak_normalize,
                                rms_dbfs, write_wav)
from energytta.audio.mel import MelFrontend, hz_to_mel, mel_filterbank
from energytta.audio.resample import reduced_factors, resample
from energytta.config import AudioConfig, Config, load_config
from energytta.errors import UserError


def tones(freqs: list[float], sr: int, seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return sum(0.2 * np.sin(2 * np.pi * f * t + i) for i, f in enumerate(freqs))


def level_db(x: np.ndarray) -> float:
    return 20 * np.log10(np.sqrt(np.mean(np.square(x))) + 1e-20)


# ------------------------------------------------------------------------------- resample
@pytest.mark.parametrize("orig_sr", [44100, 48000, 22050, 8000])
def test_resample_agrees_with_scipy_in_passband(orig_sr):
    x = tones([220.0, 1000.0, 3000.0], orig_sr).astype(np.float32)
    y = resample(x, orig_sr, 16000)
    up, down = reduced_factors(orig_sr, 16000)
    ref = resample_poly(x.astype(np.float64), up, down)
    assert y.dtype == np.float32 and y.shape == ref.shape
    inner = slice(400, -400)  # both zero-pad the edges, with different filter lengths
    assert np.max(np.abs(y[inner] - ref[inner])) < 2e-3
    assert np.max(np.abs(y[inner] - tones([220.0, 1000.0, 3000.0], 16000)[inner])) < 1e-4


@pytest.mark.parametrize("orig_sr", [44100, 48000, 22050])
def test_resample_attenuates_above_new_nyquist(orig_sr):
    for freq in (8800.0, 10000.0):  # would alias to 7.2 / 6 kHz
        y = resample(tones([freq], orig_sr), orig_sr, 16000)
        assert level_db(y[400:-400]) - level_db(tones([freq], orig_sr)) < -80.0


def test_upsampling_suppresses_images():
    y = resample(tones([3000.0], 8000, 1.0), 8000, 16000)[800:-800]
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    freqs = np.fft.rfftfreq(len(y), 1 / 16000)
    assert spectrum[freqs > 4300].max() / spectrum.max() < 1e-4  # the 5 kHz image is gone


def test_resample_torch_batched_matches_numpy():
    x = np.random.default_rng(0).standard_normal((2, 3, 2205)).astype(np.float32)
    y = resample(torch.from_numpy(x), 22050, 16000)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 3, 1600) and y.dtype == torch.float32
    np.testing.assert_allclose(y[1, 2].numpy(), resample(x[1, 2], 22050, 16000), atol=1e-6)
    assert np.array_equal(resample(x, 16000, 16000), x)
    with pytest.raises(ValueError):
        resample(x, 0, 16000)


# ------------------------------------------------------------------------------- mel
def reference_filterbank(sr: int, n_fft: int, n_mels: int, f_min: float, f_max: float):
    """Slaney (1998) Auditory Toolbox mels, written out per filter (independent of mel.py)."""
    def to_mel(f):
        return f / (200 / 3) if f < 1000 else 15 + 27 * np.log(f / 1000) / np.log(6.4)

    def to_hz(m):
        return m * (200 / 3) if m < 15 else 1000 * 6.4 ** ((m - 15) / 27)

    lo, hi = to_mel(f_min), to_mel(f_max)
    edges = [to_hz(lo + (hi - lo) * i / (n_mels + 1)) for i in range(n_mels + 2)]
    fb = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(n_mels):
        left, centre, right = edges[m], edges[m + 1], edges[m + 2]
        for k in range(n_fft // 2 + 1):
            f = k * sr / n_fft
            if left <= f <= centre:
                fb[m, k] = (f - left) / (centre - left)
            elif centre < f <= right:
                fb[m, k] = (right - f) / (right - centre)
        fb[m] *= 2.0 / (right - left)  # slaney area normalisation
    return fb


def reference_logmel(wav: np.ndarray, c: AudioConfig) -> np.ndarray:
    """Explicit numpy framing + rfft: reflect pad (n_fft-hop)/2, no centring, magnitude."""
    pad = (c.n_fft - c.hop_length) // 2
    x = np.pad(wav.astype(np.float64), (pad, pad), mode="reflect")
    n = np.arange(c.n_fft)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / c.n_fft)  # periodic Hann
    frames = [x[i:i + c.n_fft] * window
              for i in range(0, len(x) - c.n_fft + 1, c.hop_length)]
    mag = np.abs(np.fft.rfft(np.stack(frames), axis=1)).T  # (K, T)
    fb = reference_filterbank(c.sample_rate, c.n_fft, c.n_mels, c.f_min, c.f_max)
    return np.log(np.maximum(fb @ mag, 1e-5))


def test_slaney_mel_scale_anchors():
    np.testing.assert_allclose(hz_to_mel(np.array([0.0, 500.0, 1000.0, 6400.0])),
                               [0.0, 7.5, 15.0, 42.0], atol=1e-9)


def test_mel_filterbank_matches_reference():
    fb = mel_filterbank(16000, 1024, 64, 0.0, 8000.0)
    assert fb.shape == (64, 513) and fb.dtype == np.float32
    np.testing.assert_allclose(fb, reference_filterbank(16000, 1024, 64, 0.0, 8000.0),
                               rtol=1e-4, atol=1e-7)
    assert (fb.max(axis=1) > 0).all()  # no empty filters at the low end


def test_mel_frontend_matches_numpy_reference():
    c = AudioConfig()
    rng = np.random.default_rng(1)
    wav = np.stack([0.3 * rng.standard_normal(4037), tones([440.0, 5000.0], 16000)[:4037]])
    mel = MelFrontend(c)(torch.from_numpy(wav).float())
    assert mel.shape == (2, 64, 4037 // 160) and mel.dtype == torch.float32
    for b in range(2):
        ref = reference_logmel(wav[b], c)
        # linear scale: float32 rounding of near-floor bins (~1e-5) is large in log terms only
        np.testing.assert_allclose(mel[b].exp().numpy(), np.exp(ref), rtol=1e-3, atol=1e-7)
        assert np.abs(mel[b].numpy() - ref)[ref > -9].max() < 1e-3


def test_mel_frontend_silence_hits_floor():
    mel = MelFrontend(AudioConfig())(torch.zeros(1, 1600))
    assert mel.shape == (1, 64, 10)
    assert torch.allclose(mel, torch.full_like(mel, np.log(1e-5)))


# ------------------------------------------------------------------------------- Griffin-Lim
def spectral_convergence(fe: MelFrontend, logmel: torch.Tensor, wav: torch.Tensor) -> float:
    target = logmel.exp()
    return float(torch.linalg.norm(fe(wav).exp() - target) / torch.linalg.norm(target))


def test_griffin_lim_converges_with_iterations():
    c = AudioConfig()
    t = torch.arange(8000) / 16000
    wav = (0.3 * torch.sin(2 * torch.pi * (300 * t + 1200 * t**2))
           + 0.2 * torch.sin(2 * torch.pi * 1500 * t) * (t > 0.2))[None]
    fe = MelFrontend(c)
    logmel = fe(wav)
    gl = GriffinLim(c, n_iter=0)
    sc = {n: spectral_convergence(fe, logmel, gl(logmel, n_iter=n)) for n in (0, 4, 32)}
    assert sc[0] > 0.4 and sc[4] < 0.8 * sc[0] and sc[32] < sc[4] and sc[32] < 0.2, sc


def test_griffin_lim_is_batched_and_seeded():
    c = AudioConfig()
    logmel = MelFrontend(c)(0.1 * torch.randn(3, 1600, generator=torch.Generator().manual_seed(0)))
    gl = GriffinLim(c, n_iter=2)
    a = gl(logmel, torch.Generator().manual_seed(7))
    b = gl(logmel, torch.Generator().manual_seed(7))
    other = gl(logmel, torch.Generator().manual_seed(8))
    assert a.shape == (3, 1600) and torch.equal(a, b) and not torch.allclose(a, other)
    single = gl(logmel[1:2], torch.Generator().manual_seed(7))
    assert single.shape == (1, 1600)


def test_stft_pair_is_exact_and_overlap_add_matches_fold():
    gl = GriffinLim(AudioConfig())
    x = torch.randn(2, 36 * 160 + 1024, generator=torch.Generator().manual_seed(0))
    # exact inverse on the part the vocoder keeps (the pad is cropped; at its outer edge the
    # envelope is ~1e-10 and float32 rounding is amplified)
    torch.testing.assert_close(gl.istft(gl.stft(x))[:, 432:-432], x[:, 432:-432], atol=1e-5,
                               rtol=0)
    frames = torch.randn(2, 1024, 37)
    fold = torch.nn.functional.fold(frames, output_size=(1, x.shape[1]), kernel_size=(1, 1024),
                                    stride=(1, 160))
    torch.testing.assert_close(gl.overlap_add(frames), fold.flatten(1))


def test_mel_to_linear_is_nonnegative_and_consistent():
    c = AudioConfig()
    fe = MelFrontend(c)
    wav = torch.from_numpy(tones([700.0, 2500.0], 16000, 0.2)).float()[None]
    gl = GriffinLim(c)
    mag = gl.mel_to_linear(fe(wav))
    assert mag.shape == (1, 513, 20) and (mag >= 0).all()
    mel = fe.mel(wav)
    assert torch.linalg.norm(fe.mel_basis @ mag - mel) < 0.05 * torch.linalg.norm(mel)


# ------------------------------------------------------------------------------- codec
def test_mel_codec_round_trip_and_stats():
    cfg = load_config("tiny")
    codec = build_codec(cfg)
    assert isinstance(codec, MelCodec) and codec.frames_per_second == 100.0
    assert codec.latent_shape(1.0) == (1, 100, 64) and codec.latent_shape(0.255) == (1, 25, 64)
    wav = 0.2 * torch.randn(2, 3200, generator=torch.Generator().manual_seed(0))
    wav[1] *= torch.linspace(0, 1, 3200)
    codec.fit_stats([wav[:1], wav[1:]])
    assert codec.is_fitted and (codec.std >= 0.1).all()
    lat = codec.encode(wav)
    assert lat.shape == (2, 1, 20, 64)
    assert abs(float(lat.mean())) < 1e-4 and abs(float(lat.square().mean()) - 1) < 0.05
    mel = codec.frontend(wav)
    torch.testing.assert_close(codec.decode(lat), mel, atol=1e-5, rtol=1e-5)
    assert codec.vocode(mel[:, :, :5]).shape == (2, 800)
    state = codec.state_dict()
    assert set(state) == {"mean", "std", "fitted"}
    fresh = MelCodec(cfg)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.encode(wav), lat)


def test_build_codec_unknown_name():
    cfg = Config()
    cfg.codec.name = "wavenet"
    with pytest.raises(UserError, match="codec.name 'wavenet'"):
        build_codec(cfg)


# ------------------------------------------------------------------------------- io
def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.wav"
    with pytest.raises(UserError, match="nope.wav"):
        load_audio(missing, 16000)
    corrupt = tmp_path / "broken.wav"
    corrupt.write_bytes(b"RIFF\x00\x01garbage" * 10)
    with pytest.raises(UserError, match="broken.wav") as err:
        load_audio(corrupt, 16000)
    assert "\n" not in str(err.value)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0,), np.float32), 16000)
    with pytest.raises(UserError, match="empty.wav.*empty"):
        load_audio(empty, 16000)


def test_load_downmixes_and_resamples(tmp_path):
    left, right = tones([440.0], 8000), tones([1000.0], 8000)
    path = tmp_path / "stereo.flac"
    sf.write(path, np.stack([left, right], axis=1), 8000, subtype="PCM_24")
    both = load_audio(path, 8000, mono=False)
    assert both.shape == (2, 4000) and both.dtype == np.float32
    mono = load_audio(path, 8000)
    np.testing.assert_allclose(mono, (left + right) / 2, atol=1e-5)
    up = load_audio(path, 16000)
    assert up.shape == (8000,)
    np.testing.assert_allclose(up[400:-400], ((tones([440.0], 16000) + tones([1000.0], 16000))
                                              / 2)[400:-400], atol=1e-3)


@pytest.mark.parametrize("ext,subtype", [("ogg", "VORBIS"), ("mp3", "MPEG_LAYER_III")])
def test_load_lossy_formats(tmp_path, ext, subtype):
    path = tmp_path / f"clip.{ext}"
    sf.write(path, tones([440.0], 16000), 16000, subtype=subtype)
    wav = load_audio(path, 16000)
    assert wav.ndim == 1 and abs(len(wav) - 8000) < 2000 and 0.1 < np.abs(wav).max() < 0.5


def test_write_read_round_trip_and_clipping(tmp_path):
    wav = np.concatenate([tones([440.0], 16000), [1.7, -3.0]]).astype(np.float32)
    path = tmp_path / "sub" / "out.wav"
    write_wav(path, torch.from_numpy(wav), 16000)
    info = sf.info(path)
    assert info.subtype == "PCM_16" and info.samplerate == 16000
    back = load_audio(path, 16000)
    np.testing.assert_allclose(back[:-2], wav[:-2], atol=1.0 / 32767)
    assert back[-2] == pytest.approx(1.0, abs=1e-4) and back[-1] == pytest.approx(-1.0)
    assert [p.name for p in path.parent.iterdir()] == ["out.wav"]  # no temporaries left


def test_crop_or_pad():
    wav = np.arange(10, dtype=np.float32)
    assert np.array_equal(crop_or_pad(wav, 13), np.r_[wav, 0, 0, 0])
    assert np.array_equal(crop_or_pad(wav, 4), wav[:4])
    assert np.array_equal(crop_or_pad(wav, 4, offset=6), wav[6:])
    draws = {int(crop_or_pad(wav, 4, rng=np.random.default_rng(s))[0]) for s in range(40)}
    assert draws == set(range(7))
    a = crop_or_pad(wav, 4, rng=np.random.default_rng(3))
    assert np.array_equal(a, crop_or_pad(wav, 4, rng=np.random.default_rng(3)))
    assert crop_or_pad(np.ones((2, 5)), 3).shape == (2, 3)
    with pytest.raises(ValueError):
        crop_or_pad(wav, 4, offset=7)


def test_level_normalisation():
    wav = tones([440.0], 16000).astype(np.float32)
    assert np.abs(peak_normalize(wav, 0.5)).max() == pytest.approx(0.5)
    assert rms_dbfs(loudness_normalize(wav, -30.0)) == pytest.approx(-30.0, abs=1e-3)
    limited = loudness_normalize(wav, 0.0, max_peak=0.9)
    assert np.abs(limited).max() == pytest.approx(0.9, abs=1e-6)
    silent = np.zeros(100, np.float32)
    assert np.array_equal(loudness_normalize(silent), silent)
    assert np.array_equal(peak_normalize(silent), silent)


def test_save_spectrogram_png(tmp_path):
    from energytta.audio.plot import save_spectrogram_png

    path = tmp_path / "figs" / "mel.png"
    save_spectrogram_png(torch.randn(64, 50), path, title="noise")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        save_spectrogram_png(np.zeros(5), tmp_path / "bad.png")


def test_griffinlim_report_tool(tmp_path):
    from research import griffinlim_report as tool
    lines = []
    for i, f in enumerate((440.0, 1200.0)):
        write_wav(tmp_path / "clips" / f"{i}.wav", tones([f], 16000, 0.4), 16000)
        lines.append(f'{{"audio": "clips/{i}.wav", "caption": "tone {i}"}}\n')
    (tmp_path / "m.jsonl").write_text("".join(lines))
    md, png = tmp_path / "doc" / "gl.md", tmp_path / "doc" / "img" / "gl.png"
    argv = ["--manifest", str(tmp_path / "m.jsonl"), "--num", "2", "--iters", "0,3",
            "--out-md", str(md), "--out-png", str(png), "--no-progress"]
    assert tool.main(argv) == 0
    text = md.read_text()
    assert "--iters 0,3" in text and "| 3 |" in text and "](img/gl.png)" in text
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(UserError, match="missing.jsonl"):
        tool.main(["--manifest", str(tmp_path / "missing.jsonl")])
