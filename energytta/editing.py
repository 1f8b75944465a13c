"""Editing and long audio: inpainting, continuation, variations and windowed generation.

A masked-autoregressive model can keep any tokens fixed and generate the rest
(`energytta.sampling.decode(known=(tokens, mask))`). This module turns user requests into
those tensors and back:

* **spans** ("0-1.5,3.0-4.0", seconds) are parsed, checked against the clip and snapped
  to whole *time patches* (the model's token columns, `patch_t` latent frames: 0.1 s for
  the shipped models); every frequency token of a kept column is kept.
* the input clip is encoded to tokens by the model's own codec, exactly as training does
  (`codec.encode` -> `geometry.crop` -> `geometry.patchify`), so kept tokens are the
  tokens a training clip would have.
* **windows**: a clip longer than the model's `audio.max_seconds` is decoded window by
  window; each window after the first starts with the previous one's last `overlap`
  seconds as known tokens. Windows are stitched *in token space*: the overlap's tokens are
  the previous window's own, so the whole token sequence is rendered once (one codec
  decode, one vocoder pass) and there is no waveform seam to cross-fade at all.
* **paste-back**: inpainting and continuation paste the input's own samples into the kept
  spans (so they are preserved exactly, not only up to the codec's reconstruction), with a
  short equal-power cross-fade *inside* each kept span's edges that border regenerated
  audio; the rendering under the fade is the codec's reconstruction of the same kept
  tokens, so the fade joins two versions of the same sound.

Shapes: N tokens = P time patches x `freq_tokens`; tokens are time-major, so the tokens
of time patch p are [p·freq_tokens, (p+1)·freq_tokens).
"""
from __future__ import annotations

import hashlib
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from energytta.errors import UserError

DEFAULT_OVERLAP = 1.0  # seconds of the previous window a long clip's next window sees
DEFAULT_CROSSFADE = 0.02  # seconds of the equal-power fade at a pasted span's inner edges
MAX_LONG_SECONDS = 600.0  # windowed generation's limit: 10 minutes
SILENT_PEAK = 1e-4  # an input whose peak is below -80 dBFS is refused as silent
MODES = ("generate", "inpaint", "continue", "vary")

Spans = list[tuple[float, float]]  # (start, end) seconds, sorted, disjoint
Ranges = list[tuple[int, int]]  # [start, end) indices (time patches or samples)


# ------------------------------------------------------------------ input audio
@dataclass(frozen=True)
class Source:
    """An input clip at the model's rate.

    Attributes:
        wav: (S,) float32 mono samples. sample_rate: Hz (the model's).
        name: the file path (or "<array>"); sha256: of the file's bytes (or the array's).
        file_rate: the file's own rate (resampled when it differs).
    """

    wav: np.ndarray
    sample_rate: int
    name: str
    sha256: str
    file_rate: int

    @property
    def seconds(self) -> float:
        return len(self.wav) / self.sample_rate


def read_source(audio: str | Path | np.ndarray, sample_rate: int, flag: str = "--audio"
                ) -> Source:
    """A file (any rate, resampled with a warning) or an array at `sample_rate`: (S,),
    or (channels, S) / (S, channels) mixed to mono; integer PCM scaled to [-1, 1].

    Raises UserError for a missing, unreadable, empty, non-finite or silent input.
    """
    from energytta.audio.io import load_audio

    if isinstance(audio, np.ndarray):
        wav = array_to_mono(audio, flag)
        name, digest, rate = "<array>", hashlib.sha256(wav.tobytes()).hexdigest(), sample_rate
        if wav.size == 0 or not np.isfinite(wav).all():
            raise UserError(f"{flag}: the array is empty or holds NaN/inf samples")
    else:
        import soundfile as sf

        path = Path(audio)
        wav = load_audio(path, sample_rate)  # UserError: missing / unreadable / empty / NaN
        rate = int(sf.info(str(path)).samplerate)
        name, digest = str(path), hashlib.sha256(path.read_bytes()).hexdigest()
        if rate != sample_rate:
            warnings.warn(f"{flag} {path} is {rate} Hz; resampled to the model's "
                          f"{sample_rate} Hz", stacklevel=2)
    if float(np.abs(wav).max()) < SILENT_PEAK:
        raise UserError(f"{flag} {name} is silent (peak below -80 dBFS); give a clip with sound")
    return Source(wav, int(sample_rate), name, digest, rate)


