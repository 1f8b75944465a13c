"""`energytta-data convert-clap`: LAION-CLAP `.pt` checkpoints as users have them on disk.

The `laion_clap` package cannot be installed beside energytta (it pins numpy < 2 and its
model code imports torchvision), so the LAION checkpoints here are built the fallback way:
a small random transformers `ClapModel`, its state dict renamed to LAION's module names as
written below from laion_clap's htsat.py / model.py (independently of the converter's own
table), LAION's extra tensors added (mel front-end, AudioSet head, training MLPs, shifted-
window masks), `module.` prefixes as DDP saves them, inside {"state_dict", "epoch", ...}.
The converted folder must give the source model's embeddings.
"""
from __future__ import annotations

import argparse
import re

import numpy as np
import pytest
import torch

from conftest import clap_tokenizer
from energytta.cli import data_main

TEXT = dict(vocab_size=40, hidden_size=128, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=80, layer_norm_eps=1e-5,
            projection_dim=16)  # 128 / 64 = 2 heads: RoBERTa's head width


def hf_clap(fusion: bool):
    from transformers import ClapConfig, ClapModel

    audio = dict(depths=[2, 1], num_attention_heads=[1, 2], patch_embeds_hidden_size=8,
                 hidden_size=16, projection_dim=16, window_size=8, spec_size=256,
                 num_mel_bins=64, patch_size=4, patch_stride=(4, 4), num_hidden_layers=2,
                 enable_fusion=fusion, fusion_type="aff_2d" if fusion else None)
    torch.manual_seed(3)
    model = ClapModel(ClapConfig(text_config=TEXT, audio_config=audio, projection_dim=16))
    with torch.no_grad():  # BatchNorm statistics and logit scales away from their init
        for name, buf in model.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                buf.copy_(torch.rand_like(buf) + 0.5)
        model.logit_scale_a.fill_(2.5)
    return model.eval()


_AUDIO = [  # transformers name -> LAION name (laion_clap/clap_module/htsat.py)
    (r"^audio_model\.audio_encoder\.batch_norm\.", "audio_branch.bn0."),
    (r"\.layernorm_before\.", ".norm1."), (r"\.layernorm_after\.", ".norm2."),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.attention\.self\.relative_position", ".attn.relative_position"),
    (r"\.intermediate\.dense\.", ".mlp.fc1."), (r"(blocks\.\d+)\.output\.dense\.", r"\1.mlp.fc2."),
    (r"^audio_model\.audio_encoder\.", "audio_branch."),
]


def laion_state_dict(model) -> dict[str, torch.Tensor]:
    """`model`'s weights under LAION-CLAP's names, plus the tensors only LAION files hold."""
    sd, out = model.state_dict(), {}
    for key, value in sd.items():
        if key.endswith((".query.weight", ".query.bias")) and key.startswith("audio_model"):
            kind = key.rsplit(".", 1)[1]
            base = key[: -len(f"query.{kind}")]
            value = torch.cat([sd[f"{base}{n}.{kind}"] for n in ("query", "key", "value")])
            key = base.replace(".attention.self.", ".attn.") + f"qkv.{kind}"
        elif re.search(r"attention\.self\.(key|value)\.", key) and key.startswith("audio_model"):
            continue
        elif key.endswith("token_type_ids"):
            continue
        for pattern, repl in _AUDIO if key.startswith("audio_model") else []:
            key = re.sub(pattern, repl, key)
        key = re.sub(r"^text_model\.", "text_branch.", key)
        key = re.sub(r"_projection\.linear1\.", "_projection.0.", key)
        key = re.sub(r"_projection\.linear2\.", "_projection.2.", key)
        out[key] = value.clone()
    g = torch.Generator().manual_seed(0)
    extra = {"audio_branch.spectrogram_extractor.stft.conv_real.weight": (513, 1, 1024),
             "audio_branch.spectrogram_extractor.stft.conv_imag.weight": (513, 1, 1024),
             "audio_branch.logmel_extractor.melW": (513, 64),
             "audio_branch.tscam_conv.weight": (527, 16, 2, 3),
             "audio_branch.tscam_conv.bias": (527,),
             "audio_branch.head.weight": (527, 16), "audio_branch.head.bias": (527,),
             "audio_branch.layers.0.blocks.1.attn_mask": (64, 64, 64)}  # 8x8 windows of 64
    for side in ("text", "audio"):
        for i in (0, 3):
            extra[f"{side}_transform.sequential.{i}.weight"] = (16, 16)
            extra[f"{side}_transform.sequential.{i}.bias"] = (16,)
    out.update({k: torch.randn(s, generator=g) for k, s in extra.items()})
    return out


