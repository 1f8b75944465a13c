"""Load a trained diffusion-head teacher, frozen, for distillation and benchmarks.

energytta reaches `load_teacher` through the `energytta.teachers` entry point (setup.cfg),
never by importing this package.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from energytta.checkpoint import load_model
from energytta.errors import UserError

if TYPE_CHECKING:
    from energytta.config import Config
    from energytta.models.tta import TTAModel


def load_teacher(path: str | Path, device: str | torch.device = "cpu"
                 ) -> tuple[Config, TTAModel]:
    """Load a teacher checkpoint (inference file or training-state folder).

    The model comes back in eval mode with `requires_grad=False` on every parameter, so
    it can run inside a student's training step without joining its optimizer.

    Args:
        path: `.safetensors` inference file or `step-XXXXXXX/` training-state folder.
        device: where to put the model.
    Returns: `(cfg, model)` — the teacher's own `Config` and its `TTAModel`.
    Raises: UserError if the file is missing/corrupt or holds a student, not a teacher.
    """
    cfg, kind, model, _codec = load_model(path, device)
    if kind != "teacher":
        raise UserError(f"{path}: checkpoint kind is '{kind}', not 'teacher' "
                        "(teacher.ckpt must point at a diffusion-head teacher checkpoint)")
    model.eval()
    model.requires_grad_(False)
    return cfg, model