# integer PCM -> float in [-1, 1]: (offset, full scale) per dtype, as soundfile reads files
PCM_SCALE = {np.dtype(np.int16): (0.0, 2.0 ** 15), np.dtype(np.int32): (0.0, 2.0 ** 31),
             np.dtype(np.uint8): (128.0, 128.0)}
MAX_CHANNELS = 8  # a 2-D array's channel axis is the short one, at most this long


def array_to_mono(audio: np.ndarray, flag: str = "--audio") -> np.ndarray:
    """A caller's array -> (S,) float32 mono, as `load_audio` reads a file.

    Integer PCM (int16, int32, uint8) is scaled to [-1, 1]; float arrays are taken as
    they are. A (C, S) or (S, C) array (C <= MAX_CHANNELS, the shorter axis) is averaged
    over its channels. UserError for other dtypes and for shapes whose channel axis
    cannot be told (more than two axes, or two axes of which neither is short).
    """
    if audio.dtype in PCM_SCALE:
        offset, scale = PCM_SCALE[audio.dtype]
        audio = (audio.astype(np.float64) - offset) / scale
    elif audio.dtype.kind != "f":
        raise UserError(f"{flag}: an array of {audio.dtype} samples is not audio this reads; "
                        "pass float samples in [-1, 1] or int16 / int32 / uint8 PCM")
    if audio.ndim == 2 and min(audio.shape) == 1:
        audio = audio.reshape(-1)
    if audio.ndim == 2:
        short = int(np.argmin(audio.shape))
        if audio.shape[0] == audio.shape[1] or audio.shape[short] > MAX_CHANNELS:
            raise UserError(f"{flag}: cannot tell channels from samples in an array of shape "
                            f"{audio.shape}; pass (S,) mono, or (channels, S) with at most "
                            f"{MAX_CHANNELS} channels")
        audio = audio.mean(axis=short)  # channels mixed to mono, as files are
    elif audio.ndim != 1:
        raise UserError(f"{flag}: an array of shape {audio.shape} is not a clip; pass (S,) "
                        "mono or (channels, S)")
    return np.ascontiguousarray(audio, dtype=np.float32)


# ------------------------------------------------------------------ spans
_SPAN = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*-\s*([0-9]*\.?[0-9]+)\s*$")


def parse_spans(text: str, flag: str) -> Spans:
    """"0-1.5,3.0-4.0" -> [(0.0, 1.5), (3.0, 4.0)]; UserError if malformed, empty
    (end <= start) or overlapping."""
    spans = []
    for part in text.split(","):
        m = _SPAN.match(part)
        if not m:
            raise UserError(f"{flag} {text!r}: {part.strip()!r} is not START-END in seconds "
                            "(e.g. 0-1.5,3.0-4.0)")
        a, b = float(m.group(1)), float(m.group(2))
        if b <= a:
            raise UserError(f"{flag} {text!r}: span {part.strip()} is empty (end <= start)")
        spans.append((a, b))
    spans.sort()
    for (a0, b0), (a1, b1) in zip(spans, spans[1:]):
        if a1 < b0:
            raise UserError(f"{flag} {text!r}: spans {a0:g}-{b0:g} and {a1:g}-{b1:g} overlap")
    return spans


def check_within(spans: Spans, seconds: float, flag: str) -> None:
    """UserError unless every span ends inside a clip of `seconds`."""
    for a, b in spans:
        if b > seconds + 1e-6:
            raise UserError(f"{flag}: span {a:g}-{b:g} ends after the clip's end "
                            f"({seconds:.2f} s)")


def complement(spans: Spans, seconds: float) -> Spans:
    """The parts of [0, seconds) outside `spans` (--regenerate -> kept spans)."""
    out, t = [], 0.0
    for a, b in spans:
        if a > t:
            out.append((t, a))
        t = max(t, b)
    if t < seconds:
        out.append((t, seconds))
    return out


def snap(spans: Spans, patch_seconds: float, num_patches: int, flag: str) -> Ranges:
    """Spans (s) -> [start, end) time-patch ranges, each edge rounded to the nearest token
    boundary and clipped to the clip; UserError if a span rounds to nothing."""
    out: Ranges = []
    for a, b in spans:
        p0 = min(num_patches, round(a / patch_seconds))
        p1 = min(num_patches, round(b / patch_seconds))
        if p1 <= p0:
            raise UserError(f"{flag}: span {a:g}-{b:g} is shorter than one token "
                            f"({patch_seconds:g} s) once snapped to the token grid")
        if out and p0 <= out[-1][1]:  # touching after rounding: one range
            out[-1] = (out[-1][0], max(out[-1][1], p1))
        else:
            out.append((p0, p1))
    return out


