"""`TextToAudio`: load a checkpoint once, then prompts -> waveforms (diffusers-style pipeline).

Works for student (energy head, one pass per token) and teacher (diffusion head)
checkpoints alike: the sampler only calls `head.sample`.

    pipe = TextToAudio.from_pretrained()  # the shipped default; or a path, or "teacher"
    wavs, sr = pipe(["a high beep repeats three times"], seed=0, num_samples=2)
    audio_write("beep", wavs[0], sr)  # beep.wav (energytta.outputs.audio_write)

Reproducibility: each batch draws from its own `torch.Generator`, seeded from
(seed, index of the batch's first prompt). The same seed and settings give byte-identical
audio; with `batch_size=1` prompt i depends only on (seed, i) and on nothing else in the
list. With larger batches a prompt's audio also depends on its batch-mates, because the
decoding orders and head noise of a batch are drawn together. `num_samples=N` takes of
each prompt are the prompt list run with seeds seed, seed+1, ..., seed+N-1: take j is
exactly what seed+j alone gives.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from energytta import editing
# the shipped models live with the checkpoint code; re-exported for the Python API
from energytta.checkpoint import (ASSETS, DEFAULT_CKPT, MODEL_KINDS, SHIPPED,  # noqa: F401
                                  SHIPPED_VOCODER, resolve_checkpoint)
from energytta.config import Config
from energytta.config_rules import SAMPLE_VOCODERS
from energytta.editing import EditPlan
from energytta.errors import UserError
from energytta.outputs import audio_write, checkpoint_sha256
from energytta.utils import pick_device

VOCODER_CHOICES = SAMPLE_VOCODERS  # or a vocoder file
Audio = str | Path | np.ndarray  # an input clip: a file, or samples at the model's rate
# ((S,), or (channels, S) / (S, channels) mixed to mono; int16/int32/uint8 PCM scaled)
# autocast precision of text encoding and decoding; the codec and vocoder stay in fp32
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class SampleSettings:
    """Every knob of one sampling run (defaults come from the checkpoint's `cfg.sample`)."""

    seed: int
    duration: float
    iterations: int
    cfg: float
    cfg_schedule: str
    temperature: float
    negative_prompt: str | None
    batch_size: int
    # guided with ONE conditional pass per step: only guidance-distilled checkpoints
    # (model.guidance_embed) can; False = two-pass CFG (docs/guidance.md)
    one_pass_cfg: bool = False


@dataclass
class Generation:
    """What `TextToAudio.generate` returns.

    Attributes:
        wavs: (B, S) float32 waveforms.
        mels: (B, n_mels, T) float32 log-mels the vocoder was given (for spectrogram PNGs).
        sample_rate: Hz.
        settings: the resolved settings used.
        edit: what was edited or windowed (mode, input sha256, spans, strength, windows),
            None for a plain one-window generation; one record per row when each row had
            its own input clip.
    """

    wavs: np.ndarray
    mels: np.ndarray
    sample_rate: int
    settings: SampleSettings
    edit: dict | list[dict | None] | None = None  # the edit / windows, as the JSON has it

    def save(self, path: str | Path, prompts: list[str] | str | None = None) -> list[Path]:
        """Write each row as a wav with a JSON of its settings (and prompt, edit record).

        Args:
            path: `out/dog` -> `out/dog.wav` + `out/dog.json` for one row; several rows
                give `out/dog-0.wav`, `out/dog-1.wav`, ...
            prompts: the rows' prompts (one for all rows, or one per row), recorded in the
                JSON; None records none.
        Returns:
            the wav paths, one per row.
        """
        rows = len(self.wavs)
        texts = [prompts] * rows if isinstance(prompts, str) or prompts is None else prompts
        if len(texts) != rows:
            raise UserError(f"{len(texts)} prompts for {rows} generated rows; give one each")
        path, out = Path(path), []
        for i, (wav, prompt) in enumerate(zip(self.wavs, texts)):
            edit = self.edit[i] if isinstance(self.edit, list) else self.edit
            record = {"prompt": prompt, **dataclasses.asdict(self.settings),
                      "sample_rate": self.sample_rate, "edit": edit}
            stem = path if rows == 1 else path.with_name(f"{path.name}-{i}")
            out.append(audio_write(stem, wav, self.sample_rate, record))
        return out


def apply_vocoder(codec: torch.nn.Module, cfg: Config, vocoder: str) -> str:
    """Give a built codec the vocoder `vocoder` names: "griffin-lim", "trained" (the shipped
    `assets/vocoder.safetensors`) or a vocoder file; returns the label samples record."""
    from energytta.audio.vocoder import replace_vocoder

    if vocoder == "griffin-lim":
        return replace_vocoder(codec, cfg, "griffin-lim")
    path = SHIPPED_VOCODER if vocoder == "trained" else Path(vocoder)
    if not path.is_file():
        what = "the shipped vocoder is missing" if vocoder == "trained" else "not found"
        raise UserError(f"vocoder {vocoder}: {path} {what} (use "
                        f"{', '.join(VOCODER_CHOICES)} or a vocoder .safetensors)")
    return replace_vocoder(codec, cfg, "trained", path)


def _prompt_list(prompts: list[str] | str) -> list[str]:
    """One prompt or a list -> a checked list (UserError for none or an empty one)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise UserError("prompts must be a non-empty list of non-empty strings")
    return prompts


def sample_seeds(seed: int, num_samples: int) -> list[int]:
    """The seeds of `num_samples` takes: seed, seed+1, ... (each within [0, 2**63))."""
    if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
        raise UserError(f"num_samples {num_samples} must be a whole number >= 1")
    if seed + int(num_samples) > 2 ** 63:
        raise UserError(f"seed {seed} with {num_samples} samples passes 2**63 - 1 (the "
                        "takes use seed, seed+1, ...); pick a smaller seed")
    return [seed + j for j in range(int(num_samples))]


def batch_seed(seed: int, first_index: int) -> int:
    """A 63-bit seed for the batch starting at prompt `first_index` (no collisions between
    (seed, index) pairs, unlike seed + index)."""
    state = np.random.SeedSequence([int(seed) % 2**63, int(first_index)]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


# how torch and libc word an allocation that failed (CPU allocator, CUDA caching allocator)
_OOM_WORDS = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is a failed allocation (MemoryError, or torch's RuntimeError)."""
    return isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and any(w in str(exc).lower() for w in _OOM_WORDS))


