"""Checkpoints: round trips, loading from every form, bad files, atomic writes, pruning."""
from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import energytta.checkpoint as ckpt
from energytta.audio.codec import build_codec
from energytta.config import load_config
from energytta.errors import UserError
from energytta.models.tta import TTAModel
from energytta.train.optim import build_optimizer

TEXT_DIM = 24


def _cfg(kind: str = "diffusion"):
    return load_config("tiny", [f"head.kind={kind}"])


def _model_and_codec(kind: str = "diffusion", seed: int = 0):
    torch.manual_seed(seed)
    cfg = _cfg(kind)
    model = TTAModel(cfg, TEXT_DIM).eval()
    codec = build_codec(cfg)
    codec.fit_stats(torch.randn(2, 16000, generator=torch.Generator().manual_seed(seed)) * 0.1)
    return cfg, model, codec


def _inputs(model: TTAModel):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(2, model.max_tokens, model.token_dim, generator=g)
    mask = torch.rand(2, model.max_tokens, generator=g) < 0.7
    text = torch.randn(2, 5, TEXT_DIM, generator=g)
    text_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    return tokens, mask, text, text_mask


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def _save_state(run_dir, step, model, codec, cfg, keep_last=0, ema=None):
    opt, sched = build_optimizer(model, cfg)
    return ckpt.save_training_state(run_dir, step, model=model, ema=ema or model, optimizer=opt,
                                    codec=codec, cfg=cfg, text_dim=TEXT_DIM, keep_last=keep_last,
                                    state={"scheduler": ckpt.encode_tree(sched.state_dict(), {})})


def test_inference_round_trip_gives_identical_outputs(tmp_path):
    cfg, model, codec = _model_and_codec()
    path = ckpt.save_inference(tmp_path / "m.safetensors", model, codec, cfg, text_dim=TEXT_DIM)
    cfg2, kind, model2, codec2 = ckpt.load_model(path, "cpu")
    assert kind == "teacher" and cfg2.to_dict() == cfg.to_dict()
    assert _same_state(model, model2) and _same_state(codec, codec2)
    with torch.no_grad():
        assert torch.equal(model.backbone(*_inputs(model)), model2.backbone(*_inputs(model2)))
    wav = torch.randn(1, 16000, generator=torch.Generator().manual_seed(3))
    assert torch.equal(codec.encode(wav), codec2.encode(wav))
    _, _, _, _, meta = ckpt.load_inference(path)
    assert meta["format"] == "energytta" and int(meta["text_dim"]) == TEXT_DIM
    assert json.loads(meta["config"])["head"]["kind"] == "diffusion"


def test_load_model_from_step_folder_uses_ema_and_run_folder_uses_latest(tmp_path):
    cfg, model, codec = _model_and_codec()
    _, ema, _ = _model_and_codec(seed=1)  # different weights stand in for the EMA
    _save_state(tmp_path, 5, model, codec, cfg, ema=ema)
    _, _, loaded, _ = ckpt.load_model(tmp_path / "step-0000005", "cpu")
    assert _same_state(loaded, ema) and not _same_state(loaded, model)
    _save_state(tmp_path, 7, model, codec, cfg, ema=model)
    assert ckpt.latest_checkpoint(tmp_path).name == "step-0000007"
    _, kind, loaded, loaded_codec = ckpt.load_model(tmp_path, "cpu")
    assert kind == "teacher" and _same_state(loaded, model) and _same_state(loaded_codec, codec)


def _one_line_user_error(fn, *needles):
    with pytest.raises(UserError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg
    return msg


def test_bad_checkpoints_raise_one_line_user_errors(tmp_path):
    cfg, model, codec = _model_and_codec()
    good = ckpt.save_inference(tmp_path / "good.safetensors", model, codec, cfg,
                               text_dim=TEXT_DIM)
    missing = tmp_path / "nope.safetensors"
    _one_line_user_error(lambda: ckpt.load_model(missing), str(missing))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    _one_line_user_error(lambda: ckpt.load_model(truncated), str(truncated), "corrupt")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a safetensors file at all" * 10)
    _one_line_user_error(lambda: ckpt.load_inference(garbage), str(garbage))
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign), metadata={"format": "pt"})
    _one_line_user_error(lambda: ckpt.load_model(foreign), str(foreign), "not an energytta")
    empty_run = tmp_path / "empty_run"
    empty_run.mkdir()
    _one_line_user_error(lambda: ckpt.load_model(empty_run), str(empty_run))


