"""Manifests (JSONL / AudioCaps / Clotho), `energytta-data check|synth`, datasets, collate,
and the latent cache (`energytta-data cache`)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from energytta.cli import data_main
from energytta.config import load_config
from energytta.data.dataset import (AudioCaptionDataset, CachedLatentDataset, build_dataset,
                                    collate)
from energytta.data.manifest import check_manifest, read_manifest
from energytta.errors import UserError

SR = 16000


def wav(path: Path, seconds: float = 0.5, sr: int = SR, freq: float = 440.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(str(path), 0.5 * np.sin(2 * np.pi * freq * t), sr, subtype="PCM_16")
    return path


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------------------ JSONL
def test_jsonl_paths_relative_to_manifest_and_extra_keys_kept(tmp_path):
    wav(tmp_path / "audio" / "a.wav")
    m = jsonl(tmp_path / "m.jsonl", [
        {"audio": "audio/a.wav", "caption": " a beep ", "attributes": {"pitch": "high"},
         "source": "synth"},
        "",
        {"audio": str(tmp_path / "audio" / "b.wav"), "caption": "rain"},
    ])
    items = read_manifest(m)
    assert [i.caption for i in items] == ["a beep", "rain"]
    assert items[0].audio == tmp_path / "audio" / "a.wav"
    assert items[0].attributes == {"pitch": "high", "source": "synth"}
    assert items[1].audio == tmp_path / "audio" / "b.wav"


@pytest.mark.parametrize("bad, message", [
    ('{"audio": "a.wav", "caption": "x"', r"m\.jsonl:2: invalid JSON"),
    ('{"audio": "a.wav"}', r"m\.jsonl:2: missing or empty \"caption\""),
    ('{"audio": "", "caption": "x"}', r"m\.jsonl:2: missing or empty \"audio\""),
    ('["a.wav", "x"]', r"m\.jsonl:2: expected a JSON object"),
])
def test_jsonl_broken_rows_name_file_and_line(tmp_path, bad, message):
    m = jsonl(tmp_path / "m.jsonl", [{"audio": "a.wav", "caption": "ok"}, bad])
    with pytest.raises(UserError, match=message):
        read_manifest(m)


def test_a_row_nested_100k_deep_is_one_line(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text('{"audio": "a.wav", "caption": "ok"}\n' + '{"a":' * 100_000 + "1"
                 + "}" * 100_000 + "\n")
    with pytest.raises(UserError, match=r"m\.jsonl:2: JSON nested too deeply"):
        read_manifest(m)


def test_empty_missing_and_non_utf8_manifests(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(UserError, match="empty manifest"):
        read_manifest(tmp_path / "empty.jsonl")
    with pytest.raises(UserError, match="not found"):
        read_manifest(tmp_path / "nope.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes(
        b'{"audio": "a.wav", "caption": "ok"}\n{"audio": "b.wav", "caption": "caf\xe9"}\n')
    with pytest.raises(UserError, match=r"latin1\.jsonl:2: not UTF-8"):
        read_manifest(tmp_path / "latin1.jsonl")
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(UserError, match="unknown manifest type"):
        read_manifest(tmp_path / "m.txt")


# -------------------------------------------------------------------------- AudioCaps
AUDIOCAPS = "audiocap_id,youtube_id,start_time,caption\n"


def test_audiocaps_finds_audio_by_each_naming_scheme(tmp_path):
    wav(tmp_path / "audio" / "yt1_30.wav")
    wav(tmp_path / "audio" / "yt2.wav")
    wav(tmp_path / "audio" / "103.wav")
    (tmp_path / "train.csv").write_text(
        AUDIOCAPS + '101,yt1,30,"A dog barks, then a car passes"\n102,yt2,0,Rain falls\n'
        "103,yt3,10,Wind blows\n104,yt4,0,Nothing here\n")
    items = read_manifest(tmp_path / "train.csv")
    names = [i.audio.name for i in items]
    assert names == ["yt1_30.wav", "yt2.wav", "103.wav", "yt4_0.wav"]
    assert items[0].caption == "A dog barks, then a car passes"
    assert items[0].attributes == {"audiocap_id": "101", "youtube_id": "yt1", "start_time": "30"}
    assert not items[3].audio.exists()  # kept, so that `check` reports it


def test_audiocaps_audio_dir_override(tmp_path):
    wav(tmp_path / "elsewhere" / "yt1_30.wav")
    (tmp_path / "a.csv").write_text(AUDIOCAPS + "101,yt1,30,A beep\n")
    items = read_manifest(tmp_path / "a.csv", audio_dir=tmp_path / "elsewhere")
    assert items[0].audio == tmp_path / "elsewhere" / "yt1_30.wav"
    with pytest.raises(UserError, match="audio folder not found"):
        read_manifest(tmp_path / "a.csv", audio_dir=tmp_path / "missing")


@pytest.mark.parametrize("text, message", [
    ("audiocap_id,youtube_id,caption\n1,y,c\n", r"a\.csv:1: missing column\(s\) start_time"),
    (AUDIOCAPS + "1,y,0,ok\n2,y,0\n", r"a\.csv:3: expected 4 fields"),
    (AUDIOCAPS + "1,y,0,ok\n2,y,0,\n", r"a\.csv:3: empty 'caption'"),
    ("foo,bar\n1,2\n", r"a\.csv:1: unknown CSV header"),
    ("", r"a\.csv: empty manifest"),
    (AUDIOCAPS, r"a\.csv: empty manifest"),
])
def test_csv_errors_name_file_and_line(tmp_path, text, message):
    (tmp_path / "a.csv").write_text(text)
    with pytest.raises(UserError, match=message):
        read_manifest(tmp_path / "a.csv")


# ----------------------------------------------------------------------------- Clotho
def test_clotho_gives_five_items_per_row(tmp_path):
    wav(tmp_path / "x.wav")
    caps = ",".join(f"caption {i}" for i in range(1, 6))
    (tmp_path / "clotho.csv").write_text(
        "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"
        f"x.wav,{caps}\ny.wav,{caps}\n")
    items = read_manifest(tmp_path / "clotho.csv")
    assert len(items) == 10
    assert [i.caption for i in items[:5]] == [f"caption {i}" for i in range(1, 6)]
    assert items[0].audio == tmp_path / "x.wav" and items[0].attributes["caption_index"] == 1
    (tmp_path / "bad.csv").write_text("file_name,caption_1,caption_2\nx.wav,a,b\n")
    with pytest.raises(UserError, match=r"bad\.csv:1: missing column\(s\) caption_3"):
        read_manifest(tmp_path / "bad.csv")


# ------------------------------------------------------------------------------ check
def _mixed_manifest(tmp_path: Path) -> Path:
    wav(tmp_path / "good.wav", 0.5)
    wav(tmp_path / "good22k.wav", 1.0, sr=22050)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF....WAVEfmt not really a wav")
    sf.write(str(tmp_path / "empty.wav"), np.zeros(0), SR)
    return jsonl(tmp_path / "m.jsonl", [
        {"audio": n, "caption": n} for n in ("good.wav", "good22k.wav", "corrupt.wav",
                                             "empty.wav", "missing.wav")])


def test_check_lists_every_bad_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # rich wraps cells to the width: keep long tmp paths whole
    m = _mixed_manifest(tmp_path)
    assert check_manifest(m) == 1
    out = capsys.readouterr().out
    for name, problem in (("corrupt.wav", "unreadable"), ("empty.wav", "empty"),
                          ("missing.wav", "missing")):
        assert name in out and problem in out
    assert "16000 Hz" in out and "22050 Hz" in out and "3 bad" in out
    assert "0.50 s / 1.00 s" in out


def test_check_json_is_one_unwrapped_document_for_scripts(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "20")  # a narrow pipe: the tables would wrap, JSON must not
    m = _mixed_manifest(tmp_path)
    assert data_main(["check", "--json", str(m)]) == 1
    doc = json.loads(capsys.readouterr().out)
    problems = {Path(b["file"]).name: b["problem"].split(":")[0] for b in doc["bad"]}
    assert problems == {"corrupt.wav": "unreadable", "empty.wav": "empty (0 samples)",
                        "missing.wav": "missing"}
    assert doc["sample_rates"] == [16000, 22050] and doc["good"] == doc["audio_files"] - 3
    assert (doc["min_seconds"], doc["max_seconds"]) == (0.5, 1.0)


def test_data_cli_check_and_errors(tmp_path, capsys):
    wav(tmp_path / "a.wav")
    m = jsonl(tmp_path / "ok.jsonl", [{"audio": "a.wav", "caption": "a tone"}])
    assert data_main(["check", str(m)]) == 0
    assert data_main(["check", str(_mixed_manifest(tmp_path))]) == 1
    assert data_main(["check", str(tmp_path / "nope.jsonl")]) == 2
    assert "error: manifest not found" in capsys.readouterr().err
    assert data_main(["synth", "--out", str(tmp_path / "s"), "--seconds", "0.5"]) == 2


def test_data_cli_synth_then_check(tmp_path):
    out = tmp_path / "synth"
    args = ["synth", "--out", str(out), "--num", "10", "--seconds", "1", "--workers", "1",
            "--no-progress"]
    assert data_main(args) == 0
    assert data_main(["check", str(out / "train.jsonl")]) == 0
    assert len(read_manifest(out / "train.jsonl")) == 8


# ---------------------------------------------------------------------------- dataset
def test_dataset_skips_a_corrupt_file_and_counts_it(tmp_path):
    wav(tmp_path / "a.wav", 2.0, freq=300)
    (tmp_path / "b.wav").write_bytes(b"garbage")
    wav(tmp_path / "c.wav", 0.5, freq=900)
    items = read_manifest(jsonl(tmp_path / "m.jsonl", [
        {"audio": f"{n}.wav", "caption": n} for n in "abc"]))
    cfg = load_config("tiny")
    ds = AudioCaptionDataset(items, cfg.audio, crop_seconds=1.0, train=True, seed=0)
    with pytest.warns(UserWarning, match="skipping audio"):
        got = ds[1]
    assert got["caption"] == "c" and got["wav"].shape == (SR,)
    assert got["wav"][SR // 2:].abs().max() == 0  # 0.5 s clip zero-padded to 1 s
    assert ds.skipped == 1 and ds.bad == {1}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known-bad file is not re-read or re-warned
        assert ds[1]["caption"] == "c"
    batch = collate([ds[i] for i in range(3)])
    assert batch["wav"].shape == (3, SR) and batch["captions"] == ["a", "c", "c"]


def test_dataset_crops_are_seeded_per_epoch_and_start_in_eval(tmp_path):
    wav(tmp_path / "a.wav", 3.0)
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, 3 * SR)
    sf.write(str(tmp_path / "a.wav"), noise, SR, subtype="FLOAT")
    items = read_manifest(jsonl(tmp_path / "m.jsonl", [{"audio": "a.wav", "caption": "x"}]))
    audio = load_config("tiny").audio
    a = AudioCaptionDataset(items, audio, 1.0, train=True, seed=5)
    b = AudioCaptionDataset(items, audio, 1.0, train=True, seed=5)
    first = a[0]["wav"]
    assert torch.equal(first, b[0]["wav"])
    a.set_epoch(1)
    assert not torch.equal(first, a[0]["wav"])
    ev = AudioCaptionDataset(items, audio, 1.0, train=False, seed=5)
    np.testing.assert_allclose(ev[0]["wav"].numpy(), noise[:SR], atol=1e-6)


def test_dataset_with_no_readable_audio_is_a_user_error(tmp_path):
    items = read_manifest(jsonl(tmp_path / "m.jsonl", [{"audio": "no.wav", "caption": "x"}]))
    ds = AudioCaptionDataset(items, load_config("tiny").audio, 1.0, train=False)
    with pytest.warns(UserWarning), pytest.raises(UserError, match="none of the 1"):
        ds[0]


def test_build_dataset_from_manifest(tmp_path):
    wav(tmp_path / "a.wav", 1.5)
    m = jsonl(tmp_path / "m.jsonl", [{"audio": "a.wav", "caption": "x"}])
    cfg = load_config("tiny", [f"data.train={m}", f"data.val={tmp_path / 'missing.jsonl'}"])
    ds = build_dataset(cfg, "train")
    assert isinstance(ds, AudioCaptionDataset) and ds[0]["wav"].shape == (SR,)
    with pytest.raises(UserError, match="data.val"):
        build_dataset(cfg, "val")


# ------------------------------------------------------------------------ latent cache
@pytest.mark.slow
def test_cache_latents_roundtrip_and_resume(tmp_path, tiny_text_dir):
    from energytta.data import synth

    synth.generate(tmp_path / "corpus", num=10, seconds=1.0, seed=0, workers=1, progress=False)
    manifest = tmp_path / "corpus" / "train.jsonl"  # 8 clips
    overrides = [f"text.model={tiny_text_dir}", f"data.train={tmp_path / 'cache'}"]
    cfg = load_config("tiny", overrides)
    argv = ["cache", "--manifest", str(manifest), "--out", str(tmp_path / "cache"),
            "--config", "tiny", "--batch-size", "3", "--shard-size", "5", "--device", "cpu",
            *overrides[:1]]
    assert data_main(argv) == 0
    out = tmp_path / "cache"
    index = json.loads((out / "index.json").read_text())
    assert [s["count"] for s in index["shards"]] == [5, 3]
    first_shard = (out / "shard-00000.safetensors").stat().st_mtime_ns
    (out / "shard-00001.safetensors").unlink()  # an interrupted run
    assert data_main(argv) == 0
    assert (out / "shard-00000.safetensors").stat().st_mtime_ns == first_shard
    assert (out / "shard-00001.safetensors").is_file()

    ds = build_dataset(cfg, "train")
    assert isinstance(ds, CachedLatentDataset) and len(ds) == 8
    item = ds[0]
    assert item["latents"].shape == (1, 100, 64)  # 1 s crop of 100 frames/s x 64 mels
    assert item["text"].shape[1] == 32 and item["text_mask"].all()
    assert item["caption"] == json.loads(manifest.read_text().splitlines()[0])["caption"]
    std = ds.codec_state["std"]
    assert ds.codec_state["fitted"] and not torch.allclose(std, torch.ones_like(std))
    # latents are normalised with the fitted statistics: about zero mean, unit spread
    lat = torch.cat([ds[i]["latents"].flatten() for i in range(len(ds))])
    assert abs(float(lat.mean())) < 0.5 and 0.5 < float(lat.std()) < 2.0
    batch = collate([ds[i] for i in range(4)])
    assert batch["latents"].shape == (4, 1, 100, 64)
    assert batch["text"].shape[:2] == batch["text_mask"].shape

    short = CachedLatentDataset(out, crop_frames=150, train=True)  # longer than the clips
    padded = short[0]["latents"]
    assert padded.shape == (1, 150, 64)
    torch.testing.assert_close(padded[0, 120], short.silence[0])

    with pytest.raises(UserError, match="cached with text.max_length"):
        build_dataset(load_config("tiny", overrides + ["text.max_length=8"]), "train")
    other = argv[:-1] + [f"text.model={tiny_text_dir}", "text.max_length=8"]
    assert data_main(other) == 2  # another config into the same folder is refused


def test_cache_ctrl_c_exits_130_and_a_rerun_finishes_it(tmp_path, tiny_text_dir, capsys,
                                                        monkeypatch):
    import energytta.data.cache as cache_mod
    from energytta.data import synth
    from energytta.locks import folder_lock

    synth.generate(tmp_path / "corpus", num=10, seconds=1.0, seed=0, workers=1, progress=False)
    out = tmp_path / "cache"
    argv = ["cache", "--manifest", str(tmp_path / "corpus" / "train.jsonl"), "--out", str(out),
            "--config", "tiny", "--batch-size", "3", "--shard-size", "3", "--device", "cpu",
            f"text.model={tiny_text_dir}"]
    real = cache_mod._write_shard

    def interrupted(path, *args):
        if path.name == "shard-00001.safetensors":
            raise KeyboardInterrupt  # Ctrl-C while the second shard is encoded
        return real(path, *args)
    monkeypatch.setattr(cache_mod, "_write_shard", interrupted)
    assert data_main(argv) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "interrupted"
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.safetensors"]
    monkeypatch.setattr(cache_mod, "_write_shard", real)
    with folder_lock(out, "energytta-data cache", "x"):  # another cache is writing here
        assert data_main(argv) == 2
    assert "in use by another energytta-data cache" in capsys.readouterr().err
    assert data_main(argv) == 0  # the rerun keeps shard 0 and writes the rest
    index = json.loads((out / "index.json").read_text())
    assert [s["count"] for s in index["shards"]] == [3, 3, 2]
