"""Checkpoints refer to a frozen pretrained codec (folder + hash) instead of copying it:
step folders and exported files of an AudioLDM-codec run hold no VAE / HiFi-GAN tensors,
load back identically, and a changed or missing folder is one line; checkpoints that hold
a copy (written before) keep loading."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from energytta import checkpoint as ckpt
from energytta.audio.codec import build_codec
from energytta.config import load_config
from energytta.errors import UserError
from energytta.models.tta import TTAModel
from energytta.train.optim import build_optimizer

TEXT_DIM = 24


@pytest.fixture
def folder(audioldm_dir, tmp_path) -> Path:
    """A private copy of the random-weight AudioLDM pipeline folder (tests edit it)."""
    return Path(shutil.copytree(audioldm_dir, tmp_path / "audioldm"))


def _parts(folder: Path, *extra: str):
    cfg = load_config("tiny", ["codec.name=audioldm", f"codec.path={folder}",
                               "codec.vocoder=hifigan", "model.patch_t=5", *extra])
    torch.manual_seed(0)
    return cfg, TTAModel(cfg, TEXT_DIM).eval(), build_codec(cfg).eval()


def _save_step(run: Path, cfg, model, codec) -> Path:
    opt, sched = build_optimizer(model, cfg)
    return ckpt.save_training_state(run, 3, model=model, ema=model, optimizer=opt, codec=codec,
                                    cfg=cfg, text_dim=TEXT_DIM,
                                    state={"scheduler": ckpt.encode_tree(sched.state_dict(), {})})


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_step_folder_refers_to_the_frozen_codec_and_loads_it_back(folder, tmp_path):
    cfg, model, codec = _parts(folder)
    step = _save_step(tmp_path / "run", cfg, model, codec)
    stored = load_file(str(step / "codec.safetensors"))
    assert not any(k.startswith(("vae.", "vocoder.")) for k in stored)  # nothing copied
    refs = json.loads((step / "state.json").read_text())["codec_ref"]
    assert set(refs) == {"vae.", "vocoder."}
    assert refs["vae."]["path"] == str((folder / "vae").resolve())
    assert len(refs["vae."]["sha256"]) == 64
    _, _, model2, codec2 = ckpt.load_model(step)
    assert _same(codec, codec2) and _same(model, model2)


def test_exported_file_refers_too_and_loads_back(folder, tmp_path):
    cfg, model, codec = _parts(folder)
    path = ckpt.save_inference(tmp_path / "m.safetensors", model, codec, cfg, text_dim=TEXT_DIM)
    with safe_open(str(path), "pt") as f:
        assert not any(k.startswith(("codec.vae.", "codec.vocoder.")) for k in f.keys())
        assert set(json.loads(f.metadata()["codec_ref"])) == {"vae.", "vocoder."}
    _, _, _, codec2 = ckpt.load_model(path)
    assert _same(codec, codec2)


def _change(folder: Path) -> None:
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    key = sorted(state)[0]
    state[key] = state[key] + 1.0
    save_file(state, str(weights))


def test_a_changed_codec_folder_is_one_line(folder, tmp_path):
    cfg, model, codec = _parts(folder)
    step = _save_step(tmp_path / "run", cfg, model, codec)
    path = ckpt.save_inference(tmp_path / "m.safetensors", model, codec, cfg, text_dim=TEXT_DIM)
    _change(folder)
    for src in (step, path):
        with pytest.raises(UserError) as e:
            ckpt.load_model(src)
        msg = str(e.value)
        assert f"codec folder {folder / 'vae'} changed since this checkpoint" in msg
        assert "point codec.path at the original" in msg and "\n" not in msg


def test_a_missing_codec_folder_is_one_line(folder, tmp_path):
    cfg, model, codec = _parts(folder)
    step = _save_step(tmp_path / "run", cfg, model, codec)
    shutil.rmtree(folder)
    with pytest.raises(UserError) as e:
        ckpt.load_model(step)
    assert "which is missing" in str(e.value) and str(folder.resolve()) in str(e.value)
    assert "\n" not in str(e.value)


def test_old_checkpoints_with_a_copied_codec_keep_loading(folder, tmp_path):
    """Written before references: the whole codec inside, no codec_ref anywhere."""
    cfg, model, codec = _parts(folder)
    step = _save_step(tmp_path / "run", cfg, model, codec)
    save_file({k: v.contiguous() for k, v in codec.state_dict().items()},
              str(step / "codec.safetensors"))
    doc = json.loads((step / "state.json").read_text())
    del doc["codec_ref"]
    (step / "state.json").write_text(json.dumps(doc))
    old_file = tmp_path / "old.safetensors"
    tensors = {**{f"model.{k}": v for k, v in model.state_dict().items()},
               **{f"codec.{k}": v.contiguous() for k, v in codec.state_dict().items()}}
    save_file(tensors, str(old_file), metadata={
        "format": "energytta", "version": "0", "kind": "teacher", "config": cfg.to_json(),
        "text_dim": str(TEXT_DIM)})
    for src in (step, old_file):
        _, _, _, codec2 = ckpt.load_model(src)
        assert _same(codec, codec2)


def test_codecs_without_pretrained_parts_store_everything(tmp_path):
    """The mel codec's statistics (and every shipped model) are stored, as before."""
    cfg = load_config("tiny")
    codec = build_codec(cfg)
    codec.fit_stats(torch.randn(2, 16000, generator=torch.Generator().manual_seed(0)))
    model = TTAModel(cfg, TEXT_DIM)
    step = _save_step(tmp_path / "run", cfg, model, codec)
    assert "codec_ref" not in json.loads((step / "state.json").read_text())
    assert load_file(str(step / "codec.safetensors")).keys() == codec.state_dict().keys()
    for name, path in ckpt.SHIPPED.items():
        with safe_open(str(path), "pt") as f:
            assert "codec_ref" not in f.metadata(), name


@pytest.mark.slow
def test_a_run_on_the_audioldm_codec_resumes_from_a_referring_step(folder, tmp_path):
    import numpy as np
    import soundfile as sf

    from energytta.train.loop import train

    t = np.arange(16000) / 16000
    sf.write(tmp_path / "a.wav", 0.3 * np.sin(2 * np.pi * 440 * t), 16000)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio": "a.wav", "caption": "a tone"}) + "\n")
    run = tmp_path / "run"
    over = [f"data.train={manifest}", f"train.out_dir={run}", "data.batch_size=1",
            "audio.crop_seconds=1.0", "train.sample_prompts=[]", "train.val_every=0"]
    cfg, _, _ = _parts(folder, *over, "train.steps=1")
    train(cfg)
    assert "codec_ref" in json.loads((run / "step-0000001" / "state.json").read_text())
    train(_parts(folder, *over, "train.steps=2")[0], resume=True)
    assert (run / "step-0000002" / "state.json").is_file()
    _change(folder)
    with pytest.raises(UserError, match="changed since this checkpoint"):
        train(_parts(folder, *over, "train.steps=3")[0], resume=True)
