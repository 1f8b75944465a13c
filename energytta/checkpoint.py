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

A codec part loaded frozen from a pretrained folder (AudioLDM's VAE, its HiFi-GAN) is not
copied into either form: state.json (`codec_ref`) or the file's metadata records its folder
and a hash of its files, and loading checks that hash (`energytta.audio.reference`).
Checkpoints written before that hold a copy and keep loading as they are.

`load_model(path, device)` accepts an inference file, a training-state folder (its EMA
weights are used) or a run folder (its latest step folder).
"""
from __future__ import annotations

import json
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import energytta
from energytta.audio.reference import (CodecTensors, check_folders_exist, check_refs_doc,
                                       fill_references, references, stored_state)
from energytta.config import Config, from_saved_dict
from energytta.config_rules import validate
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
# what `energytta-sample` and `TextToAudio.from_pretrained()` use with no checkpoint named:
# the energy-score student, level with the teacher on the caption-attribute checks of
# research/reports/quality.md at the same K (32) and several times faster; ahead of the
# caption-only student, which is faster still
DEFAULT_NAME = "student"
DEFAULT_CKPT = SHIPPED[DEFAULT_NAME]
# the shipped trained vocoder (research/reports/codecs.md); `vocoder="trained"` picks it
SHIPPED_VOCODER = ASSETS / "vocoder.safetensors"


def resolve_checkpoint(path: str | Path | None) -> Path:
    """`path` itself, or the shipped model it names (None = DEFAULT_NAME; see SHIPPED). A bare
    shipped name always means the shipped model, whatever the working folder holds (as
    bare config names do, `config.resolve_config_path`): write `./student` for a local
    file. A path that does not exist is refused with the shipped names listed."""
    name = DEFAULT_NAME if path is None else str(path)
    if name in SHIPPED:
        if not SHIPPED[name].is_file():
            raise UserError(f"the shipped {name} model is missing ({SHIPPED[name]}); "
                            "reinstall energytta or pass --ckpt PATH")
        return SHIPPED[name]
    if not Path(path).exists():
        raise UserError(f"checkpoint not found: {path} (a shipped model: "
                        f"{', '.join(SHIPPED)}; or a model.safetensors, a step-XXXXXXX "
                        "folder or a run folder)")
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
    """The stored config, type- and range-checked like a user's (`config_rules`)."""
    try:
        return validate(from_saved_dict(json.loads(text)))
    except (json.JSONDecodeError, TypeError, RecursionError) as e:
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise UserError(f"{path}: stored config is not valid JSON ({reason}); "
                        "the checkpoint is damaged") from None
    except UserError as e:
        raise UserError(f"{path}: stored config does not fit this energytta "
                        f"{energytta.__version__} ({e})") from None


def _text_dim_of(value: Any, path: Path) -> int:
    """The stored text-encoder width as a positive int, or a one-line UserError."""
    try:
        dim = int(value)
    except (TypeError, ValueError, OverflowError):
        dim = 0
    if isinstance(value, bool) or dim <= 0 or str(dim) != str(value).strip():
        raise UserError(f"{path}: stored text_dim={value!r} is not a positive whole number; "
                        "the checkpoint is damaged: re-export it")
    return dim


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
    refs = references(codec)  # frozen pretrained parts: named by folder + hash, not copied
    tensors = {**_cpu_tensors(state, "model."),
               **_cpu_tensors(stored_state(codec, refs), "codec.")}
    meta = {"format": FORMAT, "version": energytta.__version__, "kind": kind or kind_for(cfg),
            "config": cfg.to_json(), "text_dim": str(dim)}
    if refs:
        meta["codec_ref"] = json.dumps(refs)
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
    codec = _strip(tensors, "codec.")
    if "codec_ref" in meta:
        codec = CodecTensors(codec, _refs_of(meta["codec_ref"], path))
    return cfg, kind, _strip(tensors, "model."), codec, meta


def _refs_of(text: str, path: Path) -> dict[str, Any]:
    """The codec references stored as JSON in an inference file's metadata."""
    try:
        refs = json.loads(text)
    except json.JSONDecodeError:
        refs = None
    if not check_refs_doc(refs):
        raise UserError(f"{path}: metadata 'codec_ref' is malformed; the checkpoint is "
                        "damaged: re-export it")
    return refs


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


def save_training_state(run_dir: str | Path, step: int, *,
                        model: nn.Module | Mapping[str, torch.Tensor], ema: nn.Module | None,
                        optimizer: torch.optim.Optimizer | Mapping[str, Any],
                        codec: nn.Module | None, cfg: Config, state: Mapping[str, Any],
                        text_dim: int | None, keep_last: int = 0,
                        extra: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
                        kind: str | None = None) -> Path:
    """Write `run_dir/step-XXXXXXX/` atomically, then prune to the newest `keep_last`.

    Args:
        run_dir: the run's output folder.
        step: optimizer steps done so far.
        model, ema: the raw (unwrapped) model and its EMA copy (None: no EMA), or their
            full state dicts (FSDP gathers the model's shards into one).
        optimizer: a torch optimizer or its (full) state dict; split into tensors + JSON.
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
    optim_state = optimizer if isinstance(optimizer, Mapping) else optimizer.state_dict()
    optim_tree = encode_tree(optim_state, optim_tensors, "optim")
    doc = {"format": FORMAT, "version": energytta.__version__, "kind": kind or kind_for(cfg),
           "step": step, "text_dim": text_dim, "optimizer": optim_tree, **state,
           "config": cfg.to_dict()}
    parts = {"model": model, "ema": ema}
    if codec is not None:  # frozen pretrained parts: named by folder + hash, not copied
        doc["codec_ref"] = refs = references(codec)
        parts["codec"] = stored_state(codec, refs)
        if not refs:
            del doc["codec_ref"]
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        for name, module in parts.items():
            if module is not None:
                tensors = module if isinstance(module, Mapping) else module.state_dict()
                save_file(_cpu_tensors(tensors), str(tmp / f"{name}.safetensors"))
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


# what `--resume` reads from state.json beside the weights (the training loop's `state`)
RESUME_KEYS = ("scheduler", "rng", "data")


def load_training_state(folder: str | Path, require: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a step folder -> {"state": json dict, "config": Config, "model", "optimizer" (a
    torch optimizer state dict), and every other tensor group in it: "ema", "codec" (when
    the run has them), "objective", ...} (CPU tensors).

    Args:
        folder: the step folder.
        require: state.json entries that must be present (e.g. RESUME_KEYS); a missing one
            is a one-line UserError, as every malformed entry is.
    """
    folder = Path(folder)
    path = folder / "state.json"
    if not path.is_file():
        raise UserError(f"{folder} is not a training checkpoint (no state.json); "
                        "pass a step-XXXXXXX folder, a run folder or a model.safetensors")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise UserError(f"{path} is not valid JSON ({reason}); the checkpoint is damaged, "
                        "delete this step folder to fall back to an older one") from None
    _check_state_doc(doc, path)
    missing = [k for k in require if k not in doc]
    if missing:
        raise _damaged(path, f"'{missing[0]}' is missing")
    out: dict[str, Any] = {"state": doc, "config": _config_from_json(json.dumps(doc["config"]),
                                                                     path)}
    out["model"], _ = _read_safetensors(folder / "model.safetensors", "checkpoint file")
    for extra in sorted(folder.glob("*.safetensors")):
        if extra.stem not in out and extra.stem != "optim":
            out[extra.stem], _ = _read_safetensors(extra, "checkpoint file")
    optim_tensors, _ = _read_safetensors(folder / "optim.safetensors", "checkpoint file")
    out["optimizer"] = _decode_part(doc["optimizer"], optim_tensors, path, "optimizer")
    if "codec_ref" in doc:
        out["codec"] = CodecTensors(out.get("codec", {}), doc["codec_ref"])
    return out


def _damaged(path: Path, what: str) -> UserError:
    return UserError(f"{path}: {what}; the checkpoint is damaged, delete this step folder "
                     "to fall back to an older one")


def _decode_part(tree: Any, tensors: Mapping[str, torch.Tensor], path: Path, key: str) -> Any:
    """`decode_tree` of state.json's `key`, a malformed tree (a `__tensor__` naming a
    missing tensor, broken `__items__`) being a one-line UserError."""
    try:
        return decode_tree(tree, tensors)
    except (KeyError, TypeError, ValueError, RecursionError) as e:
        raise _damaged(path, f"'{key}' is malformed ({type(e).__name__}: {e})") from None


def _check_state_doc(doc: Any, path: Path) -> None:
    """Refuse (UserError) a state.json that is valid JSON of the wrong shape, before any of
    it is used: every entry a loader or `--resume` reads must have its type."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UserError(f"{path} is not an energytta training state (format missing)")
    step = doc.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise _damaged(path, f"'step' is {step!r}, not a whole number >= 0")
    for key, types in (("config", dict), ("optimizer", (dict, list)), ("data", dict),
                       ("rng", dict), ("ema_updates", int), ("elapsed", (int, float))):
        required = key in ("config", "optimizer")
        if (required or key in doc) and not isinstance(doc.get(key), types):
            raise _damaged(path, f"'{key}' is missing or of the wrong type")
    if doc.get("text_dim") is not None:
        _text_dim_of(doc["text_dim"], path)
    if "codec_ref" in doc and not check_refs_doc(doc["codec_ref"]):
        raise _damaged(path, "'codec_ref' is malformed")
    if not all(isinstance(v, int) for v in doc.get("data", {}).values()):
        raise _damaged(path, "'data' holds a non-integer position")
    if "scheduler" in doc:
        _decode_part(doc["scheduler"], {}, path, "scheduler")
    if "rng" in doc:
        _check_rng(doc["rng"], path)


def _check_rng(state: Mapping[str, Any], path: Path) -> None:
    """Restore `state` into throw-away generators: what `set_rng_state` would do to the
    global ones, so that a bad state fails here, in one line, and changes nothing."""
    try:
        random.Random().setstate(decode_tree(state["python"], {}))
        np.random.RandomState().set_state(decode_tree(state["numpy"], {}))
        torch.Generator().set_state(torch.tensor(state["torch"], dtype=torch.uint8))
        for s in state.get("cuda", []):
            torch.tensor(s, dtype=torch.uint8)
    except (TypeError, ValueError, KeyError, IndexError, RuntimeError, OverflowError) as e:
        raise _damaged(path, f"'rng' is not a saved random state ({type(e).__name__})"
                       ) from None


# ------------------------------------------------------------------ loading a model
def check_fits(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
               path: Path, what: str = "model") -> None:
    """Refuse in one line stored tensors that do not match `expected` (a module's state
    dict, possibly on the meta device) in names, shapes or kind of dtype: floating-point
    weights must be stored as floating point (float16 for `--half`), not cast silently
    from integers; integer buffers keep their exact dtype."""
    names = sorted(set(expected) ^ set(state))
    if names:
        where = "missing from the file" if names[0] in expected else "not in the model"
        raise UserError(f"{path}: {what} weights do not fit the {what} built from its config "
                        f"({names[0]} is {where}); was it written by another energytta "
                        "version?")
    for key, want in expected.items():
        got = state[key]
        if tuple(got.shape) != tuple(want.shape):
            raise UserError(f"{path}: {what} weights do not fit the {what} built from its "
                            f"config ({key} is stored as {tuple(got.shape)}, the config "
                            f"builds {tuple(want.shape)}); the file is damaged or edited")
        if (got.is_floating_point() != want.is_floating_point()
                or (not want.is_floating_point() and got.dtype != want.dtype)):
            raise UserError(f"{path}: {what} tensor {key} is stored as {got.dtype}, expected "
                            f"{want.dtype}; energytta never casts weights between kinds: the "
                            "file is damaged or not an energytta export")


def load_weights(module: nn.Module, state: Mapping[str, torch.Tensor], path: Path,
                 what: str = "model") -> None:
    """`load_state_dict(strict=True)`, with a mismatch turned into a one-line UserError.
    A codec state that refers to pretrained folders (`CodecTensors`) is first completed
    from `module`'s own parts, once their folders' hashes are checked."""
    if isinstance(state, CodecTensors) and state.refs:
        state = fill_references(module, state, path)
    check_fits(module.state_dict(), state, path, what)
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
    """Inference file, step folder, or run folder -> the file/folder to read (a run folder
    is returned as is: `_read_source` picks its newest readable step)."""
    if path.is_file():
        return path
    if not path.exists():
        raise UserError(f"checkpoint not found: {path} (pass a model.safetensors, a "
                        "step-XXXXXXX folder or a run folder)")
    if (path / "state.json").is_file() or list_checkpoints(path):
        return path
    if (path / "model.safetensors").is_file():
        return path / "model.safetensors"
    raise UserError(f"{path} holds no checkpoint (no step-XXXXXXX/ folder, no "
                    "model.safetensors); train with energytta-train or pass another path")


# a run that saves faster than a reader reads could otherwise keep it retrying forever
_MAX_RETRIES = 20


def newest_readable_step(run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The newest step folder of `run_dir` whose files all read, and its contents.

    A run that is training prunes older steps while we read (it holds the folder's lock
    for its whole life, so a reader cannot wait for it): a step that vanished, or that a
    newer step replaced, mid-read is retried from a fresh listing, silently. A step that
    stays damaged (a truncated file, a state.json of the wrong shape) is skipped with a
    warning naming it, for the next older one.
    """
    skipped: set[Path] = set()
    first_error: UserError | None = None
    for _ in range(_MAX_RETRIES):
        found = [p for p in list_checkpoints(run_dir) if p not in skipped]
        if not found:
            break
        folder = found[-1]
        try:
            return folder, load_training_state(folder)
        except UserError as e:
            skipped.add(folder)
            if not folder.is_dir() or list_checkpoints(run_dir)[-1:] != [folder]:
                continue  # pruned or superseded while we read it: not damaged
            first_error = first_error or e
            warnings.warn(f"skipping damaged {folder.name} ({e})", stacklevel=3)
    raise UserError(f"no readable checkpoint in {run_dir} ({first_error or 'none left'}); "
                    "delete the damaged step-XXXXXXX folders or pass another checkpoint"
                    ) from None


def _read_source(src: Path) -> tuple[Path, Config, str, dict[str, torch.Tensor],
                                     dict[str, torch.Tensor], int]:
    """Read what `_resolve` chose -> (the file or step folder read, cfg, kind,
    model_state, codec_state, text_dim)."""
    if src.is_file():
        cfg, kind, model_state, codec_state, meta = load_inference(src)
        if "text_dim" not in meta:
            raise UserError(f"{src}: metadata lacks 'text_dim'; re-export the checkpoint")
        return src, cfg, kind, model_state, codec_state, _text_dim_of(meta["text_dim"], src)
    if (src / "state.json").is_file():
        loaded = load_training_state(src)
    else:
        src, loaded = newest_readable_step(src)
    cfg, kind = loaded["config"], loaded["state"].get("kind", "")
    if kind and kind not in MODEL_KINDS:
        raise UserError(f"{src} is a training state of a {kind}, not of a text-to-audio "
                        f"model; use the {kind} file its run exported")
    if loaded["state"].get("text_dim") is None or "ema" not in loaded:
        raise UserError(f"{src}: the training state lacks text_dim or EMA weights; "
                        "pass the model file its run exported")
    return (src, cfg, kind, loaded["ema"], loaded.get("codec", {}),
            _text_dim_of(loaded["state"]["text_dim"], src))


def _check_counts(cfg: Config, text_dim: int, state: Mapping[str, torch.Tensor],
                  src: Path) -> None:
    """Refuse sizes no file of this many numbers can hold, before even a meta-device build
    (whose cost grows with the number of layers): each of these sizes gives the model at
    least that many weights."""
    held = sum(t.numel() for t in state.values())
    m, h = cfg.model, cfg.head
    for key, value in (("text_dim", text_dim), ("model.width", m.width),
                       ("model.encoder_depth", m.encoder_depth),
                       ("model.decoder_depth", m.decoder_depth), ("head.width", h.width),
                       ("head.depth", h.depth)):
        if value > held:
            raise UserError(f"{src}: {key}={value} asks for more weights than the file holds "
                            f"({held} numbers); the checkpoint is damaged or edited")


def load_codec_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The codec buffers (e.g. the mel codec's latent statistics) stored at `path`.

    Args:
        path: an inference `.safetensors`, a `step-XXXXXXX/` folder or a run folder.
    """
    return _read_source(_resolve(Path(path)))[4]


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

    src, cfg, kind, model_state, codec_state, text_dim = _read_source(_resolve(Path(path)))
    _check_counts(cfg, text_dim, model_state, src)
    if isinstance(codec_state, CodecTensors):  # before a codec is built from those folders
        check_folders_exist(codec_state.refs, src)
    # build on the meta device first (no memory): a file whose config asks for absurd
    # sizes (model.width=2**20, text_dim=4e9) is refused by its tensors' shapes, not
    # by the allocator
    with torch.device("meta"):
        check_fits(TTAModel(cfg, text_dim).state_dict(), model_state, src)
        # pretrained parts (AudioLDM's VAE, HiFi-GAN) are sized by their own folders, and
        # transformers refuses to load under a meta device: their codec is checked on load
        if cfg.codec.name != "audioldm" and cfg.codec.vocoder != "hifigan":
            check_fits(build_codec(cfg, load_parts=False).state_dict(), codec_state, src,
                       "codec")
    model = TTAModel(cfg, text_dim)
    load_weights(model, model_state, src)
    codec = build_codec(cfg, load_parts=False)  # trained codec parts come from the checkpoint
    load_weights(codec, codec_state, src, "codec")
    return cfg, kind or kind_for(cfg), model.to(device).eval(), codec.to(device).eval()
