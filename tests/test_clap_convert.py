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
from energytta.errors import UserError

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


_HTSAT = [  # transformers' HTSAT names -> LAION's / MS-CLAP's (their htsat.py)
    (r"^batch_norm\.", "bn0."),
    (r"\.layernorm_before\.", ".norm1."), (r"\.layernorm_after\.", ".norm2."),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.attention\.self\.relative_position", ".attn.relative_position"),
    (r"\.intermediate\.dense\.", ".mlp.fc1."), (r"(blocks\.\d+)\.output\.dense\.", r"\1.mlp.fc2."),
]


def htsat_names(sd: dict[str, torch.Tensor], src: str, dst: str) -> dict[str, torch.Tensor]:
    """The HTSAT weights under `src` (transformers' names) renamed to HTS-AT's under `dst`,
    query / key / value fused into one qkv as HTS-AT holds them."""
    out = {}
    for key, value in sd.items():
        fused_away = ("key.weight", "key.bias", "value.weight", "value.bias")
        if not key.startswith(src) or key.endswith(fused_away):
            continue
        key = key[len(src):]
        if key.endswith((".query.weight", ".query.bias")):
            kind = key.rsplit(".", 1)[1]
            base = key[: -len(f"query.{kind}")]
            value = torch.cat([sd[f"{src}{base}{n}.{kind}"] for n in ("query", "key", "value")])
            key = base.replace(".attention.self.", ".attn.") + f"qkv.{kind}"
        for pattern, repl in _HTSAT:
            key = re.sub(pattern, repl, key)
        out[dst + key] = value.clone()
    return out


def laion_state_dict(model) -> dict[str, torch.Tensor]:
    """`model`'s weights under LAION-CLAP's names, plus the tensors only LAION files hold."""
    sd = model.state_dict()
    out = htsat_names(sd, "audio_model.audio_encoder.", "audio_branch.")
    for key, value in sd.items():
        if key.startswith("audio_model.") or key.endswith("token_type_ids"):
            continue
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
    assert (out / "preprocessor_config.json").is_file()
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
    # ... and so does the text encoder (text.extra_model): the converted RoBERTa's states
    from energytta.text import TextEncoder

    states, mask = TextEncoder(str(out))(["a dog barks"])
    assert states.shape[-1] == TEXT["hidden_size"] and torch.isfinite(states[mask]).all()


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
    listed = tmp_path / "embeddings.pt"
    torch.save([torch.ones(3)], listed)
    code, err = _run(capfd, "--from", "laion", listed, "--out", tmp_path / "o")
    _assert_one_line(code, err, "no state dict of tensors")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_checkpoint_that_needs_pickled_objects_is_refused_unrun(
        protocol, tmp_path, tokenizer_dir, capfd):
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


# --- MS-CLAP ------------------------------------------------------------------------------------
# msclap cannot be installed beside energytta (torchaudio, transformers < 5): its checkpoints
# are built from a small random `MsClap` with its weights renamed to msclap's module names
# (models/clap.py: audio_encoder.base = CNN14 or HTSATWrapper.htsat, caption_encoder.base =
# BERT or GPT-2, each with a .projection), plus the tensors only msclap files hold.

MSCLAP = {
    "2022": dict(audio=dict(encoder="cnn14", widths=[4, 4, 8, 8, 8, 16], mel_bins=64,
                            classes=5, out_emb=16, sample_rate=44100, window=1024, hop=320,
                            input_rate=44100, seconds=5),
                 text=dict(kind="bert", width=64, max_length=100, config=dict(
                     vocab_size=30522, hidden_size=64, num_hidden_layers=1,
                     num_attention_heads=1, intermediate_size=32, max_position_embeddings=128,
                     type_vocab_size=2)),
                 projection_dim=16),
    "2023": dict(audio=dict(encoder="htsat", htsat=dict(
                     depths=[2, 1], num_attention_heads=[1, 2], patch_embeds_hidden_size=8,
                     hidden_size=16, window_size=8, spec_size=256, num_mel_bins=64,
                     patch_size=4, patch_stride=[4, 4], num_hidden_layers=2),
                     sample_rate=32000, out_emb=16, window=1024, hop=320, input_rate=44100,
                     seconds=7),
                 text=dict(kind="gpt2", width=64, max_length=77, config=dict(
                     vocab_size=40, n_positions=80, n_embd=64, n_layer=1, n_head=1, n_inner=32,
                     bos_token_id=39, eos_token_id=39)),
                 projection_dim=16),
}


