"""Vocoders: log-mel (B, n_mels, T) -> wav (B, T·hop), picked by `codec.vocoder`.

- `griffin-lim`: `energytta.audio.griffinlim.GriffinLim` (no weights).
- `trained`: `MelVocoder`, a Vocos-style network trained here (`energytta-train --config
  vocoder`): ConvNeXt blocks at the mel frame rate, then a head that predicts the STFT
  magnitude and phase of each frame and an inverse STFT (Siuzdak 2023, "Vocos: Closing the
  gap between time-domain and Fourier-based neural vocoders"). Everything runs at 100
  frames/s instead of 16k samples/s, which is what makes it trainable on 2 CPU cores.
- `hifigan`: AudioLDM's HiFi-GAN (transformers `SpeechT5HifiGan`) from a local folder
  (`HifiGanVocoder`; AudioLDM's VAE is `energytta.audio.pretrained`).

Trained parts (this vocoder, the VAE of `energytta.audio.vae`) are stored in one
`.safetensors` file each, with their config in the metadata (`save_part` / `load_part`),
so a config can point at them by path (`codec.path`, `codec.vocoder_path`).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import energytta
from energytta.audio.folders import model_folder
from energytta.audio.mel import LOG_FLOOR, MelFrontend
from energytta.config import AudioConfig, Config
from energytta.errors import UserError
from energytta.utils import atomic_path, require_safetensors

PART_FORMAT = "energytta-codec"
VOCODERS = ("griffin-lim", "trained", "hifigan")
# (n_fft, hop) pairs of the multi-resolution STFT distance (Parallel WaveGAN's three
# resolutions, Yamamoto et al. 2020, scaled to 16 kHz)
STFT_RESOLUTIONS = ((256, 64), (512, 128), (1024, 256))
AUDIO_KEYS = ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "f_min", "f_max")


# ------------------------------------------------------------------ part files
def save_part(path: str | Path, state: Mapping[str, torch.Tensor], cfg: Config, kind: str,
              keys: tuple[str, ...]) -> Path:
    """Write a trained codec part (atomically) as safetensors + its settings as metadata.

    Args:
        path: destination `.safetensors`.
        state: the part's tensors (a `state_dict`).
        cfg: the config it was trained with.
        kind: "vae" | "vocoder".
        keys: the `cfg.codec` fields that define its architecture (checked on load).
    """
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    settings = {"codec": {k: getattr(cfg.codec, k) for k in keys},
                "audio": {k: getattr(cfg.audio, k) for k in AUDIO_KEYS}}
    meta = {"format": PART_FORMAT, "kind": kind, "version": energytta.__version__,
            "settings": json.dumps(settings, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def load_part(path: str | Path, module: nn.Module, cfg: Config, kind: str, flag: str) -> None:
    """Load a file written by `save_part` into `module`, checking kind and settings.

    Args:
        path: the `.safetensors` file.
        module: built from `cfg`; its weights are replaced.
        cfg: the current config; its architecture keys must equal the stored ones.
        kind: expected kind ("vae" | "vocoder").
        flag: the config key that named the file (for error messages).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{flag}={path}: file not found (train one with energytta-train "
                        f"--config {'codec_vae' if kind == 'vae' else 'vocoder'})")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for damaged files
        raise UserError(f"{flag}={path} is not a readable safetensors file "
                        f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if meta.get("format") != PART_FORMAT or meta.get("kind") != kind:
        raise UserError(f"{flag}={path} is not a trained {kind} file (its metadata says "
                        f"{meta.get('format')}/{meta.get('kind')})")
    settings = json.loads(meta["settings"])
    for section in ("codec", "audio"):
        current = dataclasses.asdict(getattr(cfg, section))
        for key, value in settings[section].items():
            if current.get(key) != value:
                raise UserError(f"{flag}={path} was trained with {section}.{key}={value} but "
                                f"the config has {current.get(key)}; set {section}.{key}={value}")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"{flag}={path}: weights do not fit ({str(e).splitlines()[0]})") from None


