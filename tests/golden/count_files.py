"""Count the package files one generation passes through (docs/architecture.md).

A `sys.setprofile` hook records the file of every Python function that runs while the
shipped student generates one 1 s clip, from `TextToAudio.__call__` (the text encoder and
codec already loaded, so loading is not counted) and from `energytta-sample` (argument
parsing to the written wav); files of the `energytta` package and of `teachers/` count.

    python tests/golden/count_files.py [-v]
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (ROOT / "energytta", ROOT / "teachers")


def _traced(fn) -> set[str]:
    seen: set[str] = set()

    def hook(frame, event, _arg):
        if event == "call":
            seen.add(frame.f_code.co_filename)
    sys.setprofile(hook)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return {str(Path(f).resolve().relative_to(ROOT)) for f in seen
            if any(Path(f).resolve().is_relative_to(p) for p in PACKAGES)}


def main(argv: list[str]) -> int:
    import torch

    from energytta.pipeline import TextToAudio
    from energytta.sample_cli import main as sample_main

    torch.set_num_threads(1)
    pipe = TextToAudio.from_pretrained("student", device="cpu")
    pipe.text_encoder  # loaded before tracing: generation, not loading, is counted
    pipe(["a dog barks"], seed=0, duration=1.0, iterations=2)  # warm lazy imports
    call = _traced(lambda: pipe(["a dog barks"], seed=0, duration=1.0, iterations=2))
    with tempfile.TemporaryDirectory() as tmp:
        args = ["--prompt", "a dog barks", "--ckpt", "student", "--out-dir", tmp,
                "--duration", "1", "--iterations", "2", "--device", "cpu",
                "--no-spectrograms"]
        sample_main(args + ["--overwrite"])  # warm lazy imports
        cli = _traced(lambda: sample_main(args + ["--overwrite"]))
    print(f"TextToAudio.__call__: {len(call)} files; energytta-sample: {len(cli)} files")
    if "-v" in argv:
        for name, files in (("__call__", call), ("energytta-sample", cli)):
            print(f"{name}:\n  " + "\n  ".join(sorted(files)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
