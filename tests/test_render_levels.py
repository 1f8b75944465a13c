"""The frame ceiling generated mels are held to before vocoding (energytta/audio/render.py)."""
import math

import torch

from energytta.audio.render import frame_db, limit_frames
from energytta.audio.mel import MelFrontend
from energytta.config import AudioConfig


def test_full_scale_sine_is_the_reference_level():
    front = MelFrontend(AudioConfig())
    ref = front.full_scale_db()
    t = torch.arange(16000) / 16000
    half = 0.5 * torch.sin(2 * math.pi * 440.0 * t)[None]  # -6 dBFS
    level = frame_db(front(half))[0, 2:-2].median().item()
    assert abs(level - (ref - 6.02)) < 0.5


def test_limit_frames_turns_down_only_loud_frames():
    g = torch.Generator().manual_seed(0)
    mel = torch.randn(2, 16, 10, generator=g) - 3.0  # (B, M, T)
    mel[0, :, 4] += 6.0  # one outlier frame, far louder than the rest
    ceiling = frame_db(mel)[1].max().item() + 1.0  # row 1 stays entirely below
    out = limit_frames(mel, ceiling)
    assert torch.equal(out[1], mel[1])  # quiet frames: bit for bit
    db = frame_db(out)
    assert db[0, 4].item() <= ceiling + 1e-4 and db[0, 4].item() > ceiling - 1e-3
    loud = frame_db(mel)[0] > ceiling
    assert torch.equal(out[0][:, ~loud], mel[0][:, ~loud])
    # the spectral shape of a limited frame is kept: a constant shift in log-magnitude
    shift = out[0, :, 4] - mel[0, :, 4]
    assert torch.allclose(shift, shift[0].expand_as(shift))


def test_rendering_applies_the_ceiling():
    from energytta.audio.codec import build_codec
    from energytta.audio.render import tokens_to_audio
    from energytta.config import Config

    cfg = Config()
    codec = build_codec(cfg)

    class Flat:  # tokens (B, N, d) -> latents (B, 1, T, n_mels)
        def unpatchify(self, tokens):
            return tokens.reshape(tokens.shape[0], 1, -1, cfg.audio.n_mels)

    tokens = torch.zeros(1, 40, cfg.audio.n_mels)
    tokens[0, 20] = 40.0  # an outlier frame, ~ +40 std in every bin
    mel, wav = tokens_to_audio(tokens, Flat(), codec)
    assert frame_db(mel).max().item() <= codec.full_scale_db() + 1e-3
    assert torch.isfinite(wav).all()
