"""Learned and pretrained codecs: the mel VAE, the trained vocoder, AudioLDM VAE + HiFi-GAN
from local folders (tiny random models), config selection, checkpoints, energytta-train."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import energytta.checkpoint as ckpt
from energytta.audio.codec import MelCodec, build_codec
from energytta.audio.griffinlim import GriffinLim
from energytta.audio.mel import MelFrontend
from energytta.audio.vae import VAE_KEYS, VAECodec, vae_state
from energytta.audio.vocoder import (VOCODER_KEYS, MelVocoder, build_vocoder, mr_stft_distance,
                                     save_part, trained_vocoder, vocoder_loss)
from energytta.cli import train_main
from energytta.config import load_config
from energytta.errors import UserError
from energytta.models.geometry import patchify
from energytta.models.tta import TTAModel, latent_shape
from energytta.train.objectives.codec import vae_loss
from energytta.train.logging import read_metrics

TINY_VAE = ["codec.vae_width=4", "codec.vae_latent_channels=2", "codec.train=vae"]
TINY_VOC = ["codec.vocoder_width=16", "codec.vocoder_depth=1", "codec.vocoder=trained",
            "codec.train=vocoder"]


def _wav(batch: int = 2, seconds: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Harmonic tones with a little noise (B, S): something with structure to learn."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * 16000)) / 16000
    f0 = 200 + 400 * torch.rand(batch, 1, generator=g)
    return 0.3 * torch.sin(2 * np.pi * f0 * t) + 0.01 * torch.randn(batch, t.numel(), generator=g)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Four 1.2-s tones, one caption each."""
    folder = tmp_path_factory.mktemp("codec_corpus")
    lines = []
    for i in range(4):
        sf.write(folder / f"{i}.wav", _wav(1, 1.2, i)[0].numpy(), 16000)
        lines.append(json.dumps({"audio": f"{i}.wav", "caption": "a tone"}))
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "train.jsonl"


@pytest.fixture(scope="module")
def vae_file(tmp_path_factory) -> Path:
    """A tiny VAE file (random weights, fitted statistics) as energytta-train writes it."""
    cfg = load_config("tiny", TINY_VAE)
    torch.manual_seed(0)
    codec = VAECodec(cfg)
    codec.fit_mel_stats([codec.mel(_wav())])
    codec.fit_latent_stats([codec.mel(_wav())])
    path = tmp_path_factory.mktemp("vae") / "codec.safetensors"
    return save_part(path, vae_state(codec), cfg, "vae", VAE_KEYS)


@pytest.fixture(scope="module")
def vocoder_file(tmp_path_factory) -> Path:
    cfg = load_config("tiny", TINY_VOC)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("voc") / "vocoder.safetensors"
    return save_part(path, trained_vocoder(cfg).state_dict(), cfg, "vocoder", VOCODER_KEYS)


# ------------------------------------------------------------------ VAE
@pytest.mark.parametrize("samples", [16000, 15000])  # 100 frames, and 93 (padded to 96)
def test_vae_codec_shapes_agree_with_latent_shape(vae_file, samples):
    cfg = load_config("tiny", ["codec.name=vae", f"codec.path={vae_file}", *TINY_VAE[:2]])
    codec = build_codec(cfg)
    assert isinstance(codec, VAECodec)
    seconds = samples / 16000
    lat = codec.encode(_wav(2)[:, :samples])
    frames = -(-(samples // 160) // 4)
    assert lat.shape == (2, 2, frames, 16)
    assert codec.latent_shape(seconds) == latent_shape(cfg, seconds) == (2, frames, 16)
    mel = codec.decode(lat)
    assert mel.shape == (2, 64, 4 * frames) and torch.isfinite(mel).all()
    assert codec.vocode(mel).shape == (2, 4 * frames * 160)


def test_vae_latents_are_normalised_by_the_stored_statistics(vae_file):
    cfg = load_config("tiny", ["codec.name=vae", f"codec.path={vae_file}", *TINY_VAE[:2]])
    lat = build_codec(cfg).encode(_wav())  # the clips the statistics were fitted on
    per_channel = lat.transpose(0, 1).reshape(2, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(2), atol=1e-4)
    assert torch.allclose(per_channel.std(1), torch.ones(2), atol=1e-3)


def test_vae_training_steps_reduce_its_loss():
    cfg = load_config("tiny", [*TINY_VAE, "codec.vae_width=8"])
    torch.manual_seed(0)
    codec = VAECodec(cfg)
    mel = codec.mel(_wav(4))
    codec.fit_mel_stats([mel])
    opt = torch.optim.Adam(codec.vae.parameters(), lr=3e-3)
    losses = []
    for step in range(15):
        loss, *_ = vae_loss(codec, mel, cfg, torch.Generator().manual_seed(step), None)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3])