def ms_clap(version: str):
    from energytta.eval.msclap import MsClap

    torch.manual_seed(4)
    model = MsClap(MSCLAP[version])
    with torch.no_grad():  # statistics that keep the random network's output input-dependent
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.rand_like(buf) * 0.2 - 0.1)
            elif name.endswith("running_var"):  # the input BN sees dB log-mels
                buf.copy_((torch.rand_like(buf) + 0.5) * (100 if "bn0" in name else 1))
        for module in model.modules():  # He init: 12 narrow ReLU convs keep their signal
            if isinstance(module, torch.nn.Conv2d) and module.in_channels > 1:
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return model.eval()


def msclap_state_dict(model) -> dict[str, torch.Tensor]:
    sd, out = model.state_dict(), {}
    htsat = any(k.startswith("audio.htsat.") for k in sd)
    audio = "audio_encoder.base.htsat." if htsat else "audio_encoder.base."
    if htsat:
        out.update(htsat_names(sd, "audio.htsat.audio_encoder.", audio))
        out[audio + "layers.0.blocks.1.attn_mask"] = torch.zeros(64, 64, 64)
        out[audio + "tscam_conv.weight"] = torch.randn(527, 16, 2, 3)
        out[audio + "head.weight"] = torch.randn(527, 16)
    for key, value in sd.items():
        if key.startswith("audio.htsat."):
            continue
        key = re.sub(r"^audio\.", audio, key)
        key = re.sub(r"^audio_projection\.", "audio_encoder.projection.", key)
        key = re.sub(r"^text_projection\.", "caption_encoder.projection.", key)
        key = re.sub(r"^text\.", "caption_encoder.base.", key)
        out[key] = value.clone()
    out["logit_scale"] = torch.tensor(2.6)
    if model.gpt2:  # the causal-mask buffer older transformers saved
        out["caption_encoder.base.h.0.attn.bias"] = torch.ones(1, 1, 80, 80).tril()
    else:
        out["caption_encoder.base.pooler.dense.weight"] = torch.randn(64, 64)
        out["caption_encoder.base.pooler.dense.bias"] = torch.randn(64)
        out["caption_encoder.base.embeddings.position_ids"] = torch.arange(128)[None]
    return out


def gpt2_tokenizer(folder):
    import json

    from transformers import GPT2Tokenizer

    folder.mkdir()
    vocab = {"!": 0}
    for c in "abcdefghijklmnopqrstuvwxyzĠ":
        vocab[c] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    GPT2Tokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("version", ["2022", "2023"])