def patch_mask(ranges: Ranges, num_patches: int, freq_tokens: int) -> torch.Tensor:
    """Time-patch ranges -> (P·freq_tokens,) bool token mask (True inside a range)."""
    cols = torch.zeros(num_patches, dtype=torch.bool)
    for p0, p1 in ranges:
        cols[p0:p1] = True
    return cols.repeat_interleave(freq_tokens)  # time-major: a column's tokens are adjacent


# ------------------------------------------------------------------ windows
def plan_windows(num_patches: int, window: int, overlap: int) -> Ranges:
    """[start, end) time-patch windows covering [0, num_patches): full-width windows
    `window - overlap` apart; the last one ends at the clip's end (so it overlaps its
    predecessor by at least `overlap`)."""
    if num_patches <= window:
        return [(0, num_patches)]
    step = window - overlap
    out, a = [], 0
    while a + window < num_patches:
        out.append((a, a + window))
        a += step
    out.append((num_patches - window, num_patches))
    return out


def overlap_patches(overlap: float, patch_seconds: float, window: int) -> int:
    """--overlap seconds -> time patches; UserError unless 1 <= it < window."""
    if not math.isfinite(overlap):
        raise UserError(f"--overlap {overlap} must be a finite number of seconds")
    n = round(overlap / patch_seconds)
    if not 1 <= n < window:
        raise UserError(f"--overlap {overlap:g} s must be at least one token "
                        f"({patch_seconds:g} s) and shorter than the model's "
                        f"{window * patch_seconds:g} s window")
    return n


def segment_prompts(prompts: list[str], windows: Ranges
                    ) -> tuple[list[str], list[list[int]]] | None:
    """Per-segment prompts, "a dog barks | rain starts": a prompt's segments split the clip
    evenly in time, and each window is conditioned on the segment holding its middle.

    Returns (the distinct segment texts, per window the (B,) indices of its rows' texts),
    or None when no prompt holds a '|'. UserError for an empty segment, or segments on a
    clip of one window (nothing to hand over between them).
    """
    if not any("|" in p for p in prompts):
        return None
    rows = [[part.strip() for part in p.split("|")] for p in prompts]
    for p, row in zip(prompts, rows):
        if not all(row):
            raise UserError(f"prompt {p[:40]!r}: a segment between '|' is empty")
    if len(windows) == 1:
        raise UserError(f"prompt {prompts[0][:40]!r}...: per-segment prompts ('a | b') need "
                        "a --duration longer than the model's window (audio.max_seconds)")
    texts = list(dict.fromkeys(part for row in rows for part in row))
    index, total = {t: i for i, t in enumerate(texts)}, windows[-1][1]
    per_window = [[index[row[min(len(row) - 1, int((a + b) / 2 * len(row) / total))]]
                   for row in rows] for a, b in windows]
    return texts, per_window


# ------------------------------------------------------------------ plans
@dataclass
class EditPlan:
    """Everything decoding and rendering need for one request on one input clip (a
    batch's rows share one plan, or each row has its own of the same length).

    Attributes:
        mode: one of MODES. num_patches: P, time patches of the output.
        freq_tokens: tokens per time patch. samples_per_patch: waveform samples per patch.
        sample_rate: Hz of the output.
        known: (N, d) tokens given (zeros elsewhere), or None. kept: (N,) bool, True = given.
        strength: vary only: fraction of the clip's tokens each row re-masks.
        windows: [start, end) time-patch windows, decoded in order.
        paste: [start, end) sample ranges of `source` pasted over the output.
        crossfade: seconds of the fade at a pasted range's inner edges.
        source: the input clip, if any. record: what the sample's JSON records.
    """

    mode: str
    num_patches: int
    freq_tokens: int
    samples_per_patch: int
    sample_rate: int
    windows: Ranges
    known: torch.Tensor | None = None
    kept: torch.Tensor | None = None
    strength: float | None = None
    paste: Ranges = field(default_factory=list)
    crossfade: float = DEFAULT_CROSSFADE
    source: Source | None = None
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return self.num_patches * self.freq_tokens

    @property
    def seconds(self) -> float:
        """The output's length."""
        return self.num_patches * self.samples_per_patch / self.sample_rate

    def public_record(self) -> dict[str, Any] | None:
        """The JSON record (None for a plain one-window generation, whose files predate
        editing and so keep their old records)."""
        if self.mode == "generate" and len(self.windows) == 1:
            return None
        return dict(self.record)


