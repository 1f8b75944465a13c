"""One writer per output folder."""
import subprocess
import sys

import pytest

from energytta.config import load_config
from energytta.errors import UserError
from energytta.locks import LOCK_NAME, folder_lock
from energytta.sample_cli import main as sample_main
from energytta.train.loop import train


def test_second_holder_is_refused_with_the_first_ones_pid(tmp_path):
    with folder_lock(tmp_path / "run", "energytta-train", "set train.out_dir=NEW"):
        with pytest.raises(UserError, match=r"in use by another energytta-train \(pid \d+\)"):
            with folder_lock(tmp_path / "run", "energytta-train", "set train.out_dir=NEW"):
                pass
    with folder_lock(tmp_path / "run", "energytta-train", "x"):  # released on exit
        pass
    assert not (tmp_path / "run" / LOCK_NAME).exists()  # a clean exit leaves no file


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    code = ("import sys, time; from energytta.locks import folder_lock\n"
            f"with folder_lock({str(tmp_path)!r}, 'x', 'y'):\n"
            "    print('held', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"pid {child.pid}"):
            with folder_lock(tmp_path, "x", "y"):
                pass
    finally:
        child.kill()  # kill -9: no cleanup code runs
        child.wait()
    with folder_lock(tmp_path, "x", "y") as path:  # the kernel dropped the flock
        assert path.name == LOCK_NAME


def test_training_refuses_a_folder_another_run_holds(tmp_path):
    out = tmp_path / "run"
    cfg = load_config("tiny", [f"train.out_dir={out}"])
    with folder_lock(out, "energytta-train", "set train.out_dir=NEW_FOLDER"):
        with pytest.raises(UserError, match="train.out_dir=NEW_FOLDER"):
            train(cfg)
    assert not list(out.glob("step-*")) and not (out / "metrics.jsonl").exists()


def test_sampling_refuses_a_folder_another_run_holds(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a beep\n")
    with folder_lock(tmp_path / "out", "energytta-sample", "pass another --out-dir"):
        with pytest.raises(UserError, match="another --out-dir"):
            sample_main(["--prompts", str(prompts), "--out-dir", str(tmp_path / "out")])


def test_a_file_in_the_way_is_one_line(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(UserError, match="cannot use .* as the output folder"):
        with folder_lock(tmp_path / "f" / "run", "x", "choose another"):
            pass


def test_the_next_holder_sweeps_a_killed_writers_temporaries(tmp_path):
    run = tmp_path / "run"
    leftovers = [run / ".step-0000010.ab12cd_3" / "step-0000010",
                 run / ".model.safetensors.zz99yy00" / "model.safetensors",
                 run / "samples" / ".000-a-beep.png.q1w2e3r4" / "000-a-beep.png"]
    for p in leftovers:
        p.parent.mkdir(parents=True)
        p.write_text("half")
    (run / ".step-0000005.old").mkdir()
    keep = [run / ".cache.abcdefgh" / "mine.txt", run / ".git" / "HEAD",
            run / "step-0000005" / "model.safetensors"]
    for p in keep:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("keep")
    with folder_lock(run, "energytta-train", "x"):
        pass
    assert not any(p.parent.exists() for p in leftovers)
    assert not (run / ".step-0000005.old").exists()
    assert all(p.is_file() for p in keep)