def test_tta_model_builds_on_vae_latents(vae_file):
    cfg = load_config("tiny", ["codec.name=vae", f"codec.path={vae_file}", *TINY_VAE[:2],
                               "model.patch_t=5", "model.patch_f=8"])
    codec = build_codec(cfg)
    model = TTAModel(cfg, 24)
    lat = codec.encode(_wav(2))  # (2, 2, 25, 16)
    assert model.latent_channels == 2 and model.latent_freq == 16
    assert model.token_dim == 2 * 5 * 8 and model.tokens_for(1.0) == 5 * 2
    tokens = patchify(lat, 5, 8)
    assert tokens.shape == (2, model.tokens_for(1.0), model.token_dim)
    mask = torch.ones(2, tokens.shape[1], dtype=torch.bool)
    z = model(tokens, mask, torch.randn(2, 3, 24), torch.ones(2, 3, dtype=torch.bool))
    assert z.shape == (2, tokens.shape[1], model.backbone.out_dim)


def test_checkpoint_carries_the_learned_codec_weights(vae_file, tmp_path):
    cfg = load_config("tiny", ["codec.name=vae", f"codec.path={vae_file}", *TINY_VAE[:2]])
    codec = build_codec(cfg)
    with torch.no_grad():  # differ from the file: the checkpoint's copy must win
        codec.latent_std.mul_(2.0)
        next(codec.vae.parameters()).add_(0.5)
    path = ckpt.save_inference(tmp_path / "m.safetensors", TTAModel(cfg, 24), codec, cfg,
                               text_dim=24)
    _, _, _, codec2 = ckpt.load_model(path)
    assert isinstance(codec2, VAECodec)
    state, state2 = codec.state_dict(), codec2.state_dict()
    assert state.keys() == state2.keys() and any(k.startswith("vae.") for k in state)
    assert all(torch.equal(state[k], state2[k]) for k in state)


def test_checkpoint_loads_after_the_codec_part_files_move(vae_file, vocoder_file, tmp_path):
    """A model checkpoint holds every codec.* tensor: it must not need codec.path or
    codec.vocoder_path to exist any more (sharing a model means sharing one file)."""
    moved = {}
    for name, src in (("vae", vae_file), ("voc", vocoder_file)):
        moved[name] = tmp_path / f"{name}.safetensors"
        shutil.copy(src, moved[name])
    cfg = load_config("tiny", ["codec.name=vae", f"codec.path={moved['vae']}",
                               *TINY_VAE[:2], "codec.vocoder=trained",
                               f"codec.vocoder_path={moved['voc']}", *TINY_VOC[:2]])
    codec = build_codec(cfg)
    path = ckpt.save_inference(tmp_path / "m.safetensors", TTAModel(cfg, 24), codec, cfg,
                               text_dim=24)
    for part in moved.values():
        part.unlink()
    _, _, _, codec2 = ckpt.load_model(path)
    state, state2 = codec.state_dict(), codec2.state_dict()
    assert any(k.startswith("vocoder.") for k in state) and state.keys() == state2.keys()
    assert all(torch.equal(state[k], state2[k]) for k in state)
    with pytest.raises(UserError, match="codec.path"):  # building from files still needs them
        build_codec(cfg)


