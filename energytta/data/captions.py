"""Captions without audio: the data of caption-only distillation (`data.kind: captions`).

A caption source is a plain text file (one caption per line; blank lines and lines
starting with `#` are skipped), a JSONL of `{"caption": ...}` rows, or any manifest
(`.jsonl`, AudioCaps / Clotho `.csv`), of which only the captions (and, for validation,
the attributes) are read: no audio file is ever opened, so the student is trained from
text alone (SwiftBrush's claim) and the manifest's audio need not exist.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from energytta.data.manifest import Item, read_manifest
from energytta.errors import UserError

TEXT_SUFFIXES = (".txt",)


def read_caption_file(path: Path) -> list[str]:
    """The captions of a .txt file; one-line errors for missing, non-UTF-8 or empty files."""
    if not path.is_file():
        raise UserError(f"caption file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[:e.start].count(b"\n") + 1
        raise UserError(f"{path}: line {line} is not UTF-8 text; save the file as UTF-8"
                        ) from None
    captions = [ln.strip() for ln in text.splitlines()]
    captions = [c for c in captions if c and not c.startswith("#")]
    if not captions:
        raise UserError(f"{path} holds no captions (only blank or # lines); write one "
                        "caption per line")
    return captions


class CaptionDataset(Dataset):
    """Items {"caption": str}; `items` keeps a manifest's Items (attributes for validation).

    Args:
        captions: the captions, in order.
        items: the manifest Items they came from, or None for a caption file.
    """

    def __init__(self, captions: list[str], items: list[Item] | None = None) -> None:
        self.captions, self.items = captions, items

    @classmethod
    def from_source(cls, source: str | Path) -> "CaptionDataset":
        """A caption file or a manifest (its audio never opened)."""
        path = Path(source).expanduser()
        if path.is_dir():
            raise UserError(f"{path} is a folder; data.kind=captions reads a caption .txt "
                            "file or a manifest")
        if path.suffix.lower() in TEXT_SUFFIXES:
            return cls(read_caption_file(path))
        items = read_manifest(path, need_audio=False)
        return cls([it.caption for it in items], items)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"caption": self.captions[i]}