def test_an_ms_clap_checkpoint_converts_and_scores_like_the_source(version, tmp_path,
                                                                   tiny_text_dir, capsys):
    from transformers import AutoTokenizer

    from energytta.eval.clap import open_scorer
    from energytta.eval.embedders import get_embedder

    source = ms_clap(version)
    ckpt = tmp_path / f"CLAP_weights_{version}.pth"
    torch.save({"model": msclap_state_dict(source)}, ckpt)
    tok_dir = tiny_text_dir if version == "2022" else gpt2_tokenizer(tmp_path / "gpt2")
    out = tmp_path / "msclap"
    assert data_main(["convert-clap", "--from", "msclap", str(ckpt), "--out", str(out),
                      "--tokenizer", str(tok_dir)]) == 0
    assert "MS-CLAP" in capsys.readouterr().out
    scorer = open_scorer(out)
    assert scorer.sample_rate == 44100
    seconds = MSCLAP[version]["audio"]["seconds"]
    rng = np.random.default_rng(0)
    wav = (rng.standard_normal(seconds * 44100) * 0.1).astype(np.float32)
    short = wav[:2 * 44100]  # msclap repeats a shorter clip to its length
    got = scorer.audio_embeddings([wav, short])
    with torch.no_grad():
        batch = torch.from_numpy(np.stack([wav, np.tile(short, 4)[:len(wav)]]))
        want = source.audio_features(batch).double().numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # msclap's text path: GPT-2 gets " <|endoftext|>" and pads with "!"; BERT reads [CLS]
    texts = ["a dog barks", "rain"]
    tok = AutoTokenizer.from_pretrained(tok_dir)
    if version == "2023":
        tok.pad_token = "!"
        texts_in = [t + " <|endoftext|>" for t in texts]
    else:
        texts_in = texts
    ids = tok(texts_in, max_length=MSCLAP[version]["text"]["max_length"], padding="max_length",
              return_tensors="pt")
    keys = ("input_ids", "attention_mask") + (("token_type_ids",) if version == "2022" else ())
    with torch.no_grad():
        want = source.text_features(**{k: ids[k] for k in keys}).double().numpy()
    np.testing.assert_allclose(scorer.text_embeddings(texts), want, rtol=0, atol=1e-5)
    # energytta-eval's clap embedder reads the folder as it reads a transformers CLAP one
    emb = get_embedder("clap", clap_model=out)
    assert emb.sample_rate == 44100
    np.testing.assert_allclose(emb.embed(torch.from_numpy(wav)).features, got[:1], atol=1e-6)
    (out / "model.safetensors").unlink()  # a folder that lost its weights: one line
    with pytest.raises(UserError, match="model.safetensors is missing") as e:
        open_scorer(out)
    assert "\n" not in str(e.value)


def test_ms_clap_captioner_and_a_wrong_from_are_one_line(tmp_path, tokenizer_dir, capfd):
    sd = msclap_state_dict(ms_clap("2022"))
    ckpt = tmp_path / "CLAP_weights_2022.pth"
    torch.save({"model": sd}, ckpt)
    code, err = _run(capfd, "--from", "laion", ckpt, "--out", tmp_path / "o",
                     "--tokenizer", tokenizer_dir)
    _assert_one_line(code, err, "MS-CLAP checkpoint, not LAION-CLAP", "--from msclap")
    cap = tmp_path / "clapcap_weights_2023.pth"
    # msclap/models/mapper.py: clap = CLAP.audio_encoder, gpt = GPT2LMHeadModel, clap_project
    audio = {k.replace("audio_encoder.", "clap.", 1): v for k, v in sd.items()
             if k.startswith("audio_encoder.")}
    torch.save({"model": {**audio, "gpt.transformer.wte.weight": torch.ones(10, 4),
                          "clap_project.model.0.weight": torch.ones(4, 4)}}, cap)
    code, err = _run(capfd, "--from", "msclap", cap, "--out", tmp_path / "o",
                     "--tokenizer", tokenizer_dir)
    _assert_one_line(code, err, "captioning model", "CLAP_weights_2023.pth")
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


def test_energytta_eval_scores_with_a_converted_ms_clap_folder(
        corpus, tmp_path, tiny_text_dir):
    import json
    import shutil

    from energytta.cli import eval_main

    ckpt = tmp_path / "CLAP_weights_2022.pth"
    torch.save({"model": msclap_state_dict(ms_clap("2022"))}, ckpt)
    out = tmp_path / "msclap"
    assert data_main(["convert-clap", "--from", "msclap", str(ckpt), "--out", str(out),
                      "--tokenizer", str(tiny_text_dir)]) == 0
    gen = tmp_path / "gen"
    shutil.copytree(corpus / "audio", gen)
    report = tmp_path / "eval.json"
    assert eval_main(["--generated", str(gen), "--reference", str(corpus / "test.jsonl"),
                      "--embedders", "clap", "--clap-model", str(out), "--no-attributes",
                      "--json", str(report)]) == 0
    clap = json.loads(report.read_text())["metrics"]["clap"]
    assert -1.0 <= clap["clap_score"] <= 1.0 and abs(clap["fd"]) < 1e-3
