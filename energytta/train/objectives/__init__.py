"""Training objectives: what the one loop trains (`base.Objective` is the interface).

| name | module | trains | export |
|---|---|---|---|
| teacher | `teacher.py` | TTAModel + diffusion head: masked denoising | model.safetensors |
| student | `student.py` | TTAModel + energy head: energy score + distill | model.safetensors |
| captiononly | `captiononly.py` | one-pass TTAModel, captions only: VSD | model.safetensors |
| guidance | `guidance.py` | a student's backbone: one-pass CFG | model.safetensors |
| vae | `codec.py` | the mel VAE (+ its discriminator) | codec.safetensors |
| vocoder | `codec.py` | the mel vocoder | vocoder.safetensors |
| classifier | `classifier.py` | the synth-classifier embedder | synth_classifier.safetensors |

`train.objective` picks one; empty, the config implies it: `codec.train` names a codec
part, else `head.kind=energy` trains the student and any other head the teacher. A new
objective plugs in with `register_objective` (or an entry here) without touching the loop.
The config sections each reads (`energytta.config.OBJECTIVE_SECTIONS`; a run's config has
those and no other objective section): student `teacher`, `distill`; captiononly `teacher`,
`vsd`; guidance `guide`; classifier `classifier`; the others none.
"""
from __future__ import annotations

from typing import Union

from energytta.config import OBJECTIVE_SECTIONS, Config, objective_of
from energytta.errors import UserError
from energytta.plugins import load_object
from energytta.train.objectives.base import Objective, TrainContext, ValContext

CODEC_PARTS = ("vae", "vocoder")
# name -> "module:class" (imported on use: the student's pulls in the teacher loader) or the
# Objective class itself
OBJECTIVES: dict[str, Union[str, type[Objective]]] = {
    "teacher": f"{__name__}.teacher:TeacherObjective",
    "student": f"{__name__}.student:StudentObjective",
    "captiononly": f"{__name__}.captiononly:CaptionOnlyObjective",
    "guidance": f"{__name__}.guidance:GuidanceObjective",
    "vae": f"{__name__}.codec:VAEObjective",
    "vocoder": f"{__name__}.codec:VocoderObjective",
    "classifier": f"{__name__}.classifier:ClassifierObjective",
}


def register_objective(name: str, target: str | type[Objective],
                       sections: tuple[str, ...] | None = None) -> None:
    """Make `train.objective=<name>` train with `target`: an Objective class, or where to
    import it from ("module:class"). `sections`: the objective sections it reads
    (`energytta.config.OBJECTIVE_SECTIONS`, e.g. ("teacher", "distill")); None leaves its
    configs' objective sections as they are set."""
    OBJECTIVES[name] = target
    if sections is not None:
        OBJECTIVE_SECTIONS[name] = tuple(sections)


def objective_name(cfg: Config) -> str:
    """`train.objective`, or the objective the config implies (see the module docstring)."""
    chosen, part = cfg.train.objective, cfg.codec.train
    if part and part not in CODEC_PARTS:
        raise UserError(f"codec.train must be 'vae' or 'vocoder', got '{part}'")
    if chosen and part and chosen != part:
        raise UserError(f"train.objective={chosen} but codec.train={part} trains the {part}; "
                        "set one of them")
    return objective_of(chosen, part, cfg.head.kind)


def build_objective(cfg: Config, ctx: TrainContext) -> Objective:
    """The objective `cfg` asks for, built (with its model) on `ctx.device`."""
    return objective_class(cfg).build(cfg, ctx)


def objective_class(cfg: Config) -> type[Objective]:
    """The class of the objective `cfg` asks for (imported, not built)."""
    name = objective_name(cfg)
    if name not in OBJECTIVES:
        raise UserError(f"unknown train.objective '{name}' (valid: {', '.join(OBJECTIVES)})")
    target = OBJECTIVES[name]
    if isinstance(target, str):
        target = load_object(target)
    return target


__all__ = ["CODEC_PARTS", "OBJECTIVES", "Objective", "TrainContext", "ValContext",
           "build_objective", "objective_class", "objective_name", "register_objective"]
