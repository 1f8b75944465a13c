"""Checkpoints read as untrusted files: crafted sizes, wrong dtypes, malformed metadata and
state.json, and a run folder read while its run prunes old steps."""
from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import energytta.checkpoint as ckpt
from energytta.audio.codec import build_codec
from energytta.config import load_config
from energytta.errors import UserError
from energytta.models.tta import TTAModel
from energytta.train.optim import build_optimizer

TEXT_DIM = 24


@pytest.fixture(scope="module")
def parts():
    cfg = load_config("tiny", ["head.kind=energy"])
    torch.manual_seed(0)
    return cfg, TTAModel(cfg, TEXT_DIM).eval(), build_codec(cfg)


@pytest.fixture
def good(parts, tmp_path):
    cfg, model, codec = parts
    return ckpt.save_inference(tmp_path / "good.safetensors", model, codec, cfg,
                               text_dim=TEXT_DIM)


def _crafted(src, dest, meta=None, config=None, tensors=None):
    """A copy of inference file `src` with metadata entries, config keys ({"model":
    {"width": ...}}) or tensors (a function of the dict) replaced."""
    with safe_open(str(src), framework="pt") as f:
        old_meta, old = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    cfg = json.loads(old_meta["config"])
    for section, values in (config or {}).items():
        cfg[section].update(values)
    new_meta = {**old_meta, "config": json.dumps(cfg), **(meta or {})}
    save_file(tensors(old) if tensors else old, str(dest), metadata=new_meta)
    return dest


