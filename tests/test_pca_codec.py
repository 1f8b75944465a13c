"""The compact linear codec (codec.name=pca): shapes on the latent grid, a round trip that
keeps what the components keep, fitted buffers that travel in checkpoints, and a training
step on its tokens."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from energytta.audio.codec import build_codec, latent_shape
from energytta.config import load_config


def _cfg(*extra: str):
    return load_config("tiny", ["codec.name=pca", "codec.pca_dim=16", "codec.pca_frames=4",
                                "model.patch_t=1", "model.patch_f=1", *extra])


def _clips(n: int = 6, seconds: float = 1.0) -> torch.Tensor:
    """Tones with a slow pitch glide and an on/off gate: correlated mel patches."""
    t = torch.arange(int(16000 * seconds)) / 16000
    rows = []
    for i in range(n):
        f = 300.0 * (i + 1) * (1 + 0.3 * t)
        rows.append(0.3 * torch.sin(2 * math.pi * torch.cumsum(f, 0) / 16000)
                    * ((t * (i + 2)) % 1 < 0.6))
    return torch.stack(rows)


def test_latents_sit_on_the_grid_and_the_round_trip_keeps_the_kept_variance():
    cfg = _cfg()
    codec = build_codec(cfg)
    wav = _clips()
    codec.fit_stats([wav])
    lat = codec.encode(wav)
    assert tuple(lat.shape[1:]) == latent_shape(cfg, 1.0) == (16, 25, 1)  # 100 frames / 4
    assert lat.std().item() == pytest.approx(1.0, rel=0.3)  # one scale, unit on average
    mel = codec.mel(wav)
    rec = codec.decode(lat)
    assert rec.shape == mel.shape
    keep = codec.kept_variance(mel)
    assert keep > 0.9
    # the round trip's error is exactly the variance the components leave out
    z = (mel - codec.mean[:, None]) / codec.std[:, None]
    zr = (rec - codec.mean[:, None]) / codec.std[:, None]
    p = codec._patches(z.transpose(1, 2).unsqueeze(1)) - codec.pca_mean
    err = (z - zr).square().sum() / p.square().sum()
    assert float(err) == pytest.approx(1 - keep, rel=1e-3, abs=1e-5)


def test_fitted_buffers_travel_in_the_model_file(tmp_path, tiny_text_dir):
    from energytta.checkpoint import load_model, save_inference
    from energytta.models.tta import TTAModel

    cfg = _cfg(f"text.model={tiny_text_dir}")
    codec = build_codec(cfg)
    codec.fit_stats([_clips()])
    model = TTAModel(cfg, 32)
    save_inference(tmp_path / "m.safetensors", model, codec, cfg, "teacher", text_dim=32)
    _, _, _, loaded = load_model(tmp_path / "m.safetensors")
    for k, v in codec.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    wav = _clips(2)
    assert torch.allclose(loaded.decode(loaded.encode(wav)), codec.decode(codec.encode(wav)))


@pytest.mark.slow
def test_a_teacher_trains_on_pca_tokens(tmp_path, tiny_text_dir):
    from energytta.train.loop import train
    from energytta.train.logging import read_metrics

    rows = []
    for i, wav in enumerate(_clips(4, 1.2)):
        sf.write(tmp_path / f"{i}.wav", wav.numpy().astype(np.float32), 16000)
        rows.append(json.dumps({"audio": f"{i}.wav", "caption": f"tone {i}"}))
    (tmp_path / "train.jsonl").write_text("\n".join(rows) + "\n")
    m = tmp_path / "train.jsonl"
    train(_cfg(f"text.model={tiny_text_dir}", f"data.train={m}", f"data.val={m}",
               f"train.out_dir={tmp_path / 'run'}", "train.steps=3", "train.log_every=1",
               "train.sample_prompts=[tone 1]", "head.sampling_steps=2",
               "sample.iterations=2", "data.batch_size=2"))
    losses = [r["loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert (tmp_path / "run" / "samples" / "step-0000003" / "00.wav").is_file()
