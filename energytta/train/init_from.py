"""`train.init_from`: start a fresh run from the weights of any model file.

What researchers do with released weights, and what lets a long campaign survive the loss
of its run folder: the run's model starts from the file's (EMA) weights, with a fresh
optimizer, schedule, EMA warm-up and data stream, so `train.steps`, `train.lr` and the
schedule are the new run's own. The file must hold a model of the kind this run trains,
built from the same audio front-end, codec and text encoder, with the same shapes; anything
else is one line naming the key that differs.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from energytta.config import Config
from energytta.errors import UserError

# what fixes the meaning of a token and of the text states: a model trained under other
# values would load (same shapes) and quietly start from the wrong place
MUST_MATCH = ("audio", "codec.name", "text.model")
# the sections whose keys can change the model's shapes (named when the weights do not fit)
SHAPE_SECTIONS = ("model", "head")


def resolve_init(spec: str) -> Path:
    """A shipped model's name (teacher, student, guided, captiononly) or a path -> the path."""
    from energytta.checkpoint import SHIPPED, resolve_checkpoint

    if spec not in SHIPPED and not Path(spec).exists():
        raise UserError(f"train.init_from={spec}: no such file or folder; name a model "
                        "file, a step-XXXXXXX folder, a run folder or a shipped model "
                        f"({', '.join(SHIPPED)})")
    return resolve_checkpoint(spec)


def _differences(run: Config, src: Config, keys: tuple[str, ...]) -> list[str]:
    """`key=run value (the file has src value)` for each dotted key or section that differs."""
    out = []
    for key in keys:
        section, _, name = key.partition(".")
        mine, theirs = asdict(getattr(run, section)), asdict(getattr(src, section))
        for k in ([name] if name else mine):
            if mine[k] != theirs.get(k):
                out.append(f"{section}.{k}={mine[k]!r} (the file has {theirs.get(k)!r})")
    return out


def load_init(cfg: Config, model: nn.Module, kind: str) -> tuple[Path, nn.Module]:
    """Load the weights named by `cfg.train.init_from` into `model` -> (path, the file's codec).

    Args:
        cfg: the run's config; model: the run's freshly built model (before its EMA copy);
        kind: the checkpoint kind this run writes ("teacher", "student", ...).
    """
    from energytta.checkpoint import load_model, load_weights

    spec = cfg.train.init_from
    path = resolve_init(spec)
    src_cfg, src_kind, src_model, src_codec = load_model(path)
    if src_kind != kind:
        raise UserError(f"train.init_from={spec}: a {src_kind or 'model of another kind'}, "
                        f"but this run trains a {kind}; start from a {kind} file (or change "
                        "the run's head.kind / train.objective)")
    wrong = _differences(cfg, src_cfg, MUST_MATCH)
    if wrong:
        raise UserError(f"train.init_from={spec}: {', '.join(wrong[:3])}; set the run's keys "
                        "to the file's values to start from it")
    try:
        load_weights(model, src_model.state_dict(), path, "train.init_from")
    except UserError as e:
        shapes = _differences(cfg, src_cfg, SHAPE_SECTIONS)
        if shapes:
            raise UserError(f"train.init_from={spec}: {', '.join(shapes[:3])}; the weights "
                            "only fit a model of the file's shapes") from None
        raise e
    return path, src_codec


def check_codec(spec: str, codec: nn.Module, src_codec: nn.Module, from_cache: bool) -> None:
    """Give the run the file's codec statistics (token space), or refuse where it cannot.

    A run on raw audio takes the file's statistics (its tokens then mean what they meant to
    the file's model). A run on a latent cache reads latents already normalised with the
    cache's statistics: those must be the file's, within float16 rounding.
    """
    if codec is None:
        return
    mine, theirs = codec.state_dict(), src_codec.state_dict()
    if not from_cache:
        codec.load_state_dict(theirs, strict=True)
        return
    for k, v in theirs.items():
        if k in mine and v.dtype.is_floating_point and not torch.allclose(
                mine[k].float().cpu(), v.float().cpu(), rtol=1e-3, atol=1e-3):
            raise UserError(f"train.init_from={spec}: the latent cache's codec statistics "
                            f"({k}) differ from the file's; train on audio (data.train=a "
                            "manifest) or on a cache built with the file's codec")
