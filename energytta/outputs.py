"""Sample files on disk: `audio_write` (a wav plus, optionally, a JSON of its settings), the
names `energytta-sample` gives its files, and the content hash of the checkpoint that made
them (recorded in every sample's JSON, so a rerun can tell a stale sample from a fresh one).

Heavy imports (numpy, soundfile, torch) happen inside the functions that need them, so a
command's `--help` stays fast.
"""
from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from pathlib import Path
from typing import Any, Mapping

SLUG_MAX = 60
_HASH_CHUNK = 1 << 20
# (path, size, mtime_ns) of every hashed file -> sha256: a checkpoint is hashed once per
# process, and again only when its file changes
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def slugify(prompt: str, max_len: int = SLUG_MAX) -> str:
    """ASCII, lowercase, '-'-separated, at most `max_len` chars; 'prompt' if nothing is left."""
    ascii_text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "prompt"


def output_stems(prompts: list[str], seed: int | None = None) -> list[str]:
    """`000-a-high-beep-seed0`, ...: the index prefix keeps duplicate prompts apart, the
    seed keeps runs with different seeds apart (None: no seed part)."""
    width = max(3, len(str(len(prompts) - 1)))
    tail = "" if seed is None else f"-seed{int(seed)}"
    return [f"{i:0{width}d}-{slugify(p)}{tail}" for i, p in enumerate(prompts)]


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, cached per process by (path, size, mtime)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def checkpoint_sha256(path: str | Path) -> str | None:
    """The content hash of the checkpoint `path` names (as the loader resolves it): an
    inference file's sha256; for a step folder (or a run folder: its newest step) the sha256
    of its weights and state files. None when there is nothing to hash (the loader then
    says why in its own words).

    Hash before loading: if a training run writes a newer step meanwhile, the record names
    an older hash than the weights used, and the next rerun regenerates (the safe side)."""
    from energytta.checkpoint import latest_checkpoint

    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        return None
    folder = path if (path / "state.json").is_file() else latest_checkpoint(path)
    if folder is None:
        model = path / "model.safetensors"
        return file_sha256(model) if model.is_file() else None
    h = hashlib.sha256()
    try:
        for f in sorted([folder / "state.json", *folder.glob("*.safetensors")]):
            if f.name != "optim.safetensors":  # the optimizer never reaches the audio
                h.update(f"{f.name}\0{file_sha256(f)}\n".encode())
    except FileNotFoundError:  # the run pruned this step meanwhile: let the loader decide
        return None
    return h.hexdigest()


def audio_write(path: str | Path, wav: Any, sample_rate: int,
                settings: Mapping[str, Any] | None = None) -> Path:
    """Write one clip as a 16-bit WAV (atomically), and its settings as JSON beside it.

    Args:
        path: `out/dog` or `out/dog.wav` -> `out/dog.wav` (+ `out/dog.json`); folders are
            created.
        wav: (S,) or (channels, S) float samples in [-1, 1], numpy or torch.
        sample_rate: Hz.
        settings: anything JSON can hold (e.g. `dataclasses.asdict(generation.settings)`
            plus the prompt); None writes no JSON.
    Returns:
        the wav's path.
    """
    import numpy as np

    from energytta.audio.io import write_wav
    from energytta.errors import UserError
    from energytta.utils import atomic_write_text

    path = Path(path)
    path = path if path.suffix.lower() == ".wav" else path.with_name(path.name + ".wav")
    data = wav.detach().float().cpu().numpy() if hasattr(wav, "detach") else np.asarray(wav)
    if data.ndim not in (1, 2) or data.size == 0:
        raise UserError(f"audio_write {path}: expected (S,) or (channels, S) samples, got "
                        f"shape {data.shape}")
    if not np.isfinite(data).all():
        raise UserError(f"audio_write {path}: the audio holds NaN/inf; nothing written")
    write_wav(path, data, int(sample_rate))
    if settings is not None:
        atomic_write_text(path.with_suffix(".json"),
                          json.dumps(dict(settings), indent=2, default=str) + "\n")
    return path
