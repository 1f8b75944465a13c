"""`energytta-train --config C [--resume] [key=value ...]`: parse flags, load the config, train."""
from __future__ import annotations

import argparse

from energytta.cli_help import HelpFormatter
from energytta.config import CONFIG_HELP

EPILOG = """\
overrides:
  Any config key can be set after the flags as dotted key=value pairs; values are read
  as YAML scalars and type-checked (an unknown key or a wrong type is an error).

examples:
  energytta-train --config ./my_teacher.yaml      # a path; a bare name is a packaged config
  energytta-train --config teacher_small train.steps=2000 train.out_dir=runs/t2
  energytta-train --config teacher_small --resume          # continue runs/teacher_small
  energytta-train --config teacher_rope_v train.max_minutes=60   # a wall budget, then --resume
  energytta-train --config default head.kind=energy \\
      teacher.ckpt=runs/teacher_small/model.safetensors train.out_dir=runs/student
  # several GPUs; configs/accelerate/ also has multi-node, FSDP and 2-CPU-process files
  accelerate launch --config_file configs/accelerate/multi_gpu.yaml \
      -m energytta.train.cli --config teacher_small

outputs (in train.out_dir):
  config.yaml, metrics.jsonl (+ "stage": "val" rows), step-XXXXXXX/ (training state, the
  last train.keep_last kept),
  samples/step-XXXXXXX/*.wav|png, model.safetensors (EMA weights, for energytta-sample)
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="energytta-train", epilog=EPILOG,
        formatter_class=HelpFormatter,
        description="Train with the one loop: the diffusion-head teacher (head.kind=diffusion),\n"
                    "the energy-head student (head.kind=energy), a codec part\n"
                    "(codec.train=vae|vocoder) or the synth-classifier; train.objective names\n"
                    "one explicitly. train.val_every adds validation rows (val/*). Ctrl-C or\n"
                    "SIGTERM saves a checkpoint; --resume continues exactly where it stopped.")
    p.add_argument("--config", required=True, metavar="C", help=CONFIG_HELP)
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest step folder in train.out_dir "
                        "(starts fresh if there is none)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. train.lr=3e-4 data.batch_size=16")
    return p


def main(argv: list[str]) -> int:
    """Args: argv without the program name. Returns the exit code (UserError -> caller)."""
    # intermixed: `key=value --resume key=value` is as valid as keys after the flag
    args = build_parser().parse_intermixed_args(argv)
    from energytta.config import load_config
    from energytta.train.loop import train

    cfg = load_config(args.config, args.overrides)
    train(cfg, resume=args.resume)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":  # `accelerate launch -m energytta.train.cli`
    from energytta.errors import run_cli

    raise SystemExit(run_cli(main))
