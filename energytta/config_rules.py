"""Value checks for the typed config tree: types are checked as keys are merged
(`energytta.config._check`); the ranges are checked here, once the whole config is known.

Why at load: a bad number otherwise surfaces far from its cause, as a hang
(`data.batch_size=-1` made every epoch empty), a ZeroDivisionError, NaN weights or an
untrained model saved with exit 0. Each rule names its key and the fix.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from energytta.errors import ConfigError


Rule = tuple[Callable[[Any], bool], str]

_POS: Rule = (lambda v: v > 0, "must be > 0")
_NONNEG: Rule = (lambda v: v >= 0, "must be >= 0")
_FINITE_POS: Rule = (lambda v: math.isfinite(v) and v > 0, "must be a finite number > 0")
_FINITE_NONNEG: Rule = (lambda v: math.isfinite(v) and v >= 0,
                        "must be a finite number >= 0")
_UNIT: Rule = (lambda v: 0 <= v < 1, "must be in [0, 1)")
_UNIT_CLOSED: Rule = (lambda v: 0 <= v <= 1, "must be in [0, 1]")
_UNIT_OPEN_CLOSED: Rule = (lambda v: 0 < v <= 1, "must be in (0, 1]")


def _one_of(*valid: str) -> Rule:
    return (lambda v: v in valid, f"must be one of {', '.join(valid)}")


CFG_SCHEDULES = ("constant", "linear", "cosine")  # see energytta.sampling.cfg_scale_at
# what renders a checkpoint's clips by default (`sample.vocoder`; energytta.pipeline)
SAMPLE_VOCODERS = ("checkpoint", "griffin-lim", "trained")
DISTILL_LOSSES = ("mse", "cosine")  # see energytta.train.objectives.student
POS_EMBEDS = ("learned", "rope")  # see energytta.models.mar
GUIDANCE_HEADS = ("mlp", "attention")  # see energytta.models.mar.GuidanceHead
NOISE_SCHEDULES = ("cosine", "linear")  # see teachers.diffusion.named_betas
PREDICTIONS = ("eps", "v", "x0")  # see teachers.diffusion.GaussianDiffusion

# dotted key -> rule; keys absent here take any value of their type
RULES: dict[str, Rule] = {
    **{f"audio.{k}": _POS
       for k in ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels")},
    "audio.f_min": _FINITE_NONNEG, "audio.f_max": _FINITE_POS,
    "audio.max_seconds": _FINITE_POS, "audio.crop_seconds": _FINITE_POS,
    "codec.griffin_lim_iters": _POS, "codec.pca_dim": _POS, "codec.pca_frames": _POS,
    "text.max_length": _POS,
    **{f"model.{k}": _POS
       for k in ("width", "num_heads", "encoder_depth", "patch_t", "patch_f")},
    "model.decoder_depth": _NONNEG, "model.mlp_ratio": _FINITE_POS,
    "model.dropout": _UNIT, "model.attn_dropout": _UNIT, "model.text_dropout": _UNIT,
    "model.mask_ratio_min": _UNIT_OPEN_CLOSED, "model.mask_ratio_std": _FINITE_POS,
    **{f"head.{k}": _POS for k in ("depth", "width", "sampling_steps", "batch_mul",
                                    "noise_dim")},
    # the schedule's tables hold this many numbers each (IDDPM trains with at most 4000)
    "head.num_timesteps": (lambda v: 0 < v <= 100_000, "must be in [1, 100000]"),
    "head.num_samples": (lambda v: v >= 2, "must be >= 2 (the energy score compares "
                         "samples with each other)"),
    "head.alpha": (lambda v: 0 < v < 2, "must be in (0, 2) (EAR: the energy score is "
                   "strictly proper only there)"),
    "head.noise_type": _one_of("gaussian", "uniform"),
    "head.clip_x0": _FINITE_NONNEG, "head.schedule_shift": _FINITE_POS,
    "head.train_temperature": _FINITE_NONNEG, "head.lr_mult": _FINITE_POS,
    "distill.weight": _FINITE_NONNEG, "distill.loss": _one_of(*DISTILL_LOSSES),
    "vsd.real_cfg": _FINITE_NONNEG, "vsd.fake_cfg": _FINITE_NONNEG,
    "vsd.t_min": _NONNEG, "vsd.t_max": _POS, "vsd.lora_rank": _POS,
    "vsd.lora_alpha": _FINITE_POS, "vsd.lora_lr_mult": _FINITE_POS,
    "guide.max_scale": _FINITE_POS, "guide.unguided_frac": _UNIT,
    "vsd.fake_text_dropout": _UNIT, "vsd.tv_weight": _FINITE_NONNEG,
    "vsd.tv_norm": _one_of("l1", "l2"), "vsd.weighting": _one_of("swiftbrush", "dmd"),
    "data.kind": _one_of("audio", "captions"),
    "codec.preprocess": _one_of("audioldm", "legacy"),
    "data.batch_size": _POS, "data.num_workers": _NONNEG,
    "train.steps": (lambda v: v > 0, "must be > 0 (a run of no steps saves an untrained "
                    "model)"),
    "train.lr": _FINITE_POS, "train.min_lr": _FINITE_NONNEG,
    "train.weight_decay": _FINITE_NONNEG, "train.grad_clip": _FINITE_NONNEG,
    "train.grad_accum": _POS, "train.ema_decay": _UNIT_CLOSED,
    "train.log_every": _POS,
    **{f"train.{k}": _NONNEG
       for k in ("warmup_steps", "ckpt_every", "keep_last", "sample_every", "val_every",
                 "val_batches", "val_generate")},
    "train.val_iterations": _POS, "train.max_minutes": _FINITE_NONNEG,
    # the upper bounds: --cfg 1e30 or --temperature inf overflowed to NaN, which was once
    # written as an all-zero wav with exit 0; IMPACT samples at CFG <= 5
    "sample.iterations": _POS, "sample.cfg_schedule": _one_of(*CFG_SCHEDULES),
    "sample.vocoder": _one_of(*SAMPLE_VOCODERS),
    "sample.cfg": (lambda v: math.isfinite(v) and 0 <= v <= 100, "must be in [0, 100]"),
    "sample.temperature": (lambda v: math.isfinite(v) and 0 <= v <= 100,
                           "must be in [0, 100]"),
    "sample.duration": _FINITE_POS,
    "sample.batch_size": _POS,
    "sample.seed": (lambda v: 0 <= v < 2 ** 63, "must be in [0, 2**63) (torch's "
                    "generator range)"),
    "train.seed": (lambda v: 0 <= v < 2 ** 63, "must be in [0, 2**63)"),
    # the names a part understands (the part checks them here too when built in code)
    "model.pos_embed": _one_of(*POS_EMBEDS), "model.guidance_head": _one_of(*GUIDANCE_HEADS),
    "head.noise_schedule": _one_of(*NOISE_SCHEDULES), "head.prediction": _one_of(*PREDICTIONS),
}


_ABSENT = object()


def _get(cfg: Any, key: str) -> Any:
    """The value at dotted `key`, or _ABSENT where this config has no such section or key
    (an objective section it does not read; another head kind's key)."""
    section, name = key.split(".")
    part = cfg.section(section) if hasattr(cfg, "section") else getattr(cfg, section, None)
    return _ABSENT if part is None else getattr(part, name, _ABSENT)


def check_value(key: str, value: Any, name: str = "") -> None:
    """Raise a one-line ConfigError when `value` breaks RULES[key]; `name` is how the
    message calls it (default: "config key 'KEY'"), e.g. a sampling argument's name."""
    ok, why = RULES[key]
    if not ok(value):
        fix = "" if name else f"; set {key}=... to a valid value"
        raise ConfigError(f"{name or f'config key {key!r}'}={value!r} {why}{fix}")


def _check_audio(a: Any) -> None:
    """The mel front-end's band and window: outside them the filters above Nyquist are
    empty (or the band is), and a run trains on a constant mel and exits 0."""
    nyquist = a.sample_rate / 2
    if a.f_min >= a.f_max:
        raise ConfigError(f"config key 'audio.f_min'={a.f_min} must be below audio.f_max="
                          f"{a.f_max}; lower f_min or raise f_max")
    if a.f_max > nyquist:
        raise ConfigError(f"config key 'audio.f_max'={a.f_max} is above the Nyquist frequency "
                          f"of audio.sample_rate={a.sample_rate} ({nyquist:g} Hz), where mel "
                          f"filters are empty; set audio.f_max<={nyquist:g}")
    if a.win_length > a.n_fft:
        raise ConfigError(f"config key 'audio.win_length'={a.win_length} must be <= "
                          f"audio.n_fft={a.n_fft} (the window is zero-padded to n_fft); "
                          "lower win_length or raise n_fft")


def check_section(section: Any, prefix: str) -> None:
    """`check_value` for every rule of one section (`check_section(cfg.head, "head")`), for
    code that builds a part from a section without a whole config (the Python API)."""
    for key in RULES:
        name = key[len(prefix) + 1:]
        if key.startswith(prefix + ".") and hasattr(section, name):
            check_value(key, getattr(section, name))


def validate(cfg: Any) -> Any:
    """Give `cfg` the objective sections its objective reads (with their defaults), refuse
    the others, and raise a one-line ConfigError naming the first out-of-range key;
    return `cfg`."""
    cfg.fit_sections()
    for key in RULES:
        value = _get(cfg, key)
        if value is not _ABSENT:
            check_value(key, value)
    _check_audio(cfg.audio)
    m, t = cfg.model, cfg.train
    if m.width % m.num_heads:
        raise ConfigError(f"config key 'model.width'={m.width} is not divisible by "
                          f"model.num_heads={m.num_heads}; change one of them")
    h = cfg.head
    if hasattr(h, "sample_max_t") and h.sample_max_t != -1 and \
            not 0 <= h.sample_max_t < h.num_timesteps:
        raise ConfigError(f"config key 'head.sample_max_t'={h.sample_max_t} must be -1 (the "
                          f"chain starts at T-1) or in [0, head.num_timesteps - 1 = "
                          f"{h.num_timesteps - 1}]")
    if not all(0 <= b < 1 for b in t.betas) or len(t.betas) != 2:
        raise ConfigError(f"config key 'train.betas'={t.betas} must be two numbers in [0, 1)")
    if not t.out_dir.strip():
        raise ConfigError("config key 'train.out_dir' is empty (a run would write into the "
                          "current folder); set train.out_dir=runs/NAME")
    return cfg
