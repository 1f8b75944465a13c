"""Each shipped weight carries its model card: the file's section of docs/models.md, stored
in its safetensors metadata as `model_card`, tensors and other metadata unchanged.

    python -m research.model_cards           # rewrite the files whose card differs
    python -m research.model_cards --check   # exit 1 when a file's card differs from the page
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from energytta.checkpoint import ASSETS
from energytta.errors import UserError
from research.rows import CARD_KEY

PAGE = Path(__file__).resolve().parent.parent / "docs" / "models.md"
KEY = CARD_KEY  # the metadata key (report rows hash files without it)
HEADING = "## `"  # a card's heading: "## `student.safetensors`"


def cards(text: str) -> dict[str, str]:
    """file name -> its card (heading line through the line before the next heading)."""
    found: dict[str, str] = {}
    name, lines = None, []
    for line in text.splitlines() + ["## end"]:
        if line.startswith("## "):
            if name:
                found[name] = "\n".join(lines).strip() + "\n"
            name = line[len(HEADING):].split("`")[0] if line.startswith(HEADING) else None
            lines = [line]
        elif name:
            lines.append(line)
    return found


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def write_card(path: Path, card: str) -> None:
    """Rewrite `path` with `card` in its metadata; refuse unless the tensors read back equal."""
    from energytta.utils import atomic_path

    tensors, meta = read(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={**meta, KEY: card})
        again, meta_again = read(tmp)
        same = again.keys() == tensors.keys() and all(
            again[k].dtype == v.dtype and torch.equal(again[k], v) for k, v in tensors.items())
        if not same or meta_again != {**meta, KEY: card}:
            raise UserError(f"{path}: the rewritten file does not read back identical; "
                            "left unchanged")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m research.model_cards",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only compare; exit 1 on a mismatch")
    args = p.parse_args(argv)
    page = cards(PAGE.read_text(encoding="utf-8"))
    files = {path.name: path for path in sorted(ASSETS.glob("*.safetensors"))}
    if set(page) != set(files):
        raise UserError(f"{PAGE} has cards for {sorted(page)} but {ASSETS} holds "
                        f"{sorted(files)}: give every shipped file exactly one card")
    stale = [name for name, path in files.items() if read(path)[1].get(KEY) != page[name]]
    for name in stale:
        print(f"{name}: card {'differs' if args.check else 'written'}", file=sys.stderr)
        if not args.check:
            write_card(files[name], page[name])
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    from energytta.errors import run_cli

    raise SystemExit(run_cli(main))
