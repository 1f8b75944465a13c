"""Several processes: the global sample stream across a resume under another process count,
DDP's find_unused_parameters only where an objective needs it, the documented CPU launch."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import energytta.train.loop as loop
from energytta.config import load_config
from energytta.train.seeds import seed_step
from energytta.train.stream import BatchStream, Position, resume_position

REPO = Path(__file__).resolve().parent.parent


def _stream(data, world: int, rank: int, batch: int, pos: Position) -> BatchStream:
    return BatchStream(data, lambda b: b, batch, seed=5, rank=rank, world=world,
                       num_workers=0, pos=pos)


def _steps(data, world: int, batch: int, pos: Position, steps: int) -> list[list[int]]:
    """The samples each global step reads (all ranks together), for `steps` steps."""
    iters = [iter(_stream(data, world, r, batch, Position(**vars(pos)))) for r in range(world)]
    return [sum((next(it) for it in iters), []) for _ in range(steps)]


@pytest.mark.parametrize("before,after", [((2, 3), (3, 2)), ((2, 3), (1, 3)), ((1, 4), (2, 2))])
def test_resume_under_another_process_count_continues_the_global_stream(before, after):
    data = list(range(40))
    (w0, b0), (w1, b1) = before, after
    perm = _stream(data, 1, 0, 1, Position()).epoch_batches(0)  # the epoch's order
    perm = [i for batch in perm for i in batch]
    done = _steps(data, w0, b0, Position(), 3)  # 3 steps, then the run stops
    saved = Position(0, 3)  # what state.json holds for that run
    pos = resume_position(saved, w0, b0, w1, b1)
    rest = _steps(data, w1, b1, pos, (40 - 3 * w0 * b0) // (w1 * b1))
    read = [sorted(step, key=perm.index) for step in done + rest]
    flat = [i for step in read for i in step]
    assert len(set(flat)) == len(flat)  # nothing read twice in the epoch
    assert flat == perm[:len(flat)]  # ... nothing skipped: the same global order
    assert len(flat) > 40 - w1 * b1  # only the tail that fills no global batch is left
    nxt = iter(_stream(data, w1, 0, b1, pos))
    for _ in range(len(rest) + 1):  # and the next epoch starts at its own beginning
        batch = next(nxt)
    assert batch == _stream(data, w1, 0, b1, Position()).epoch_batches(1)[0]
    assert resume_position(saved, w0, b0, w0, b0) is saved  # same count: as saved


def test_a_resumed_run_reads_the_saved_process_count(tiny_text_dir, corpus, tmp_path):
    """A run of 2 processes (its state.json says so) resumed by one process goes on at
    the sample where the two stopped, not at the one process's own batch count."""
    out = tmp_path / "run"
    over = [f"text.model={tiny_text_dir}", f"data.train={corpus / 'test.jsonl'}",
            f"train.out_dir={out}", "data.batch_size=2", "train.sample_prompts=[]"]
    loop.train(load_config("tiny", [*over, "train.steps=2"]))
    state_file = out / "step-0000002" / "state.json"
    state = json.loads(state_file.read_text())
    assert state["world_size"] == 1 and state["data"] == {"epoch": 0, "batch": 2, "start": 0}
    state["world_size"] = 2  # as written by `accelerate launch --num_processes 2`
    state_file.write_text(json.dumps(state))
    trainer = loop.Trainer(load_config("tiny", [*over, "train.steps=4"]), resume=True)
    assert trainer.stream.pos == Position(0, 0, 2 * 2 * 2)  # 2 steps × 2 processes × 2
    whole = [i for b in trainer.stream.epoch_batches(0) for i in b]
    assert next(trainer.batches)[0] == whole[8:10]


def _unused(cfg) -> list[str]:
    """Trainable parameters one training step leaves without a gradient."""
    trainer = loop.Trainer(cfg, resume=False)
    loss, _ = trainer.loss_module(seed_step(trainer.device, 0, 0, 0, 0), **trainer._next_inputs())
    loss.backward()
    return [n for n, p in trainer.loss_module.named_parameters()
            if p.requires_grad and p.grad is None]


@pytest.mark.slow
def test_find_unused_parameters_is_on_only_where_a_parameter_goes_unused(
        tiny_text_dir, corpus, tiny_ckpts, tmp_path):
    base = [f"text.model={tiny_text_dir}", f"data.train={corpus / 'test.jsonl'}",
            "data.batch_size=2", "model.text_dropout=0.0"]  # no caption dropped at all
    teacher = load_config("tiny", [*base, f"train.out_dir={tmp_path / 't'}"])
    student = load_config("tiny", [*base, f"train.out_dir={tmp_path / 's'}", "head.kind=energy",
                                   f"teacher.ckpt={tiny_ckpts['teacher']}"])
    vsd = load_config("tiny", [*base, f"train.out_dir={tmp_path / 'c'}", "data.kind=captions",
                               "train.objective=captiononly", "head.kind=onestep",
                               "model.noise_inputs=true", f"teacher.ckpt={tiny_ckpts['teacher']}"])
    for cfg in (teacher, student):
        assert not loop.find_unused_parameters(cfg) and _unused(cfg) == []
    assert loop.find_unused_parameters(vsd) and _unused(vsd)  # its null text gets no gradient
    teacher.train.find_unused_parameters = True  # the key turns it on for any objective
    assert loop.find_unused_parameters(teacher)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_documented_cpu_launch_runs_two_processes(tiny_text_dir, corpus, tmp_path):
    """docs/training.md: `accelerate launch --multi_gpu --num_processes 2 -m
    energytta.train.cli ...` (without --multi_gpu accelerate starts one process)."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
           "--num_processes", "2", "--main_process_port", str(_free_port()),
           "-m", "energytta.train.cli", "--config", "tiny", f"text.model={tiny_text_dir}",
           f"data.train={corpus / 'test.jsonl'}", "data.batch_size=2", "train.steps=2",
           f"train.out_dir={out}", "train.sample_prompts=[]"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((out / "step-0000002" / "state.json").read_text())
    assert state["world_size"] == 2
    assert not torch.cuda.is_available()  # really the CPU (gloo) case
