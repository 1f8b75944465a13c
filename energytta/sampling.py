"""Iterative parallel decoding for any head (MAR's `sample_tokens`, MaskGIT's schedule).

All tokens start masked (or, for inpainting/continuation, the `known` ones are given and
the rest masked). A random order is drawn per row; at each of K iterations the backbone
runs once, the cosine schedule says how many tokens stay masked after this step, and the
next tokens in the order are drawn by the head from their features z. Tokens are revealed
exactly once and never re-masked; the last step reveals everything.

Classifier-free guidance: conditional and unconditional rows share one backbone pass; the
head combines them (ε for the diffusion teacher, z for the energy student). The guidance
scale follows a schedule in decoding progress (Muse/MAR "linear": weak early, full late).
A guidance-distilled backbone (`model.guidance_embed`, docs/guidance.md) takes the step's
scale as an input instead and runs the conditional rows alone: half the backbone batch.

Per-step counts are python ints from the schedule, so the loop makes no device->host
syncs: the backbone is told how many tokens are visible (`max_visible`) instead of
counting them; the only sync is counting each row's unknown tokens once before the loop.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from energytta.config_rules import CFG_SCHEDULES, check_value  # noqa: F401 (re-exported)
from energytta.errors import UserError
from energytta.masking import cosine_num_masked
from energytta.models.heads import Head

Pair = tuple[torch.Tensor, torch.Tensor]  # tensors and their (B, N|L) bool mask


def cfg_scale_at(step: int, iterations: int, cfg: float, schedule: str, num_tokens: int,
                 num_masked: int) -> float:
    """Guidance scale used at `step`, from the fraction of tokens revealed after it.

    progress = (num_tokens − num_masked) / num_tokens. "constant": cfg; "linear" (MAR,
    Muse): 1 + (cfg − 1)·progress; "cosine": 1 + (cfg − 1)·(1 − cos(π·progress))/2.
    Both ramps reach `cfg` at the last step, where num_masked = 0.

    Args:
        step: 0-based iteration; iterations: K (kept for schedules that want them).
        cfg: maximum guidance scale. schedule: one of CFG_SCHEDULES.
        num_tokens: tokens to generate in total; num_masked: still masked after `step`.
    """
    check_value("sample.cfg_schedule", schedule)
    if schedule == "constant":
        return cfg
    progress = 1.0 if num_tokens <= 0 else (num_tokens - num_masked) / num_tokens
    if schedule == "linear":
        return 1.0 + (cfg - 1.0) * progress
    return 1.0 + (cfg - 1.0) * (1.0 - math.cos(math.pi * progress)) / 2.0  # "cosine"


def masked_after(step: int, iterations: int, num_unknown: list[int],
                 masked_now: list[int]) -> list[int]:
    """Per row, how many tokens stay masked after `step`.

    The cosine schedule runs on each row's own count of unknown tokens; like MAR we
    reveal at least one token per step while any remain, and everything at the last step.
    """
    if step >= iterations - 1:
        return [0] * len(masked_now)
    return [min(cosine_num_masked(step, iterations, u), max(cur - 1, 0))
            for u, cur in zip(num_unknown, masked_now)]


def random_orders_unknown_first(unknown: torch.Tensor,
                                generator: torch.Generator | None) -> torch.Tensor:
    """(B,N) bool unknown -> (B,N) long orders: a random permutation of each row's unknown
    positions, followed by its known ones (keys +inf), so order ranks [0, U_i) are unknown."""
    keys = torch.rand(unknown.shape, generator=generator, device=unknown.device)
    return keys.masked_fill(~unknown, math.inf).argsort(dim=1)


def _to_predict(orders: torch.Tensor, masked_now: list[int],
                masked_next: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and positions (M,), (M,) revealed this step: order ranks [next_i, now_i)."""
    counts = torch.tensor([a - b for a, b in zip(masked_now, masked_next)])
    rows = torch.repeat_interleave(torch.arange(len(counts)), counts)  # (M,)
    first = torch.cumsum(counts, 0) - counts  # index of each row's first entry
    rank = torch.arange(len(rows)) - first[rows] + torch.tensor(masked_next)[rows]
    rows, rank = rows.to(orders.device), rank.to(orders.device)
    return rows, orders[rows, rank]


