"""Tar shards (webdataset) as a training source: written from a manifest, read exactly as
the manifest's clips are, split over processes and workers, shuffled from train.seed,
resumed as documented, and bad shards refused in one line."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from energytta.cli import data_main, train_main
from energytta.config import load_config
from energytta.data.dataset import AudioCaptionDataset, build_dataset, collate
from energytta.data.manifest import read_manifest
from energytta.data.shards import ShardDataset, shard_urls, write_shards
from energytta.errors import UserError
from energytta.train.stream import Position, make_stream

N = 8


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """8 clips with unique captions: mono 16 kHz wavs, a stereo 22.05 kHz one, a flac."""
    root = tmp_path_factory.mktemp("clips")
    rows = []
    for i in range(N):
        sr = 22050 if i == 3 else 16000
        t = np.arange(int(1.3 * sr)) / sr
        wav = 0.3 * np.sin(2 * np.pi * 200.0 * (i + 1) * t).astype(np.float32)
        if i == 3:
            wav = np.stack([wav, 0.5 * wav], axis=1)  # stereo: made mono like a manifest's
        name = f"{i}.flac" if i == 5 else f"{i}.wav"
        sf.write(root / name, wav, sr)
        rows.append(json.dumps({"audio": name, "caption": f"clip {i}"}))
    (root / "train.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root / "train.jsonl"


@pytest.fixture(scope="module")
def shards(manifest, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "train"
    assert data_main(["shards", "--manifest", str(manifest), "--out", str(out),
                      "--per-shard", "2"]) == 0
    return out


def _cfg(source, *extra: str):
    return load_config("tiny", [f"data.train={source}", f"data.val={source}",
                                "audio.crop_seconds=1.0", *extra])


def _captions(batches) -> list[list[str]]:
    return [list(b["captions"]) for b in batches]


def test_shards_read_back_exactly_as_the_manifest_reads(manifest, shards):
    names = sorted(p.name for p in shards.glob("*.tar"))
    assert names == [f"shard-00000{i}.tar" for i in range(4)]
    cfg = _cfg(shards)
    streamed = build_dataset(cfg, "val")
    assert isinstance(streamed, ShardDataset)
    indexed = AudioCaptionDataset(read_manifest(manifest), cfg.audio, 1.0, train=False)
    items = streamed.first(N)
    assert [it["caption"] for it in items] == [f"clip {i}" for i in range(N)]
    for i, it in enumerate(items):  # decode, mono, resample, crop: bit for bit
        assert torch.equal(it["wav"], indexed[i]["wav"])


def test_every_way_of_naming_shards(shards, tmp_path):
    want = [str(shards / f"shard-00000{i}.tar") for i in range(4)]
    (tmp_path / "list.txt").write_text(
        "\n".join(str(Path(u).relative_to(shards.parent)) for u in want) + "\n")
    (tmp_path / "list.txt").rename(shards.parent / "list.txt")
    for source in (shards, f"{shards}/shard-{{000000..000003}}.tar", f"{shards}/*.tar",
                   shards.parent / "list.txt"):
        assert shard_urls(str(source), "data.train") == want
        assert isinstance(build_dataset(_cfg(source), "train"), ShardDataset)
    assert shard_urls(want[0], "data.train") == want[:1]


@pytest.mark.parametrize("source, words", [
    ("nowhere/shard-{000000..000009}.tar", "matches no file"),
    ("SHARDS/shard-{000000..000009}.tar", "6 of 10 shard(s) not found"),
    ("nowhere/list.txt", "shard list not found"),
])
def test_a_pattern_matching_nothing_or_too_little_is_one_line(shards, source, words):
    with pytest.raises(UserError) as e:
        build_dataset(_cfg(source.replace("SHARDS", str(shards))), "train")
    assert words in str(e.value) and "\n" not in str(e.value)


def _stream(shards, seed=0, world=1, rank=0, workers=0, pos=None):
    ds = build_dataset(_cfg(shards, f"train.seed={seed}"), "train")
    return make_stream(ds, collate, 2, seed, rank, world, workers, pos or Position())


def _take(stream, n):
    it = iter(stream)
    return _captions([next(it) for _ in range(n)])


def test_shuffle_is_deterministic_from_the_seed_and_changes_per_epoch(shards):
    a, b, c = _take(_stream(shards), 8), _take(_stream(shards), 8), _take(_stream(shards, 1), 8)
    assert a == b != c
    epoch0, epoch1 = sum(a[:4], []), sum(a[4:], [])
    assert sorted(epoch0) == sorted(epoch1) == sorted(f"clip {i}" for i in range(N))
    assert epoch0 != epoch1


def test_processes_and_workers_split_the_shards_without_overlap(shards):
    seen = []
    for rank in range(2):  # two processes, each with two DataLoader workers
        ds = build_dataset(_cfg(shards), "train")
        ds.set_rank(rank, 2)
        loader = DataLoader(ds, batch_size=1, num_workers=2, collate_fn=collate)
        seen += [c for b in loader for c in b["captions"]]
    assert sorted(seen) == sorted(f"clip {i}" for i in range(N))  # each clip once


def test_resume_mid_epoch_reseeds_it_and_rejoins_the_run_at_the_next_epoch(shards):
    run = _take(_stream(shards), 8)  # two epochs of 4 batches, uninterrupted
    assert _take(_stream(shards, pos=Position(1, 0)), 4) == run[4:]  # a boundary: exact
    resumed = _take(_stream(shards, pos=Position(0, 2)), 8)
    assert resumed == _take(_stream(shards, pos=Position(0, 2)), 8)  # the same every time
    assert resumed[:4] != run[:4]  # epoch 0 afresh, in another order ...
    assert sorted(sum(resumed[:4], [])) == sorted(f"clip {i}" for i in range(N))
    assert resumed[4:] == run[4:]  # ... then epoch 1 as the uninterrupted run reads it


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    import io

    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("workers", [0, 1])
def test_a_tar_without_captions_is_one_line(manifest, tmp_path, workers):
    wav = (manifest.parent / "0.wav").read_bytes()
    _tar(tmp_path / "a.tar", {"k1.wav": wav, "k2.wav": wav, "k1.json": b'{"other": 1}'})
    _tar(tmp_path / "b.tar", {"k3.wav": wav})
    stream = _stream(tmp_path, workers=workers)
    with pytest.raises(UserError) as e:
        next(iter(stream))
    assert "has no caption" in str(e.value) and "\n" not in str(e.value)
    assert str(tmp_path) in str(e.value)


def test_a_corrupt_tar_is_one_line(shards, tmp_path):
    good = (shards / "shard-000000.tar").read_bytes()
    (tmp_path / "a.tar").write_bytes(good[:1000])  # cut inside its first member
    (tmp_path / "b.tar").write_bytes(b"not a tar at all" * 100)
    for name in ("a.tar", "b.tar"):
        ds = ShardDataset([str(tmp_path / name)], _cfg(tmp_path).audio, 1.0, train=False)
        with pytest.raises(UserError) as e:
            ds.first(2)
        assert f"{tmp_path / name}: not a readable tar shard" in str(e.value)
        assert "\n" not in str(e.value)


def test_fewer_shards_than_readers_is_one_line(shards):
    with pytest.raises(UserError, match="4 shard.*fewer than the 2 process.*× 4 worker"):
        _stream(shards, world=2, workers=4)


def test_writing_into_a_folder_that_holds_shards_is_refused(manifest, shards, capsys):
    assert data_main(["shards", "--manifest", str(manifest), "--out", str(shards)]) == 2
    assert "already holds shards" in capsys.readouterr().err
    with pytest.raises(UserError, match="--per-shard must be >= 1"):
        write_shards(manifest, shards.parent / "new", 0)


@pytest.mark.slow
def test_training_streams_shards_and_resumes(shards, tiny_text_dir, tmp_path):
    run = tmp_path / "run"
    over = [f"data.train={shards}", f"data.val={shards}", f"train.out_dir={run}",
            f"text.model={tiny_text_dir}", "data.batch_size=2", "audio.crop_seconds=1.0",
            "train.sample_prompts=[]", "train.val_every=3", "train.warmup_steps=0"]
    assert train_main(["--config", "tiny", *over, "train.steps=3"]) == 0
    state = json.loads((run / "step-0000003" / "state.json").read_text())
    assert state["data"] == {"epoch": 0, "batch": 3, "start": 0}
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("stage") == "val" for r in rows)  # validation reads shards too
    assert train_main(["--config", "tiny", *over, "train.steps=6", "--resume"]) == 0
    state = json.loads((run / "step-0000006" / "state.json").read_text())
    assert state["data"]["epoch"] == 0 and state["data"]["batch"] == 6  # epoch 0 re-read


def test_an_undecodable_clip_is_skipped_with_a_warning(manifest, tmp_path):
    good = (manifest.parent / "0.wav").read_bytes()
    _tar(tmp_path / "a.tar", {"k1.wav": b"RIFF garbage", "k1.json": b'{"text": "bad"}',
                              "k2.wav": good, "k2.json": b'{"caption": ["good", "other"]}'})
    ds = ShardDataset([str(tmp_path / "a.tar")], _cfg(tmp_path).audio, 1.0, train=False)
    with pytest.warns(UserWarning, match="skipping audio .*k1.wav"):
        items = ds.first(2)
    assert [it["caption"] for it in items] == ["good"]