def _one_line(fn, *needles):
    with pytest.raises(UserError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg
    return msg


@pytest.fixture
def no_real_model_from_unchecked_sizes(monkeypatch):
    """Fail the test if a real (not meta-device) model is built: a crafted file's sizes
    must be refused from its tensors before anything is allocated."""
    real_init = TTAModel.__init__

    def guarded(self, *args, **kwargs):
        assert torch.get_default_device().type == "meta", "built a real model unchecked"
        real_init(self, *args, **kwargs)
    monkeypatch.setattr(TTAModel, "__init__", guarded)


@pytest.mark.parametrize("meta, config, needle", [
    ({"text_dim": "4000000000"}, None, "text_dim=4000000000"),  # asked for terabytes
    (None, {"model": {"width": 2 ** 20}}, "model.width=1048576"),
    (None, {"model": {"mlp_ratio": 1e6}}, "do not fit"),  # caught by the meta build
])
def test_absurd_sizes_are_refused_from_the_tensors_before_building(
        meta, config, needle, good, tmp_path, no_real_model_from_unchecked_sizes):
    bad = _crafted(good, tmp_path / "bad.safetensors", meta=meta, config=config)
    _one_line(lambda: ckpt.load_model(bad), str(bad), needle)


@pytest.mark.parametrize("section, key", [("model", "encoder_depth"), ("model", "width"),
                                          ("head", "depth")])
def test_counts_no_file_of_its_size_holds_are_refused_before_any_build(
        section, key, good, tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("a model was built, even on the meta device")
    monkeypatch.setattr(TTAModel, "__init__", never)  # a meta build of 10**7 layers crawls
    bad = _crafted(good, tmp_path / "bad.safetensors", config={section: {key: 10 ** 7}})
    _one_line(lambda: ckpt.load_model(bad), f"{section}.{key}=10000000", "more weights")


def test_integer_weights_are_refused_not_cast(good, tmp_path):
    def to_int(tensors):
        return {k: v.to(torch.int32) if k.startswith("model.") else v
                for k, v in tensors.items()}
    bad = _crafted(good, tmp_path / "int.safetensors", tensors=to_int)
    _one_line(lambda: ckpt.load_model(bad), "torch.int32", "never casts")
    half = _crafted(good, tmp_path / "half.safetensors",  # float16 (`--half`) still loads
                    tensors=lambda t: {k: v.half() if k.startswith("model.") else v
                                       for k, v in t.items()})
    assert ckpt.load_model(half)[2].backbone.text_proj.weight.dtype == torch.float32


@pytest.mark.parametrize("meta, config, needle", [
    ({"text_dim": "abc"}, None, "text_dim='abc'"),
    ({"text_dim": "-5"}, None, "text_dim='-5'"),
    ({"text_dim": "2.5"}, None, "text_dim='2.5'"),
    (None, {"model": {"num_heads": 3}}, "model.num_heads"),
    # a diffusion-head key (the energy head's config has none)
    (None, {"head": {"kind": "diffusion", "sample_max_t": -50}}, "head.sample_max_t"),
])
def test_malformed_metadata_is_one_line(meta, config, needle, good, tmp_path):
    bad = _crafted(good, tmp_path / "bad.safetensors", meta=meta, config=config)
    _one_line(lambda: ckpt.load_model(bad), str(bad), needle)


def test_a_config_nested_100k_deep_is_one_line(good, tmp_path):
    bad = _crafted(good, tmp_path / "deep.safetensors",
                   meta={"config": '{"a":' * 100_000 + "1" + "}" * 100_000})
    _one_line(lambda: ckpt.load_model(bad), str(bad), "nested too deeply")


# ------------------------------------------------------------------ step folders
def _save_step(run_dir, step, parts, keep_last=0):
    cfg, model, codec = parts
    opt, sched = build_optimizer(model, cfg)
    state = {"scheduler": ckpt.encode_tree(sched.state_dict(), {}), "rng": ckpt.rng_state(),
             "data": {"epoch": 0, "batch": step}, "ema_updates": step, "elapsed": 1.0}
    return ckpt.save_training_state(run_dir, step, model=model, ema=model, optimizer=opt,
                                    codec=codec, cfg=cfg, text_dim=TEXT_DIM,
                                    keep_last=keep_last, state=state)


STATE_DAMAGE = {  # valid JSON of the wrong shape
    "a list": lambda doc: [doc],
    "no config": lambda doc: {k: v for k, v in doc.items() if k != "config"},
    "step abc": lambda doc: {**doc, "step": "abc"},
    "missing tensor": lambda doc: {**doc, "optimizer": {"state": {"__items__": [
        [0, {"exp_avg": {"__tensor__": "optim.no.such.key"}}]]}, "param_groups": []}},
    "bad rng": lambda doc: {**doc, "rng": {**doc["rng"], "torch": [1, 2, 3]}},
    "rng not a dict": lambda doc: {**doc, "rng": 7},
    "no rng": lambda doc: {k: v for k, v in doc.items() if k != "rng"},
    "text_dim abc": lambda doc: {**doc, "text_dim": "abc"},
    "deep": lambda doc: None,
}


def _damage(folder, how):
    path = folder / "state.json"
    doc = STATE_DAMAGE[how](json.loads(path.read_text()))
    path.write_text('{"a":' * 100_000 + "1" + "}" * 100_000 if how == "deep"
                    else json.dumps(doc))


@pytest.mark.parametrize("how", sorted(STATE_DAMAGE))
def test_a_wrong_shaped_state_json_is_skipped_for_an_older_step(how, parts, tmp_path):
    _save_step(tmp_path, 2, parts)
    _damage(_save_step(tmp_path, 4, parts), how)
    _one_line(lambda: ckpt.load_training_state(tmp_path / "step-0000004", ckpt.RESUME_KEYS),
              "step-0000004")
    if how == "no rng":  # all a model needs is there: only --resume needs the rng
        return
    _one_line(lambda: ckpt.load_model(tmp_path / "step-0000004"), "step-0000004")
    with pytest.warns(UserWarning, match="skipping damaged step-0000004"):
        folder, _ = ckpt.newest_readable_step(tmp_path)
    assert folder.name == "step-0000002"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ckpt.load_model(tmp_path)[1] == "student"  # --ckpt RUNFOLDER falls back


@pytest.mark.parametrize("how", ["bad rng", "no rng"])
def test_resume_skips_a_wrong_shaped_state_json(how, tiny_text_dir, corpus, tmp_path, capsys):
    from energytta.train.loop import train

    out = tmp_path / "run"
    cfg = [f"text.model={tiny_text_dir}", f"data.train={corpus / 'test.jsonl'}",
           f"train.out_dir={out}", "train.ckpt_every=1", "train.val_every=0",
           "train.sample_prompts=[]", "data.batch_size=2", "audio.crop_seconds=1.0"]
    train(load_config("tiny", [*cfg, "train.steps=2"]))
    _damage(out / "step-0000002", how)
    train(load_config("tiny", [*cfg, "train.steps=3"]), resume=True)
    assert "skipping damaged step-0000002" in capsys.readouterr().out
    assert [p.name for p in ckpt.list_checkpoints(out)] == [
        "step-0000001", "step-0000002", "step-0000003"]


def test_a_run_folder_read_while_its_run_prunes_takes_the_new_step(
        parts, tmp_path, monkeypatch):
    _save_step(tmp_path, 2, parts)
    real_read, pruned = ckpt._read_safetensors, []

    def read_racing_the_run(path, what):
        if path.name == "optim.safetensors" and path.parent.name == "step-0000002" \
                and not pruned:
            pruned.append(_save_step(tmp_path, 4, parts, keep_last=1))  # the run saves
            assert not path.parent.exists()  # ... and prunes the step being read
        return real_read(path, what)
    monkeypatch.setattr(ckpt, "_read_safetensors", read_racing_the_run)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a vanished step is no damage: no warning
        folder, loaded = ckpt.newest_readable_step(tmp_path)
    assert pruned and folder.name == "step-0000004" and loaded["state"]["step"] == 4
    shutil.rmtree(tmp_path / "step-0000004")
    pruned.clear()
    _save_step(tmp_path, 2, parts)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ckpt.load_model(tmp_path)[1] == "student"  # --ckpt / export RUNFOLDER
