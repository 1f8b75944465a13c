"""One writer per output folder."""
import subprocess
import sys
from pathlib import Path

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


# A writer SIGKILLed inside each atomic write (no clean-up runs), one of them mid-way
# through replacing a step folder: between moving the old one aside and renaming the new.
KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from energytta import utils

run = Path(sys.argv[1])
real_replace, held = os.replace, []  # held: a collected generator would clean up
for target in (run / "step-0000010", run / "model.safetensors",
               run / "samples" / "000-a-beep.png"):
    held.append(utils.atomic_path(target))
    tmp = held[-1].__enter__()
    (tmp.mkdir(), (tmp / "model.safetensors").write_text("half")) if "step" in target.name \
        else tmp.write_text("half")
    print(tmp, flush=True)  # left inside its atomic write, never finished

def replace(src, dst):
    real_replace(src, dst)
    if Path(dst).parent.name.startswith(utils.TEMP_PREFIX):
        os.kill(os.getpid(), signal.SIGKILL)  # the old folder moved aside, the new not in

os.replace = replace
with utils.atomic_path(run / "step-0000005") as tmp:
    tmp.mkdir()
    (tmp / "model.safetensors").write_text("new")
"""


def _killed_writer(run) -> list:
    """Run KILLED_WRITER on `run` -> the half-written paths it left."""
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(run)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    return [Path(line) for line in proc.stdout.split()]


def test_the_next_holder_sweeps_a_killed_writers_temporaries(tmp_path):
    run = tmp_path / "run"
    keep = [run / ".cache.abcdefgh" / "mine.txt", run / ".git" / "HEAD",
            run / "step-0000005" / "model.safetensors"]
    for p in keep:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("keep")
    leftovers = _killed_writer(run)  # what the killed writes left
    assert len(leftovers) == 3 and all(p.exists() for p in leftovers)
    assert not (run / "step-0000005").exists()  # killed half-way through its swap
    with folder_lock(run, "energytta-train", "x"):
        pass
    assert not any(p.parent.exists() for p in leftovers)
    assert not (run / ".step-0000005.old").exists()
    assert all(p.is_file() for p in keep)
    # the swap is finished: the new folder was complete when the writer was killed
    assert (run / "step-0000005" / "model.safetensors").read_text() == "new"
    hidden = sorted(str(p.relative_to(run)) for p in run.rglob(".*"))
    assert hidden == [".cache.abcdefgh", ".git"]  # no temporary is left


USER_FILES = [".notes.old/thesis.txt", "sub/.cfg.abcd1234/cfg", "sub/deeper/.x.old/data",
              ".model.safetensors.zz99yy00/model.safetensors", ".empty.old/",
              ".energytta-tmp.abcd1234/mine.txt", ".energytta-tmp.efgh5678/.energytta-temporary"]


@pytest.mark.parametrize("writer", ["lock", "sample"])
def test_sweeping_never_removes_a_users_own_files(writer, tmp_path):
    out = tmp_path / "out"
    for rel in USER_FILES:
        p = out / rel
        if rel.endswith("/"):
            p.mkdir(parents=True)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("mine")  # not the marker's text: a file of the user's
    if writer == "lock":
        with folder_lock(out, "x", "y"):
            pass
    else:  # the sampler's own atomic writes into the same folder
        prompts = tmp_path / "p.txt"
        prompts.write_text("a beep\n")
        assert sample_main(["--prompts", str(prompts), "--out-dir", str(out),
                            "--iterations", "1", "--duration", "0.5"]) in (0, None)
    for rel in USER_FILES:
        assert (out / rel).exists(), f"{rel} was deleted"
