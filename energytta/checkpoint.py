"""Checkpoints: safetensors for tensors, JSON for everything else; never pickle.

Two forms (docs/architecture.md):

- **Inference file** — one `.safetensors` with tensors `model.*` (EMA weights) and
  `codec.*` (codec buffers, e.g. the mel statistics) and string metadata
  `{"format": "energytta", "version", "kind", "config": <Config JSON>, "text_dim"}`.
- **Training state** — a folder `step-XXXXXXX/` holding `model.safetensors`,
  `ema.safetensors`, `optim.safetensors` (the optimizer's tensors under flat string keys),
  `codec.safetensors` and `state.json` (step, optimizer/scheduler structure, RNG states,
  data position, config). The folder is written atomically, so a crash mid-save leaves
  the previous checkpoint of that step (if any) untouched; older folders beyond
  `keep_last` are deleted after a successful save. Objectives without an EMA or a frozen
  codec (the codec parts, the classifier) write no `ema` / `codec` file; their `kind` in
  state.json is the objective's ("vae", "vocoder", "classifier").

`load_model(path, device)` accepts an inference file, a training-state folder (its EMA
weights are used) or a run folder (its latest step folder).
"""
from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import energytta
from energytta.config import Config, from_dict
from energytta.errors import UserError
from energytta.utils import atomic_path, atomic_write_text

FORMAT = "energytta"
STEP_RE = re.compile(r"^step-(\d{7,})$")
_KINDS = {"diffusion": "teacher", "energy": "student", "onestep": "captiononly"}
# what `load_model` builds: text-to-audio models
MODEL_KINDS = ("teacher", "student", "captiononly")
ASSETS = Path(__file__).resolve().parent / "assets"
# The models that ship with the package (their cards: docs/models.md); names usable as `path`.
SHIPPED = {"student": ASSETS / "student.safetensors", "teacher": ASSETS / "teacher.safetensors",
           # the caption-only one-pass student (docs/captiononly.md)
           "captiononly": ASSETS / "captiononly.safetensors",
           # the student with its guidance distilled into one pass (docs/guidance.md)
           "guided": ASSETS / "guided.safetensors"}
DEFAULT_CKPT = SHIPPED["student"]
# the shipped trained vocoder (research/reports/codecs.md); `vocoder="trained"` picks it
SHIPPED_VOCODER = ASSETS / "vocoder.safetensors"


def resolve_checkpoint(path: str | Path | None) -> Path:
    """`path` itself, or the shipped model it names (None = "student"). A bare "student" or
    "teacher" always means the shipped model, whatever the working folder holds (as bare
    config names do, `config.resolve_config_path`): write `./student` for a local file."""
    name = "student" if path is None else str(path)
    if name in SHIPPED:
        if not SHIPPED[name].is_file():
            raise UserError(f"the shipped {name} model is missing ({SHIPPED[name]}); "
                            "reinstall energytta or pass --ckpt PATH")
        return SHIPPED[name]
    return Path(path)


def kind_for(cfg: Config) -> str:
    """'teacher' for a diffusion head, 'student' for an energy head, 'captiononly' for the
    one-step head of caption-only distillation."""
    return _KINDS.get(cfg.head.kind, cfg.head.kind)


