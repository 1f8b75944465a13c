"""Pretrained text encoders and CLAP as users have them on disk, built with random weights
from the real transformers classes: AudioLDM's diffusers pipeline folder (text_encoder/
beside tokenizer/), Flan-T5 and CLAP folders, a folder without its tokenizer, and CLAP
audio embeddings that do not change from call to call."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CLAP_TEXT, clap_tokenizer, save_clap
from energytta.errors import UserError
from energytta.text import TextEncoder

PROMPTS = ["a dog barks", "rain falls while a high beep repeats"]


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory) -> Path:
    """AudioLDM's pipeline layout: text_encoder/ (ClapTextModelWithProjection) and its
    tokenizer in the sibling tokenizer/ (RobertaTokenizer)."""
    from transformers import ClapTextConfig, ClapTextModelWithProjection

    root = tmp_path_factory.mktemp("audioldm_pipeline")
    torch.manual_seed(3)
    ClapTextModelWithProjection(ClapTextConfig(**CLAP_TEXT)).save_pretrained(
        root / "text_encoder", safe_serialization=True)
    clap_tokenizer().save_pretrained(root / "tokenizer")
    return root


def test_the_pipeline_folder_and_its_text_encoder_folder_load(pipeline_dir):
    from transformers import ClapTextModelWithProjection

    ref = ClapTextModelWithProjection.from_pretrained(pipeline_dir / "text_encoder").eval()
    tok = clap_tokenizer()(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = ref(**tok).last_hidden_state
    for folder in (pipeline_dir / "text_encoder", pipeline_dir):
        states, mask = TextEncoder(str(folder))(PROMPTS)
        assert torch.equal(mask, tok["attention_mask"].bool())
        assert torch.allclose(states[mask], want[mask], atol=1e-6)


@pytest.mark.parametrize("layout", ["flan_t5_dir", "clap_dir"])
def test_flan_t5_and_clap_folders_load(layout, request, capfd):
    enc = TextEncoder(str(request.getfixturevalue(layout)))
    states, mask = enc(PROMPTS)
    assert states.shape[:2] == mask.shape and states.shape[-1] == enc.dim
    assert torch.isfinite(states[mask]).all()
    # the weights a text tower skips (CLAP's audio tower) are no wall of log lines
    assert "UNEXPECTED" not in capfd.readouterr().err


def test_a_text_encoder_folder_missing_weights_is_one_line(pipeline_dir, tmp_path):
    """transformers would fill the missing layer with random weights and go on."""
    folder = tmp_path / "pipe"
    shutil.copytree(pipeline_dir, folder)
    config = json.loads((folder / "text_encoder" / "config.json").read_text())
    config["num_hidden_layers"] = 2  # the files hold one layer
    (folder / "text_encoder" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError) as e:
        TextEncoder(str(folder))
    assert "\n" not in str(e.value) and "missing" in str(e.value)


def test_a_text_encoder_folder_without_its_tokenizer_is_one_line(pipeline_dir, tmp_path):
    lone = tmp_path / "text_encoder"
    shutil.copytree(pipeline_dir / "text_encoder", lone)  # no ../tokenizer beside it
    with pytest.raises(UserError) as e:
        TextEncoder(str(lone))
    msg = str(e.value)
    assert "\n" not in msg and str(lone) in msg and "no tokenizer" in msg
    assert "save_pretrained" in msg


@pytest.mark.parametrize("fusion", [False, True])
def test_clap_audio_embeddings_of_a_long_clip_are_the_same_at_every_call(fusion, tmp_path):
    from energytta.eval.clap import ClapScorer

    scorer = ClapScorer(save_clap(tmp_path / "clap", fusion=fusion))
    rng = np.random.default_rng(0)
    t = np.arange(16 * scorer.sample_rate) / scorer.sample_rate  # 16 s > the 10-s window
    wav = (np.sin(2 * np.pi * 300 * t * (1 + t)) * 0.3 + 0.05 * rng.standard_normal(t.size))
    np.random.seed(1)
    first = scorer.audio_embeddings([wav])
    draws = np.random.random(3)
    np.random.seed(1)
    np.random.random(7)  # the global generator elsewhere, as in any caller's code
    assert np.array_equal(scorer.audio_embeddings([wav]), first)
    np.random.seed(1)
    scorer.audio_embeddings([wav])
    assert np.array_equal(np.random.random(3), draws)  # and the caller's draws did not move
