"""Seeds of a training run: every random draw is a function of (train.seed, where it happens).

A step's draws come from (train.seed, step, micro-batch, process index), the data order
from (train.seed, epoch), data statistics from (train.seed, `FIT_SEED`) and validation
from (train.seed, `VAL_SEED`); nothing depends on what ran before, so a resumed run
repeats an uninterrupted one bit for bit, and validation never moves a training stream.
"""
from __future__ import annotations

import numpy as np
import torch
from accelerate.utils import set_seed

FIT_SEED = 2**31  # the clips that fit data statistics (codec normalisation) at step 0
VAL_SEED = 2**31 + 1  # the validation stage's generator
PARTS_SEED = 2**31 + 2  # the initial weights of an objective's own trainable parts (LoRA)


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy SeedSequence hashing)."""
    state = np.random.SeedSequence([int(p) % 2**63 for p in parts]).generate_state(2, np.uint64)
    return int(state[0] >> np.uint64(1))


def seed_globals(seed: int) -> None:
    """Seed python, numpy, torch and every accelerator backend (accelerate's `set_seed`).

    numpy's global seed is 32-bit, so `set_seed` gets `seed mod 2**32`; torch is then
    seeded with the whole seed (up to 63 bits, as `derive_seed` gives): CUDA generators use
    all 64 bits, so a step's dropout draws are those of its whole seed.
    """
    set_seed(seed % 2**32)
    if seed >= 2**32:
        torch.manual_seed(seed)


def seed_step(device: torch.device, *parts: int) -> torch.Generator:
    """Seed the global RNGs (dropout, any draw without a generator) from `parts` and return
    a generator on `device` seeded the same way, for the draws that take one."""
    seed = derive_seed(*parts)
    seed_globals(seed)
    return torch.Generator(device=device).manual_seed(seed)