@contextlib.contextmanager
def out_of_memory_hint(rows: int, s: SampleSettings, device: torch.device) -> Iterator[None]:
    """Turn running out of memory inside the block into one line: the device, the batch,
    how much was asked for (when torch says) and the knobs that shrink it."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        asked = re.search(r"allocate (\d+ bytes|[\d.]+ [KMGT]i?B)", str(e))
        size = f"; one allocation of {_human(asked.group(1))} failed" if asked else ""
        raise UserError(f"out of memory on {device} generating {rows} clip(s) of "
                        f"{s.duration:g} s at once{size}; lower --batch-size (now "
                        f"{s.batch_size}) or --duration, or free memory") from None


def _human(size: str) -> str:
    """'1288490188 bytes' -> '1.2 GiB' (torch's own '20.00 MiB' is kept)."""
    if not size.endswith(" bytes"):
        return size
    n = float(size.split()[0])
    for unit, k in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 2 ** k:
            return f"{n / 2 ** k:.1f} {unit}"
    return f"{n:.0f} B"


class TextToAudio:
    """End-to-end text-to-audio inference.

    Args:
        cfg: the checkpoint's config; kind: "teacher" | "student".
        model: TTAModel in eval mode; codec: its Codec.
        device: where everything runs; checkpoint: the path it was loaded from.
        text_encoder: a TextEncoder, or None to build `cfg.text` on first use.
        dtype: "fp32" | "bf16" | "fp16": autocast for text encoding and decoding (GPU).
    """

    def __init__(self, cfg: Config, kind: str, model: torch.nn.Module, codec: torch.nn.Module,
                 device: torch.device, checkpoint: Path | None = None,
                 text_encoder: torch.nn.Module | None = None, dtype: str = "fp32") -> None:
        if dtype not in DTYPES:
            raise UserError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        self.cfg, self.kind, self.model, self.codec = cfg, kind, model, codec
        self.device, self.checkpoint, self.dtype = device, checkpoint, dtype
        self._text_encoder = text_encoder
        self.sample_rate = int(codec.sample_rate)
        self.vocoder = cfg.codec.vocoder  # what renders the audio (`use_vocoder` changes it)
        self._own_vocoder = getattr(codec, "vocoder", None)  # for use_vocoder("checkpoint")
        # sha256 of the checkpoint's weights (set by from_pretrained): what samples record
        self.checkpoint_sha256: str | None = None

    @property
    def text_encoder(self) -> torch.nn.Module:
        """The checkpoint's TextEncoder, loaded on first use (so bad settings fail fast)."""
        if self._text_encoder is None:
            from energytta.text import build_text_encoder

            enc = build_text_encoder(self.cfg.text)
            if enc.dim != self.model.text_dim:
                raise UserError(f"{self.checkpoint}: the model expects {self.model.text_dim}-dim "
                                f"text states but text.model={self.cfg.text.model!r} gives "
                                f"{enc.dim}")
            self._text_encoder = enc.to(self.device).eval()
        return self._text_encoder

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None,
                        device: str | torch.device = "auto",
                        dtype: str = "fp32", vocoder: str | None = None) -> "TextToAudio":
        """Load a checkpoint (inference file, step folder or run folder); the text encoder
        named by its config loads on first use.

        Args:
            path: checkpoint; None or "student" = the shipped energy-head student
                (`energytta/assets/student.safetensors`, the default), "captiononly" = the
                shipped caption-only one-pass student, "teacher" = the shipped teacher,
                "guided" = the student with its guidance distilled into one pass (SHIPPED).
            device: "auto" (cuda if available), "cpu", "cuda:1", ...
            dtype: "fp32" | "bf16" | "fp16" autocast for text encoding and decoding.
            vocoder: None (the checkpoint's `sample.vocoder`), "checkpoint" (the codec's
                own; Griffin-Lim for the shipped models), "griffin-lim", "trained" (the
                shipped trained vocoder, far faster than Griffin-Lim on CPU:
                research/reports/speed_quality.md) or a vocoder file.
        """
        from energytta.checkpoint import load_model

        path = resolve_checkpoint(path)
        dev = pick_device(str(device)) if isinstance(device, str) else device
        sha = checkpoint_sha256(path)  # before loading: a newer file can only make it stale
        cfg, kind, model, codec = load_model(path, dev)
        if kind not in MODEL_KINDS:
            raise UserError(f"{path}: checkpoint kind '{kind}' is not one of "
                            f"{', '.join(MODEL_KINDS)}")
        pipe = cls(cfg, kind, model.eval(), codec.eval(), dev, Path(path), dtype=dtype)
        pipe.checkpoint_sha256 = sha
        pipe.use_vocoder(vocoder or cfg.sample.vocoder)
        return pipe

    def use_vocoder(self, vocoder: str) -> str:
        """Switch the codec's vocoder (see `from_pretrained`); returns what it now uses."""
        if vocoder == "checkpoint":
            self.codec.vocoder, self.vocoder = self._own_vocoder, self.cfg.codec.vocoder
        else:
            self.vocoder = apply_vocoder(self.codec, self.cfg, vocoder)
        return self.vocoder

    # ------------------------------------------------------------------ settings
    def settings(self, seed: int | None = None, duration: float | None = None,
                 iterations: int | None = None, cfg: float | None = None,
                 temperature: float | None = None, negative_prompt: str | None = None,
                 batch_size: int | None = None, one_pass_cfg: bool | None = None
                 ) -> SampleSettings:
        """Fill unset knobs from the checkpoint's `cfg.sample` and validate them all.

        `one_pass_cfg` (default `sample.one_pass_cfg`) holds only for a guidance-distilled
        checkpoint without a negative prompt; otherwise guidance takes two passes."""
        from energytta.sampling import one_pass_guidance

        s = self.cfg.sample
        one_pass = s.one_pass_cfg if one_pass_cfg is None else bool(one_pass_cfg)
        out = SampleSettings(
            seed=s.seed if seed is None else int(seed),
            duration=s.duration if duration is None else float(duration),
            iterations=s.iterations if iterations is None else int(iterations),
            cfg=s.cfg if cfg is None else float(cfg),
            cfg_schedule=s.cfg_schedule,
            temperature=s.temperature if temperature is None else float(temperature),
            negative_prompt=negative_prompt or None,
            batch_size=s.batch_size if batch_size is None else int(batch_size),
            one_pass_cfg=one_pass_guidance(self.model.backbone, s.cfg if cfg is None else
                                           float(cfg), one_pass, bool(negative_prompt)))
        if math.isfinite(out.duration) and out.duration > 0:
            tokens = self._window_tokens(out.duration)
            if out.iterations > tokens:  # MAR decodes >= 1 token per iteration
                if iterations is not None:
                    warnings.warn(f"iterations={out.iterations} capped at the {tokens} tokens "
                                  f"of a {out.duration:g} s clip")
                out = dataclasses.replace(out, iterations=tokens)
        self._validate(out)
        return out

    def _validate(self, s: SampleSettings) -> None:
        from energytta.config_rules import check_value

        for name in ("duration", "iterations", "cfg", "temperature", "batch_size", "seed"):
            check_value(f"sample.{name}", getattr(s, name), name)  # the config's ranges
        if s.duration > editing.MAX_LONG_SECONDS:
            raise UserError(f"duration {s.duration:g} s exceeds the {editing.MAX_LONG_SECONDS:g}"
                            f" s limit of windowed generation (windows of audio.max_seconds="
                            f"{self.cfg.audio.max_seconds:g} s); ask for a shorter clip")
        tokens = self._window_tokens(s.duration)  # UserError below one token
        if s.iterations > tokens:  # settings() caps; hand-built settings are refused
            raise UserError(f"iterations={s.iterations} exceeds the {tokens} tokens of a "
                            f"{s.duration:g} s clip (each iteration decodes at least one); "
                            f"use at most {tokens}")

    def _window_tokens(self, duration: float) -> int:
        """Tokens of one decoding window: longer clips are generated window by window."""
        return self.model.geometry.tokens_for(min(duration, self.cfg.audio.max_seconds))

    def plan(self, s: SampleSettings, overlap: float | None = None) -> EditPlan:
        """The windows of a plain generation of `s.duration` (one unless it is longer
        than audio.max_seconds; then `overlap` s, default 1, between windows)."""
        return editing.plan_generate(self.model.geometry, s.duration,
                                     editing.DEFAULT_OVERLAP if overlap is None else overlap)

    def _autocast(self) -> torch.autocast:
        dtype = DTYPES[self.dtype]
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    # ------------------------------------------------------------------ generation
    def __call__(self, prompts: list[str] | str, seed: int | None = None,
                 duration: float | None = None, iterations: int | None = None,
                 cfg: float | None = None, temperature: float | None = None,
                 negative_prompt: str | None = None, batch_size: int | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 overlap: float | None = None, num_samples: int = 1
                 ) -> tuple[np.ndarray, int]:
        """prompts -> (wavs (B·num_samples, S) float32, sample_rate). Unset knobs come from
        cfg.sample.

        Args:
            prompts: one prompt or a list.
            seed, duration (s), iterations (K), cfg (max guidance scale), temperature,
            negative_prompt (replaces the null text of the unconditional CFG rows),
            batch_size: sampling settings. A duration beyond audio.max_seconds is generated
            window by window, each window seeing the previous one's last `overlap` seconds
            (default 1) as known tokens (docs/editing.md).
            progress: called as progress(done, total) in decoding steps over all batches.
            num_samples: takes per prompt, prompt-major (row i·N + j is take j of prompt
                i); take j is the whole list generated with seed + j.
        """
        s = self.settings(seed, duration, iterations, cfg, temperature, negative_prompt,
                          batch_size)
        seeds = sample_seeds(s.seed, num_samples)
        takes = []
        for j, take_seed in enumerate(seeds):
            def step(done: int, total: int, _j: int = j) -> None:
                if progress is not None:
                    progress(_j * total + done, len(seeds) * total)
            plan = None if overlap is None else self.plan(s, overlap)
            takes.append(self.generate(prompts, dataclasses.replace(s, seed=take_seed),
                                       step, plan).wavs)
        wavs = np.stack(takes, axis=1)  # (B, N, S): prompt-major rows
        return wavs.reshape(-1, wavs.shape[-1]), self.sample_rate

    def generate(self, prompts: list[str] | str, settings: SampleSettings | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 plan: EditPlan | list[EditPlan] | None = None) -> Generation:
        """Like `__call__`, but returns a `Generation` (wavs, mels, rate, settings, edit).
        `plan` (from `energytta.editing`, or `inpaint`/`continue_audio`/`vary`) fixes
        known tokens and windows, for every row or (a list) per row; None = plain
        generation of settings.duration."""
        prompts = _prompt_list(prompts)
        s = settings or self.settings()
        wavs, mels = [], []
        self.generate_each(prompts, s, lambda _first, w, m: (wavs.append(w), mels.append(m)),
                           progress, plan)
        plans = self._row_plans(plan, s, prompts) or [None]  # None: a plain clip
        records = [None if p is None else p.public_record() for p in plans]
        return Generation(np.concatenate(wavs), np.concatenate(mels), self.sample_rate,
                          dataclasses.replace(s),
                          records if isinstance(plan, list) else records[0])

    def generate_each(self, prompts: list[str] | str, settings: SampleSettings,
                      on_batch: Callable[[int, np.ndarray, np.ndarray], None],
                      progress: Callable[[int, int], None] | None = None,
                      plan: EditPlan | list[EditPlan] | None = None,
                      skip: Callable[[int, int], bool] | None = None) -> None:
        """Generate batch by batch, handing each to `on_batch(first, wavs, mels)` as it
        finishes (rows first .. first + len(wavs) - 1; arrays as `Generation` holds them),
        so a long prompt list streams to its consumer instead of piling up in memory.

        Args:
            prompts, settings, plan: as `generate`.
            progress: progress(done, total) in decoding steps over the batches that run.
            skip: skip(first, rows) True leaves that batch out (already written). A batch
                is seeded by its first row's index, so the others come out the same.
        """
        prompts, s = _prompt_list(prompts), settings
        self._validate(s)
        plans = self._row_plans(plan, s, prompts)
        windows = [None] if plans is None else editing.same_grid(plans).windows
        if plans is not None:  # every prompt's '|' segments checked before the first batch
            editing.segment_prompts(prompts, windows)
        bs = s.batch_size
        starts = [i for i in range(0, len(prompts), bs)
                  if skip is None or not skip(i, len(prompts[i:i + bs]))]
        per_batch = len(windows) * s.iterations
        for b, start in enumerate(starts):
            def step(done: int, _k: int, _b: int = b) -> None:
                if progress is not None:
                    progress(_b * per_batch + done, len(starts) * per_batch)
            wavs, mels = self.generate_batch(prompts[start:start + bs], s, start, step,
                                             plans and plans[start:start + bs])
            on_batch(start, wavs, mels)

    def _row_plans(self, plan: EditPlan | list[EditPlan] | None, s: SampleSettings,
                   prompts: list[str]) -> list[EditPlan] | None:
        """One plan per row: a list as given (checked), else the one plan repeated; None
        for a plain clip of one window, which the decoder makes alone (per-segment
        prompts, "a | b", get a plan: it says why they need a longer clip)."""
        rows = len(prompts)
        if isinstance(plan, list):
            if len(plan) != rows:
                raise UserError(f"{len(plan)} edit plans for {rows} prompts; give one each")
            return plan
        if plan is None and s.duration <= self.cfg.audio.max_seconds and not any(
                "|" in p for p in prompts):
            return None
        return [plan or self.plan(s)] * rows

    @torch.no_grad()
    def generate_batch(self, prompts: list[str], s: SampleSettings, first_index: int,
                       progress: Callable[[int, int], None],
                       plan: EditPlan | list[EditPlan] | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
        """One batch through the numbered steps, seeded by (s.seed, `first_index`: the
        batch's first prompt's index in the whole list), so a caller that writes batch by
        batch gets what `generate` gives. `s` must come from `settings()` (validated);
        `plan` as in `generate`; progress counts plan windows x iterations. Running out
        of memory is one `UserError` naming the knobs that shrink a batch.
        Returns wavs (B, S) with peaks <= 1 (pasted input samples kept as they are), and
        mels (B, n_mels, T)."""
        from energytta.audio.render import tokens_to_audio

        B, plans = len(prompts), self._row_plans(plan, s, prompts)
        g = torch.Generator(device=self.device).manual_seed(batch_seed(s.seed, first_index))
        with out_of_memory_hint(B, s, self.device):
            tokens = self._generate_tokens(prompts, s, plans, g, progress)  # (B, N, d)
            # 3. Tokens -> latents (B, C, T, F) by the model's geometry -> log-mel (B,
            #    n_mels, T_mel) by the codec -> 4. waveform (B, S) by the vocoder, whose
            #    random phase uses `g` too.
            mel, wav = tokens_to_audio(tokens, self.model.geometry, self.codec, generator=g)
        if not (torch.isfinite(wav).all() and torch.isfinite(mel).all()):
            raise UserError(f"the generation of prompt(s) {first_index}..{first_index + B - 1}"
                            " is not finite (NaN/inf); lower cfg or temperature, or check "
                            "the checkpoint")
        # 5. Scale down (never up) any waveform louder than full scale: 16-bit files would
        #    clip it to a square wave, and a weak model's outlier tokens can decode to peaks
        #    of 10-100x. Quieter clips keep their level (loudness is part of a caption).
        wav = wav / wav.abs().amax(dim=-1, keepdim=True).clamp(min=1.0)
        # 6. Edits: the input's own samples back into the kept spans (short cross-fades).
        wav = wav if plans is None else editing.paste_kept(wav, plans)
        return (wav.float().cpu().numpy().astype(np.float32),
                mel.float().cpu().numpy().astype(np.float32))

    def _generate_tokens(self, prompts: list[str], s: SampleSettings,
                         plans: list[EditPlan] | None,
                         g: torch.Generator, progress: Callable[[int, int], None]
                         ) -> torch.Tensor:
        """Prompts -> (B, N, d) tokens: plain generation is one call of the decoder; edits
        and long clips compose on it, window by window, with their known tokens."""
        from energytta.sampling import DecodeSettings, decode

        model, B = self.model, len(prompts)
        first = None if plans is None else editing.same_grid(plans)
        # 1. Encode the text once per batch; the negative prompt shares the call (and so
        #    the padding) with the prompts. Per-segment prompts ("a | b") encode each
        #    distinct segment once, and each window picks its rows' segments.
        negative = [s.negative_prompt] * B if s.negative_prompt and s.cfg != 1.0 else []
        segments = None if first is None else editing.segment_prompts(prompts, first.windows)
        texts = prompts if segments is None else segments[0]
        text_encoder = self.text_encoder  # loaded (and checked) outside autocast
        with self._autocast():
            states, mask = text_encoder(texts + negative)  # (T|T+B, L, Dt), (T|T+B, L)
            T = len(texts)
            uncond = (states[T:], mask[T:]) if negative else None
            how = DecodeSettings.of(s)

            def run(num_tokens: int, known: torch.Tensor | None, known_mask: torch.Tensor
                    | None, step: Callable[[int, int], None], window: int = 0) -> torch.Tensor:
                rows = slice(0, B) if segments is None else torch.tensor(
                    segments[1][window], device=states.device)  # this window's texts
                return decode(model.backbone, model.head, states[rows], mask[rows],
                              num_tokens, how, generator=g, negative=uncond, progress=step,
                              known=None if known is None else (known, known_mask))
            # 2. Decode tokens: K iterations of masked parallel decoding with the model's
            #    head, per window of the plan (one for a plain clip), the plan's known
            #    tokens (an input clip's kept spans) never changed.
            if first is None or (all(p.known is None for p in plans)
                                 and len(first.windows) == 1):  # plain
                N = self._window_tokens(s.duration) if first is None else first.num_tokens
                return run(N, None, None, progress)
            known, kept = editing.row_known(plans, model.geometry.token_dim, g, self.device)
            return editing.decode_windows(run, first, known, kept, progress, s.iterations)

    # ------------------------------------------------------------------ editing
    # Thin wrappers: energytta/editing.py builds the plan (input clip -> known tokens,
    # spans, windows); `generate` runs it. Each returns a `Generation` whose `edit` is
    # what the sample's JSON records. `knobs` are `settings()`'s (seed, iterations, cfg,
    # temperature, negative_prompt, batch_size); the duration follows from the input.
    # `audio` is one clip for every prompt, or a list of one clip per prompt (of one length
    # in whole tokens: the rows share a batch).
    def inpaint(self, prompts: list[str] | str, audio: Audio | list[Audio],
                keep: str | None = None, regenerate: str | None = None, paste: bool = True,
                overlap: float | None = None,
                progress: Callable[[int, int], None] | None = None, **knobs) -> Generation:
        """Regenerate `audio` outside the `keep` spans ("0-1.5,3-4", seconds), or inside
        the `regenerate` ones, to match the prompts. Spans snap to whole tokens; with
        `paste` the kept spans hold the input's own samples (cross-faded at their edges).

        Args:
            audio: a file (any rate: resampled, with a warning) or an array at
                `self.sample_rate`: (S,), or (channels, S) / (S, channels) mixed to mono
                as files are; int16 / int32 / uint8 PCM is scaled to [-1, 1].
        """
        def build(clip: Audio) -> EditPlan:
            return self.plan_inpaint(clip, keep, regenerate, paste, overlap)
        return self._run_plan(prompts, self._per_input(prompts, audio, build), progress, knobs)

    def continue_audio(self, prompts: list[str] | str, audio: Audio | list[Audio],
                       duration: float, paste: bool = True, overlap: float | None = None,
                       progress: Callable[[int, int], None] | None = None,
                       **knobs) -> Generation:
        """Keep all of `audio` and continue it to `duration` seconds (window by window
        past audio.max_seconds)."""
        def build(clip: Audio) -> EditPlan:
            return self.plan_continue(clip, duration, paste, overlap)
        return self._run_plan(prompts, self._per_input(prompts, audio, build), progress, knobs)

    def vary(self, prompts: list[str] | str, audio: Audio,
             strength: float, variations: int = 1, overlap: float | None = None,
             progress: Callable[[int, int], None] | None = None, **knobs) -> Generation:
        """`variations` takes of each prompt, each re-masking its own random `strength`
        fraction of the input's tokens (0 < strength <= 1) and regenerating them. Rows
        are prompt-major: row i·variations + j is variation j of prompt i."""
        plan = self.plan_vary(audio, strength, variations, overlap)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        rows = [p for p in prompts for _ in range(int(variations))]
        return self._run_plan(rows, plan, progress, knobs)

    # The plans themselves, for callers that run them their own way (`generate_each`).
    def plan_inpaint(self, audio: Audio, keep: str | None = None,
                     regenerate: str | None = None, paste: bool = True,
                     overlap: float | None = None) -> EditPlan:
        """The plan of `inpaint` on one input clip."""
        source = editing.read_source(audio, self.sample_rate, "--audio")
        return editing.plan_inpaint(self.model.geometry, self.codec, source, self.device,
                                    keep, regenerate, paste, self._overlap(overlap))

    def plan_continue(self, audio: Audio, duration: float, paste: bool = True,
                      overlap: float | None = None) -> EditPlan:
        """The plan of `continue_audio` on one input clip."""
        source = editing.read_source(audio, self.sample_rate, "--continue")
        return editing.plan_continue(self.model.geometry, self.codec, source,
                                     float(duration), self.device, paste,
                                     self._overlap(overlap))

    def plan_vary(self, audio: Audio, strength: float, variations: int = 1,
                  overlap: float | None = None) -> EditPlan:
        """The plan of `vary` (its rows: each prompt `variations` times)."""
        editing.check_strength(strength)
        if int(variations) != variations or variations < 1:
            raise UserError(f"--variations {variations} must be a whole number >= 1")
        source = editing.read_source(audio, self.sample_rate)
        plan = editing.plan_vary(self.model.geometry, self.codec, source, float(strength),
                                 self.device, self._overlap(overlap))
        plan.record["variations"] = int(variations)
        return plan

    @staticmethod
    def _overlap(overlap: float | None) -> float:
        return editing.DEFAULT_OVERLAP if overlap is None else float(overlap)

    def edit_settings(self, plan: EditPlan, **knobs) -> SampleSettings:
        """`settings(**knobs)` with the duration the plan's output has."""
        if knobs.get("duration") is not None:
            raise UserError("the duration of an edit follows from its input "
                            "(continue_audio takes one)")
        knobs.pop("duration", None)
        return self.settings(duration=plan.seconds, **knobs)

    @staticmethod
    def _per_input(prompts: list[str] | str, audio: Audio | list[Audio],
                   build: Callable[[Audio], EditPlan]) -> EditPlan | list[EditPlan]:
        """`build`'s plan for the one input clip, or a list of one per prompt."""
        if not isinstance(audio, (list, tuple)):
            return build(audio)
        count = 1 if isinstance(prompts, str) else len(prompts)
        if len(audio) != count:
            raise UserError(f"{len(audio)} input clips for {count} prompt(s): give one clip "
                            "for all, or one per prompt")
        return [build(a) for a in audio]

    def _run_plan(self, prompts: list[str] | str, plan: EditPlan | list[EditPlan],
                  progress: Callable[[int, int], None] | None, knobs: dict) -> Generation:
        first = editing.same_grid(plan if isinstance(plan, list) else [plan])
        return self.generate(prompts, self.edit_settings(first, **knobs), progress, plan)