# ------------------------------------------------------------------ vocoder
def test_trained_vocoder_shapes_and_training_reduces_its_loss():
    cfg = load_config("tiny", TINY_VOC)
    torch.manual_seed(0)
    voc = trained_vocoder(cfg)
    fe = MelFrontend(cfg.audio)
    wav = _wav(2, 0.5)
    assert voc(fe(wav)).shape == (2, 50 * 160)
    voc.fit_stats([fe(wav)])
    opt = torch.optim.Adam(voc.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss, logs = vocoder_loss(voc, fe, wav)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert set(logs) == {"mr_stft", "mel_l1"}
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])


def test_magnitude_prior_starts_at_the_pseudo_inverse_and_round_trips(tmp_path):
    from energytta.audio.vocoder import load_part

    cfg = load_config("tiny", [*TINY_VOC, "codec.vocoder_mag_prior=true"])
    torch.manual_seed(0)
    voc = trained_vocoder(cfg).eval()
    fe = MelFrontend(cfg.audio)
    wav = _wav(1, 0.5)
    mel = fe(wav)
    with torch.no_grad():  # the head's magnitude rows are zero: log|X| is the prior alone
        K = voc.n_fft // 2 + 1
        assert torch.count_nonzero(voc.head.weight[:K]) == 0
        prior = voc.prior_log_magnitude(mel)
    assert prior.shape == (1, K, mel.shape[-1]) and torch.isfinite(prior).all()
    # a steady tone's prior magnitude peaks at its frequency bin, at the right level
    t = torch.arange(16000) / 16000
    tone = 0.5 * torch.sin(2 * torch.pi * 1000 * t)[None]
    lin = voc.prior_log_magnitude(fe(tone)).exp()[0, :, 20:-20].mean(-1)  # (K,)
    bin_hz = 16000 / voc.n_fft
    assert abs(int(lin.argmax()) * bin_hz - 1000) <= 2 * bin_hz
    stft = torch.stft(tone[0], voc.n_fft, 160, window=torch.hann_window(voc.n_fft),
                      return_complex=True).abs()[:, 20:-20].mean(-1)
    assert 0.1 < float(lin.sum() / stft.sum()) < 10  # the windows' gains are accounted for
    path = save_part(tmp_path / "v.safetensors", voc.state_dict(), cfg, "vocoder",
                     VOCODER_KEYS)
    other = trained_vocoder(cfg)
    load_part(path, other, cfg, "vocoder", "codec.vocoder_path")
    with pytest.raises(UserError, match="vocoder_mag_prior"):  # the setting is checked
        load_part(path, trained_vocoder(load_config("tiny", TINY_VOC)),
                  load_config("tiny", TINY_VOC), "vocoder", "codec.vocoder_path")


def test_mr_stft_distance_is_zero_for_identical_audio_and_grows_with_noise():
    wav = _wav(2)
    noise = torch.randn(wav.shape, generator=torch.Generator().manual_seed(1))
    assert float(mr_stft_distance(wav, wav)) == pytest.approx(0.0, abs=1e-6)
    dists = [float(mr_stft_distance(wav + level * noise, wav)) for level in (1e-3, 1e-2, 1e-1)]
    assert 0 < dists[0] < dists[1] < dists[2]


# ------------------------------------------------------------------ selection by config
def test_codec_and_vocoder_are_selected_by_config(vocoder_file, vae_file):
    mel = build_codec(load_config("tiny"))
    assert isinstance(mel, MelCodec) and isinstance(mel.vocoder, GriffinLim)
    voc_keys = ["codec.vocoder=trained", f"codec.vocoder_path={vocoder_file}",
                "codec.vocoder_width=16", "codec.vocoder_depth=1"]
    mel_trained = build_codec(load_config("tiny", voc_keys))
    assert isinstance(mel_trained.vocoder, MelVocoder)
    assert any(k.startswith("vocoder.") for k in mel_trained.state_dict())
    vae = build_codec(load_config("tiny", ["codec.name=vae", f"codec.path={vae_file}",
                                           *TINY_VAE[:2], *voc_keys]))
    assert isinstance(vae, VAECodec) and isinstance(vae.vocoder, MelVocoder)
    assert vae.vocode(vae.decode(vae.encode(_wav()))).shape == (2, 16000)


