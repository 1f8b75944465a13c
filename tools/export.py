"""Export an inference checkpoint (EMA weights + codec + config) from any training state.

    python tools/export.py runs/teacher_small/step-0000500 --out teacher_500.safetensors
    python tools/export.py runs/teacher_small --out teacher.safetensors   # latest step

The training loop already writes `out_dir/model.safetensors` at the end of a run; this
tool exports any step folder (or a run's latest one) mid-run, and can override the
sampling defaults stored with the model (`sample.iterations=16 sample.cfg=3`), which
`energytta-sample` and `TextToAudio` read when a setting is not given, and the diffusion
head's sampling-only keys (`head.sampling_steps`, `head.clip_x0`, `head.sample_max_t`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from energytta.errors import UserError  # noqa: E402


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
    """
    import torch

    from energytta.checkpoint import load_model, save_inference
    from energytta.config import apply_overrides

    overrides = overrides or []
    bad = [o for o in overrides if not o.startswith(SAMPLING_KEYS)]
    if bad:
        raise UserError(f"override '{bad[0]}': only sample.* defaults and "
                        f"{', '.join(SAMPLING_KEYS[1:])} can change at export "
                        "(the weights fix everything else)")
    cfg, kind, model, codec = load_model(src, "cpu")
    cfg = apply_overrides(cfg, overrides)
    if cfg.head.kind == "diffusion":  # check the sampling chain now, not at the user's load
        from teachers.diffusion import create_diffusion

        h = cfg.head
        create_diffusion(h.num_timesteps, h.noise_schedule, h.sampling_steps, h.learn_sigma,
                         h.sample_max_t)
    return save_inference(out, model, codec, cfg, kind,
                          weight_dtype=torch.float16 if half else None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Extra key=value arguments change sample.* defaults and "
                                       "head.sampling_steps / clip_x0 / sample_max_t.")
    p.add_argument("src", help="step-XXXXXXX/ folder, run folder or inference file")
    p.add_argument("--out", required=True, help="destination .safetensors")
    p.add_argument("--half", action="store_true",
                   help="store the weights in float16: half the file, for shipping")
    args, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        if any("=" not in a for a in rest):
            raise UserError(f"unrecognised arguments: {' '.join(rest)}")
        path = export(args.src, args.out, rest, args.half)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
