"""tools/export.py: a step folder becomes an inference file with the same EMA weights."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from energytta.checkpoint import load_inference, load_model, save_training_state
from energytta.config import load_config
from energytta.audio.codec import build_codec
from energytta.models.tta import TTAModel

ROOT = Path(__file__).resolve().parent.parent


def _tool():
    spec = importlib.util.spec_from_file_location("export_tool", ROOT / "tools" / "export.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["export_tool"] = module
    spec.loader.exec_module(module)
    return module


def _run_folder(tmp_path: Path) -> tuple[Path, TTAModel]:
    cfg = load_config("tiny")
    torch.manual_seed(0)
    model, ema = TTAModel(cfg, 32), TTAModel(cfg, 32)
    opt = torch.optim.AdamW(model.parameters())
    save_training_state(tmp_path / "run", 3, model=model, ema=ema, optimizer=opt,
                        codec=build_codec(cfg), cfg=cfg, state={}, text_dim=32)
    return tmp_path / "run", ema


def test_export_latest_step_with_sample_defaults(tmp_path):
    run, ema = _run_folder(tmp_path)
    out = tmp_path / "m.safetensors"
    assert _tool().main([str(run), "--out", str(out), "sample.iterations=7"]) == 0
    cfg, kind, model, _ = load_model(out)
    assert cfg.sample.iterations == 7 and kind == "teacher"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 ema.state_dict().values()))
    assert load_inference(out)[4]["text_dim"] == "32"


def test_export_refuses_non_sample_overrides(tmp_path, capsys):
    run, _ = _run_folder(tmp_path)
    assert _tool().main([str(run), "--out", str(tmp_path / "m.safetensors"),
                         "model.width=8"]) == 2
    assert "only sample.*" in capsys.readouterr().err
    assert not (tmp_path / "m.safetensors").exists()
