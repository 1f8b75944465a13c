"""How many package files one training step and one generation pass through.

    python -m research.call_paths [--files]

Builds tiny models in code (the `tiny` config, random weights, the embedded MiniLM text
encoder, four tone clips in a temporary folder), then runs, under `sys.setprofile`:

- one training step of the teacher objective (diffusion head) and of the student
  objective (energy head + feature distillation from a tiny teacher file):
  `Trainer._train_step()`;
- one generation, `TextToAudio.__call__` on one prompt, with a tiny student and a tiny
  teacher file.

Each is run once unprofiled first, so lazy imports and caches do not count; the profiled
run records every Python function call whose code lives under `energytta/` or
`teachers/`. Printed per path: the distinct files and the distinct functions (by
qualified name; comprehensions, lambdas and module bodies not counted). `--files` lists
the files too.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np


def package_folders() -> tuple[Path, ...]:
    """The folders of the imported `energytta` and `teachers` (whichever checkout)."""
    import energytta
    import teachers

    return tuple(Path(m.__file__).resolve().parent for m in (energytta, teachers))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m research.call_paths",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--files", action="store_true", help="list the files of each path")
    return p


def trace(fn: Callable[[], object]) -> tuple[set[str], set[str]]:
    """Run `fn` under a profiler -> (package files, package functions) it called."""
    files: set[str] = set()
    funcs: set[str] = set()
    folders = package_folders()
    roots, top = tuple(str(p) + "/" for p in folders), folders[0].parent

    def hook(frame, event, _arg) -> None:
        if event != "call":
            return
        code = frame.f_code
        path = str(Path(code.co_filename).resolve())
        if not path.startswith(roots):
            return
        rel = str(Path(path).relative_to(top))
        files.add(rel)
        if not code.co_name.startswith("<"):
            funcs.add(f"{rel}:{code.co_qualname}")

    sys.setprofile(hook)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return files, funcs


def write_tones(folder: Path) -> Path:
    """Four 1.2-s tones, one caption each -> the manifest."""
    import soundfile as sf

    sr, t, lines = 16000, np.arange(int(1.2 * 16000)) / 16000, []
    for i in range(4):
        wav = 0.3 * np.sin(2 * np.pi * 300.0 * (i + 1) * t)
        sf.write(folder / f"{i}.wav", wav.astype(np.float32), sr)
        lines.append(json.dumps({"audio": f"{i}.wav", "caption": f"a beep number {i}"}))
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "train.jsonl"


def tiny_file(folder: Path, kind: str) -> Path:
    """An inference file of a tiny random teacher or student (MiniLM text states)."""
    import torch

    from energytta.audio.codec import build_codec
    from energytta.checkpoint import save_inference
    from energytta.config import load_config
    from energytta.models.tta import TTAModel
    from energytta.text import TextEncoder

    head = "diffusion" if kind == "teacher" else "energy"
    cfg = load_config("tiny", [f"head.kind={head}"])
    torch.manual_seed(0)
    model = TTAModel(cfg, TextEncoder(cfg.text.model).dim)
    for p in model.head.parameters():  # an untrained head outputs zeros: give it signal
        torch.nn.init.normal_(p, std=0.05)
    return save_inference(folder / f"{kind}.safetensors", model, build_codec(cfg), cfg, kind)


def training_step(folder: Path, manifest: Path, overrides: list[str]) -> Callable[[], object]:
    """A Trainer on the tiny config, one step already taken -> its next step."""
    from energytta.config import load_config
    from energytta.train.loop import Trainer

    name = "student" if "head.kind=energy" in overrides else "teacher"
    cfg = load_config("tiny", [f"data.train={manifest}", f"train.out_dir={folder / name}",
                               "train.sample_prompts=[]", *overrides])
    trainer = Trainer(cfg, resume=False)
    trainer._train_step()
    return trainer._train_step


def generation(path: Path) -> Callable[[], object]:
    """A TextToAudio on a tiny file, one call already made -> its next call."""
    from energytta.pipeline import TextToAudio

    pipe = TextToAudio.from_pretrained(path, device="cpu")
    call = lambda: pipe(["a high beep repeats three times"], seed=0)  # noqa: E731
    call()
    return call


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="call-paths-") as tmp:
        folder = Path(tmp)
        manifest = write_tones(folder)
        teacher, student = tiny_file(folder, "teacher"), tiny_file(folder, "student")
        paths = {
            "training step, teacher objective": training_step(folder, manifest, []),
            "training step, student objective": training_step(
                folder, manifest, ["head.kind=energy", f"teacher.ckpt={teacher}"]),
            "generation, student (TextToAudio.__call__)": generation(student),
            "generation, teacher (TextToAudio.__call__)": generation(teacher),
        }
        rows = [(name, *trace(fn)) for name, fn in paths.items()]
    print("| path | files | functions |\n|---|---:|---:|")
    for name, files, funcs in rows:
        print(f"| {name} | {len(files)} | {len(funcs)} |")
    if args.files:
        for name, files, _ in rows:
            print(f"\n{name}:\n  " + "\n  ".join(sorted(files)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
