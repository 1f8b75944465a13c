"""docs/real-data.md, step by step, on an AudioCaps-format manifest of a few 10-s clips and
random-weight parts in the real layouts (AudioLDM pipeline folder, Flan-T5, CLAP): the
commands of the page with widths and depths overridden to tiny."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from energytta.cli import data_main, sample_main, train_main

TINY = ["model.width=32", "model.encoder_depth=1", "model.decoder_depth=1",
        "model.num_heads=2", "head.width=32", "head.depth=1",
        "sample.iterations=2", "data.batch_size=2", "train.steps=1", "train.warmup_steps=0",
        "train.sample_prompts=[]"]
TEACHER = ["head.sampling_steps=2"]  # the diffusion head's key (the teacher only)


@pytest.fixture(scope="module")
def audiocaps(tmp_path_factory) -> Path:
    """train.csv in AudioCaps' columns and audio/<youtube_id>_<start_time>.wav (10 s)."""
    root = tmp_path_factory.mktemp("audiocaps")
    (root / "audio").mkdir()
    t = np.arange(160000) / 16000
    rows = []
    for i in range(4):
        sf.write(root / "audio" / f"yt{i}_30.wav", 0.2 * np.sin(2 * np.pi * (150 + 80 * i) * t),
                 16000, subtype="PCM_16")
        rows.append({"audiocap_id": str(i), "youtube_id": f"yt{i}", "start_time": "30",
                     "caption": "a dog barks while rain falls"})
    with open(root / "train.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


@pytest.mark.slow
def test_audiocaps_end_to_end_as_the_page_runs_it(audiocaps, audioldm_dir, flan_t5_dir,
                                                  clap_dir, tmp_path):
    parts = [f"codec.path={audioldm_dir}", f"text.model={flan_t5_dir}",
             f"text.extra_model={clap_dir}"]
    csv_file, audio = str(audiocaps / "train.csv"), str(audiocaps / "audio")
    # 1. the manifest and its audio
    assert data_main(["check", csv_file, "--audio-dir", audio]) == 0
    # 2. the latent cache (AudioLDM preprocessing, VAE latents, Flan-T5 ⊕ CLAP states)
    cache = tmp_path / "cache"
    assert data_main(["cache", "--config", "impact_base", "--manifest", csv_file,
                      "--audio-dir", audio, "--out", str(cache), *parts]) == 0
    # 3. the teacher on the cache
    teacher = tmp_path / "impact_base"
    assert train_main(["--config", "impact_base", f"data.train={cache}",
                       f"train.out_dir={teacher}", *parts, *TINY, *TEACHER]) == 0
    # 4. the student from the teacher
    student = tmp_path / "impact_base_student"
    assert train_main(["--config", "impact_base_student", f"data.train={cache}",
                       f"teacher.ckpt={teacher / 'model.safetensors'}",
                       f"train.out_dir={student}", *parts, *TINY]) == 0
    # 5. sampling (10.24 s, IMPACT's length, is the preset's sample.duration)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a dog barks while rain falls\n", encoding="utf-8")
    out = tmp_path / "gen"
    assert sample_main(["--ckpt", str(student / "model.safetensors"), "--prompts",
                        str(prompts), "--out-dir", str(out), "--iterations", "2"]) == 0
    wavs = sorted(out.glob("*.wav"))
    assert len(wavs) == 1 and sf.info(str(wavs[0])).duration == pytest.approx(10.24)
