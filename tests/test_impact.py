"""IMPACT's setup end to end (configs/impact_*.yaml) on random-weight parts in the real
layouts: AudioLDM's VAE (diffusers `AutoencoderKL`, AudioLDM's levels, tiny channels),
Flan-T5 (`T5EncoderModel` + T5 tokenizer) and CLAP (`ClapModel` + RoBERTa tokenizer)
folders saved by `save_pretrained`, widths and depths overridden to tiny."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import energytta.checkpoint as ckpt
from energytta.config import load_config
from energytta.models.tta import TTAModel, latent_shape
from energytta.text import ConcatTextEncoder, TextEncoder, build_text_encoder

WORDS = "a dog barks while rain falls".split()
TINY = ["model.width=32", "model.encoder_depth=1", "model.decoder_depth=1",
        "model.num_heads=2", "head.width=32", "head.depth=1",
        "sample.iterations=2", "data.batch_size=2", "train.steps=1", "train.warmup_steps=0"]
TEACHER = ["head.sampling_steps=2"]  # the diffusion head's key (the teacher only)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Four 10-s clips (AudioCaps' length; AudioLDM pads them to 10.24 s)."""
    folder = tmp_path_factory.mktemp("impact_clips")
    t = np.arange(160000) / 16000
    rows = []
    for i in range(4):
        sf.write(folder / f"{i}.wav", (0.1 * np.sin(2 * np.pi * (200 + 90 * i) * t)), 16000)
        rows.append(json.dumps({"audio": f"{i}.wav", "caption": f"a high beep {WORDS[i]}"}))
    (folder / "train.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder / "train.jsonl"


def _parts(audioldm_dir: Path, flan_t5_dir: Path, clap_dir: Path) -> list[str]:
    return [f"codec.path={audioldm_dir}", f"text.model={flan_t5_dir}",
            f"text.extra_model={clap_dir}"]


def test_concat_encoder_keeps_each_encoders_states_in_its_own_block(flan_t5_dir, clap_dir):
    enc = build_text_encoder(load_config("impact_base", [f"text.model={flan_t5_dir}",
                                                         f"text.extra_model={clap_dir}"]).text)
    assert isinstance(enc, ConcatTextEncoder) and enc.dim == 16 + 24
    prompts = ["a dog barks", "rain falls and the high beep repeats three times"]
    states, mask = enc(prompts)
    (s1, m1), (s2, m2) = TextEncoder(str(flan_t5_dir))(prompts), TextEncoder(str(clap_dir))(prompts)
    for i in range(2):
        n1, n2 = int(m1[i].sum()), int(m2[i].sum())
        assert int(mask[i].sum()) == n1 + n2 and mask[i, :n1 + n2].all()  # real tokens first
        assert torch.equal(states[i, :n1, :16], s1[i, :n1])
        assert torch.equal(states[i, n1:n1 + n2, 16:], s2[i, :n2])
        assert not states[i, :n1, 16:].any() and not states[i, n1:n1 + n2, :16].any()
        assert not states[i, n1 + n2:].any()


@pytest.mark.parametrize("name", ["impact_base", "impact_large"])
def test_preset_is_impacts_geometry(name, audioldm_dir):
    cfg = load_config(name, [f"codec.path={audioldm_dir}"])
    assert latent_shape(cfg, cfg.audio.crop_seconds) == (8, 256, 16)  # 10.24 s
    with torch.device("meta"):
        model = TTAModel(cfg, text_dim=1024 + 768)  # Flan-T5-large ⊕ CLAP (RoBERTa-base)
    assert (model.token_dim, model.max_tokens) == (128, 256)
    assert cfg.codec.preprocess == "audioldm" and cfg.model.grad_checkpointing == (
        name == "impact_large")


def test_preset_without_the_audioldm_folder_is_one_line(clips, tmp_path, capsys):
    from energytta.cli import train_main

    rc = train_main(["--config", "impact_base", f"data.train={clips}",
                     f"train.out_dir={tmp_path / 'run'}"])
    assert rc != 0
    err = capsys.readouterr().err.strip()
    assert "codec.path" in err and len(err.splitlines()) == 1


@pytest.mark.slow
@pytest.mark.parametrize("size", ["base", "large"])
def test_teacher_and_student_presets_train_a_step_on_real_layout_parts(
        size, audioldm_dir, flan_t5_dir, clap_dir, clips, tmp_path):
    from energytta.train.loop import train

    parts = _parts(audioldm_dir, flan_t5_dir, clap_dir)
    teacher = tmp_path / "teacher"
    train(load_config(f"impact_{size}",
                      [*parts, *TINY, *TEACHER, f"data.train={clips}", f"train.out_dir={teacher}"]))
    cfg, _, model, codec = ckpt.load_model(teacher / "model.safetensors")
    assert (model.token_dim, model.max_tokens, model.text_dim) == (128, 256, 16 + 24)
    assert cfg.codec.preprocess == "audioldm" and cfg.text.extra_model == str(clap_dir)
    student = tmp_path / "student"
    train(load_config(f"impact_{size}_student", [
        *parts, *TINY, f"data.train={clips}", f"train.out_dir={student}",
        f"teacher.ckpt={teacher / 'model.safetensors'}"]))
    cfg, _, model, _ = ckpt.load_model(student / "model.safetensors")
    assert cfg.head.kind == "energy" and model.max_tokens == 256
    wavs = sorted((student / "samples").rglob("*.wav"))
    assert wavs and sf.info(str(wavs[0])).duration == pytest.approx(10.24)