@dataclass(frozen=True)
class Grid:
    """What planning needs of a model: its token grid and window (from TokenGeometry)."""

    patch_seconds: float  # seconds per time patch
    freq_tokens: int
    samples_per_patch: int
    window: int  # time patches of the longest clip the model takes
    sample_rate: int
    latent: Any  # the codec's LatentGrid (frames per clip length)
    patch_t: int

    @classmethod
    def of(cls, geometry: Any) -> "Grid":
        g = geometry.grid
        spp = geometry.patch_t * g.factor * g.hop_length
        return cls(spp / g.sample_rate, geometry.freq_tokens, spp,
                   geometry.max_tokens // geometry.freq_tokens, g.sample_rate, g,
                   geometry.patch_t)

    def patches_for(self, seconds: float) -> int:
        """Whole time patches of a `seconds` clip: the codec's latent frames rounded down
        to whole patches, as `TokenGeometry.tokens_for` counts them (without its limit)."""
        return self.latent.frames(seconds) // self.patch_t


def _plan(grid: Grid, mode: str, num_patches: int, overlap: float, **kw: Any) -> EditPlan:
    if num_patches < 1:
        raise UserError(f"the clip is shorter than one token ({grid.patch_seconds:g} s)")
    if num_patches * grid.patch_seconds > MAX_LONG_SECONDS + 1e-6:
        raise UserError(f"{num_patches * grid.patch_seconds:g} s exceeds the "
                        f"{MAX_LONG_SECONDS:g} s limit of windowed generation")
    windows = [(0, num_patches)]
    if num_patches > grid.window:  # the overlap only matters (and is checked) when used
        windows = plan_windows(num_patches, grid.window,
                               overlap_patches(overlap, grid.patch_seconds, grid.window))
    plan = EditPlan(mode, num_patches, grid.freq_tokens, grid.samples_per_patch,
                    grid.sample_rate, windows, **kw)
    secs = grid.patch_seconds
    plan.record.update(mode=mode, seconds=round(num_patches * secs, 6),
                       windows=[[round(a * secs, 6), round(b * secs, 6)] for a, b in windows])
    if len(windows) > 1:
        plan.record["overlap"] = overlap
    return plan


def _source_record(source: Source) -> dict[str, Any]:
    return {"audio": source.name, "audio_sha256": source.sha256,
            "audio_sample_rate": source.file_rate, "audio_seconds": round(source.seconds, 6)}


@torch.no_grad()
def encode_tokens(codec: torch.nn.Module, geometry: Any, wav: np.ndarray, num_patches: int,
                  device: torch.device) -> torch.Tensor:
    """(S,) waveform -> (P·freq_tokens, d) tokens, as training encodes clips (codec.encode,
    then whole time patches, then patchify); latents short of P patches are edge-padded."""
    lat = codec.encode(torch.from_numpy(wav).to(device).reshape(1, -1)).float()  # (1,C,T,F)
    frames = num_patches * geometry.patch_t
    if lat.shape[2] < frames:  # a VAE's ceil can leave the last patch short by a frame
        lat = torch.cat([lat, lat[:, :, -1:].expand(-1, -1, frames - lat.shape[2], -1)], 2)
    return geometry.patchify(lat[:, :, :frames])[0]  # (N, d)


def plan_generate(geometry: Any, seconds: float, overlap: float = DEFAULT_OVERLAP) -> EditPlan:
    """Plain generation of `seconds`, window by window when longer than the model's."""
    grid = Grid.of(geometry)
    return _plan(grid, "generate", grid.patches_for(seconds), overlap)