@pytest.mark.parametrize("overrides, words", [
    (["codec.name=vae"], "codec.path"),
    (["codec.name=nope"], "codec.name"),
    (["codec.vocoder=trained"], "codec.vocoder_path"),
    (["codec.vocoder=wavenet"], "codec.vocoder"),
    (["codec.vocoder=hifigan"], "codec.vocoder_path"),
    (["codec.name=vae", "codec.path=/no/such/file.safetensors"], "not found"),
])
def test_bad_codec_config_is_a_one_line_user_error(overrides, words):
    with pytest.raises(UserError, match=words.replace(".", r"\.")) as e:
        build_codec(load_config("tiny", overrides))
    assert "\n" not in str(e.value)


def test_part_file_trained_with_other_settings_is_refused(vae_file, vocoder_file):
    with pytest.raises(UserError, match=r"vae_latent_channels=2"):
        build_codec(load_config("tiny", ["codec.name=vae", f"codec.path={vae_file}",
                                         "codec.vae_width=4"]))
    with pytest.raises(UserError, match="not a trained vae file"):
        build_codec(load_config("tiny", ["codec.name=vae", f"codec.path={vocoder_file}"]))


# ------------------------------------------------------------------ AudioLDM from a folder
def test_audioldm_vae_and_hifigan_load_from_a_local_folder(audioldm_dir):
    cfg = load_config("tiny", ["codec.name=audioldm", f"codec.path={audioldm_dir}",
                               "codec.vocoder=hifigan"])
    codec = build_codec(cfg)
    lat = codec.encode(_wav(2))
    assert lat.shape == (2, 8, 25, 16)
    assert codec.latent_shape(1.0) == latent_shape(cfg, 1.0) == (8, 25, 16)
    mel = codec.decode(lat)
    assert mel.shape == (2, 64, 100)
    wav = codec.vocode(mel)
    assert wav.shape == (2, 16000) and torch.isfinite(wav).all()
    model = TTAModel(cfg, 24)
    assert model.token_dim == 8 * cfg.model.patch_t * cfg.model.patch_f


def test_audioldm_hifigan_vocodes_the_mel_codec(audioldm_dir):
    codec = build_codec(load_config("tiny", ["codec.vocoder=hifigan",
                                             f"codec.vocoder_path={audioldm_dir / 'vocoder'}"]))
    mel = codec.mel(_wav(1))
    assert codec.vocode(mel).shape == (1, 16000)


def test_audioldm_folder_without_a_vae_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        build_codec(load_config("tiny", ["codec.name=audioldm", f"codec.path={tmp_path}"]))


@pytest.mark.parametrize("sub, key", [("vae", "codec.path"), ("vocoder", "codec.vocoder_path")])
def test_a_pickle_only_audioldm_part_is_refused_before_any_read(sub, key, tmp_path):
    folder = tmp_path / sub
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "diffusion_pytorch_model.bin").write_bytes(b"not read: a pickle could run code")
    overrides = {"vae": ["codec.name=audioldm", f"codec.path={tmp_path}"],
                 "vocoder": ["codec.vocoder=hifigan", f"codec.vocoder_path={tmp_path}"]}[sub]
    with pytest.raises(UserError, match=f"{key}=.*no safetensors weights"):
        build_codec(load_config("tiny", overrides))


# ------------------------------------------------------------------ energytta-train
def _train(corpus: Path, out: Path, config: str, *extra: str) -> int:
    return train_main(["--config", config, f"data.train={corpus}", f"train.out_dir={out}",
                       "audio.crop_seconds=1.0", "data.batch_size=2", "train.log_every=1",
                       "train.warmup_steps=1", *extra])


