"""A run folder's training state: EMA, lr schedule and seeds keep their meaning, so run
folders written before keep resuming and continue the same EMA and lr curve."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import energytta.train.loop as loop
from energytta.config import load_config
from energytta.train.logging import read_metrics
from energytta.train.optim import WarmupSchedule
from energytta.train.seeds import seed_globals

DECAY = 0.999


def _cfg(tiny_text_dir, corpus, out, *extra):
    return load_config("tiny", [f"text.model={tiny_text_dir}",
                                f"data.train={corpus / 'test.jsonl'}", f"train.out_dir={out}",
                                "train.log_every=1", "train.sample_prompts=[]", *extra])


def _states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _step_folder(run, step):
    return run / f"step-{step:07d}"


def _expected_ema(ema, params, updates_before):
    """ema <- lerp(ema, θ, 1 − d), d = min(decay, (1 + n) / (10 + n)) after n updates."""
    d = min(DECAY, (1 + updates_before) / (10 + updates_before))
    return {k: ema[k].lerp(params[k], 1.0 - d) for k in ema}


@pytest.mark.slow
def test_run_folder_state_keeps_its_format_and_resumes_on_the_same_ema_and_lr(
        tiny_text_dir, corpus, tmp_path):
    extra = ("train.steps=5", "train.ckpt_every=1", "train.keep_last=0",
             "train.warmup_steps=3", f"train.ema_decay={DECAY}", "model.dropout=0.1")
    straight_dir = tmp_path / "straight"
    straight = loop.train(_cfg(tiny_text_dir, corpus, straight_dir, *extra))
    cfg = _cfg(tiny_text_dir, corpus, straight_dir, *extra)

    # the state every step folder holds, in the format --resume reads
    ratio = cfg.train.min_lr / cfg.train.lr
    for step in range(1, 6):
        folder = _step_folder(straight_dir, step)
        state = json.loads((folder / "state.json").read_text())
        assert state["ema_updates"] == step  # averaging updates, the initial copy not counted
        assert state["scheduler"]["last_epoch"] == step
        assert all(f == {"warmup_steps": 3, "total_steps": 5, "kind": "cosine",
                         "min_ratio": ratio} for f in state["scheduler"]["lr_lambdas"])
        ema, model = load_file(folder / "ema.safetensors"), load_file(folder / "model.safetensors")
        assert ema.keys() == model.keys()  # the model's own keys, no wrapper prefix or counter

    # the EMA is the same d·e + (1 − d)·θ with the same warm-up of d, update for update
    for step in range(1, 5):
        before = load_file(_step_folder(straight_dir, step) / "ema.safetensors")
        after = load_file(_step_folder(straight_dir, step + 1) / "ema.safetensors")
        params = load_file(_step_folder(straight_dir, step + 1) / "model.safetensors")
        expected = _expected_ema(before, params, updates_before=step)
        assert all(torch.equal(after[k], expected[k]) for k in after), f"step {step + 1}"

    # a run folder that holds only one step folder (mid warm-up) resumes onto the same curve
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copytree(_step_folder(straight_dir, 2), _step_folder(out, 2))
    resumed = loop.train(_cfg(tiny_text_dir, corpus, out, *extra), resume=True)
    assert _states_equal(straight, resumed)
    for name in ("ema.safetensors", "model.safetensors"):
        a = load_file(_step_folder(straight_dir, 5) / name)
        b = load_file(_step_folder(out, 5) / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    lrs = [r["lr"] for r in read_metrics(out / "metrics.jsonl")]
    straight_lrs = [r["lr"] for r in read_metrics(straight_dir / "metrics.jsonl")]
    assert lrs == straight_lrs[2:]
    curve = WarmupSchedule(3, 5, "cosine", ratio)
    assert straight_lrs == [cfg.train.lr * curve(s) for s in range(5)]


@pytest.mark.parametrize("seed", [0, 1234, 2**32 + 7, 2**63 - 1])
def test_seed_globals_seeds_torch_with_the_whole_seed(seed):
    """Step seeds are 63-bit: torch gets all of them (a CUDA generator uses all 64 bits, so
    dropout draws of existing runs keep their values), numpy its 32-bit part, and no seed
    is refused."""
    seed_globals(seed)
    assert torch.initial_seed() == seed
    drawn_torch, drawn_np = torch.rand(4), np.random.rand(3)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    assert torch.equal(drawn_torch, torch.rand(4))
    assert np.array_equal(drawn_np, np.random.rand(3))
