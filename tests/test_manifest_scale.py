"""Data at scale: the memory-mapped manifest row index (random access = a whole parse,
stale indexes rebuilt), streaming `check` with one line per bad row, persistent
DataLoader workers, and the latent cache's float16 option, parallel build and bounded
open shard files."""
from __future__ import annotations

import csv
import io
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import energytta.data.manifest_index as manifest_index
from energytta.cli import data_main
from energytta.config import load_config
from energytta.data.dataset import AudioCaptionDataset, CachedLatentDataset, build_dataset
from energytta.data.manifest import Manifest, check_manifest, open_manifest, read_manifest
from energytta.errors import UserError

SR = 16000


def wav(path: Path, seconds: float = 0.5) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    sf.write(str(path), 0.5 * np.sin(2 * np.pi * 440 * t), SR, subtype="PCM_16")
    return path


CAPTIONS = ["a dog barks", "café ambience, 東京 rain", "ünïcödé — “quoted” 🎵", "x" * 300,
            "a caption, with a comma", 'she said "hi"', "two\nlines"]


def jsonl_text(n: int, rng: random.Random) -> str:
    """`n` rows with unicode, blank lines, CRLF and LF endings."""
    lines = []
    for i in range(n):
        row = json.dumps({"audio": f"a{i}.wav", "caption": rng.choice(CAPTIONS) + f" {i}",
                          "attributes": {"i": i}}, ensure_ascii=rng.random() < 0.5)
        lines.append(row + rng.choice(["\n", "\r\n"]))
        if rng.random() < 0.2:
            lines.append(rng.choice(["\n", "  \n", "\r\n", "\t\r\n"]))  # blank lines
    return "".join(lines)


def audiocaps_text(n: int, rng: random.Random) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n" if rng.random() < 0.5 else "\n")
    writer.writerow(["audiocap_id", "youtube_id", "start_time", "caption"])
    for i in range(n):
        writer.writerow([i, f"yt{i}", 30, rng.choice(CAPTIONS) + f" {i}"])  # quotes, newlines
        if rng.random() < 0.2:
            out.write("\n")
    return out.getvalue()


def reference_jsonl(text: str) -> list[str]:
    """Captions of a whole-file parse (what reading a manifest used to do)."""
    return [json.loads(ln)["caption"].strip() for ln in text.splitlines() if ln.strip()]


def reference_csv(text: str) -> list[str]:
    rows = [r for r in csv.reader(io.StringIO(text)) if any(c.strip() for c in r)]
    return [r[3].strip() for r in rows[1:]]


# --------------------------------------------------------------------------- row index
@pytest.mark.parametrize("kind", ["jsonl", "csv"])
@pytest.mark.parametrize("chunk", [7, 64, 1 << 24])
def test_random_access_equals_a_whole_parse(tmp_path, monkeypatch, kind, chunk):
    monkeypatch.setattr(manifest_index, "CHUNK", chunk)  # rows cut across chunk boundaries
    rng = random.Random(chunk)
    text = jsonl_text(200, rng) if kind == "jsonl" else audiocaps_text(200, rng)
    path = tmp_path / f"m.{kind}"
    path.write_bytes(("\ufeff" if chunk == 64 else "").encode() + text.encode("utf-8"))
    want = reference_jsonl(text) if kind == "jsonl" else reference_csv(text)
    m = open_manifest(path)
    assert len(m) == len(want) == 200
    order = list(range(len(m)))
    rng.shuffle(order)
    assert {i: m[i].caption for i in order} == dict(enumerate(want))  # random access
    assert [it.caption for it in m] == want  # sequential
    assert [it.caption for it in read_manifest(path)] == want
    assert m[-1].caption == want[-1] and [it.caption for it in m[3:6]] == want[3:6]


