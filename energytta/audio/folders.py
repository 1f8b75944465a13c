"""Local folders of pretrained models saved by diffusers or transformers (AudioLDM's
`vae/` and `vocoder/`): where a model's files are, and the one reader of its config.json.
Never a hub: every path is local."""
from __future__ import annotations

import json
from pathlib import Path

from energytta.errors import UserError


def model_folder(path: str | Path, sub: str, flag: str) -> Path:
    """`path/sub` if it holds a config.json, else `path` if it does; otherwise UserError.

    Args:
        path: a diffusers pipeline folder (with `sub/`) or the model folder itself.
        sub: "vae" | "vocoder"; flag: the config key that named `path` (for messages).
    """
    base = Path(path)
    for folder in (base / sub, base):
        if (folder / "config.json").is_file():
            return folder
    raise UserError(f"{flag}={path}: no config.json in it or in its {sub}/ subfolder "
                    "(point it at a local AudioLDM folder saved by diffusers)")


def read_config(folder: Path) -> dict:
    """`folder/config.json` as a dict (a UserError in one line when it is not JSON)."""
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{folder / 'config.json'} is not valid JSON ({e})") from None
