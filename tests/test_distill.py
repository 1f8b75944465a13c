"""StudentObjective: energy + λ·distill against a frozen teacher; init/freeze helpers."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from energytta.audio.codec import build_codec
from energytta.checkpoint import save_inference
from energytta.config import Config, load_config
from energytta.errors import UserError
from energytta.models.geometry import patchify
from energytta.models.tta import TTAModel
from energytta.train.objectives.student import (StudentObjective, _distill_term,
                                                init_student_from_teacher, prepare_student)

TEXT_DIM = 12


def _cfg(*overrides: str) -> Config:
    return load_config("tiny", ["model.text_dropout=0.5", *overrides])


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> Path:
    """A tiny (untrained) diffusion-head teacher saved as an inference file."""
    cfg = _cfg("head.kind=diffusion")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_inference(path, TTAModel(cfg, TEXT_DIM), build_codec(cfg), cfg, "teacher")
    return path


def _student_cfg(teacher_ckpt: Path, *overrides: str) -> Config:
    return _cfg("head.kind=energy", f"teacher.ckpt={teacher_ckpt}", *overrides)


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(3, 1, 100, 64, generator=g)  # 1 s of tiny mel latents
    text = torch.randn(3, 5, TEXT_DIM, generator=g)
    text_mask = torch.ones(3, 5, dtype=torch.bool)
    text_mask[1, 3:] = False
    return latents, text, text_mask


def _student(cfg: Config, seed: int = 1) -> TTAModel:
    torch.manual_seed(seed)
    return TTAModel(cfg, TEXT_DIM)


def test_distill_term_zero_for_identical_features():
    x = torch.randn(2, 7, 16)
    assert _distill_term(x, x.clone(), "mse").item() == 0.0
    assert abs(_distill_term(x, x.clone(), "cosine").item()) < 1e-6
    assert _distill_term(x, -x, "cosine").item() == pytest.approx(2.0, abs=1e-5)


def test_student_initialised_from_teacher_has_zero_distill(teacher_ckpt):
    """Same weights + one shared mask and caption dropout ⇒ identical features."""
    cfg = _student_cfg(teacher_ckpt, "distill.layers=[0]")
    model = _student(cfg)
    prepare_student(cfg, model, "cpu")
    objective = StudentObjective(cfg, model, "cpu")
    loss, logs = objective(model, *_batch(), torch.Generator().manual_seed(0))
    assert logs["distill"] < 1e-10
    assert logs["energy"] == pytest.approx(loss.item(), rel=1e-5)
    assert set(logs) == {"energy", "distill", "loss"}


def test_gradient_reaches_student_only(teacher_ckpt):
    cfg = _student_cfg(teacher_ckpt, "distill.loss=cosine")
    model = _student(cfg)  # random init: features differ from the teacher's
    objective = StudentObjective(cfg, model, "cpu")
    teacher = objective.teacher
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    loss, logs = objective(model, *_batch(), torch.Generator().manual_seed(0))
    assert logs["distill"] > 0
    assert logs["loss"] == pytest.approx(logs["energy"] + cfg.distill.weight * logs["distill"],
                                         rel=1e-5)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    grads = [p.grad for p in model.backbone.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert list(objective.parameters()) == []  # same width: no projection to train


def test_distill_alone_gives_no_head_gradient(teacher_ckpt):
    """The distill term is a function of the backbone only (the head never sees it)."""
    cfg = _student_cfg(teacher_ckpt)
    model = _student(cfg)
    objective = StudentObjective(cfg, model, "cpu")
    latents, text, text_mask = _batch()
    tokens = patchify(latents, 10, 16)  # (3, 40, 160)
    mask = torch.rand(3, 40, generator=torch.Generator().manual_seed(0)) < 0.8
    drop = torch.tensor([False, True, False])
    z, hidden = model(tokens, mask, text, text_mask, drop, return_hidden=True)
    objective._distill(z, hidden, tokens, mask, text, text_mask, drop).backward()
    assert all(p.grad is None for p in model.head.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())


def test_width_mismatch_uses_trained_projection(teacher_ckpt):
    cfg = _student_cfg(teacher_ckpt, "model.width=16", "distill.layers=[-1]",
                       "distill.init_from_teacher=false")
    model = _student(cfg)
    objective = StudentObjective(cfg, model, "cpu")
    params = list(objective.parameters())
    assert len(objective.proj) == 2 and params
    assert objective.proj[0].in_features == 16 and objective.proj[0].out_features == 32
    loss, _ = objective(model, *_batch(), torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert "teacher" not in dict(objective.named_modules())
    assert not any(k.startswith("teacher") for k in objective.state_dict())


def test_missing_teacher_with_weight_is_user_error(tmp_path):
    for ckpt in ("", str(tmp_path / "nope.safetensors")):
        cfg = _cfg("head.kind=energy", f"teacher.ckpt={ckpt}")
        with pytest.raises(UserError, match=r"teacher.ckpt=PATH.*distill.weight=0"):
            StudentObjective(cfg, _student(cfg), "cpu")


def test_weight_zero_needs_no_teacher():
    cfg = _cfg("head.kind=energy", "distill.weight=0")
    model = _student(cfg)
    with pytest.warns(UserWarning, match="from scratch"):
        prepare_student(cfg, model, "cpu")
    objective = StudentObjective(cfg, model, "cpu")
    assert objective.teacher is None
    loss, logs = objective(model, *_batch(), torch.Generator().manual_seed(0))
    assert logs["distill"] == 0.0 and torch.isfinite(loss)
    again, _ = objective(model, *_batch(), torch.Generator().manual_seed(0))
    assert torch.equal(loss, again)  # every draw comes from the generator


def test_init_and_freeze(teacher_ckpt):
    cfg = _student_cfg(teacher_ckpt, "distill.freeze_backbone=true")
    model = _student(cfg)
    from teachers import load_teacher
    _, teacher = load_teacher(teacher_ckpt, "cpu")
    assert not torch.equal(model.backbone.z_proj.weight, teacher.backbone.z_proj.weight)
    prepare_student(cfg, model, "cpu")
    mine, theirs = model.backbone.state_dict(), teacher.backbone.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())


def test_init_skips_mismatched_shapes(teacher_ckpt):
    from teachers import load_teacher
    _, teacher = load_teacher(teacher_ckpt, "cpu")
    model = _student(_student_cfg(teacher_ckpt, "model.width=16"))
    copied, skipped = init_student_from_teacher(model, teacher)
    assert skipped and len(copied) + len(skipped) == len(model.backbone.state_dict())


@pytest.mark.parametrize("override,match", [("model.patch_f=8", "model.patch_f"),
                                            ("model.pos_embed=rope", "model.pos_embed"),
                                            ("distill.layers=[5]", r"distill.layers\[0\]"),
                                            ("distill.loss=l1", "distill.loss")])
def test_bad_settings_are_user_errors(teacher_ckpt, override, match):
    with pytest.raises(UserError, match=match):  # at load (the rules) or at the teacher
        cfg = _student_cfg(teacher_ckpt, override)
        StudentObjective(cfg, _student(cfg), "cpu")