def test_line_numbers_count_blank_lines_crlf_and_quoted_newlines(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(b"audiocap_id,youtube_id,start_time,caption\r\n\r\n"
                     b'1,a,0,"two\r\nlines"\r\n2,b,0,\r\n3,c,0,ok')  # no newline at the end
    m = open_manifest(path)
    assert [m.line(r) for r in range(m.num_rows)] == [3, 5, 6]
    assert m[0].caption == "two\r\nlines" and m[2].caption == "ok"
    with pytest.raises(UserError, match=rf"^{path}:5: empty 'caption'$"):
        m[1]


def test_clotho_rows_are_five_items_each(tmp_path):
    caps = ",".join(f"c{i}" for i in range(1, 6))
    path = tmp_path / "clotho.csv"
    path.write_text("file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"
                    f"x.wav,{caps}\ny.wav,{caps}\n")
    m = open_manifest(path)
    assert len(m) == 10 and m[7].audio.name == "y.wav" and m[7].caption == "c3"


def index_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.rows.npy"))


def test_index_is_kept_beside_the_manifest_and_rebuilt_when_it_changes(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"audio": "a.wav", "caption": "first"}\n')
    assert open_manifest(path)[0].caption == "first"
    first = index_files(tmp_path)
    assert len(first) == 1
    assert open_manifest(path)[0].caption == "first"  # reused: no second file
    assert index_files(tmp_path) == first

    st = path.stat()  # same size and mtime, other bytes: the content hash tells them apart
    path.write_text('{"audio": "a.wav", "caption": "other"}\n')
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert open_manifest(path)[0].caption == "other"
    path.write_text('{"audio": "a.wav", "caption": "first"}\n\n{"audio": "b.wav", '
                    '"caption": "second row"}\n')
    m = open_manifest(path)
    assert [it.caption for it in m] == ["first", "second row"]
    (only,) = index_files(tmp_path)  # the stale files were removed
    assert only not in first and np.load(only).shape == (2, 3)


def test_a_corrupt_index_file_is_rebuilt(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"audio": "a.wav", "caption": "x"}\n')
    open_manifest(path)
    (index,) = index_files(tmp_path)
    index.write_bytes(b"not an npy file")
    assert open_manifest(path)[0].caption == "x"
    assert np.load(index).shape == (1, 3)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_manifest_folder_keeps_its_index_in_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    (data / "m.jsonl").write_text('{"audio": "a.wav", "caption": "x"}\n')
    data.chmod(0o555)
    try:
        assert open_manifest(data / "m.jsonl")[0].caption == "x"
    finally:
        data.chmod(0o755)
    assert not index_files(data)
    assert len(list((tmp_path / "cache").rglob("*.rows.npy"))) == 1


def test_read_manifest_writes_no_index(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"audio": "a.wav", "caption": "x"}\n')
    read_manifest(path)
    assert check_manifest(path, as_json=True) == 1  # a.wav is missing
    assert not index_files(tmp_path)


def test_reading_manifests_leaves_no_file_open(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"audio": "a.wav", "caption": "x"}\n')
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        read_manifest(path)
        open_manifest(path)[0]
    assert len(os.listdir("/proc/self/fd")) <= before + 1


def test_a_manifest_pickles_without_its_index_and_reads_in_the_copy(tmp_path):
    import pickle

    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps({"audio": "a.wav", "caption": f"c{i}"}) + "\n"
                            for i in range(5)))
    m = open_manifest(path)
    m[0]  # opens the file in this process
    blob = pickle.dumps(m)
    assert len(blob) < 2000  # neither the index nor the file handle travels
    assert pickle.loads(blob)[4].caption == "c4"


# ------------------------------------------------------------------ bad rows, streaming check
def bad_manifest(tmp_path: Path) -> Path:
    wav(tmp_path / "good.wav")
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"audio": "good.wav", "caption": "fine"}\n'
                     b'{"audio": "good.wav", "caption": "broken"\n'
                     b'\n'
                     b'{"audio": "good.wav"}\n'
                     b'{"audio": "good.wav", "caption": "caf\xe9"}\n'
                     b'{"audio": "missing.wav", "caption": "gone"}\n'
                     b'{"audio": "good.wav", "caption": "fine again"}\n')
    return path


