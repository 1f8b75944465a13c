"""The token↔audio seam: the codec's latent grid, `TokenGeometry`, `tokens_to_audio`."""
from __future__ import annotations

import pytest
import torch

from energytta.audio.codec import LatentGrid, build_codec, latent_grid
from energytta.audio.render import limit_frames
from energytta.audio.render import tokens_to_audio
from energytta.config import load_config
from energytta.errors import UserError
from energytta.models.geometry import TokenGeometry
from energytta.models.geometry import patchify, unpatchify


@pytest.mark.parametrize("overrides", [[], ["codec.name=vae", "codec.vae_levels=2",
                                            "codec.vae_latent_channels=3"]])
def test_the_grid_comes_from_the_config_alone(overrides):
    cfg = load_config("tiny", overrides)
    grid = latent_grid(cfg)
    factor = 1 if not overrides else 4
    assert grid == LatentGrid(1 if not overrides else 3, 64 // factor, 16000, 160, factor)
    for seconds in (0.29, 1.0, 1.07, 2.0):  # ceil((S // hop) / factor), S rounded
        assert grid.frames(seconds) == -(-(round(seconds * 16000) // 160) // factor)
    assert grid.frames_per_second == 100.0 / factor


def test_a_built_codec_reports_the_same_grid():
    cfg = load_config("tiny")
    codec = build_codec(cfg)
    assert codec.grid == latent_grid(cfg)
    wav = torch.zeros(1, round(1.07 * 16000))
    assert tuple(codec.encode(wav).shape[1:]) == codec.latent_shape(1.07)


def test_token_geometry_sizes_durations_and_crops():
    g = TokenGeometry.from_config(load_config("tiny"))  # 100 frames/s, patches 10 x 16
    assert (g.token_dim, g.freq_tokens, g.max_tokens) == (160, 4, 80)
    assert g.tokens_for(1.07) == 40 and g.frames_for(1.07) == 100
    assert g.tokens_for_frames(107) == 40
    lat = torch.randn(2, 1, 107, 64)
    assert g.crop(lat).shape == (2, 1, 100, 64)
    tokens = g.patchify(g.crop(lat))
    assert torch.equal(tokens, patchify(lat[:, :, :100], 10, 16))
    assert torch.equal(g.unpatchify(tokens), unpatchify(tokens, 1, 100, 64, 10, 16))
    with pytest.raises(UserError, match="max_seconds"):
        g.tokens_for(2.5)


def test_token_geometry_rejects_patches_that_do_not_tile_the_grid():
    with pytest.raises(UserError, match="patch_f=24"):
        TokenGeometry.from_config(load_config("tiny", ["model.patch_f=24"]))
    with pytest.raises(UserError, match="shorter than one token"):
        TokenGeometry.from_config(load_config("tiny", ["audio.max_seconds=0.05"]))


def test_tokens_to_audio_is_unpatchify_decode_vocode():
    cfg = load_config("tiny")
    g, codec = TokenGeometry.from_config(cfg), build_codec(cfg)
    g0 = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, g.tokens_for(1.0), g.token_dim, generator=g0)
    mel, wav = tokens_to_audio(tokens, g, codec, generator=torch.Generator().manual_seed(1))
    # frames above a full-scale sine's are turned down to it (energytta/audio/render.py)
    ref_mel = limit_frames(codec.decode(g.unpatchify(tokens)), codec.full_scale_db())
    assert torch.equal(mel, ref_mel) and mel.shape == (2, 64, 100)
    ref_wav = codec.vocode(ref_mel, generator=torch.Generator().manual_seed(1))
    assert torch.equal(wav, ref_wav) and wav.shape == (2, 100 * 160)