def save_laion(path, model, protocol: int = 2, **more) -> None:
    """As laion_clap's training saves it: DDP-prefixed weights, epoch, a numpy metric."""
    sd = {f"module.{k}": v for k, v in laion_state_dict(model).items()}
    torch.save({"epoch": 15, "name": "630k-audioset", "state_dict": sd,
                "best_mAP": np.float64(0.9014), **more}, path, pickle_protocol=protocol)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("roberta_tok")
    clap_tokenizer().save_pretrained(folder)
    return folder


def _features(fusion: bool) -> dict:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4 if fusion else 1, 1001, 64, generator=g)
    return {"input_features": x, "is_longer": torch.tensor([[True], [False]])} if fusion \
        else {"input_features": x}


@torch.no_grad()
def _embeddings(model, fusion: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from energytta.eval.clap import _tensor

    ids = torch.tensor([[0, 7, 9, 11, 2, 1], [0, 5, 6, 2, 1, 1]])
    mask = (ids != 1).long()
    return (_tensor(model.get_audio_features(**_features(fusion))),
            _tensor(model.get_text_features(input_ids=ids, attention_mask=mask)))


@pytest.mark.parametrize("fusion,protocol", [(False, 2), (True, 4)])
def test_a_laion_checkpoint_converts_to_a_clap_folder_with_the_same_embeddings(
        fusion, protocol, tmp_path, tokenizer_dir, capsys):
    from transformers import ClapModel

    from energytta.eval.clap import ClapScorer

    source = hf_clap(fusion)
    ckpt = tmp_path / "630k-audioset-best.pt"
    save_laion(ckpt, source, protocol)
    out = tmp_path / "clap"
    assert data_main(["convert-clap", "--from", "laion", str(ckpt), "--out", str(out),
                      "--tokenizer", str(tokenizer_dir)]) == 0
    assert "--clap-model" in capsys.readouterr().out
    assert list(out.glob("*.safetensors")) and not list(out.glob("*.bin"))
    converted = ClapModel.from_pretrained(out, local_files_only=True).eval()
    assert converted.config.audio_config.enable_fusion == fusion
    for got, want in zip(_embeddings(converted, fusion), _embeddings(source, fusion)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert converted.logit_scale_a.item() == pytest.approx(2.5)
    # the folder is a complete CLAP folder: energytta's CLAP scorer reads it as is
    scorer = ClapScorer(out)
    assert scorer.sample_rate == 48000
    wav = np.random.default_rng(0).standard_normal(48000).astype(np.float32) * 0.1
    audio = scorer.audio_embeddings([wav])
    text = scorer.text_embeddings(["a dog barks"])
    assert audio.shape == text.shape == (1, 16) and np.isfinite(audio).all()


def _run(capfd, *argv) -> tuple[int, str]:
    code = data_main(["convert-clap", *map(str, argv)])
    return code, capfd.readouterr().err.strip()


def _assert_one_line(code: int, err: str, *words: str) -> None:
    assert code == 2 and err.startswith("error: ") and "\n" not in err, err
    assert "Traceback" not in err
    for w in words:
        assert w in err, err


def test_a_file_that_is_not_a_clap_checkpoint_is_one_line(tmp_path, tokenizer_dir, capfd):
    other = tmp_path / "resnet.pt"
    torch.save({"state_dict": {"conv1.weight": torch.ones(2)}, "epoch": 1}, other)
    code, err = _run(capfd, "--from", "laion", other, "--out", tmp_path / "o",
                     "--tokenizer", tokenizer_dir)
    _assert_one_line(code, err, "not a LAION-CLAP or MS-CLAP checkpoint")
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    code, err = _run(capfd, "--from", "laion", text, "--out", tmp_path / "o")
    _assert_one_line(code, err, "not a PyTorch checkpoint")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_checkpoint_that_needs_pickled_objects_is_refused_unrun(protocol, tmp_path,
                                                                   tokenizer_dir, capfd):
    ckpt = tmp_path / "with_args.pt"
    save_laion(ckpt, hf_clap(False), protocol, args=argparse.Namespace(lr=1e-4))
    code, err = _run(capfd, "--from", "laion", ckpt, "--out", tmp_path / "o",
                     "--tokenizer", tokenizer_dir)
    _assert_one_line(code, err, "argparse.Namespace", "never unpickles")
    assert not (tmp_path / "o").exists()


def test_a_wrong_from_is_refused(tmp_path, tokenizer_dir, capfd):
    ckpt = tmp_path / "630k.pt"
    save_laion(ckpt, hf_clap(False))
    with pytest.raises(SystemExit) as e:  # argparse: usage and the choices
        data_main(["convert-clap", "--from", "openai", str(ckpt), "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "invalid choice: 'openai'" in capfd.readouterr().err
    code, err = _run(capfd, "--from", "msclap", ckpt, "--out", tmp_path / "o",
                     "--tokenizer", tokenizer_dir)
    _assert_one_line(code, err, "LAION-CLAP checkpoint, not MS-CLAP", "--from laion")
    code, err = _run(capfd, "--from", "laion", ckpt, "--out", tmp_path / "o")
    _assert_one_line(code, err, "--tokenizer")
    assert not (tmp_path / "o").exists()


def _msclap_state_dict(captioner: bool) -> dict[str, torch.Tensor]:
    """MS-CLAP's module names (msclap/models/clap.py: audio_encoder.base is CNN14 or HTSAT,
    caption_encoder.base BERT or GPT-2, each with a Projection)."""
    sd = {"audio_encoder.base.conv_block1.conv1.weight": torch.ones(4, 1, 3, 3),
          "audio_encoder.projection.linear1.weight": torch.ones(8, 4),
          "audio_encoder.projection.layer_norm.weight": torch.ones(8),
          "caption_encoder.base.wte.weight": torch.ones(10, 4),
          "caption_encoder.projection.linear1.weight": torch.ones(8, 4),
          "logit_scale": torch.tensor(2.0)}
    if captioner:
        sd = {f"clap.{k}": v for k, v in sd.items()}
        sd["gpt.transformer.wte.weight"] = torch.ones(10, 4)
    return sd


@pytest.mark.parametrize("captioner", [False, True])
def test_an_ms_clap_checkpoint_is_refused_with_the_reason(captioner, tmp_path, tokenizer_dir,
                                                         capfd):
    ckpt = tmp_path / ("clapcap_weights_2023.pth" if captioner else "CLAP_weights_2022.pth")
    torch.save({"model": _msclap_state_dict(captioner)}, ckpt)
    for kind in ("msclap", "laion"):
        code, err = _run(capfd, "--from", kind, ckpt, "--out", tmp_path / "o",
                         "--tokenizer", tokenizer_dir)
        _assert_one_line(code, err, "MS-CLAP", "no transformers ClapModel form", "--from laion")
        assert ("captioning" in err) == captioner
    assert not (tmp_path / "o").exists()


def test_an_existing_out_folder_is_never_overwritten(tmp_path, tokenizer_dir, capfd):
    ckpt = tmp_path / "630k.pt"
    save_laion(ckpt, hf_clap(False))
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    code, err = _run(capfd, "--from", "laion", ckpt, "--out", out, "--tokenizer", tokenizer_dir)
    _assert_one_line(code, err, "already exists")
    assert (out / "notes.txt").read_text() == "keep"