def _cpu_tensors(state: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share storage (tied or sliced weights)
    return {f"{prefix}{k}": v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def _strip(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _text_dim(model: nn.Module, text_dim: int | None) -> int:
    """Text-encoder width the model was built for (TTAModel's second argument)."""
    if text_dim is not None:
        return int(text_dim)
    if hasattr(model, "text_dim"):
        return int(model.text_dim)
    return int(model.backbone.text_proj.in_features)


def _read_safetensors(path: Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the metadata of `path`; UserError when missing or unreadable."""
    if not path.is_file():
        raise UserError(f"{what} not found: {path} (check the path; train one with "
                        "energytta-train or pass a run folder / model.safetensors)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for truncated/corrupt files
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path} is not a readable safetensors file ({reason}); it may be "
                        "truncated or corrupt: re-export it or pick another checkpoint") from None
    return tensors, meta


def _config_from_json(text: str, path: Path) -> Config:
    try:
        return from_dict(json.loads(text))
    except (json.JSONDecodeError, TypeError) as e:
        raise UserError(f"{path}: stored config is not valid JSON ({e}); "
                        "the checkpoint is damaged") from None
    except UserError as e:
        raise UserError(f"{path}: stored config does not fit this energytta "
                        f"{energytta.__version__} ({e})") from None


# ------------------------------------------------------------------ inference file
def save_inference(path: str | Path, model: nn.Module | Mapping[str, torch.Tensor],
                   codec: nn.Module, cfg: Config, kind: str | None = None,
                   text_dim: int | None = None,
                   weight_dtype: torch.dtype | None = None) -> Path:
    """Write the inference file (atomically).

    Args:
        path: destination `.safetensors`.
        model: the TTAModel holding the weights to ship (pass the EMA copy), or its
            state dict (then `text_dim` is required).
        codec: the codec whose buffers (latent statistics) the model was trained with.
        cfg: the full config; stored as JSON.
        kind: "teacher" | "student"; default from `cfg.head.kind`.
        text_dim: text-encoder width; default read from the model.
        weight_dtype: store the model's floating-point tensors in this dtype (e.g.
            torch.float16: half the file; loading casts them back to the model's dtype).
            Codec buffers always stay as they are.
    """
    path = Path(path)
    if isinstance(model, nn.Module):
        state, dim = model.state_dict(), _text_dim(model, text_dim)
    else:
        if text_dim is None:
            raise ValueError("save_inference needs text_dim when given a state dict")
        state, dim = model, int(text_dim)
    if weight_dtype is not None:
        state = {k: v.to(weight_dtype) if v.is_floating_point() else v for k, v in state.items()}
    tensors = {**_cpu_tensors(state, "model."), **_cpu_tensors(codec.state_dict(), "codec.")}
    meta = {"format": FORMAT, "version": energytta.__version__, "kind": kind or kind_for(cfg),
            "config": cfg.to_json(), "text_dim": str(dim)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def load_inference(path: str | Path
                   ) -> tuple[Config, str, dict[str, torch.Tensor], dict[str, torch.Tensor],
                              dict[str, str]]:
    """Read an inference file -> (cfg, kind, model_state, codec_state, metadata)."""
    path = Path(path)
    tensors, meta = _read_safetensors(path, "checkpoint")
    if meta.get("format") != FORMAT or "config" not in meta:
        raise UserError(f"{path} is a safetensors file but not an energytta checkpoint "
                        "(metadata lacks format 'energytta'); export one with energytta-train")
    cfg = _config_from_json(meta["config"], path)
    kind = meta.get("kind") or kind_for(cfg)
    return cfg, kind, _strip(tensors, "model."), _strip(tensors, "codec."), meta


# ------------------------------------------------------------------ JSON encoding
def encode_tree(obj: Any, tensors: dict[str, torch.Tensor], key: str = "") -> Any:
    """Nested dict/list/tuple with tensors -> JSON-able tree; tensors go into `tensors`.

    Tensors become `{"__tensor__": key}`; dicts with non-string keys (the optimizer's
    integer parameter ids) become `{"__items__": [[k, v], ...]}`; tuples `{"__tuple__": [...]}`
    so that `decode_tree` rebuilds exactly the same structure.
    """
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: encode_tree(v, tensors, f"{key}.{k}") for k, v in obj.items()}
        return {"__items__": [[k, encode_tree(v, tensors, f"{key}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_tree(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode_tree(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} (at '{key}') in a checkpoint")


def decode_tree(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of `encode_tree`."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__items__" in obj:
            return {k: decode_tree(v, tensors) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(decode_tree(v, tensors) for v in obj["__tuple__"])
        if "__ndarray__" in obj:
            return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
        return {k: decode_tree(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode_tree(v, tensors) for v in obj]
    return obj


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU + CUDA) global RNG states as JSON-able values."""
    state: dict[str, Any] = {
        "python": encode_tree(random.getstate(), {}),
        "numpy": encode_tree(np.random.get_state(), {}),
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    random.setstate(decode_tree(state["python"], {}))
    np.random.set_state(decode_tree(state["numpy"], {}))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        cuda = [torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# ------------------------------------------------------------------ training state
def step_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / f"step-{step:07d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete step folders (with state.json) of a run, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir()
             if (m := STEP_RE.match(p.name)) and (p / "state.json").is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete step folder of `run_dir`, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_training_state(run_dir: str | Path, step: int, *, model: nn.Module,
                        ema: nn.Module | None, optimizer: torch.optim.Optimizer,
                        codec: nn.Module | None, cfg: Config, state: Mapping[str, Any],
                        text_dim: int | None, keep_last: int = 0,
                        extra: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
                        kind: str | None = None) -> Path:
    """Write `run_dir/step-XXXXXXX/` atomically, then prune to the newest `keep_last`.

    Args:
        run_dir: the run's output folder.
        step: optimizer steps done so far.
        model, ema: the raw (unwrapped) model and its EMA copy (None: no EMA).
        optimizer: a torch optimizer; its state dict is split into tensors + JSON.
        codec: the frozen codec (its buffers are saved), or None.
        cfg: the config (stored in state.json).
        state: extra JSON-able entries (scheduler, rng, data position, ...).
        text_dim: text-encoder width (needed to rebuild TTAModel), or None.
        keep_last: keep this many newest step folders (0 keeps all).
        extra: more tensor groups, each saved as `<name>.safetensors` when non-empty
            (e.g. "objective": the student objective's learned projections).
        kind: the run's kind; default from `cfg.head.kind` ("teacher" | "student").
    """
    folder = step_dir(run_dir, step)
    optim_tensors: dict[str, torch.Tensor] = {}
    optim_tree = encode_tree(optimizer.state_dict(), optim_tensors, "optim")
    doc = {"format": FORMAT, "version": energytta.__version__, "kind": kind or kind_for(cfg),
           "step": step, "text_dim": text_dim, "optimizer": optim_tree, **state,
           "config": cfg.to_dict()}
    parts = {"model": model, "ema": ema, "codec": codec}
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        for name, module in parts.items():
            if module is not None:
                save_file(_cpu_tensors(module.state_dict()), str(tmp / f"{name}.safetensors"))
        save_file(optim_tensors, str(tmp / "optim.safetensors"))
        for name, tensors in (extra or {}).items():
            if tensors:
                save_file(_cpu_tensors(tensors), str(tmp / f"{name}.safetensors"))
        # state.json last: a folder counts as a checkpoint only once it exists
        atomic_write_text(tmp / "state.json", json.dumps(doc, indent=1))
    if keep_last > 0:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def load_training_state(folder: str | Path) -> dict[str, Any]:
    """Read a step folder -> {"state": json dict, "config": Config, "model", "optimizer" (a
    torch optimizer state dict), and every other tensor group in it: "ema", "codec" (when
    the run has them), "objective", ...} (CPU tensors)."""
    folder = Path(folder)
    path = folder / "state.json"
    if not path.is_file():
        raise UserError(f"{folder} is not a training checkpoint (no state.json); "
                        "pass a step-XXXXXXX folder, a run folder or a model.safetensors")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); the checkpoint is damaged, "
                        "delete this step folder to fall back to an older one") from None
    if doc.get("format") != FORMAT:
        raise UserError(f"{path} is not an energytta training state (format missing)")
    out: dict[str, Any] = {"state": doc, "config": _config_from_json(json.dumps(doc["config"]),
                                                                     path)}
    out["model"], _ = _read_safetensors(folder / "model.safetensors", "checkpoint file")
    for extra in sorted(folder.glob("*.safetensors")):
        if extra.stem not in out and extra.stem != "optim":
            out[extra.stem], _ = _read_safetensors(extra, "checkpoint file")
    optim_tensors, _ = _read_safetensors(folder / "optim.safetensors", "checkpoint file")
    out["optimizer"] = decode_tree(doc["optimizer"], optim_tensors)
    return out


# ------------------------------------------------------------------ loading a model
def load_weights(module: nn.Module, state: Mapping[str, torch.Tensor], path: Path,
                 what: str = "model") -> None:
    """`load_state_dict(strict=True)`, with a mismatch turned into a one-line UserError."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        lines = [ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()]
        detail = lines[0][:200] if lines else first
        raise UserError(f"{path}: {what} weights do not fit the {what} built from its "
                        f"config ({detail}); was it written by another energytta version?"
                        ) from None


def _resolve(path: Path) -> Path:
    """Inference file, step folder, or run folder -> the file/folder to read."""
    if path.is_file():
        return path
    if not path.exists():
        raise UserError(f"checkpoint not found: {path} (pass a model.safetensors, a "
                        "step-XXXXXXX folder or a run folder)")
    if (path / "state.json").is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is not None:
        return latest
    if (path / "model.safetensors").is_file():
        return path / "model.safetensors"
    raise UserError(f"{path} holds no checkpoint (no step-XXXXXXX/ folder, no "
                    "model.safetensors); train with energytta-train or pass another path")


def load_codec_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The codec buffers (e.g. the mel codec's latent statistics) stored at `path`.

    Args:
        path: an inference `.safetensors`, a `step-XXXXXXX/` folder or a run folder.
    """
    src = _resolve(Path(path))
    if src.is_file():
        return load_inference(src)[3]
    return load_training_state(src)["codec"]


def load_model(path: str | Path, device: str | torch.device = "cpu"
               ) -> tuple[Config, str, nn.Module, nn.Module]:
    """Build the model and codec stored at `path` -> (cfg, kind, TTAModel, Codec), eval mode.

    Args:
        path: an inference `.safetensors`, a training `step-XXXXXXX/` folder (EMA weights
            are used) or a run folder (its latest step folder).
        device: where to put the model and codec.
    """
    from energytta.audio.codec import build_codec
    from energytta.models.tta import TTAModel

    src = _resolve(Path(path))
    if src.is_file():
        cfg, kind, model_state, codec_state, meta = load_inference(src)
        if "text_dim" not in meta:
            raise UserError(f"{src}: metadata lacks 'text_dim'; re-export the checkpoint")
        text_dim = int(meta["text_dim"])
    else:
        loaded = load_training_state(src)
        cfg, kind = loaded["config"], loaded["state"].get("kind", "")
        if kind and kind not in MODEL_KINDS:
            raise UserError(f"{src} is a training state of a {kind}, not of a text-to-audio "
                            f"model; use the {kind} file its run exported")
        model_state, codec_state = loaded["ema"], loaded["codec"]
        text_dim = int(loaded["state"]["text_dim"])
    model = TTAModel(cfg, text_dim)
    load_weights(model, model_state, src)
    codec = build_codec(cfg, load_parts=False)  # trained codec parts come from the checkpoint
    load_weights(codec, codec_state, src, "codec")
    return cfg, kind or kind_for(cfg), model.to(device).eval(), codec.to(device).eval()
