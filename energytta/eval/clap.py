"""CLAP (Wu et al. 2023, LAION-CLAP) through transformers, from a local folder only.

The folder is what `ClapModel.save_pretrained` + `ClapProcessor.save_pretrained` write
(config, weights, feature-extractor and tokenizer files), e.g. laion/clap-htsat-unfused
copied to disk, or what `energytta-data convert-clap` makes of a LAION-CLAP `.pt` (the same
layout) or an MS-CLAP `.pth` (`energytta.eval.msclap`; `open_scorer` picks the reader).
The CLAP score is the mean cosine between the caption's text embedding and the generated
audio's embedding (both projected, as `get_*_features` return them).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from energytta.errors import UserError


def _tensor(out) -> torch.Tensor:
    """transformers 4 returns a tensor, 5 may return an output object with pooler_output."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@contextlib.contextmanager
def _seeded_numpy(seed: int) -> Iterator[None]:
    """numpy's global generator seeded inside, restored after: the CLAP feature extractor
    draws its fusion crops from it, and a caller's own draws must not move."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def center_crop(wav: np.ndarray, length: int) -> np.ndarray:
    """The middle `length` samples of a longer (S,) clip; shorter clips as they are."""
    start = max(0, (wav.shape[-1] - length) // 2)
    return wav[..., start:start + length]


def open_scorer(folder: str | Path, device: torch.device | str = "cpu"):
    """The CLAP scorer of `folder`: transformers' CLAP, or MS-CLAP as `energytta-data
    convert-clap --from msclap` writes it (`msclap.json`); both have `sample_rate`,
    `audio_embeddings` and `text_embeddings`."""
    from energytta.eval.msclap import CONFIG_FILE, MsClapScorer

    if (Path(folder) / CONFIG_FILE).is_file():
        return MsClapScorer(folder, device)
    return ClapScorer(folder, device)


class ClapScorer:
    """Audio and text embeddings of a local CLAP model.

    Args:
        folder: local transformers CLAP folder; device: where it runs.
    """

    def __init__(self, folder: str | Path, device: torch.device | str = "cpu") -> None:
        from transformers import AutoFeatureExtractor, AutoTokenizer, ClapModel

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise UserError(f"--clap-model {folder}: not a transformers model folder "
                            "(no config.json)")
        self.device = torch.device(device)
        self.model = ClapModel.from_pretrained(str(folder), local_files_only=True)
        self.model = self.model.to(self.device).eval()
        self.features = AutoFeatureExtractor.from_pretrained(str(folder), local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.sample_rate = int(self.features.sampling_rate)

    @torch.no_grad()
    def audio_embeddings(self, wavs: list[np.ndarray]) -> np.ndarray:
        """wavs: list of (S,) float at `sample_rate` -> (N, D) float64."""
        # An unfused model takes one mel channel; "fusion" stacks 4 (global + 3 crops).
        # Clips up to the extractor's max_length_s (10 s for LAION-CLAP) are never cut.
        # Longer clips are cut deterministically, so an embedding is the same at every call:
        # unfused, the middle max_length_s (the extractor would crop at a random offset);
        # fused, its 3 random chunks are drawn from a fixed seed.
        fused = bool(getattr(self.model.config.audio_config, "enable_fusion", False))
        wavs = [np.asarray(w, dtype=np.float32) for w in wavs]
        if not fused:
            wavs = [center_crop(w, int(self.features.nb_max_samples)) for w in wavs]
        with _seeded_numpy(0):
            inputs = self.features(wavs, sampling_rate=self.sample_rate, return_tensors="pt",
                                   truncation="fusion" if fused else "rand_trunc")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        return _tensor(self.model.get_audio_features(**inputs)).double().cpu().numpy()

    @torch.no_grad()
    def text_embeddings(self, texts: list[str]) -> np.ndarray:
        """texts (N,) -> (N, D) float64."""
        inputs = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items() if k != "token_type_ids"}
        return _tensor(self.model.get_text_features(**inputs)).double().cpu().numpy()
