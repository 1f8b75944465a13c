"""`energytta-export`: an inference checkpoint (EMA weights + codec + config) from any
training state.

    energytta-export runs/teacher_small/step-0000500 --out teacher_500.safetensors
    energytta-export runs/teacher_small --out teacher.safetensors   # latest step

The training loop already writes `out_dir/model.safetensors` at the end of a run; this
exports any step folder (or a run's latest one) mid-run, and can override the sampling
defaults stored with the model (`sample.iterations=16 sample.cfg=3`), which
`energytta-sample` and `TextToAudio` read when a setting is not given, and the diffusion
head's sampling-only keys (`head.sampling_steps`, `head.clip_x0`, `head.sample_max_t`).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from energytta.cli_help import DefaultsHelpFormatter
from energytta.errors import UserError

# what may change at export: sampling settings, never what the weights were trained with
SAMPLING_KEYS = ("sample.", "head.sampling_steps=", "head.clip_x0=", "head.sample_max_t=")


def export(src: str | Path, out: str | Path, overrides: list[str] | None = None,
           half: bool = False) -> Path:
    """Load `src` (inference file, step folder or run folder) and write `out`.

    Args:
        src: checkpoint to read (a training state's EMA weights are used).
        out: destination `.safetensors` (written atomically).
        overrides: key=value pairs changing the stored sampling settings (SAMPLING_KEYS).
        half: store the weights in float16 (half the file; loaded back as float32).
    Returns:
        the path written.
    """
    import torch

    from energytta.checkpoint import load_model, save_inference
    from energytta.config import apply_overrides
    from energytta.models.heads import build_head
    from energytta.utils import check_writable

    out = Path(out)
    if out.is_dir() or out.suffix != ".safetensors":
        example = out / "model.safetensors" if out.is_dir() else out.with_suffix(".safetensors")
        raise UserError(f"--out {out}: name the destination file, e.g. {example}")
    if any(p.exists() and not p.is_dir() for p in out.parents):
        raise UserError(f"--out {out}: a file is in the way of its folder; choose another "
                        "destination")
    check_writable(out, "--out")  # read-only folder: refused before the model loads
    overrides = overrides or []
    bad = [o for o in overrides if not o.startswith(SAMPLING_KEYS)]
    if bad:
        raise UserError(f"override '{bad[0]}': only sample.* defaults and "
                        f"{', '.join(SAMPLING_KEYS[1:])} can change at export "
                        "(the weights fix everything else)")
    cfg, kind, model, codec = load_model(src, "cpu")
    cfg = apply_overrides(cfg, overrides)
    # a head built from the new settings checks them (e.g. the diffusion head's sampling
    # chain) now, before anything is written, not when a user loads the file
    build_head(cfg.head, model.token_dim, model.backbone.out_dim)
    return save_inference(out, model, codec, cfg, kind,
                          weight_dtype=torch.float16 if half else None)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="energytta-export", formatter_class=DefaultsHelpFormatter,
        description="Export an inference checkpoint (EMA weights + codec + config) from any "
                    "training state: a step folder, a run folder (its latest step) or a file.",
        epilog="Extra key=value arguments change sample.* defaults and "
               "head.sampling_steps / clip_x0 / sample_max_t.")
    p.add_argument("src", help="step-XXXXXXX/ folder, run folder or inference file")
    p.add_argument("--out", required=True, help="destination .safetensors")
    p.add_argument("--half", action="store_true",
                   help="store the weights in float16: half the file, for shipping")
    return p


def main(argv: list[str]) -> int:
    """Args: argv without the program name. Returns 0; bad input raises UserError."""
    args, rest = build_parser().parse_known_args(argv)
    if any("=" not in a for a in rest):
        raise UserError(f"unrecognised arguments: {' '.join(rest)}")
    print(f"wrote {export(args.src, args.out, rest, args.half)}")
    return 0
