"""Golden outputs of the shipped models: sha256 of their waveforms at small settings.

Refactors of the generation path must keep shipped checkpoints sampling byte-identically.
This script records (`--record`) or checks (default) the sha256 of the waveforms each
shipped model gives for two prompts at 1 s, 4 iterations and a fixed seed, of one
inpainting call, one continuation and one windowed (long) clip, and of the wav files one
`energytta-sample` run writes. Float results depend on the CPU and the torch build, so the
recorded file is only meaningful on the machine that wrote it: record on the old code,
check on the new one, same machine.

    python tests/golden/generation.py --record /tmp/golden.json   # before a change
    python tests/golden/generation.py /tmp/golden.json            # after: exit 1 if any differs

`reference.json` beside this script holds the shipped models' outputs on the platform it
names; a change that keeps generation byte-identical passes against it there.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

PROMPTS = ["a high beep repeats three times", "a dog barks twice"]
MODELS = ("teacher", "student", "guided", "captiononly")


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()


def outputs() -> dict[str, str]:
    from energytta.pipeline import TextToAudio

    out = {}
    for name in MODELS:
        pipe = TextToAudio.from_pretrained(name, device="cpu")
        kw = dict(seed=7, duration=1.0, iterations=4, cfg=3.0)
        if name == "teacher":  # few head sampling steps: the golden run stays short
            from teachers.diffusion import create_diffusion

            h = pipe.cfg.head
            pipe.model.head.gen_diffusion = create_diffusion(
                h.num_timesteps, h.noise_schedule, 5, h.learn_sigma, h.sample_max_t,
                prediction=h.prediction, shift=h.schedule_shift)
        wavs, _ = pipe(PROMPTS, **kw)
        out[name] = _sha(wavs)
        if name == "guided":
            out["guided/two-pass"] = _sha(pipe.generate(PROMPTS, pipe.settings(
                one_pass_cfg=False, **kw)).wavs)
        if name == "student":
            out["student/batch1-neg"] = _sha(pipe(PROMPTS, negative_prompt="noise",
                                                  batch_size=1, **kw)[0])
            clip = wavs[0]
            out["student/inpaint"] = _sha(pipe.inpaint(PROMPTS[1], clip, keep="0-0.4",
                                                       seed=3, iterations=4).wavs)
            out["student/continue"] = _sha(pipe.continue_audio(
                PROMPTS[1], clip[:8000], duration=1.0, seed=3, iterations=4).wavs)
            out["student/vary"] = _sha(pipe.vary(PROMPTS[0], clip, strength=0.5,
                                                 seed=3, iterations=4).wavs)
            long = pipe.cfg.audio.max_seconds + 1.0
            out["student/long"] = _sha(pipe(PROMPTS[:1], seed=5, duration=long,
                                            iterations=4)[0])
    out["energytta-sample"] = _cli()
    return out


def _cli() -> str:
    import soundfile as sf

    from energytta.sample_cli import main

    with tempfile.TemporaryDirectory() as tmp:
        main(["--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--ckpt", "student",
              "--out-dir", tmp, "--seed", "11", "--duration", "1", "--iterations", "4",
              "--num-samples", "2", "--batch-size", "1", "--no-spectrograms",
              "--device", "cpu"])
        h = hashlib.sha256()
        for wav in sorted(Path(tmp).glob("*.wav")):
            h.update(wav.name.encode())
            h.update(sf.read(wav, dtype="int16")[0].tobytes())
        return h.hexdigest()


def _platform() -> str:
    import platform

    return f"{platform.machine()} {platform.processor() or '?'}, torch {torch.__version__}"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file", type=Path)
    p.add_argument("--record", action="store_true", help="write the file instead of checking")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    got = outputs()
    if args.record:
        record = {"platform": _platform(), "outputs": got}
        args.file.write_text(json.dumps(record, indent=1) + "\n")
        print(f"recorded {len(got)} outputs to {args.file}")
        return 0
    recorded = json.loads(args.file.read_text())
    want = recorded["outputs"]
    if recorded["platform"] != _platform():
        print(f"note: recorded on {recorded['platform']}, checked on {_platform()}: "
              "float results may differ without any change to the code")
    bad = [k for k in want if got.get(k) != want[k]]
    for k in want:
        print(f"{'ok  ' if k not in bad else 'DIFF'} {k}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