def _pad_text(states: torch.Tensor, mask: torch.Tensor,
              length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (B,L,Dt) states with zeros and (B,L) mask with False to `length`."""
    extra = length - states.shape[1]
    return F.pad(states, (0, 0, 0, extra)), F.pad(mask, (0, extra), value=False)


def _guided_text(text: torch.Tensor, text_mask: torch.Tensor, uncond_text: torch.Tensor | None,
                 uncond_mask: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Text for [cond rows; uncond rows]: the learned null text via drop_text, or the
    negative prompt padded to a common length. Returns (2B,L,Dt), (2B,L), drop (2B,)|None."""
    B = text.shape[0]
    if uncond_text is None:
        drop = torch.arange(2 * B, device=text.device) >= B
        return torch.cat([text, text]), torch.cat([text_mask, text_mask]), drop
    if uncond_mask is None:
        uncond_mask = torch.ones(uncond_text.shape[:2], dtype=torch.bool, device=text.device)
    uncond_text = uncond_text.expand(B, -1, -1)  # one negative prompt for all rows is fine
    uncond_mask = uncond_mask.expand(B, -1)
    length = max(text.shape[1], uncond_text.shape[1])
    cond_s, cond_m = _pad_text(text, text_mask, length)
    unc_s, unc_m = _pad_text(uncond_text.to(text.dtype), uncond_mask.bool(), length)
    return torch.cat([cond_s, unc_s]), torch.cat([cond_m, unc_m]), None


def _token_dim(head: Head, backbone: torch.nn.Module, known: torch.Tensor | None) -> int:
    if known is not None:
        return known.shape[-1]
    for owner in (head, backbone):
        if isinstance(getattr(owner, "token_dim", None), int):
            return owner.token_dim
    raise ValueError("decode: cannot tell the token size; the head or backbone needs "
                     "a `token_dim` attribute, or pass `known`")


def _input_noise(backbone: torch.nn.Module, B: int, N: int, d: int, like: torch.Tensor,
                 generator: torch.Generator | None) -> torch.Tensor | None:
    """The one draw of a one-pass generator's input noise (`model.noise_inputs`), shared by
    every iteration and by the guided rows; None for other backbones (nothing drawn, so
    their samples are unchanged)."""
    if getattr(backbone, "noise_proj", None) is None:
        return None
    return torch.randn((B, N, d), generator=generator, device=like.device, dtype=like.dtype)


def one_pass_guidance(backbone: torch.nn.Module, cfg: float, one_pass: bool | None = None,
                      negative: bool = False) -> bool:
    """Whether `decode` guides with one conditional pass: the backbone is guidance-distilled
    (has `guidance_proj`), there is guidance (cfg != 1), no negative prompt (its text needs
    its own rows) and the caller did not ask for two passes (`one_pass=False`)."""
    return (one_pass is not False and cfg != 1.0 and not negative
            and getattr(backbone, "guidance_proj", None) is not None)


@dataclass(frozen=True)
class DecodeSettings:
    """How `decode` runs; checked once, by the config's rules, when built.

    Attributes:
        iterations: K decoding steps (at least one token revealed per step).
        cfg: maximum guidance scale; 1.0 skips the unconditional rows entirely.
        cfg_schedule: "constant" | "linear" | "cosine" (see `cfg_scale_at`).
        temperature: passed to the head (noise scale of its sampler).
        one_pass: guide a guidance-distilled backbone with one conditional pass (None or
            True: whenever the backbone has `guidance_proj` and no negative prompt is
            given; False: always two passes). Backbones without it ignore this.
    """

    iterations: int
    cfg: float = 1.0
    cfg_schedule: str = "linear"
    temperature: float = 1.0
    one_pass: bool | None = None

    def __post_init__(self) -> None:
        for name in ("iterations", "cfg", "cfg_schedule", "temperature"):
            check_value(f"sample.{name}", getattr(self, name))

    @classmethod
    def of(cls, sample: Any, **changes: Any) -> "DecodeSettings":
        """From a `cfg.sample` section (or `SampleSettings`), with `changes` applied."""
        fields = {f.name: getattr(sample, f.name if f.name != "one_pass" else "one_pass_cfg",
                                  None) for f in dataclasses.fields(cls)}
        return cls(**{**fields, **changes})


def _check_args(num_tokens: int, known: Pair | None, batch: int) -> None:
    if num_tokens < 1:
        raise UserError(f"decode: num_tokens={num_tokens} must be >= 1 (duration too short?)")
    if known is not None and (known[0].shape[:2] != (batch, num_tokens)
                              or tuple(known[1].shape) != (batch, num_tokens)):
        raise UserError(f"decode: known {tuple(known[0].shape)} / known_mask "
                        f"{tuple(known[1].shape)} must be ({batch}, {num_tokens}, ...)")


@torch.no_grad()
def decode(backbone: torch.nn.Module, head: Head, text: torch.Tensor, text_mask: torch.Tensor,
           num_tokens: int, settings: DecodeSettings, *, generator: torch.Generator | None,
           negative: Pair | None = None, known: Pair | None = None,
           progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Generate (B,N,d) tokens by K iterations of masked parallel decoding.

    The caller sets eval mode; this function never changes module state.

    Args:
        backbone: `MARBackbone`-like: forward(tokens, mask, text, text_mask, drop_text=,
            max_visible=).
        head: `sample(z, temperature, generator, z_uncond=, cfg_scale=)`; needs a
            `token_dim` attribute (or the backbone does) unless `known` is given.
        text: (B,L,Dt) text states; text_mask: (B,L) bool, True = real token.
        num_tokens: N audio tokens per row.
        settings: iterations, guidance, temperature (`DecodeSettings`).
        generator: source of the orders and of every head draw (same seed, same tokens).
        negative: (B or 1, Lu, Dt) states and (B or 1, Lu) mask of a negative prompt for
            the unconditional rows; None uses the backbone's learned null text.
        known: (B,N,d) tokens and (B,N) bool mask, True = given; given tokens are kept as
            they are, visible to the backbone from the start, never sampled.
        progress: called as progress(step + 1, iterations) after every step.
    Returns: (B,N,d) tokens.
    """
    s = settings
    B, N, device = text.shape[0], num_tokens, text.device
    _check_args(N, known, B)
    d = _token_dim(head, backbone, None if known is None else known[0])
    if known is None:
        tokens = torch.zeros(B, N, d, device=device, dtype=text.dtype)
        unknown = torch.ones(B, N, dtype=torch.bool, device=device)
    else:
        unknown = ~known[1].to(device=device, dtype=torch.bool)
        tokens = known[0].to(device).clone().masked_fill(unknown.unsqueeze(-1), 0.0)
    orders = random_orders_unknown_first(unknown, generator)  # (B,N)
    noise = _input_noise(backbone, B, N, d, tokens, generator)  # (B,N,d) or None
    ranks = orders.argsort(dim=1)  # (B,N) position -> its rank in the order
    num_unknown = unknown.sum(dim=1).tolist()  # the one host sync, before the loop
    masked_now = list(num_unknown)
    one_pass = one_pass_guidance(backbone, s.cfg, s.one_pass, negative is not None)
    guided = s.cfg != 1.0 and not one_pass  # two-pass CFG: cond and uncond rows
    if guided:
        text_in, mask_in, drop = _guided_text(text, text_mask, *(negative or (None, None)))
    else:
        text_in, mask_in, drop = text, text_mask, None
    for step in range(s.iterations):
        masked_next = masked_after(step, s.iterations, num_unknown, masked_now)
        if sum(masked_now) > sum(masked_next):
            mask = ranks < torch.tensor(masked_now, device=device).unsqueeze(1)  # (B,N)
            tok_in = torch.cat([tokens, tokens]) if guided else tokens
            mask_both = torch.cat([mask, mask]) if guided else mask
            scale = cfg_scale_at(step, s.iterations, s.cfg, s.cfg_schedule, sum(num_unknown),
                                 sum(masked_next))
            extra = {} if noise is None else {
                "noise": torch.cat([noise, noise]) if guided else noise}
            if one_pass:  # the scale is an input: (B,) on the device, no sync
                extra["guidance"] = torch.full((B,), scale, device=device, dtype=text.dtype)
            z = backbone(tok_in, mask_both, text_in, mask_in, drop_text=drop,
                         max_visible=N - min(masked_now), **extra)  # (B|2B,N,D); no sync
            rows, pos = _to_predict(orders, masked_now, masked_next)  # (M,), (M,)
            z_uncond = z[B:][rows, pos] if guided else None
            sampled = head.sample(z[:B][rows, pos], s.temperature, generator,
                                  z_uncond=z_uncond, cfg_scale=scale)  # (M,d)
            tokens[rows, pos] = sampled.to(tokens.dtype)
        masked_now = masked_next
        if progress is not None:
            progress(step + 1, s.iterations)
    return tokens
