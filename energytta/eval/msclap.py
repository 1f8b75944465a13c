"""MS-CLAP (Elizalde et al. 2023, microsoft/CLAP) for the CLAP score, without the `msclap` package.

`msclap` needs torchaudio and transformers < 5, which do not install beside energytta, and its
model is not a transformers `ClapModel`. Its parts are standard, though, so it is rebuilt here
from pieces energytta already has and loaded with its own weights:

- audio: CNN14 (`CLAP_weights_2022.pth`: `energytta.eval.panns.Cnn14`, the same module names)
  or HTSAT (`CLAP_weights_2023.pth`: transformers' `ClapAudioModel`, which is HTSAT, behind the
  torchlibrosa front-end whose tensors the checkpoint stores), `embedding` as msclap takes it;
- text: BERT (2022, the [CLS] state) or GPT-2 (2023, the state of the last non-pad token,
  with " <|endoftext|>" appended and "!" as the pad token, as msclap's wrapper does);
- each followed by msclap's `Projection`: LayerNorm(x W1 + dropout(GELU(x W1) W2)).

`energytta-data convert-clap --from msclap` writes the folder this reads: `msclap.json`
(settings), `model.safetensors` (this module's names) and the text tokenizer.
Audio is cut or repeated to the model's clip length (5 s for 2022, 7 s for 2023, at 44.1 kHz)
as msclap does, except that a longer clip is cut in the middle, not at a random offset.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from energytta.errors import UserError

CONFIG_FILE = "msclap.json"
WEIGHTS_FILE = "model.safetensors"
GPT2_PAD = "!"  # msclap adds it as GPT-2's pad token (id 0)


class Projection(nn.Module):
    """msclap.models.clap.Projection: (B, d_in) -> (B, d_out)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_in, d_out, bias=False)
        self.linear2 = nn.Linear(d_out, d_out, bias=False)
        self.layer_norm = nn.LayerNorm(d_out)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embed1 = self.linear1(x)
        return self.layer_norm(embed1 + self.drop(self.linear2(F.gelu(embed1))))


class Htsat(nn.Module):
    """wav (B, S) -> HTSAT latent (B, D): torchlibrosa log-mel, then transformers' HTSAT."""

    def __init__(self, cfg: dict) -> None:
        from transformers import ClapAudioConfig, ClapAudioModel

        from energytta.eval.panns import LogmelFilterBank, Spectrogram

        super().__init__()
        # the front-end's values come from the checkpoint (msclap's HTSAT builds its mel
        # filterbank for 32 kHz while reading 44.1 kHz audio): only the shapes matter here
        self.spectrogram_extractor = Spectrogram(cfg["window"], cfg["hop"])
        self.logmel_extractor = LogmelFilterBank(cfg["sample_rate"], cfg["window"],
                                                 cfg["htsat"]["num_mel_bins"], 50.0, 14000.0)
        self.htsat = ClapAudioModel(ClapAudioConfig(**cfg["htsat"]))

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        mel = self.logmel_extractor(self.spectrogram_extractor(wav))  # (B, 1, T, mels)
        return self.htsat(input_features=mel).pooler_output


class MsClap(nn.Module):
    """MS-CLAP's audio and caption encoders with their projections.

    Args:
        cfg: the `msclap.json` settings (`energytta.eval.clap_convert.msclap_config`).
    """

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

        from energytta.eval.panns import Cnn14

        a, t = cfg["audio"], cfg["text"]
        self.cnn14 = a["encoder"] == "cnn14"
        if self.cnn14:
            self.audio = Cnn14(a["sample_rate"], a["window"], a["hop"], a["mel_bins"], 50.0,
                               14000.0, a["classes"], tuple(a["widths"]))
        else:
            self.audio = Htsat(a)
        self.gpt2 = t["kind"] == "gpt2"
        self.text = GPT2Model(GPT2Config(**t["config"])) if self.gpt2 \
            else BertModel(BertConfig(**t["config"]), add_pooling_layer=False)
        self.audio_projection = Projection(a["out_emb"], cfg["projection_dim"])
        self.text_projection = Projection(t["width"], cfg["projection_dim"])

    def audio_features(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, S) at the model's rate -> (B, projection_dim)."""
        emb = self.audio(wav)["2048"] if self.cnn14 else self.audio(wav)
        return self.audio_projection(emb)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      **more: torch.Tensor) -> torch.Tensor:
        """token ids (B, L) -> (B, projection_dim)."""
        hidden = self.text(input_ids=input_ids, attention_mask=attention_mask,
                           **more).last_hidden_state  # (B, L, D)
        if self.gpt2:  # msclap: the last position that is not the pad token (id 0)
            last = (input_ids != 0).sum(-1) - 1
            return self.text_projection(hidden[torch.arange(len(hidden)), last])
        return self.text_projection(hidden[:, 0])  # [CLS]


def fit_length(wav: np.ndarray, length: int) -> np.ndarray:
    """msclap's clip: shorter ones repeated and cut to `length`; longer ones cut in the
    middle (msclap cuts at a random offset; a score must be the same at every call)."""
    if wav.shape[-1] < length:
        return np.tile(wav, int(np.ceil(length / max(1, wav.shape[-1]))))[:length]
    start = (wav.shape[-1] - length) // 2
    return wav[start:start + length]


class MsClapScorer:
    """Audio and text embeddings of a converted MS-CLAP folder (`ClapScorer`'s interface).

    Args:
        folder: written by `energytta-data convert-clap --from msclap`; device: where it runs.
    """

    def __init__(self, folder: str | Path, device: torch.device | str = "cpu") -> None:
        from safetensors.torch import load_file
        from transformers import AutoTokenizer

        folder = Path(folder)
        try:
            self.cfg = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UserError(f"--clap-model {folder}: unreadable {CONFIG_FILE} ({e}); convert "
                            "the MS-CLAP checkpoint again") from None
        self.device = torch.device(device)
        try:
            self.model = MsClap(self.cfg)
            self.model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=True)
        except (OSError, RuntimeError, KeyError, TypeError, ValueError):
            raise UserError(f"--clap-model {folder}: its {WEIGHTS_FILE} is missing or does "
                            f"not fit its {CONFIG_FILE}; convert the MS-CLAP checkpoint "
                            "again") from None
        self.model = self.model.to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.sample_rate = int(self.cfg["audio"]["input_rate"])

    @torch.no_grad()
    def audio_embeddings(self, wavs: list[np.ndarray]) -> np.ndarray:
        """wavs: list of (S,) float at `sample_rate` -> (N, D) float64."""
        length = int(round(self.cfg["audio"]["seconds"] * self.sample_rate))
        batch = np.stack([fit_length(np.asarray(w, dtype=np.float32), length) for w in wavs])
        feats = self.model.audio_features(torch.from_numpy(batch).to(self.device))
        return feats.double().cpu().numpy()

    @torch.no_grad()
    def text_embeddings(self, texts: list[str]) -> np.ndarray:
        """texts (N,) -> (N, D) float64."""
        if self.model.gpt2:
            texts = [t + " <|endoftext|>" for t in texts]
        inputs = self.tokenizer(texts, padding="max_length", truncation=True,
                                max_length=self.cfg["text"]["max_length"], return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()
                  if k in ("input_ids", "attention_mask", "token_type_ids")}
        if self.model.gpt2:
            inputs.pop("token_type_ids", None)
        return self.model.text_features(**inputs).double().cpu().numpy()
