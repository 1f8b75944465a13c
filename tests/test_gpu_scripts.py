"""scripts/gpu_teacher.sh: the commands it runs for the synthetic corpus (its default) and for
a user's manifest or latent cache (TRAIN / VAL / AUDIO_DIR), with the package's commands and
python3 replaced by stubs that only record their arguments."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STUB = '#!/bin/sh\necho "$(basename "$0") $*" >> "$CALLS"\n'


def _run(tmp_path: Path, **env: str) -> list[str]:
    """Run the script with stubs first on PATH -> the commands it ran, one string each."""
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    for name in ("python3", "energytta-data", "energytta-train", "nvidia-smi"):
        (stubs / name).write_text(STUB)
        (stubs / name).chmod(0o755)
    calls = tmp_path / "calls.txt"
    calls.unlink(missing_ok=True)
    full = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "CALLS": str(calls), **env}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_teacher.sh"),
                           str(tmp_path / "out"), "3"], env=full, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    # the package's own commands (gpu_env.sh's pip / torch / nvidia-smi checks left out)
    return [c for c in calls.read_text().splitlines()
            if c.startswith(("energytta-", "python3 -m energytta"))]


def test_by_default_it_trains_the_synthetic_corpus(tmp_path):
    out = tmp_path / "out"
    synth, cache, train, diag = _run(tmp_path)
    assert synth.startswith(f"energytta-data synth --out {out}/synth --num 10000")
    assert cache.startswith(f"energytta-data cache --config shipped_teacher --manifest "
                            f"{out}/synth/train.jsonl --out {out}/cache")
    assert f"data.train={out}/cache data.val={out}/synth/val.jsonl train.val_every=500" in train
    assert "train.max_minutes=3" in train
    assert diag.startswith(f"python3 -m energytta.eval.diagnostics --ckpt {out}/run/")
    assert f"--data {out}/synth/val.jsonl" in diag


def test_a_latent_cache_is_trained_as_is(tmp_path):
    cache = tmp_path / "my_cache"
    cache.mkdir()
    (train,) = _run(tmp_path, TRAIN=str(cache))  # no corpus, no caching, no diagnostics
    assert train.startswith("energytta-train --config shipped_teacher")
    assert f"data.train={cache} train.val_every=0" in train


def test_a_manifest_is_cached_first_and_validated_on_val(tmp_path):
    out = tmp_path / "out"
    cache, train, diag = _run(tmp_path, TRAIN="data/train.csv", AUDIO_DIR="data/audio",
                              VAL="data/val.jsonl", CONFIG="impact_base")
    assert cache == (f"energytta-data cache --config impact_base --manifest data/train.csv "
                     f"--audio-dir data/audio --out {out}/cache")
    assert f"data.train={out}/cache data.val=data/val.jsonl train.val_every=500" in train
    assert "--data data/val.jsonl" in diag
