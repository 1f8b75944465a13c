"""The `audioldm` codec's input mel against AudioLDM's own preprocessing code.

The reference is the code of the PyPI package `audioldm==0.1.1` (installed with --no-deps
by `scripts/install.sh test`): `audioldm/audio/tools.py` (`read_wav_file`, `wav_to_fbank`),
`stft.py` (`TacotronSTFT`) and `audio_processing.py`, loaded by path because the package's
`__init__` imports torchaudio, which has no build here. Two shims, neither touching the
numbers: `torchaudio.load` / `resample` read the wav with soundfile (all clips are already
16 kHz), and librosa >= 0.10 takes `filters.mel` / `util.pad_center` arguments by keyword.
"""
from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from energytta.audio.codec import build_codec
from energytta.audio.mel import MelFrontend
from energytta.config import from_saved_dict, load_config
from energytta.data.dataset import build_dataset

TOL = 1e-4  # max |Δ log-mel| in nats, on bins above QUIET
QUIET = -7.0  # nats (mel magnitude 1e-3): below it both sides are float32 rounding noise
FLOOR_TOL = 2e-3  # near the 1e-5 clamp: AudioLDM's own float32 and float64 runs differ by 7e-4


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _fake_torchaudio() -> types.ModuleType:
    def load(path):
        wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
        return torch.from_numpy(wav.T.copy()), sr

    def resample(wav, orig_freq, new_freq):
        assert orig_freq == new_freq, "the test clips are written at 16 kHz"
        return wav

    ta = types.ModuleType("torchaudio")
    ta.load, ta.functional = load, types.SimpleNamespace(resample=resample)
    return ta