def part_settings(path: str | Path, kind: str, flag: str) -> dict:
    """The {"codec": {...}, "audio": {...}} settings a `save_part` file was trained with."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{flag}={path}: file not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
    except Exception as e:  # safetensors raises several types for damaged files
        raise UserError(f"{flag}={path} is not a readable safetensors file "
                        f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if meta.get("format") != PART_FORMAT or meta.get("kind") != kind:
        raise UserError(f"{flag}={path} is not a trained {kind} file")
    return json.loads(meta["settings"])


def with_trained_vocoder(cfg: Config, path: str | Path, flag: str = "--vocoder") -> Config:
    """`cfg` with `codec.vocoder=trained` and the architecture the file at `path` was
    trained with (its audio settings must match `cfg`'s: `load_part` checks them)."""
    from energytta.config import from_dict

    data = cfg.to_dict()
    data["codec"].update(part_settings(path, "vocoder", flag)["codec"], vocoder="trained",
                         vocoder_path=str(path), train="")
    return from_dict(data)


def replace_vocoder(codec: nn.Module, cfg: Config, spec: str, path: str | Path | None = None
                    ) -> str:
    """Give a built codec another vocoder: "griffin-lim" (no weights, `codec.
    griffin_lim_iters`) or "trained" (the file at `path`; UserError if it does not fit).

    Args:
        codec: a `MelCodec` / `VAECodec` (anything with a `vocoder` attribute).
        cfg: the model's config (its audio settings must match the vocoder file's).
        spec: "griffin-lim" | "trained"; path: the trained vocoder's file.
    Returns:
        a short label of what it now uses ("griffin-lim" or the file's name).
    """
    if spec == "griffin-lim":
        from energytta.audio.griffinlim import GriffinLim

        codec.vocoder = GriffinLim(cfg.audio, n_iter=cfg.codec.griffin_lim_iters)
        return spec
    if spec != "trained" or path is None:
        raise UserError(f"vocoder {spec!r}: use griffin-lim, trained or a vocoder file")
    device = next((b.device for b in codec.buffers()), torch.device("cpu"))
    codec.vocoder = build_vocoder(with_trained_vocoder(cfg, path)).to(device).eval()
    return Path(path).name


# ------------------------------------------------------------------ the trained vocoder
class ConvNeXtBlock(nn.Module):
    """1-D ConvNeXt block (Liu et al. 2022; Vocos' backbone): depthwise conv k=7, LayerNorm,
    pointwise MLP ×3, layer scale, residual.

    Args:
        dim: channels; layer_scale: initial residual gain (Vocos: 1 / depth).
    """

    def __init__(self, dim: int, layer_scale: float) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 3 * dim), nn.GELU(), nn.Linear(3 * dim, dim))
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, D, T) -> (B, D, T)."""
        h = self.dwconv(x).transpose(1, 2)  # (B, T, D)
        h = self.mlp(self.norm(h)) * self.gamma
        return x + h.transpose(1, 2)


class MelVocoder(nn.Module):
    """Vocos-style vocoder: log-mel (B, n_mels, T) -> wav (B, T·hop).

    Per-bin mel statistics (buffers, fitted from data before training) normalise the input;
    the head predicts log-magnitude and phase of an STFT with window `n_fft` and the mel hop,
    and `torch.istft` turns them into audio. Phase is parametrised as (cos p, sin p) of one
    angle p, as in Vocos, so it wraps without a discontinuity.

    With `mag_prior` the predicted log-magnitude is a residual on log(F⁺·e^M), the mel's
    pseudo-inverse at the iSTFT's resolution (the magnitude Griffin-Lim starts from), its
    head rows zero at init: the magnitude is right from the first step and training is
    spent on the phase and on sharpening the smeared bands.

    Args:
        audio_cfg: front-end settings (n_mels, hop_length, mel band edges, window).
        width: ConvNeXt channels; depth: number of blocks; n_fft: iSTFT size (even, > hop).
        mag_prior: predict the log-magnitude as a residual on the pseudo-inverse.
    """

    def __init__(self, audio_cfg: AudioConfig, width: int = 128, depth: int = 4,
                 n_fft: int = 640, mag_prior: bool = False) -> None:
        super().__init__()
        if n_fft % 2 or n_fft < audio_cfg.hop_length or width < 1 or depth < 1:
            raise UserError(f"codec.vocoder_n_fft={n_fft} must be even and >= the hop "
                            f"{audio_cfg.hop_length}; vocoder_width/depth must be >= 1")
        self.hop_length, self.n_fft, self.n_mels = audio_cfg.hop_length, n_fft, audio_cfg.n_mels
        self.register_buffer("mel_mean", torch.zeros(audio_cfg.n_mels))
        self.register_buffer("mel_std", torch.ones(audio_cfg.n_mels))
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.embed = nn.Conv1d(audio_cfg.n_mels, width, 7, padding=3)
        self.norm = nn.LayerNorm(width)
        self.blocks = nn.ModuleList(ConvNeXtBlock(width, 1.0 / depth) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, n_fft + 2)  # log-magnitude and phase, n_fft // 2 + 1 each
        self.mag_prior = mag_prior
        if mag_prior:
            self._build_prior(audio_cfg, n_fft)
            with torch.no_grad():  # the residual starts at zero: magnitude = the prior
                self.head.weight[:n_fft // 2 + 1].zero_()
                self.head.bias[:n_fft // 2 + 1].zero_()

    def _build_prior(self, c: AudioConfig, n_fft: int) -> None:
        """Non-persistent buffers: pseudo-inverse (K, n_mels) of the mel filterbank at the
        iSTFT size, and the ratio of the two Hann windows' sums (a sinusoid's STFT peak is
        amplitude · sum(window) / 2, so magnitudes scale with it)."""
        from energytta.audio.mel import mel_filterbank, padded_window

        fb = torch.from_numpy(mel_filterbank(c.sample_rate, n_fft, c.n_mels, c.f_min, c.f_max))
        self.register_buffer("mel_pinv", torch.linalg.pinv(fb.double()).float(),
                             persistent=False)
        ratio = torch.hann_window(n_fft).sum() / padded_window(c.n_fft, c.win_length).sum()
        self.register_buffer("window_ratio", ratio.reshape(()), persistent=False)

    def prior_log_magnitude(self, mel: torch.Tensor) -> torch.Tensor:
        """log-mel (B, n_mels, T) -> log of the pseudo-inverse magnitude (B, K, T)."""
        lin = torch.matmul(self.mel_pinv, mel.float().exp()) * self.window_ratio
        return lin.clamp(min=LOG_FLOOR).log()

    @torch.no_grad()
    def fit_stats(self, mels: list[torch.Tensor]) -> None:
        """Per-bin mean / std of log-mels [(B, n_mels, T), ...] (pooled over all frames)."""
        flat = torch.cat([m.transpose(1, 2).reshape(-1, m.shape[1]) for m in mels]).double()
        self.mel_mean.copy_(flat.mean(0).to(self.mel_mean))
        self.mel_std.copy_(flat.std(0).clamp(min=0.1).to(self.mel_std))

    def forward(self, mel: torch.Tensor, generator: torch.Generator | None = None
                ) -> torch.Tensor:
        """log-mel (B, n_mels, T) -> wav (B, T·hop). `generator` is unused (deterministic)."""
        if mel.dim() != 3 or mel.shape[1] != self.n_mels:
            raise ValueError(f"expected log-mel (B, {self.n_mels}, T), got {tuple(mel.shape)}")
        x = (mel - self.mel_mean[:, None]) / self.mel_std[:, None]
        h = self.norm(self.embed(x).transpose(1, 2)).transpose(1, 2)  # (B, D, T)
        for block in self.blocks:
            h = block(h)
        out = self.head(self.final_norm(h.transpose(1, 2)))  # (B, T, n_fft + 2)
        # one extra frame: istft(center=True) of T + 1 frames is exactly T·hop samples long
        out = torch.cat([out, out[:, -1:]], dim=1).transpose(1, 2).float()  # (B, K2, T + 1)
        log_mag, phase = out.chunk(2, dim=1)  # (B, K, T + 1) each
        if self.mag_prior:
            prior = self.prior_log_magnitude(mel)  # (B, K, T)
            log_mag = log_mag + torch.cat([prior, prior[..., -1:]], dim=-1)
        mag = log_mag.clamp(max=8.0).exp()  # clamp: exp overflow early in training
        spec = torch.polar(mag, phase)
        return torch.istft(spec, self.n_fft, self.hop_length, self.n_fft, self.window,
                           center=True, length=mel.shape[-1] * self.hop_length)


VOCODER_KEYS = ("vocoder_width", "vocoder_depth", "vocoder_n_fft", "vocoder_mag_prior")


def trained_vocoder(cfg: Config) -> MelVocoder:
    """A `MelVocoder` shaped by `cfg.codec` (weights untrained)."""
    c = cfg.codec
    return MelVocoder(cfg.audio, c.vocoder_width, c.vocoder_depth, c.vocoder_n_fft,
                      c.vocoder_mag_prior)


# ------------------------------------------------------------------ AudioLDM's HiFi-GAN
def load_hifigan(path: str | Path) -> nn.Module:
    """transformers `SpeechT5HifiGan` from `path` (or `path/vocoder`), offline, frozen, eval."""
    folder = model_folder(path, "vocoder", "codec.vocoder_path")
    require_safetensors(folder, "codec.vocoder_path")
    from transformers import SpeechT5HifiGan

    return SpeechT5HifiGan.from_pretrained(str(folder), local_files_only=True,
                                           use_safetensors=True).eval().requires_grad_(False)


class HifiGanVocoder(nn.Module):
    """AudioLDM's HiFi-GAN as a vocoder: log-mel (B, n_mels, T) -> wav (B, T·hop).

    Args:
        path: folder of a `SpeechT5HifiGan` (or a pipeline folder with `vocoder/`).
        audio_cfg: the front-end settings; n_mels, sample rate and hop must match the model.
    """

    def __init__(self, path: str | Path, audio_cfg: AudioConfig) -> None:
        super().__init__()
        self.model = load_hifigan(path)
        # frozen and pretrained: checkpoints refer to this folder (Codec.pretrained_parts)
        self.folder = model_folder(path, "vocoder", "codec.vocoder_path")
        c = self.model.config
        hop = self.hop_length = int(torch.tensor(c.upsample_rates).prod())
        wanted = (audio_cfg.n_mels, audio_cfg.sample_rate, audio_cfg.hop_length)
        if (c.model_in_dim, c.sampling_rate, hop) != wanted:
            raise UserError(f"codec.vocoder_path={path}: HiFi-GAN takes {c.model_in_dim} mels at "
                            f"{c.sampling_rate} Hz, hop {hop}; the config has audio.n_mels="
                            f"{audio_cfg.n_mels}, sample_rate={audio_cfg.sample_rate}, "
                            f"hop_length={audio_cfg.hop_length}")

    def forward(self, mel: torch.Tensor, generator: torch.Generator | None = None
                ) -> torch.Tensor:
        """log-mel (B, n_mels, T) -> wav (B, T·hop). `generator` is unused (deterministic)."""
        p = next(self.model.parameters())
        wav = self.model(mel.transpose(1, 2).to(p.dtype))  # HiFi-GAN takes (B, T, n_mels)
        wav = wav.reshape(mel.shape[0], -1).float()
        # its transposed convs (kernel != 2·stride) add a few samples: cut to T·hop, as
        # AudioLDM's pipeline cuts to the requested length
        n = mel.shape[-1] * self.hop_length
        return torch.nn.functional.pad(wav[:, :n], (0, max(0, n - wav.shape[1])))


def build_vocoder(cfg: Config, load_parts: bool = True) -> nn.Module:
    """The vocoder named by `cfg.codec.vocoder`, weights loaded from `cfg.codec.vocoder_path`.

    Args:
        cfg: uses `codec.vocoder`, `codec.vocoder_path`, `codec.griffin_lim_iters`,
            `codec.path` (an AudioLDM folder's `vocoder/` is the default HiFi-GAN), `audio`.
        load_parts: False builds a trained vocoder without reading its file (its weights
            then come from a model checkpoint; see `build_codec`).
    Returns:
        a module `(log-mel (B, n_mels, T), generator=None) -> wav (B, T·hop)`.
    """
    c = cfg.codec
    if c.vocoder == "griffin-lim":
        from energytta.audio.griffinlim import GriffinLim
        return GriffinLim(cfg.audio, n_iter=c.griffin_lim_iters)
    if c.vocoder == "trained":
        voc = trained_vocoder(cfg)
        if not load_parts:
            return voc
        if c.vocoder_path:
            load_part(c.vocoder_path, voc, cfg, "vocoder", "codec.vocoder_path")
        elif c.train != "vocoder":
            raise UserError("codec.vocoder=trained needs codec.vocoder_path=<vocoder "
                            ".safetensors> (train one: energytta-train --config vocoder)")
        return voc
    if c.vocoder == "hifigan":
        folder = c.vocoder_path or (c.path if c.name == "audioldm" else "")
        if not folder:
            raise UserError("codec.vocoder=hifigan needs codec.vocoder_path=<folder of a "
                            "SpeechT5HifiGan, e.g. AudioLDM's vocoder/>")
        return HifiGanVocoder(folder, cfg.audio)
    raise UserError(f"unknown codec.vocoder '{c.vocoder}' (choose from: {', '.join(VOCODERS)})")


# ------------------------------------------------------------------ losses / distances
def stft_magnitude(wav: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """wav (B, S) -> |STFT| (B, n_fft // 2 + 1, frames), Hann window, floored at 1e-5."""
    window = torch.hann_window(n_fft, device=wav.device, dtype=torch.float32)
    spec = torch.stft(wav.float(), n_fft, hop, window=window, return_complex=True)
    return spec.abs().clamp(min=LOG_FLOOR)  # the mel floor: digital silence is not -16 nats


def mr_stft_distance(wav: torch.Tensor, ref: torch.Tensor,
                     resolutions: tuple[tuple[int, int], ...] = STFT_RESOLUTIONS
                     ) -> torch.Tensor:
    """Multi-resolution STFT distance (Yamamoto et al. 2020, Parallel WaveGAN, eq. 4-6).

    Mean over resolutions of spectral convergence ||S - Ŝ||_F / ||S||_F (norms over the
    whole batch) plus the mean absolute log-magnitude difference.

    Args:
        wav: (B, S) estimate; ref: (B, S) reference (same length).
    Returns:
        scalar tensor (differentiable in `wav`).
    """
    total = wav.new_zeros(())
    for n_fft, hop in resolutions:
        s_hat, s = stft_magnitude(wav, n_fft, hop), stft_magnitude(ref, n_fft, hop)
        # one Frobenius norm over the whole batch, as Parallel WaveGAN: a per-clip ratio
        # explodes on (near-)silent crops
        sc = torch.linalg.norm(s - s_hat) / torch.linalg.norm(s)
        total = total + sc + (s.log() - s_hat.log()).abs().mean()
    return total / len(resolutions)


def vocoder_loss(vocoder: nn.Module, frontend: MelFrontend, wav: torch.Tensor
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """Training loss of the vocoder on clean audio: MR-STFT distance + log-mel L1.

    HiFi-GAN (Kong et al. 2020) and Vocos train with a mel L1 term next to adversarial
    losses; without a discriminator (2 CPU cores) the multi-resolution STFT distance takes
    its place as the term that constrains phase (overlapping frames of several sizes only
    agree for a consistent phase).

    Args:
        vocoder: `MelVocoder`; frontend: the mel front-end; wav: (B, S) clips.
    Returns:
        (loss, {"mr_stft", "mel_l1"}).
    """
    mel = frontend(wav)  # (B, n_mels, T)
    out = vocoder(mel)  # (B, T·hop)
    ref = wav[:, :out.shape[-1]]
    mr = mr_stft_distance(out, ref)
    mel_l1 = (frontend(out) - mel).abs().mean()
    return mr + mel_l1, {"mr_stft": float(mr.detach()), "mel_l1": float(mel_l1.detach())}
