"""energytta-export: a step folder becomes an inference file with the same EMA weights."""
from __future__ import annotations

from pathlib import Path

import torch

from energytta.checkpoint import load_inference, load_model, save_training_state
from energytta.cli import export_main
from energytta.config import load_config
from energytta.audio.codec import build_codec
from energytta.models.tta import TTAModel


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
    assert export_main([str(run), "--out", str(out), "sample.iterations=7",
                        "head.sample_max_t=3"]) == 0
    cfg, kind, model, _ = load_model(out)
    assert cfg.sample.iterations == 7 and kind == "teacher"
    # the head's sampling chain is rebuilt from the stored setting (tiny: 4 steps in 0..3)
    assert cfg.head.sample_max_t == 3 and model.head.gen_diffusion.timestep_map == [0, 1, 2, 3]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 ema.state_dict().values()))
    assert load_inference(out)[4]["text_dim"] == "32"


def test_export_refuses_non_sample_overrides(tmp_path, capsys):
    run, _ = _run_folder(tmp_path)
    out = tmp_path / "m.safetensors"
    assert export_main([str(run), "--out", str(out), "model.width=8"]) == 2
    assert "only sample.*" in capsys.readouterr().err
    assert export_main([str(run), "--out", str(out), "head.width=8"]) == 2
    assert "only sample.*" in capsys.readouterr().err
    # a sampling setting the head cannot use is refused before anything is written
    assert export_main([str(run), "--out", str(out), "head.sample_max_t=2"]) == 2
    assert "head.sampling_steps" in capsys.readouterr().err
    assert not (tmp_path / "m.safetensors").exists()


def test_export_half_stores_float16_and_loads_as_float32(tmp_path):
    run, ema = _run_folder(tmp_path)
    full, half = tmp_path / "full.safetensors", tmp_path / "half.safetensors"
    assert export_main([str(run), "--out", str(full)]) == 0
    assert export_main([str(run), "--out", str(half), "--half"]) == 0
    assert half.stat().st_size < 0.6 * full.stat().st_size
    _, _, state, codec_state, _ = load_inference(half)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    assert all(v.dtype != torch.float16 for v in codec_state.values())
    _, _, model, _ = load_model(half)
    for (name, a), b in zip(model.state_dict().items(), ema.state_dict().values()):
        assert a.dtype == b.dtype, name
        torch.testing.assert_close(a, b.half().to(b.dtype), rtol=0, atol=0)