def test_check_streams_and_lists_every_bad_row_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    path = bad_manifest(tmp_path)
    assert check_manifest(path) == 1
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.startswith("bad row: ")]
    assert rows == [f"bad row: {path}:2: invalid JSON (Expecting ',' delimiter at column 42)",
                    f'bad row: {path}:4: missing or empty "caption" (a non-empty string)',
                    f"bad row: {path}:5: not UTF-8 text (byte 0xe9); re-save the manifest "
                    "as UTF-8"]
    assert "missing.wav" in out and f"{path}:6" in out  # the missing file, its row, the fix
    assert "missing files: correct their rows" in out and "--audio-dir" in out
    assert data_main(["check", "--json", str(path)]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["items"] == 3 and doc["audio_files"] == 2 and doc["good"] == 1
    assert len(doc["bad_rows"]) == 3
    assert doc["bad"] == [{"file": str(tmp_path / "missing.wav"), "problem": "missing",
                           "row": f"{path}:6"}]


def test_a_dataset_skips_a_bad_row_with_a_warning(tmp_path):
    path = bad_manifest(tmp_path)
    ds = AudioCaptionDataset(open_manifest(path), load_config("tiny").audio, 0.25, train=False)
    assert len(ds) == 6
    with pytest.warns(UserWarning) as caught:
        assert ds[1]["caption"] == "fine again"  # rows 2, 4, 5 and the missing file skipped
    assert [str(w.message).split("m.jsonl:")[-1][:14] for w in caught[:3]] == [
        "2: invalid JSO", "4: missing or ", "5: not UTF-8 t"]
    assert ds.bad == {1, 2, 3, 4}


def test_build_dataset_reads_a_manifest_lazily(tmp_path):
    wav(tmp_path / "a.wav", 1.5)
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"audio": "a.wav", "caption": "x"}) + "\n")
    ds = build_dataset(load_config("tiny", [f"data.train={path}"]), "train")
    assert isinstance(ds.items, Manifest) and ds[0]["caption"] == "x"