def test_student_checkpoint_is_refused_as_teacher(tmp_path):
    from teachers.load import load_teacher

    cfg, model, codec = _model_and_codec("energy")
    path = ckpt.save_inference(tmp_path / "student.safetensors", model, codec, cfg,
                               text_dim=TEXT_DIM)
    assert ckpt.load_inference(path)[1] == "student"
    _one_line_user_error(lambda: load_teacher(path), "student")


def test_mismatched_weights_raise_user_error(tmp_path):
    cfg, model, codec = _model_and_codec()
    path = ckpt.save_inference(tmp_path / "m.safetensors", model, codec, cfg, text_dim=TEXT_DIM)
    state = {f"model.{k}": v for k, v in model.state_dict().items() if "head" not in k}
    state.update({f"codec.{k}": v for k, v in codec.state_dict().items()})
    _, _, _, _, meta = ckpt.load_inference(path)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=meta)
    _one_line_user_error(lambda: ckpt.load_model(path), str(path), "do not fit")


def test_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    cfg, model, codec = _model_and_codec()
    folder = _save_state(tmp_path, 10, model, codec, cfg)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    real_save = ckpt.save_file

    def failing(tensors, filename, metadata=None):
        if filename.endswith("ema.safetensors"):
            raise OSError("disk full")
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(ckpt, "save_file", failing)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # the failed save would have new weights
    with pytest.raises(OSError):
        _save_state(tmp_path, 10, model, codec, cfg)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["step-0000010"]  # no temporaries left
    assert ckpt.latest_checkpoint(tmp_path) == folder


def test_saved_files_get_the_umask_mode_not_owner_only(tmp_path):
    # safetensors' save_file creates 0o600 files; atomic_path gives them 0o666 & ~umask
    cfg, model, codec = _model_and_codec()
    old = os.umask(0o022)
    try:
        path = ckpt.save_inference(tmp_path / "m.safetensors", model, codec, cfg,
                                   text_dim=TEXT_DIM)
        folder = _save_state(tmp_path / "run", 1, model, codec, cfg)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [path, *folder.iterdir()]}
    assert set(modes.values()) == {0o644}, modes


def test_keep_last_n_deletes_the_oldest(tmp_path):
    cfg, model, codec = _model_and_codec()
    for step in (1, 2, 3, 4, 5):
        _save_state(tmp_path, step, model, codec, cfg, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-0000004", "step-0000005"]
    (tmp_path / "step-0000009").mkdir()  # an incomplete folder (no state.json) is ignored
    assert ckpt.latest_checkpoint(tmp_path).name == "step-0000005"


def test_optimizer_state_round_trip_gives_the_same_next_step(tmp_path):
    cfg, model, codec = _model_and_codec()
    model.train()
    opt, sched = build_optimizer(model, cfg)

    def step(m, o, s):
        o.zero_grad()
        out = m.backbone(*_inputs(m))
        out.square().mean().backward()
        o.step()
        s.step()

    for _ in range(2):
        step(model, opt, sched)
    _save_state_with = ckpt.save_training_state(
        tmp_path, 2, model=model, ema=model, optimizer=opt, codec=codec, cfg=cfg,
        text_dim=TEXT_DIM, state={"scheduler": ckpt.encode_tree(sched.state_dict(), {})})
    loaded = ckpt.load_training_state(_save_state_with)
    model2 = TTAModel(cfg, TEXT_DIM).train()
    model2.load_state_dict(loaded["model"])
    opt2, sched2 = build_optimizer(model2, cfg)
    opt2.load_state_dict(loaded["optimizer"])
    sched2.load_state_dict(ckpt.decode_tree(loaded["state"]["scheduler"], {}))
    step(model, opt, sched)
    step(model2, opt2, sched2)
    assert _same_state(model, model2)
    assert sched.get_last_lr() == sched2.get_last_lr()


def test_rng_state_round_trip():
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    state = json.loads(json.dumps(ckpt.rng_state()))
    a = (random.random(), np.random.rand(), torch.rand(3))
    ckpt.set_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_encode_tree_keeps_int_keys_tuples_and_tensors():
    tree = {"state": {0: {"step": torch.tensor(3.0)}}, "groups": [{"betas": (0.9, 0.95)}]}
    tensors: dict[str, torch.Tensor] = {}
    back = ckpt.decode_tree(json.loads(json.dumps(ckpt.encode_tree(tree, tensors))), tensors)
    assert back["groups"][0]["betas"] == (0.9, 0.95)
    assert list(back["state"]) == [0] and torch.equal(back["state"][0]["step"], torch.tensor(3.0))