def plan_inpaint(geometry: Any, codec: torch.nn.Module, source: Source, device: torch.device,
                 keep: str | None = None, regenerate: str | None = None, paste: bool = True,
                 overlap: float = DEFAULT_OVERLAP, crossfade: float = DEFAULT_CROSSFADE
                 ) -> EditPlan:
    """Keep `keep` (or everything but `regenerate`) of `source`; the rest is generated.
    The output has the clip's length cut to whole tokens."""
    if (keep is None) == (regenerate is None):
        raise UserError("inpainting needs exactly one of --keep SPANS or --regenerate SPANS")
    grid = Grid.of(geometry)
    flag, text = ("--keep", keep) if keep is not None else ("--regenerate", regenerate)
    spans = parse_spans(text, flag)
    check_within(spans, source.seconds, flag)
    P = grid.patches_for(source.seconds)
    kept_spans = spans if keep is not None else complement(spans, source.seconds)
    ranges = snap(kept_spans, grid.patch_seconds, P, flag) if kept_spans else []
    if sum(b - a for a, b in ranges) >= P:
        raise UserError(f"{flag} {text!r} keeps the whole clip once snapped to tokens; "
                        "nothing is left to regenerate")
    if not ranges:
        raise UserError(f"{flag} {text!r} keeps nothing; use plain generation instead")
    plan = _plan(grid, "inpaint", P, overlap, source=source, crossfade=crossfade)
    plan.known = encode_tokens(codec, geometry, source.wav, P, device)
    plan.kept = patch_mask(ranges, P, grid.freq_tokens)
    plan.paste = _sample_ranges(ranges, grid) if paste else []
    secs = grid.patch_seconds
    plan.record.update(_source_record(source), requested={flag.lstrip("-"): text},
                       keep=[[round(a * secs, 6), round(b * secs, 6)] for a, b in ranges],
                       paste=paste, crossfade=crossfade if paste else None)
    return plan


def plan_continue(geometry: Any, codec: torch.nn.Module, source: Source, seconds: float,
                  device: torch.device, paste: bool = True, overlap: float = DEFAULT_OVERLAP,
                  crossfade: float = DEFAULT_CROSSFADE) -> EditPlan:
    """Keep all of `source` (cut to whole tokens) and continue it to `seconds`."""
    if not math.isfinite(seconds):
        raise UserError(f"--duration {seconds} must be a finite number of seconds (the "
                        "length to continue the clip to)")
    grid = Grid.of(geometry)
    P_src, P = grid.patches_for(source.seconds), grid.patches_for(seconds)
    if P_src < 1:
        raise UserError(f"--continue {source.name} is shorter than one token "
                        f"({grid.patch_seconds:g} s)")
    if P <= P_src:
        raise UserError(f"--duration {seconds:g} s must be longer than the clip it continues "
                        f"({P_src * grid.patch_seconds:g} s in whole tokens)")
    plan = _plan(grid, "continue", P, overlap, source=source, crossfade=crossfade)
    known = torch.zeros(P * grid.freq_tokens, geometry.token_dim, device=device)
    known[:P_src * grid.freq_tokens] = encode_tokens(codec, geometry, source.wav, P_src, device)
    plan.known, plan.kept = known, patch_mask([(0, P_src)], P, grid.freq_tokens)
    plan.paste = _sample_ranges([(0, P_src)], grid) if paste else []
    plan.record.update(_source_record(source),
                       keep=[[0.0, round(P_src * grid.patch_seconds, 6)]], paste=paste,
                       crossfade=crossfade if paste else None)
    return plan


def plan_vary(geometry: Any, codec: torch.nn.Module, source: Source, strength: float,
              device: torch.device, overlap: float = DEFAULT_OVERLAP) -> EditPlan:
    """Re-mask a random fraction `strength` of the clip's tokens (drawn per row from the
    batch's generator, so each variation re-masks its own tokens) and regenerate them."""
    check_strength(strength)
    grid = Grid.of(geometry)
    P = grid.patches_for(source.seconds)
    plan = _plan(grid, "vary", P, overlap, source=source, strength=float(strength))
    plan.known = encode_tokens(codec, geometry, source.wav, P, device)
    plan.kept = torch.ones(P * grid.freq_tokens, dtype=torch.bool)
    plan.record.update(_source_record(source), strength=float(strength))
    return plan


def check_strength(strength: float) -> None:
    """UserError unless 0 < strength <= 1."""
    if not (math.isfinite(strength) and 0.0 < strength <= 1.0):
        raise UserError(f"--strength {strength} must be in (0, 1] (the fraction of the "
                        "input's tokens regenerated)")


def _sample_ranges(ranges: Ranges, grid: Grid) -> Ranges:
    return [(a * grid.samples_per_patch, b * grid.samples_per_patch) for a, b in ranges]


# ------------------------------------------------------------------ decoding
def same_grid(plans: list[EditPlan]) -> EditPlan:
    """The first of per-row plans, after checking they can share a batch (one output
    length, one window plan); UserError otherwise."""
    first = plans[0]
    for p in plans[1:]:
        if (p.num_patches, p.windows) != (first.num_patches, first.windows):
            raise UserError(f"input clips of one call must give outputs of one length: "
                            f"{p.seconds:g} s vs {first.seconds:g} s (in whole tokens); "
                            "edit them in separate calls")
    return first


