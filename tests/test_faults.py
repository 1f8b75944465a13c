"""Fault injection: `kill -9` at each point of a checkpoint write (and of a log append),
then `--resume` must end bit for bit where an uninterrupted run ends, with no leftovers;
and a full disk in training and sampling is one line, with earlier files intact.

Each fault runs a real training process (tiny config, 4 steps, checkpoints at 2 and 4)
whose hook SIGKILLs it at one point of the step-4 save: no `finally`, no atomic-write
clean-up runs, exactly as under `kill -9` or a power cut. The resume runs in this process.
"""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import energytta.train.loop as loop
from energytta import utils
from energytta.checkpoint import list_checkpoints, load_training_state
from energytta.cli import sample_main, train_main
from energytta.config import load_config
from energytta.errors import UserError, run_cli
from energytta.train.logging import read_metrics
from energytta.utils import atomic_path

REPO = Path(__file__).resolve().parent.parent
KILL_AT = "step-0000004"

# The child: install one fault's hook, then train as `energytta-train` does.
CHILD = textwrap.dedent("""
    import os, signal, shutil, sys
    import energytta.checkpoint as ck
    import energytta.train.logging as tlog

    point, argv, target = sys.argv[1], sys.argv[2:], "%s"

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    real_save, real_replace = ck.save_file, os.replace
    real_text, real_rmtree, real_write = ck.atomic_write_text, shutil.rmtree, tlog.MetricsLog.write

    def save_file(tensors, path, metadata=None):
        if target in path and point == "before-files":
            die()
        real_save(tensors, path, metadata=metadata)
        if target in path and point == "torn-optim" and path.endswith("optim.safetensors"):
            with open(path, "r+b") as f:  # a write cut short: half the bytes on disk
                f.truncate(os.path.getsize(path) // 2)
            die()

    def atomic_write_text(path, text):
        if target in str(path) and point == "before-state":
            die()
        real_text(path, text)

    def replace(src, dst):
        dst_s = str(dst)
        if target in dst_s and point == "state-unrenamed" and dst_s.endswith("state.json"):
            die()  # state.json fully written beside its final name, not yet renamed
        real_replace(src, dst)
        if point == "after-rename" and os.path.basename(dst_s) == target:
            die()  # the step folder is in place; its empty temporary parent is not removed

    def rmtree(path, *args, **kwargs):
        if point == "mid-prune" and os.path.basename(str(path)) == "step-0000002":
            os.remove(os.path.join(path, "model.safetensors"))
            die()  # pruning the older checkpoint, half done
        real_rmtree(path, *args, **kwargs)

    def write(self, record):
        if point == "torn-log" and record.get("step") == 3:
            with self.path.open("a", encoding="utf-8") as f:
                f.write('{"step": 3, "lo')
                f.flush()
            die()
        real_write(self, record)

    ck.save_file, ck.atomic_write_text, os.replace = save_file, atomic_write_text, replace
    ck.shutil.rmtree, tlog.MetricsLog.write = rmtree, write
    from energytta.cli import train_main
    sys.exit(train_main(argv))
""" % KILL_AT)

FAULTS = ["before-files", "torn-optim", "before-state", "state-unrenamed", "after-rename",
          "mid-prune", "torn-log"]
EXTRA = ("train.steps=4", "train.ckpt_every=2", "train.keep_last=1", "data.batch_size=2",
         "model.dropout=0.1", "model.text_dropout=0.5", "train.val_every=0")


def _overrides(text_dir: Path, manifest: Path, out: Path) -> list[str]:
    return [f"text.model={text_dir}", f"data.train={manifest}", f"train.out_dir={out}",
            "train.log_every=1", "train.sample_prompts=[]", *EXTRA]