# ------------------------------------------------------------------------ persistent workers
class EpochProbe(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        return {"pid": os.getpid(), "epoch": self.epoch, "i": i}


def test_stream_workers_persist_across_epochs_and_see_each_epoch():
    from energytta.train.stream import BatchStream, Position

    stream = BatchStream(EpochProbe(), lambda b: b, 4, seed=0, rank=0, world=1,
                         num_workers=2, pos=Position())
    it = stream.indexed()
    seen = [next(it) for _ in range(6)]  # 3 epochs of 2 batches
    pids = {item["pid"] for _, batch in seen for item in batch}
    assert len(pids) == 2 and os.getpid() not in pids  # the same two workers throughout
    assert [batch[0]["epoch"] for _, batch in seen] == [0, 0, 1, 1, 2, 2]
    assert all([item["i"] for item in batch] == idx for idx, batch in seen)
    it.close()


# ------------------------------------------------------------------------------ latent cache
@pytest.fixture(scope="module")
def cache_setup(tmp_path_factory, tiny_text_dir):
    from energytta.data import synth

    root = tmp_path_factory.mktemp("scale_cache")
    synth.generate(root / "corpus", num=10, seconds=1.0, seed=0, workers=1, progress=False)
    args = ["--manifest", str(root / "corpus" / "train.jsonl"), "--config", "tiny",
            "--batch-size", "2", "--shard-size", "3", "--device", "cpu",
            f"text.model={tiny_text_dir}"]
    assert data_main(["cache", "--out", str(root / "fp32"), *args]) == 0
    return root, args


def shard_tensors(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    return {p.name: load_file(str(p)) for p in sorted(folder.glob("shard-*.safetensors"))}


@pytest.mark.slow
def test_parallel_build_resumes_and_equals_serial_bit_for_bit(cache_setup):
    import shutil

    root, args = cache_setup
    out = root / "parallel"
    shutil.copytree(root / "fp32", out)  # a run interrupted after its first shard
    for name in ("shard-00001.safetensors", "shard-00002.safetensors", "index.json"):
        (out / name).unlink()
    first = (out / "shard-00000.safetensors").stat().st_mtime_ns
    assert data_main(["cache", "--out", str(out), "--workers", "2", *args]) == 0
    assert (out / "shard-00000.safetensors").stat().st_mtime_ns == first  # kept
    serial, parallel = shard_tensors(root / "fp32"), shard_tensors(out)
    assert list(serial) == list(parallel) == [f"shard-0000{k}.safetensors" for k in range(3)]
    for name in serial:  # shards 1 and 2 come from the two worker processes
        assert serial[name].keys() == parallel[name].keys()
        for key, value in serial[name].items():
            assert torch.equal(value, parallel[name][key]), (name, key)
    index = [json.loads((f / "index.json").read_text()) for f in (out, root / "fp32")]
    assert index[0] == index[1]


@pytest.mark.slow
def test_float16_cache_round_trip_and_dtype_checks(cache_setup, capsys):
    from safetensors.torch import load_file

    root, args = cache_setup
    out = root / "fp16"
    assert data_main(["cache", "--out", str(out), "--dtype", "float16", *args]) == 0
    index = json.loads((out / "index.json").read_text())
    assert index["dtype"] == "float16"
    stored = load_file(str(out / "shard-00000.safetensors"))
    assert {t.dtype for k, t in stored.items() if not k.startswith("text_mask")} == {torch.float16}
    half, full = CachedLatentDataset(out, 0, train=False), CachedLatentDataset(root / "fp32", 0,
                                                                               train=False)
    assert len(half) == len(full) == 8
    for i in range(len(full)):
        a, b = half[i], full[i]
        assert a["latents"].dtype == a["text"].dtype == torch.float32  # training reads float32
        torch.testing.assert_close(a["latents"], b["latents"], atol=1e-2, rtol=1e-3)
        torch.testing.assert_close(a["text"], b["text"], atol=1e-2, rtol=1e-3)
        assert a["caption"] == b["caption"] and torch.equal(a["text_mask"], b["text_mask"])
    # another dtype into the same folder is refused (it would mix two caches)
    assert data_main(["cache", "--out", str(out), *args]) == 2
    assert "another manifest, config or dtype" in capsys.readouterr().err
    # an index that disagrees with its shards is one line, not garbage
    (out / "index.json").write_text(json.dumps({**index, "dtype": "float32"}))
    with pytest.raises(UserError, match="holds F16 latents but index.json says float32"):
        CachedLatentDataset(out, 0)[0]
    (out / "index.json").write_text(json.dumps({**index, "dtype": "int8"}))
    with pytest.raises(UserError, match="unknown cache dtype 'int8'"):
        CachedLatentDataset(out, 0)


def test_a_worker_that_cannot_start_reports_why_at_its_first_shard(tmp_path, monkeypatch):
    import queue

    from energytta.data import cache_workers
    from energytta.data.cache import ShardJob

    monkeypatch.setattr(cache_workers, "_STATE", {})
    path = tmp_path / "m.jsonl"
    path.write_text('{"audio": "a.wav", "caption": "x"}\n')
    job = ShardJob(load_config("tiny"), tmp_path / "cache", open_manifest(path), 1, 1,
                   "float32")
    devices = queue.Queue()
    devices.put("cpu")
    cache_workers._init(job, devices, 1)  # no codec.safetensors in the folder: fails
    with pytest.raises(Exception, match="codec.safetensors|No such file"):
        cache_workers._write(0)


def test_float16_overflow_is_an_error_not_inf():
    from energytta.data.cache import _stored

    assert _stored(torch.tensor([1.0, -2.0]), "float16", "x").dtype == torch.float16
    with pytest.raises(UserError, match="beyond float16's range.*--dtype float32"):
        _stored(torch.tensor([1e6]), "float16", "the latents of a.wav")


@pytest.mark.slow
def test_an_old_float32_cache_without_dtype_still_loads(cache_setup, tmp_path):
    import shutil

    root, _ = cache_setup
    old = tmp_path / "old"
    shutil.copytree(root / "fp32", old)
    index = json.loads((old / "index.json").read_text())
    del index["dtype"]  # the format before float16
    (old / "index.json").write_text(json.dumps(index))
    ds = CachedLatentDataset(old, 0, train=False)
    assert ds.dtype == "float32"
    assert torch.equal(ds[5]["latents"], CachedLatentDataset(root / "fp32", 0)[5]["latents"])


def mapped_shards(folder: Path) -> int:
    """How many distinct shard files of `folder` this process has mapped or open."""
    maps = {ln.split()[-1] for ln in open("/proc/self/maps") if str(folder) in ln}
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return len({p for p in maps | fds if str(folder) in p and "shard-" in p})


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")
def test_open_shard_files_are_bounded_and_closed(cache_setup):
    root, _ = cache_setup
    ds = CachedLatentDataset(root / "fp32", 0, train=False, max_open=2)
    for i in [0, 3, 6, 1, 7, 4, 0]:  # three shards, visited out of order
        ds[i]
        assert mapped_shards(root / "fp32") <= 2 and len(ds._open) <= 2
    assert [ds[i]["caption"] for i in (0, 3)] == [CachedLatentDataset(root / "fp32", 0)[i][
        "caption"] for i in (0, 3)]
    ds.close()
    assert mapped_shards(root / "fp32") == 0


def test_the_benchmarks_before_path_reads_what_the_package_reads(tmp_path, research_command):
    bench = research_command("manifest_scale").module
    manifests = bench.write_inputs(tmp_path, [70])
    want = read_manifest(manifests[70])
    got = bench.parse_whole(manifests[70])
    assert got == want and len({it.caption for it in got}) == 70
    assert all(it.audio.is_file() for it in got[:4])