def row_known(plans: list[EditPlan], token_dim: int, generator: torch.Generator,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, d) known tokens and (B, N) bool mask for a batch of per-row plans (one
    plan repeated when the rows share an input); `vary` rows re-mask round(strength·N)
    (at least one) random tokens each, drawn from `generator`."""
    B, N = len(plans), same_grid(plans).num_tokens
    given = [p.known for p in plans if p.known is not None]
    known = torch.zeros(B, N, given[0].shape[-1] if given else token_dim, device=device)
    kept = torch.zeros(B, N, dtype=torch.bool, device=device)
    for i, p in enumerate(plans):
        if p.known is not None:
            known[i], kept[i] = p.known.to(device), p.kept.to(device)
    if any(p.strength is not None for p in plans):
        order = torch.rand(B, N, generator=generator, device=device).argsort(dim=1)
        for i, p in enumerate(plans):
            if p.strength is not None:  # the first n of a random order: re-masked
                kept[i, order[i, :max(1, round(p.strength * N))]] = False
    return known, kept


def decode_windows(decode_fn: Callable[..., torch.Tensor], plan: EditPlan,
                   known: torch.Tensor, kept: torch.Tensor,
                   progress: Callable[[int, int], None] | None, iterations: int
                   ) -> torch.Tensor:
    """Decode `plan.windows` in order; returns (B, N, d) tokens.

    Args:
        decode_fn: `decode_fn(num_tokens, known, known_mask, progress, window=w)` ->
            (B, n, d), the sampler with text and settings bound (the window index picks
            a per-segment prompt's text).
        known, kept: (B, N, d), (B, N) from `row_known`; a window sees everything decoded
            so far inside it (the previous window's overlap) as known.
        progress: called as progress(done, windows·iterations).
    """
    tokens, fixed, ft = known.clone(), kept.clone(), plan.freq_tokens
    total = len(plan.windows) * iterations
    for w, (a, b) in enumerate(plan.windows):
        def step(done: int, _k: int, _w: int = w) -> None:
            if progress is not None:
                progress(_w * iterations + done, total)
        sl = slice(a * ft, b * ft)
        if bool(fixed[:, sl].all()):  # nothing to generate here (inside a kept span)
            step(iterations, iterations)
            continue
        tokens[:, sl] = decode_fn((b - a) * ft, tokens[:, sl], fixed[:, sl], step, window=w)
        fixed[:, sl] = True
    return tokens


def paste_kept(wav: torch.Tensor, plans: list[EditPlan]) -> torch.Tensor:
    """(B, S) rendered audio with each row's `source` pasted into its plan's `paste`
    ranges; each edge that borders regenerated audio fades (equal-power, `crossfade` s,
    inside the kept range) from the rendering into the original."""
    out = wav
    for i, plan in enumerate(plans):
        if plan.paste and plan.source is not None:
            out = out.clone() if out is wav else out
            out[i] = _paste_row(wav[i], plan)
    return out


def _paste_row(wav: torch.Tensor, plan: EditPlan) -> torch.Tensor:
    """(S,) one row of `paste_kept`."""
    S = wav.shape[0]
    src = torch.from_numpy(plan.source.wav).to(wav)
    src = torch.nn.functional.pad(src, (0, max(0, S - len(src))))[:S]  # (S,)
    out = wav.clone()
    for a, b in plan.paste:
        n = min(int(round(plan.crossfade * plan.source.sample_rate)), (b - a) // 2)
        w = torch.ones(b - a, dtype=wav.dtype, device=wav.device)  # weight of the original
        if n > 0:
            ramp = torch.sin(0.5 * math.pi * (torch.arange(n, device=wav.device) + 0.5) / n)
            if a > 0:
                w[:n] = ramp.to(wav.dtype)
            if b < S:
                w[-n:] = ramp.flip(0).to(wav.dtype)
        g = torch.sqrt((1 - w.square()).clamp(min=0))  # equal power: w² + g² = 1
        out[a:b] = w * src[a:b] + g * wav[a:b]
    return out


def interior(ranges: Ranges, fade: int, length: int) -> Ranges:
    """The parts of pasted `ranges` outside their fades: where output == input exactly."""
    out = []
    for a, b in ranges:
        n = min(fade, (b - a) // 2)
        out.append((a + (n if a > 0 else 0), b - (n if b < length else 0)))
    return out