@pytest.fixture(scope="module")
def reference():
    """AudioLDM's `tools` module (wav_to_fbank) and a TacotronSTFT with its settings."""
    try:
        import librosa
        spec = importlib.util.find_spec("audioldm")  # finds it without running __init__
    except ImportError:
        spec = None
    if spec is None:
        pytest.fail("the reference code is missing: bash scripts/install.sh test "
                    "(librosa, and audioldm==0.1.1 with --no-deps)")
    root = Path(spec.submodule_search_locations[0]) / "audio"
    names = ("audioldm", "audioldm.audio", "audioldm.audio.audio_processing",
             "audioldm.audio.stft", "audioldm.audio.tools", "torchaudio")
    saved = {n: sys.modules.get(n) for n in names}
    try:
        for pkg in names[:2]:
            sys.modules[pkg] = types.ModuleType(pkg)
        sys.modules["torchaudio"] = _fake_torchaudio()
        _load("audioldm.audio.audio_processing", root / "audio_processing.py")
        stft = _load("audioldm.audio.stft", root / "stft.py")
        tools = _load("audioldm.audio.tools", root / "tools.py")
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
    stft.librosa_mel_fn = lambda sr, n_fft, n_mels, fmin, fmax: librosa.filters.mel(
        sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    stft.pad_center = lambda data, size: librosa.util.pad_center(data, size=size)
    fn_stft = stft.TacotronSTFT(1024, 160, 1024, 64, 16000, 0, 8000)
    return tools, fn_stft


def _synth(seconds: float, seed: int) -> np.ndarray:
    """Harmonic tones with vibrato, a noise burst and an envelope: real-ish audio."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * 16000))) / 16000
    f0 = 220 * (1 + 0.02 * np.sin(2 * np.pi * 5 * t))
    tone = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / 16000) / k for k in range(1, 6))
    burst = rng.standard_normal(t.size) * (np.abs(t - seconds / 2) < 0.3)
    env = 0.5 * (1 - np.cos(2 * np.pi * np.minimum(t / seconds, 1)))
    return (0.4 * tone * env + 0.2 * burst).astype(np.float32)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """A loud 4-s synth clip, and a 3.3-s one with a DC offset and peak 0.05."""
    folder = tmp_path_factory.mktemp("parity")
    loud = _synth(4.0, 0)
    quiet = _synth(3.3, 1)
    quiet = 0.05 * quiet / np.abs(quiet).max() + 0.02
    out = {}
    for name, wav in (("loud", loud / np.abs(loud).max() * 0.9), ("quiet", quiet)):
        out[name] = folder / f"{name}.wav"
        sf.write(out[name], wav, 16000, subtype="FLOAT")  # float: read back bit for bit
    return out


def _cfg(audioldm_dir: Path, *extra: str):
    return load_config("tiny", ["codec.name=audioldm", f"codec.path={audioldm_dir}", *extra])


def _reference_mel(reference, path: Path, frames: int) -> torch.Tensor:
    tools, fn_stft = reference
    fbank, _, _ = tools.wav_to_fbank(str(path), target_length=frames, fn_STFT=fn_stft)
    return fbank.T  # (64, frames)


def _assert_parity(ours: torch.Tensor, ref: torch.Tensor) -> None:
    diff = (ours - ref).abs()
    assert diff[ref > QUIET].max() < TOL
    assert diff.max() < FLOOR_TOL


def test_codec_mel_matches_audioldm_on_a_whole_clip(reference, clips, audioldm_dir):
    codec = build_codec(_cfg(audioldm_dir))
    wav, _ = sf.read(clips["loud"], dtype="float32")
    ours = codec.mel(torch.from_numpy(wav)[None])[0]
    ref = _reference_mel(reference, clips["loud"], 400)
    assert ours.shape == ref.shape == (64, 400)
    _assert_parity(ours, ref)


def test_data_pipeline_matches_audioldm_on_a_padded_quiet_clip_with_dc(
        reference, clips, audioldm_dir, tmp_path):
    """AudioLDM normalises the whole file, then zero-pads it to 10.24 s (1,024 frames)."""
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio": str(clips["quiet"]), "caption": "x"}) + "\n")
    cfg = _cfg(audioldm_dir, f"data.val={manifest}", "audio.crop_seconds=10.24",
               "audio.max_seconds=10.24")
    item = build_dataset(cfg, "val")[0]
    codec = build_codec(cfg)
    ours = codec.mel(item["wav"][None])[0]
    ref = _reference_mel(reference, clips["quiet"], 1024)
    assert ours.shape == ref.shape == (64, 1024)
    _assert_parity(ours, ref)
    # the raw clip (peak 0.05 + DC) on the old path is far off: what the key fixes
    legacy = build_codec(_cfg(audioldm_dir, "codec.preprocess=legacy"))
    raw = torch.from_numpy(sf.read(clips["quiet"], dtype="float32")[0])
    old = legacy.mel(torch.nn.functional.pad(raw, (0, 163840 - raw.numel()))[None])[0]
    assert (old - ref)[:, :330].abs().mean() > 0.5  # over the clip's own frames


def test_ten_point_two_four_seconds_is_1024_mel_and_256_latent_frames(audioldm_dir):
    cfg = _cfg(audioldm_dir)
    codec = build_codec(cfg)
    lat = codec.encode(torch.from_numpy(_synth(10.24, 2))[None])
    assert lat.shape == (1, 8, 256, 16) == (1, *codec.latent_shape(10.24))
    assert torch.isfinite(lat).all()
    silence = codec.encode(torch.zeros(1, 16000))  # AudioLDM divides 0 by 0 here
    assert torch.isfinite(silence).all()


def test_legacy_preprocess_is_the_old_path_and_old_checkpoints_keep_it(audioldm_dir):
    cfg = _cfg(audioldm_dir, "codec.preprocess=legacy")
    wav = torch.from_numpy(_synth(1.0, 3))[None]
    assert torch.equal(build_codec(cfg).mel(wav), MelFrontend(cfg.audio)(wav))
    saved = cfg.to_dict()
    del saved["codec"]["preprocess"]  # a checkpoint saved before the key existed
    assert from_saved_dict(saved).codec.preprocess == "legacy"
    saved["codec"]["name"] = "mel"
    assert from_saved_dict(saved).codec.preprocess == "audioldm"  # the mel codec ignores it


def test_resuming_a_run_under_other_preprocessing_is_one_line(audioldm_dir, tmp_path):
    from energytta.errors import UserError
    from energytta.train.loop import Trainer, train

    sf.write(tmp_path / "a.wav", _synth(1.0, 4), 16000)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio": "a.wav", "caption": "a tone"}) + "\n")
    over = [f"data.train={manifest}", f"train.out_dir={tmp_path / 'run'}", "data.batch_size=1",
            "audio.crop_seconds=1.0", "model.patch_t=5", "train.sample_prompts=[]"]
    train(_cfg(audioldm_dir, *over, "codec.preprocess=legacy", "train.steps=1"))
    with pytest.raises(UserError) as e:  # the default preprocessing since the run started
        Trainer(_cfg(audioldm_dir, *over, "train.steps=2"), resume=True)
    assert "codec.preprocess=legacy" in str(e.value) and "\n" not in str(e.value)
