"""CLAP checkpoints as their authors released them -> folders energytta's CLAP score reads.

LAION-CLAP (`laion_clap`, e.g. 630k-audioset-best.pt, 630k-audioset-fusion-best.pt,
music_audioset_epoch_15_esc_90.14.pt) is HTSAT + RoBERTa with two-layer ReLU projections:
exactly what transformers' `ClapModel` implements, under other parameter names. The
conversion renames (and splits HTSAT's fused qkv), infers the config from the tensor shapes
(HTSAT tiny / base / large, fused or not), and writes `save_pretrained` output plus a
`ClapFeatureExtractor` with LAION's audio front-end and the RoBERTa tokenizer given by the
user (a `.pt` holds none). Everything that reads a CLAP folder (`energytta-eval --clap-model`,
`text.extra_model`) then reads it. The mapping follows LAION's own module names (htsat.py,
model.py) and transformers' conversion script.

MS-CLAP (`msclap`: CLAP_weights_2022.pth, CLAP_weights_2023.pth) has no `ClapModel` form
(CNN14 or HTSAT at 44.1 kHz, BERT or GPT-2 text, GELU + LayerNorm projections): its weights
are renamed into `energytta.eval.msclap.MsClap`, which the CLAP score reads from a folder
with `msclap.json`. Its captioner (clapcap_weights_2023.pth) is refused with one line.

A checkpoint file is never unpickled freely (`energytta.eval.safe_pt`).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from energytta.errors import UserError
from energytta.eval.safe_pt import first_line, read_checkpoint


# LAION's audio front-end (laion_clap model_configs/HTSAT-*.json): not stored in the .pt
LAION_AUDIO = dict(sampling_rate=48000, hop_length=480, fft_window_size=1024, max_length_s=10,
                   frequency_min=50, frequency_max=14000, padding="repeatpad")
ROBERTA_LAYER_NORM_EPS = 1e-5  # roberta-base's config, which LAION's text branch is built from
HEAD_DIM = 64  # BERT/RoBERTa heads are 64 wide: the head count is not in the weights


# --- which CLAP is it --------------------------------------------------------------------------

def detect(sd: dict[str, torch.Tensor]) -> str | None:
    """'laion', 'msclap', 'clapcap' (MS-CLAP's captioner) or None."""
    if any(k.startswith("audio_branch.") for k in sd) and \
            any(k.startswith("text_branch.") for k in sd):
        return "laion"
    if any(k.startswith("clap.") for k in sd) and any(k.startswith("gpt.") for k in sd):
        return "clapcap"
    if any(k.startswith(("caption_encoder.", "audio_encoder.base.")) for k in sd):
        return "msclap"
    return None


CLAPCAP = ("MS-CLAP's captioning model (clapcap), not a CLAP scorer; convert "
           "CLAP_weights_2023.pth (or CLAP_weights_2022.pth) with --from msclap")


def check_kind(path: Path, sd: dict[str, torch.Tensor], claimed: str) -> None:
    """Refuse, in one line, a file that is not the CLAP checkpoint `claimed`."""
    kind = detect(sd)
    if kind is None:
        raise UserError(f"{path}: not a LAION-CLAP or MS-CLAP checkpoint (no audio_branch/"
                        "text_branch or audio_encoder/caption_encoder weights)")
    if kind == "clapcap":
        raise UserError(f"{path}: {CLAPCAP}")
    if kind != claimed:
        names = {"laion": "LAION-CLAP", "msclap": "MS-CLAP"}
        raise UserError(f"{path}: a {names[kind]} checkpoint, not {names[claimed]}; use "
                        f"--from {kind}")


# --- LAION names -> transformers names -----------------------------------------------------------

_DROP = re.compile(  # the mel front-end (the feature extractor's job), the AudioSet
    r"^audio_branch\.(spectrogram_extractor|logmel_extractor|tscam_conv|head)\."  # classifier,
    r"|^(audio|text)_transform\."  # the training-only MLPs and the shifted-window masks
    r"|^audio_branch\.layers\.\d+\.blocks\.\d+\.attn_mask$")
_RENAME = [  # (LAION pattern, transformers replacement), first match wins
    (r"^audio_branch\.bn0\.", "audio_model.audio_encoder.batch_norm."),
    (r"^audio_branch\.(layers\.\d+\.blocks\.\d+)\.norm1\.",
     r"audio_model.audio_encoder.\1.layernorm_before."),
    (r"^audio_branch\.(layers\.\d+\.blocks\.\d+)\.norm2\.",
     r"audio_model.audio_encoder.\1.layernorm_after."),
    (r"^audio_branch\.(layers\.\d+\.blocks\.\d+)\.attn\.proj\.",
     r"audio_model.audio_encoder.\1.attention.output.dense."),
    (r"^audio_branch\.(layers\.\d+\.blocks\.\d+)\.attn\.(relative_position_\w+)$",
     r"audio_model.audio_encoder.\1.attention.self.\2"),
    (r"^audio_branch\.(layers\.\d+\.blocks\.\d+)\.mlp\.fc1\.",
     r"audio_model.audio_encoder.\1.intermediate.dense."),
    (r"^audio_branch\.(layers\.\d+\.blocks\.\d+)\.mlp\.fc2\.",
     r"audio_model.audio_encoder.\1.output.dense."),
    (r"^audio_branch\.(patch_embed\.|layers\.\d+\.downsample\.|norm\.)",
     r"audio_model.audio_encoder.\1"),
    (r"^text_branch\.", "text_model."),
    (r"^(audio|text)_projection\.0\.", r"\1_projection.linear1."),
    (r"^(audio|text)_projection\.2\.", r"\1_projection.linear2."),
    (r"^(logit_scale_[at])$", r"\1"),
]
_QKV = re.compile(r"^audio_branch\.(layers\.\d+\.blocks\.\d+)\.attn\.qkv\.(weight|bias)$")
# buffers transformers computes itself, which a file may lack or hold where it does not
_DERIVED = re.compile(r"(position_ids|token_type_ids|relative_position_index)$")


def laion_to_hf(sd: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """LAION-CLAP state dict -> `ClapModel` state dict (same tensors, renamed; qkv split)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if _DROP.search(key):
            continue
        qkv = _QKV.match(key)
        if qkv:  # (3 D, ...) -> query, key, value (D, ...), in that order (HTSAT's reshape)
            base = f"audio_model.audio_encoder.{qkv.group(1)}.attention.self"
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                out[f"{base}.{name}.{qkv.group(2)}"] = part.clone()
            continue
        new = next((re.sub(p, r, key) for p, r in _RENAME if re.search(p, key)), None)
        if new is None:
            raise UserError(f"{path}: unexpected weight {key!r} for a LAION-CLAP HTSAT + "
                            "RoBERTa checkpoint; only those convert to a transformers ClapModel")
        out[new] = value
    return out


# --- the config, read off the tensor shapes ------------------------------------------------------

def _count(sd: dict, pattern: str) -> int:
    return len({m.group(1) for k in sd for m in [re.match(pattern, k)] if m})


def htsat_config(sd: dict[str, torch.Tensor], pre: str = "audio_branch.") -> dict:
    """`ClapAudioConfig` arguments of the HTSAT weights under `pre` (LAION's or MS-CLAP's)."""
    layers = _count(sd, rf"{re.escape(pre)}layers\.(\d+)\.")
    depths = [_count(sd, rf"{re.escape(pre)}layers\.{i}\.blocks\.(\d+)\.") for i in range(layers)]
    heads = [sd[f"{pre}layers.{i}.blocks.0.attn.relative_position_bias_table"].shape[1]
             for i in range(layers)]
    table = sd[f"{pre}layers.0.blocks.0.attn.relative_position_bias_table"].shape[0]
    window = (round(table ** 0.5) + 1) // 2  # (2w - 1)^2 relative offsets
    proj = sd[f"{pre}patch_embed.proj.weight"]  # (C, 1, p, p)
    dim = proj.shape[0]
    fc1 = sd[f"{pre}layers.0.blocks.0.mlp.fc1.weight"]  # (ratio * C, C)
    mask = sd.get(f"{pre}layers.0.blocks.1.attn_mask")  # (windows, w*w, w*w) if shifted
    grid = round(mask.shape[0] ** 0.5) * window if mask is not None else 256 // proj.shape[2]
    fused = f"{pre}patch_embed.fusion_model.local_att.0.weight" in sd
    cfg = dict(patch_embeds_hidden_size=dim, patch_size=proj.shape[2],
               patch_stride=[proj.shape[2], proj.shape[2]], depths=depths,
               num_attention_heads=heads, num_hidden_layers=layers, window_size=window,
               spec_size=grid * proj.shape[2], num_mel_bins=sd[f"{pre}bn0.weight"].shape[0],
               hidden_size=sd[f"{pre}norm.weight"].shape[0], mlp_ratio=fc1.shape[0] / dim,
               enable_fusion=fused)
    if fused:
        cfg.update(fusion_type="aff_2d", aff_block_r=dim // sd[
            f"{pre}patch_embed.fusion_model.local_att.0.weight"].shape[0])
    return cfg


def _text_config(sd: dict[str, torch.Tensor], path: Path) -> dict:
    pre = "text_branch."
    words = sd.get(f"{pre}embeddings.word_embeddings.weight")  # (V, D)
    types = sd.get(f"{pre}embeddings.token_type_embeddings.weight")
    if words is None or f"{pre}pooler.dense.weight" not in sd or types is None \
            or types.shape[0] != 1:
        raise UserError(f"{path}: its text branch is not RoBERTa (LAION-CLAP's released "
                        "text model); only RoBERTa ones convert to a transformers ClapModel")
    hidden = words.shape[1]
    return dict(vocab_size=words.shape[0], hidden_size=hidden,
                num_hidden_layers=_count(sd, rf"{re.escape(pre)}encoder\.layer\.(\d+)\."),
                num_attention_heads=max(1, hidden // HEAD_DIM),
                intermediate_size=sd[f"{pre}encoder.layer.0.intermediate.dense.weight"].shape[0],
                max_position_embeddings=sd[f"{pre}embeddings.position_embeddings.weight"].shape[0],
                type_vocab_size=1, layer_norm_eps=ROBERTA_LAYER_NORM_EPS,
                projection_dim=sd["text_projection.0.weight"].shape[0])


def laion_config(sd: dict[str, torch.Tensor], path: Path):
    """The `ClapConfig` of a LAION-CLAP state dict (HTSAT tiny/base/large, fused or not)."""
    from transformers import ClapConfig

    if any(k.startswith("audio_branch.conv_block1.") for k in sd):
        raise UserError(f"{path}: a LAION-CLAP checkpoint with a PANN (CNN14) audio branch; "
                        "only HTSAT ones convert to a transformers ClapModel")
    try:
        audio = htsat_config(sd)
        audio["projection_dim"] = sd["audio_projection.0.weight"].shape[0]
    except KeyError as e:
        raise UserError(f"{path}: a LAION-CLAP checkpoint without HTSAT weight {e}; only "
                        "HTSAT + RoBERTa checkpoints convert to a transformers ClapModel") from None
    return ClapConfig(audio_config=audio, text_config=_text_config(sd, path),
                      projection_dim=audio["projection_dim"])


# --- the whole conversion ------------------------------------------------------------------------

def _load_weights(model, weights: dict[str, torch.Tensor], path: Path,
                  name: str = "LAION-CLAP") -> None:
    expected = model.state_dict()
    # buffers that older transformers saved and this one recomputes (or the reverse)
    weights = {k: v for k, v in weights.items() if k in expected or not _DERIVED.search(k)}
    missing = [k for k in expected if k not in weights and not _DERIVED.search(k)]
    if missing:
        raise UserError(f"{path}: incomplete {name} checkpoint: no weight for {missing[0]} "
                        f"({len(missing)} missing); download the file again")
    for key, value in weights.items():
        if key not in expected or expected[key].shape != value.shape:
            raise UserError(f"{path}: weight {key} does not fit the model its other weights "
                            f"describe; not a released {name} checkpoint")
    model.load_state_dict(weights, strict=False)  # only the derived buffers stay as built


def _tokenizer(folder: str | Path | None, vocab_size: int,
               kind: str = "RoBERTa (roberta-base, or any transformers CLAP folder such as "
                           "laion/clap-htsat-unfused)"):
    from transformers import AutoTokenizer

    hint = f"pass --tokenizer DIR, a folder with the tokenizer of {kind}"
    if folder is None:
        raise UserError(f"a CLAP checkpoint file holds no tokenizer: {hint}")
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"--tokenizer {folder}: no tokenizer there ({first_line(e)}); "
                        f"{hint}") from None
    if len(tok) > vocab_size:
        raise UserError(f"--tokenizer {folder}: {len(tok)} tokens, but the checkpoint's text "
                        f"model knows {vocab_size}: not its tokenizer; {hint}")
    return tok


def convert_laion(ckpt: str | Path, out: str | Path, tokenizer: str | Path | None):
    """Write a transformers CLAP folder (weights, config, feature extractor, tokenizer)
    at `out` from a LAION-CLAP `.pt`. Returns the `ClapConfig`. Atomic: `out` appears
    complete or not at all."""
    from transformers import ClapFeatureExtractor, ClapModel, ClapProcessor

    from energytta.utils import atomic_path

    ckpt = Path(ckpt)
    sd = read_checkpoint(ckpt)
    check_kind(ckpt, sd, "laion")
    config = laion_config(sd, ckpt)
    tok = _tokenizer(tokenizer, config.text_config.vocab_size)
    model = ClapModel(config).eval()
    _load_weights(model, laion_to_hf(sd, ckpt), ckpt)
    fused = config.audio_config.enable_fusion
    features = ClapFeatureExtractor(feature_size=config.audio_config.num_mel_bins,
                                    truncation="fusion" if fused else "rand_trunc",
                                    **LAION_AUDIO)
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        ClapProcessor(feature_extractor=features, tokenizer=tok).save_pretrained(tmp)
        features.save_pretrained(tmp)  # preprocessor_config.json too, as hub folders have it
    return config


# --- MS-CLAP: its own module (energytta.eval.msclap), its weights renamed ---------------------

MSCLAP_AUDIO = {"cnn14": dict(seconds=5, max_length=100),  # msclap configs/config_2022.yml
                "htsat": dict(seconds=7, max_length=77)}  # configs/config_2023.yml
MSCLAP_RATE, MSCLAP_HOP, MSCLAP_HTSAT_MEL_RATE = 44100, 320, 32000


def _cnn14_config(sd: dict[str, torch.Tensor], pre: str) -> dict:
    widths = [sd[f"{pre}conv_block{i}.conv1.weight"].shape[0] for i in range(1, 7)]
    return dict(encoder="cnn14", widths=widths, mel_bins=sd[f"{pre}bn0.weight"].shape[0],
                classes=sd[f"{pre}fc_audioset.weight"].shape[0],
                out_emb=sd[f"{pre}fc1.weight"].shape[0], sample_rate=MSCLAP_RATE)


def _msclap_text(sd: dict[str, torch.Tensor], pre: str) -> dict:
    if f"{pre}wte.weight" in sd:  # GPT-2 (2023)
        wte, wpe = sd[f"{pre}wte.weight"], sd[f"{pre}wpe.weight"]  # (V, D), (P, D)
        config = dict(vocab_size=wte.shape[0], n_positions=wpe.shape[0], n_embd=wte.shape[1],
                      n_layer=_count(sd, rf"{re.escape(pre)}h\.(\d+)\."),
                      n_head=max(1, wte.shape[1] // HEAD_DIM),
                      n_inner=sd[f"{pre}h.0.mlp.c_fc.weight"].shape[1],
                      # <|endoftext|> is GPT-2's last token (50256 of 50257)
                      bos_token_id=wte.shape[0] - 1, eos_token_id=wte.shape[0] - 1)
        return dict(kind="gpt2", config=config, width=wte.shape[1])
    words = sd[f"{pre}embeddings.word_embeddings.weight"]  # BERT (2022)
    positions = sd[f"{pre}embeddings.position_embeddings.weight"]
    config = dict(vocab_size=words.shape[0], hidden_size=words.shape[1],
                  num_hidden_layers=_count(sd, rf"{re.escape(pre)}encoder\.layer\.(\d+)\."),
                  num_attention_heads=max(1, words.shape[1] // HEAD_DIM),
                  intermediate_size=sd[f"{pre}encoder.layer.0.intermediate.dense.weight"].shape[0],
                  max_position_embeddings=positions.shape[0],
                  type_vocab_size=sd[f"{pre}embeddings.token_type_embeddings.weight"].shape[0])
    return dict(kind="bert", config=config, width=words.shape[1])


def msclap_config(sd: dict[str, torch.Tensor], path: Path) -> dict:
    """`msclap.json`: the model's shapes read off its tensors, msclap's audio settings."""
    try:
        if any(k.startswith("audio_encoder.base.htsat.") for k in sd):
            pre = "audio_encoder.base.htsat."
            audio = dict(encoder="htsat", htsat=htsat_config(sd, pre),
                         sample_rate=MSCLAP_HTSAT_MEL_RATE,
                         out_emb=sd[f"{pre}norm.weight"].shape[0])
        else:
            audio = _cnn14_config(sd, "audio_encoder.base.")
        rows = sd["audio_encoder.base." + ("htsat." if audio["encoder"] == "htsat" else "")
                  + "spectrogram_extractor.stft.conv_real.weight"].shape[0]
        audio.update(window=(rows - 1) * 2, hop=MSCLAP_HOP, input_rate=MSCLAP_RATE,
                     seconds=MSCLAP_AUDIO[audio["encoder"]]["seconds"])
        text = _msclap_text(sd, "caption_encoder.base.")
        text["max_length"] = MSCLAP_AUDIO[audio["encoder"]]["max_length"]
        dim = sd["audio_encoder.projection.linear1.weight"].shape[0]
    except KeyError as e:
        raise UserError(f"{path}: an MS-CLAP checkpoint without weight {e}; only the released "
                        "CNN14 + BERT (2022) and HTSAT + GPT-2 (2023) models load") from None
    return dict(format="msclap", audio=audio, text=text, projection_dim=dim)


_MSCLAP_DROP = re.compile(r"^logit_scale$|position_ids$|token_type_ids$|\.attn\.(masked_)?bias$"
                          r"|^caption_encoder\.base\.pooler\.")


def msclap_to_energytta(sd: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """MS-CLAP state dict -> `MsClap` state dict."""
    out: dict[str, torch.Tensor] = {}
    htsat = {}
    for key, value in sd.items():
        if _MSCLAP_DROP.search(key):
            continue
        if key.startswith("audio_encoder.base.htsat."):
            rest = key[len("audio_encoder.base.htsat."):]
            if rest.startswith(("spectrogram_extractor.", "logmel_extractor.")):
                out[f"audio.{rest}"] = value
            else:
                htsat[f"audio_branch.{rest}"] = value
        elif key.startswith("audio_encoder.base."):
            out["audio." + key[len("audio_encoder.base."):]] = value
        elif key.startswith(("audio_encoder.projection.", "caption_encoder.projection.")):
            side = "audio" if key.startswith("audio") else "text"
            out[f"{side}_projection." + key.split(".projection.", 1)[1]] = value
        elif key.startswith("caption_encoder.base."):
            out["text." + key[len("caption_encoder.base."):]] = value
        else:
            raise UserError(f"{path}: unexpected weight {key!r} for an MS-CLAP checkpoint")
    for key, value in laion_to_hf(htsat, path).items():  # HTSAT: LAION's names, same code
        out["audio.htsat." + key[len("audio_model."):]] = value
    return out


def convert_msclap(ckpt: str | Path, out: str | Path, tokenizer: str | Path | None) -> dict:
    """Write an MS-CLAP folder (`energytta.eval.msclap`) at `out` from an msclap `.pth`.
    Returns its settings. Atomic: `out` appears complete or not at all."""
    from safetensors.torch import save_file

    from energytta.eval.msclap import CONFIG_FILE, GPT2_PAD, WEIGHTS_FILE, MsClap
    from energytta.utils import atomic_path

    ckpt = Path(ckpt)
    sd = read_checkpoint(ckpt)
    check_kind(ckpt, sd, "msclap")
    cfg = msclap_config(sd, ckpt)
    model = MsClap(cfg)
    _load_weights(model, msclap_to_energytta(sd, ckpt), ckpt, "MS-CLAP")
    kind = "BERT (bert-base-uncased)" if cfg["text"]["kind"] == "bert" else "GPT-2 (gpt2)"
    tok = _tokenizer(tokenizer, cfg["text"]["config"]["vocab_size"], kind)
    if cfg["text"]["kind"] == "gpt2":
        tok.pad_token = GPT2_PAD
    with atomic_path(out) as tmp:
        tmp.mkdir()
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=1), encoding="utf-8")
        tok.save_pretrained(tmp)
    return cfg


def convert(kind: str, ckpt: str | Path, out: str | Path, tokenizer: str | Path | None = None):
    """`energytta-data convert-clap`: `kind` is what the user says the file is. Returns
    the `ClapConfig` (LAION) or the `msclap.json` settings (MS-CLAP)."""
    if kind == "laion":
        return convert_laion(ckpt, out, tokenizer)
    return convert_msclap(ckpt, out, tokenizer)
