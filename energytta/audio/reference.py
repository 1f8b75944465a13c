"""Checkpoints that refer to a frozen pretrained codec part instead of copying it.

A codec part loaded from a local pretrained folder (AudioLDM's VAE, its HiFi-GAN) is
frozen: every step folder and model file of a run would hold the same hundreds of MB
(hundreds of MB for AudioLDM's VAE). Such a part is recorded by reference instead: its state-dict
prefix, the folder it was loaded from and a SHA-256 of the files it loads (config.json and
the `*.safetensors` weights). Loading checks the hash against the folder the codec was
built from, then takes that part's tensors from the built codec itself.

Trained parts (the mel / PCA statistics, a VAE or vocoder trained here) are always stored.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from energytta.errors import UserError

CHUNK = 1 << 22
# (path, size, mtime_ns) of each hashed file -> digest: a run hashes its folder once, not
# at every checkpoint
_HASHES: dict[tuple, str] = {}


def part_files(folder: Path) -> list[Path]:
    """The files a pretrained part loads from `folder`: config.json and its safetensors."""
    return sorted([folder / "config.json", *folder.glob("*.safetensors")])


def folder_hash(folder: str | Path) -> str:
    """SHA-256 (hex) over the names and bytes of `part_files(folder)`.

    Raises:
        UserError: the folder or its config.json is missing.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise UserError(f"codec folder {folder} is missing (no config.json there)")
    files = part_files(folder)
    key = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _HASHES:
        h = hashlib.sha256()
        for f in files:
            h.update(f"{f.name}\0{f.stat().st_size}\0".encode())
            with open(f, "rb") as fh:
                while block := fh.read(CHUNK):
                    h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def references(codec: nn.Module) -> dict[str, dict[str, str]]:
    """{state-dict prefix: {"path", "sha256"}} of the codec's frozen pretrained parts."""
    parts = getattr(codec, "pretrained_parts", dict)()
    return {prefix: {"path": str(Path(folder).resolve()), "sha256": folder_hash(folder)}
            for prefix, folder in parts.items()}


def stored_state(codec: nn.Module, refs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The codec's state dict without the tensors of the parts in `refs`."""
    return {k: v for k, v in codec.state_dict().items()
            if not any(k.startswith(p) for p in refs)}


class CodecTensors(dict):
    """A codec's stored tensors, plus `refs`: the pretrained parts (`references`) whose
    tensors the checkpoint refers to instead of holding. `checkpoint.load_weights` fills
    them in from the codec it loads into, after `check_references`."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], refs: Mapping[str, Any]) -> None:
        super().__init__(tensors)
        self.refs = dict(refs)


def check_refs_doc(refs: Any) -> bool:
    """Whether `refs` has the shape `references` writes."""
    return isinstance(refs, dict) and all(
        isinstance(p, str) and isinstance(r, dict) and isinstance(r.get("path"), str)
        and isinstance(r.get("sha256"), str) for p, r in refs.items())


def check_references(codec: nn.Module, refs: Mapping[str, Any], src: Path) -> None:
    """Refuse in one line a codec whose pretrained folders are not the ones `src` was
    saved with (a part missing, or its files changed)."""
    parts = getattr(codec, "pretrained_parts", dict)()
    for prefix, ref in refs.items():
        if prefix not in parts:
            raise UserError(f"{src} refers to the pretrained codec folder {ref['path']} "
                            f"({prefix.rstrip('.')}), which the codec built from its config "
                            "does not load; resume or load it with the run's codec settings")
        now = folder_hash(parts[prefix])
        if now != ref["sha256"]:
            raise UserError(f"codec folder {parts[prefix]} changed since this checkpoint "
                            f"(hash {ref['sha256'][:12]}…, now {now[:12]}…); point "
                            f"codec.path at the original ({ref['path']}) or re-cache")


def fill_references(codec: nn.Module, state: CodecTensors, src: Path
                    ) -> dict[str, torch.Tensor]:
    """`state` completed with the referenced parts' tensors of `codec` (checked first)."""
    check_references(codec, state.refs, src)
    mine = {k: v for k, v in codec.state_dict().items()
            if any(k.startswith(p) for p in state.refs)}
    return {**mine, **state}


def check_folders_exist(refs: Mapping[str, Any], src: Path) -> None:
    """Refuse in one line, before any codec is built, a reference whose folder is gone."""
    for ref in refs.values():
        if not (Path(ref["path"]) / "config.json").is_file():
            raise UserError(f"{src} refers to the codec folder {ref['path']} (hash "
                            f"{ref['sha256'][:12]}…), which is missing; put the pretrained "
                            "folder back there (or a link to it)")