def test_energytta_train_codec_vae_writes_a_loadable_codec(corpus, tmp_path):
    rc = _train(corpus, tmp_path / "vae", "codec_vae", "train.steps=2",
                "codec.vae_width=4", "codec.vae_latent_channels=2")
    assert rc == 0
    out = tmp_path / "vae"
    # the resumable state is the one loop's step folder (no more train_state.safetensors)
    assert (out / "config.yaml").is_file() and ckpt.latest_checkpoint(out) is not None
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]
    cfg = load_config("tiny", ["codec.name=vae", f"codec.path={out / 'codec.safetensors'}",
                               "codec.vae_width=4", "codec.vae_latent_channels=2"])
    codec = build_codec(cfg)
    assert not torch.equal(codec.latent_std, torch.ones(2))  # measured after training
    assert codec.encode(_wav(1)).shape == (1, 2, 25, 16)
    assert _train(corpus, out, "codec_vae", "train.steps=2") == 2  # exists


def test_energytta_train_vocoder_resumes_and_gan_terms_run(corpus, tmp_path):
    out = tmp_path / "voc"
    small = ["codec.vocoder_width=16", "codec.vocoder_depth=1"]
    assert _train(corpus, out, "vocoder", "train.steps=2", *small) == 0
    assert _train(corpus, out, "vocoder", "train.steps=3", *small, "--resume") == 0
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]
    assert build_vocoder(load_config("tiny", ["codec.vocoder=trained", *small,
                                              "codec.vocoder_mag_prior=true",  # vocoder.yaml's
                                              f"codec.vocoder_path={out / 'vocoder.safetensors'}"]))
    from energytta.audio.vocoder import with_trained_vocoder  # or read from the file itself
    assert build_vocoder(with_trained_vocoder(load_config("tiny"), out / "vocoder.safetensors"))
    gan = tmp_path / "gan"
    assert _train(corpus, gan, "codec_vae", "train.steps=1", "codec.vae_width=4",
                  "codec.vae_adv_weight=0.1", "codec.vae_perceptual_weight=1.0") == 0
    record = read_metrics(gan / "metrics.jsonl")[-1]
    assert {"adv", "fm", "disc"} <= set(record) and np.isfinite(record["disc"])


def test_a_codec_run_folder_of_the_old_format_is_one_clear_error(corpus, tmp_path, capsys):
    out = tmp_path / "old"
    out.mkdir()
    (out / "train_state.safetensors").write_bytes(b"")  # what codec runs wrote before
    assert _train(corpus, out, "vocoder", "train.steps=1", "--resume") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train_state.safetensors" in err
    assert not (out / "config.yaml").exists()  # the old run folder is left as it was


def test_a_codec_step_folder_is_not_a_text_to_audio_model(corpus, tmp_path):
    out = tmp_path / "voc"
    assert _train(corpus, out, "vocoder", "train.steps=1", "codec.vocoder_width=16",
                  "codec.vocoder_depth=1") == 0
    with pytest.raises(UserError, match="vocoder.*not of a text-to-audio model"):
        ckpt.load_model(out)


def test_teacher_trains_on_vae_latents_and_reloads_with_them(vae_file, corpus, tiny_text_dir,
                                                             tmp_path):
    from energytta.train.loop import train

    out = tmp_path / "teacher"
    cfg = load_config("tiny", ["codec.name=vae", f"codec.path={vae_file}", *TINY_VAE[:2],
                               f"text.model={tiny_text_dir}", f"data.train={corpus}",
                               f"train.out_dir={out}", "train.steps=2", "data.batch_size=2",
                               "model.patch_t=5"])
    train(cfg)
    assert list((out / "samples" / "step-0000002").glob("*.wav"))
    cfg2, _, model, codec = ckpt.load_model(out / "model.safetensors")
    assert cfg2.codec.name == "vae" and isinstance(codec, VAECodec)
    assert model.token_dim == 2 * 5 * 16
    reference = build_codec(cfg).state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in codec.state_dict().items())