@pytest.fixture(scope="module")
def straight(tiny_text_dir, tones, tmp_path_factory):
    """The uninterrupted run: (final raw weights, its training losses)."""
    out = tmp_path_factory.mktemp("straight") / "run"
    model = loop.train(load_config("tiny", _overrides(tiny_text_dir, tones, out)))
    return model.state_dict(), [r["loss"] for r in read_metrics(out / "metrics.jsonl", "train")]


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS)
def test_kill_during_a_checkpoint_write_then_resume_is_bit_identical(
        fault, tiny_text_dir, tones, straight, tmp_path):
    out = tmp_path / "run"
    script = tmp_path / "child.py"
    script.write_text(CHILD, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    args = ["--config", "tiny", *_overrides(tiny_text_dir, tones, out)]
    proc = subprocess.run([sys.executable, str(script), fault, *args], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]  # really killed, at the hook
    assert list_checkpoints(out), "the step-2 checkpoint must have survived"

    resumed = loop.train(load_config("tiny", _overrides(tiny_text_dir, tones, out)), resume=True)

    weights, losses = straight
    state = resumed.state_dict()
    assert state.keys() == weights.keys()
    assert all(torch.equal(state[k], weights[k]) for k in state)
    assert [r["loss"] for r in read_metrics(out / "metrics.jsonl", "train")] == losses
    assert list_checkpoints(out)[-1].name == KILL_AT
    leftovers = sorted(p.relative_to(out) for p in out.rglob(".*"))
    assert leftovers == [], f"hidden temporaries left behind: {leftovers}"


# ------------------------------------------------------------------ a full disk
def _no_space(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_in_an_atomic_write_is_one_line_and_keeps_the_old_file(tmp_path,
                                                                           monkeypatch):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(UserError, match="^disk full: could not write .*a.txt"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            _no_space()
    assert target.read_text() == "old" and sorted(tmp_path.iterdir()) == [target]
    # writers that wrap the errno in their own type: safetensors names "os error 28" ...
    with pytest.raises(UserError, match="disk full"):
        with atomic_path(target):
            raise RuntimeError("Error while serializing: I/O error: No space left on device "
                               "(os error 28)")
    # ... libsndfile says only "LibsndfileError(2, '')": judged by the free space left
    monkeypatch.setattr(utils.shutil, "disk_usage", lambda p: SimpleNamespace(free=4096))
    with pytest.raises(UserError, match="disk full"):
        with atomic_path(target):
            raise RuntimeError("")
    monkeypatch.setattr(utils.shutil, "disk_usage", lambda p: SimpleNamespace(free=1 << 40))
    with pytest.raises(RuntimeError):  # with room to spare an error is not a full disk
        with atomic_path(target):
            raise RuntimeError("")
    assert target.read_text() == "old" and sorted(tmp_path.iterdir()) == [target]


ASSET = REPO / "energytta" / "assets" / "student.safetensors"


def _export_error(out, capsys) -> str:
    from energytta.cli import export_main

    code = export_main([str(ASSET), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err[-3:]
    return err[0]


@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM, errno.EROFS])
def test_a_refused_write_is_not_called_a_full_disk(code, tmp_path, monkeypatch, capsys):
    # /proc and many read-only mounts report no free space: the guess must not fire
    monkeypatch.setattr(utils.shutil, "disk_usage", lambda p: SimpleNamespace(free=0))

    def refused(*_args, **_kwargs):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(utils.tempfile, "mkdtemp", refused)  # making the temporary
    line = _export_error(tmp_path / "m.safetensors", capsys)
    assert "disk full" not in line and "cannot write" in line and os.strerror(code) in line
    monkeypatch.undo()
    monkeypatch.setattr(utils.shutil, "disk_usage", lambda p: SimpleNamespace(free=0))
    with pytest.raises(UserError, match="cannot write .*Permission denied"):
        with atomic_path(tmp_path / "a.bin"):  # a writer that wraps the errno in words
            raise RuntimeError("Error while serializing: Permission denied (os error 13)")
    with pytest.raises(UserError, match="disk full"):  # a full disk still says so
        with atomic_path(tmp_path / "a.bin"):
            _no_space()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_export_into_proc_is_not_a_full_disk(capsys):
    line = _export_error(Path("/proc/x.safetensors"), capsys)
    assert "cannot write" in line and "disk full" not in line, line


def test_a_full_disk_outside_an_atomic_write_is_one_line_too(capsys):
    def append(_argv):  # e.g. a metrics.jsonl append
        raise OSError(errno.ENOSPC, "No space left on device", "run/metrics.jsonl")
    assert run_cli(append, []) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: disk full writing run/metrics.jsonl")

    def other(_argv):
        raise OSError(errno.EACCES, "Permission denied")
    with pytest.raises(PermissionError):  # other OS errors are not dressed up as a full disk
        run_cli(other, [])


def test_a_full_disk_during_training_is_one_line_and_earlier_checkpoints_survive(
        tiny_text_dir, tones, tmp_path, monkeypatch, capsys):
    import energytta.checkpoint as ck

    real = ck.save_file

    def save_file(tensors, path, metadata=None):
        real(tensors, path, metadata=metadata)
        if KILL_AT in path:
            with open(path, "r+b") as f:  # the disk filled up half-way through this file
                f.truncate(os.path.getsize(path) // 2)
            _no_space()
    monkeypatch.setattr(ck, "save_file", save_file)
    out = tmp_path / "run"
    code = train_main(["--config", "tiny", *_overrides(tiny_text_dir, tones, out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: disk full"), err
    assert "--resume" in err[0]
    assert [p.name for p in list_checkpoints(out)] == ["step-0000002"]
    assert sorted(p.name for p in out.rglob(".*")) == []  # the partial folder is gone
    monkeypatch.setattr(ck, "save_file", real)  # space freed: --resume finishes the run
    assert train_main(["--config", "tiny", "--resume", *_overrides(tiny_text_dir, tones, out)]
                      ) == 0


def test_a_full_disk_during_sampling_is_one_line_and_finished_prompts_stay(
        tiny_ckpts, tmp_path, monkeypatch, capsys):
    import energytta.audio.io as audio_io

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a beep\nrain falls\na dog barks\n", encoding="utf-8")
    real, calls = audio_io.sf.write, []

    def write(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the second wav: libsndfile's opaque error, a nearly full disk
            monkeypatch.setattr(utils.shutil, "disk_usage", lambda p: SimpleNamespace(free=0))
            raise RuntimeError("")
        return real(path, *args, **kwargs)
    monkeypatch.setattr(audio_io.sf, "write", write)
    out = tmp_path / "out"
    code = sample_main(["--prompts", str(prompts), "--ckpt", str(tiny_ckpts["student"]),
                        "--out-dir", str(out), "--device", "cpu", "--iterations", "2",
                        "--batch-size", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: disk full"), err
    names = sorted(p.name for p in out.iterdir())
    assert [n for n in names if n.startswith("000-")] == [
        "000-a-beep-seed0.json", "000-a-beep-seed0.png", "000-a-beep-seed0.wav"]  # finished
    assert not any(n.startswith(("001-", "002-", ".")) for n in names), names


# ------------------------------------------------------------------ damaged checkpoints
def test_resume_skips_a_damaged_newest_checkpoint_and_refuses_when_none_reads(
        tiny_text_dir, tones, straight, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = load_config("tiny", _overrides(tiny_text_dir, tones, out) + ["train.keep_last=0"])
    loop.train(cfg)
    optim = out / KILL_AT / "optim.safetensors"
    with optim.open("r+b") as f:  # damaged after it was written (a disk error, a bad copy)
        f.truncate(optim.stat().st_size // 2)
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_training_state(out / KILL_AT)
    capsys.readouterr()
    resumed = loop.train(cfg, resume=True)
    shown = " ".join(capsys.readouterr().out.split())
    assert f"skipping damaged {KILL_AT}" in shown and "resumed from" in shown
    weights, _ = straight  # it retrained steps 3-4 from step 2 and rewrote step 4
    assert all(torch.equal(resumed.state_dict()[k], weights[k]) for k in weights)
    load_training_state(out / KILL_AT)  # rewritten whole when training reached step 4
    for folder in list_checkpoints(out):
        (folder / "state.json").write_text("{ torn")
    with pytest.raises(UserError, match="no readable checkpoint.*delete the damaged") as e:
        loop.train(cfg, resume=True)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ long prompt lists
def test_memory_report_tells_a_flat_run_from_a_leaking_one():
    from research import memory

    args = memory.build_parser().parse_args(["--out", "x.md", "--prompts", "400"])
    warm = [(0.0, 200.0, 0)] + [(1.0 + i, 600.0 + (i % 3), 4 * i) for i in range(101)]
    leak = [(0.0, 200.0, 0)] + [(1.0 + i, 600.0 + i, 4 * i) for i in range(101)]
    assert ", flat" in memory.page(args, warm, 100.0)
    text = memory.page(args, leak, 100.0)
    assert "**growing**" in text and "+50.5 MB" in text
    assert [q["prompts"] for q in memory.quarters(leak, 400)] == [100, 200, 300, 400]
