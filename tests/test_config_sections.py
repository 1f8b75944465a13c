"""Config sections per head kind and per objective, and the migration of configs saved in
the old flat layout (every head kind's keys, every objective's section)."""
from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from safetensors import safe_open

from energytta.config import (OBJECTIVE_SECTIONS, SECTION_CLASSES, DiffusionHeadConfig,
                              EnergyHeadConfig, MissingSectionError, from_saved_dict,
                              head_section_class, load_config)
from energytta.errors import ConfigError, UserError

ASSETS = Path(__file__).resolve().parents[1] / "energytta" / "assets"
# a run folder's config.yaml as the training loop wrote it before sections (a long teacher
# run resumed across that change)
OLD_RUN_CONFIG = Path(__file__).resolve().parent / "fixtures" / "teacher_long_config.yaml"


def flat(d: dict) -> dict:
    """`d` (today's layout) as configs were saved before sections: every head kind's keys
    at their defaults and every objective section."""
    d = copy.deepcopy(d)
    d["head"] = {**asdict(DiffusionHeadConfig()), **asdict(EnergyHeadConfig()), **d["head"]}
    for name, cls in SECTION_CLASSES.items():
        d.setdefault(name, asdict(cls()))
    return d


# ------------------------------------------------------------------ head sections
def test_a_key_of_another_head_kind_is_one_line():
    with pytest.raises(ConfigError) as err:
        load_config("tiny", ["head.noise_dim=8"])
    assert str(err.value) == ("config key 'head.noise_dim' belongs to head.kind=energy; this "
                              "config's head.kind is diffusion")
    with pytest.raises(ConfigError, match=r"'head.batch_mul' belongs to head.kind=diffusion"):
        load_config("tiny", ["head.kind=energy", "head.batch_mul=2"])
    with pytest.raises(ConfigError, match="unknown config key 'head.nosie_dim'"):
        load_config("tiny", ["head.kind=energy", "head.nosie_dim=8"])


def test_head_kind_override_switches_the_section_whatever_the_order():
    for overrides in (["head.kind=energy", "head.noise_dim=8"],
                      ["head.noise_dim=8", "head.kind=energy"]):
        cfg = load_config("tiny", ["head.lr_mult=2", *overrides])
        assert type(cfg.head) is EnergyHeadConfig and cfg.head.noise_dim == 8
        # the common keys keep tiny's values; the diffusion keys are gone
        assert (cfg.head.depth, cfg.head.width, cfg.head.lr_mult) == (1, 32, 2.0)
        assert "sampling_steps" not in cfg.to_dict()["head"]
    back = load_config("tiny", ["head.kind=onestep"])
    assert type(back.head) is DiffusionHeadConfig and back.head.sampling_steps == 4


def test_head_kind_in_a_child_yaml_switches_the_section(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("base: tiny\nhead:\n  noise_dim: 16\n  kind: energy\n")
    cfg = load_config(str(child))
    assert type(cfg.head) is EnergyHeadConfig and (cfg.head.noise_dim, cfg.head.width) == (16, 32)
    assert cfg.objective() == "student" and cfg.distill.weight == 1000.0


# ------------------------------------------------------------------ objective sections
def test_a_section_the_objective_does_not_read_is_one_line():
    with pytest.raises(ConfigError) as err:
        load_config("tiny", ["vsd.real_cfg=4"])
    msg = str(err.value)
    assert "'vsd'" in msg and "'teacher'" in msg and "captiononly" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="section 'distill' is set but the objective "
                                          "'guidance'"):
        load_config("tiny", ["head.kind=energy", "train.objective=guidance", "distill.weight=0"])


def test_sections_exist_where_the_objective_reads_them():
    for objective, extra in (("teacher", []), ("student", ["head.kind=energy"]),
                             ("captiononly", ["head.kind=onestep"]), ("guidance", []),
                             ("classifier", []), ("vae", [])):
        cfg = load_config("tiny", [f"train.objective={objective}", *extra])
        present = {n for n in SECTION_CLASSES if cfg.section(n) is not None}
        assert present == set(OBJECTIVE_SECTIONS[objective]), objective
        assert set(cfg.to_dict()) & set(SECTION_CLASSES) == present
    cfg = load_config("tiny", ["train.objective=captiononly", "vsd.real_cfg=4"])
    assert cfg.vsd.real_cfg == 4.0 and cfg.teacher.ckpt == ""  # the rest: defaults


def test_a_missing_section_says_so_instead_of_none_has_no_attribute():
    cfg = load_config("tiny")
    with pytest.raises(MissingSectionError, match="section 'vsd' is not in this config: its "
                                                  "objective 'teacher' does not read it"):
        cfg.vsd.real_cfg
    assert getattr(cfg.distill, "weight", None) is None  # an AttributeError underneath
    assert cfg.section("distill") is None and not cfg.distill and cfg.distill == None  # noqa: E711
    import copy  # a copy's stand-in names the copy's objective
    other = copy.deepcopy(cfg)
    other.train.objective = "guidance"
    with pytest.raises(MissingSectionError, match="objective 'guidance'"):
        other.vsd.real_cfg


def test_a_child_removes_a_section_of_its_parent_with_null(tmp_path):
    parent = tmp_path / "parent.yaml"
    parent.write_text("base: tiny\nhead:\n  kind: energy\ndistill:\n  weight: 5.0\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: parent.yaml\ntrain:\n  objective: guidance\ndistill: null\n")
    with pytest.raises(ConfigError, match="'distill' is set"):
        load_config(str(parent), ["train.objective=guidance"])
    cfg = load_config(str(child))
    assert cfg.section("distill") is None and cfg.guide.max_scale == 5.0


def test_a_plugin_objective_declares_the_sections_it_reads(monkeypatch):
    import energytta.config as config
    import energytta.train.objectives as objectives

    monkeypatch.setattr(objectives, "OBJECTIVES", dict(objectives.OBJECTIVES))
    monkeypatch.setattr(config, "OBJECTIVE_SECTIONS", dict(config.OBJECTIVE_SECTIONS))
    monkeypatch.setattr(objectives, "OBJECTIVE_SECTIONS", config.OBJECTIVE_SECTIONS)
    # undeclared: its config keeps the sections it sets
    assert load_config("tiny", ["train.objective=mine", "vsd.t_min=5"]).vsd.t_min == 5
    objectives.register_objective("mine", "x:Y", sections=("teacher",))
    cfg = load_config("tiny", ["train.objective=mine"])
    assert cfg.teacher.ckpt == "" and cfg.section("vsd") is None
    with pytest.raises(ConfigError, match="'vsd' is set but the objective 'mine'"):
        load_config("tiny", ["train.objective=mine", "vsd.t_min=5"])


# ------------------------------------------------------------------ migration
def _stored(asset: str) -> dict:
    with safe_open(str(ASSETS / f"{asset}.safetensors"), framework="pt") as f:
        return json.loads(f.metadata()["config"])


@pytest.mark.parametrize("asset", ["teacher", "student", "guided", "captiononly"])
def test_each_shipped_config_migrates_keeping_every_value_it_reads(asset):
    stored = _stored(asset)
    cfg = from_saved_dict(stored)
    kind = stored["head"]["kind"]
    assert type(cfg.head) is head_section_class(kind)
    assert cfg.to_dict()["head"] == {k: stored["head"][k] for k in asdict(cfg.head)}
    reads = OBJECTIVE_SECTIONS[cfg.objective()]
    for name in SECTION_CLASSES:
        if name in reads:
            assert asdict(getattr(cfg, name)) == stored[name]
        else:
            assert cfg.section(name) is None
    for name in ("audio", "codec", "text", "model", "data", "sample"):
        assert asdict(getattr(cfg, name)).items() >= stored[name].items()
    assert from_saved_dict(cfg.to_dict()) == cfg  # today's layout loads as it is saved


@pytest.mark.parametrize("asset", ["teacher", "student", "guided", "captiononly"])
def test_each_shipped_head_samples_as_its_flat_config_did(asset):
    """The head built from the migrated section draws the same tokens as one built from
    the stored flat section (every kind's keys, as the file was trained and shipped)."""
    from energytta.checkpoint import load_model
    from energytta.models.heads import build_head

    _, _, model, _ = load_model(ASSETS / f"{asset}.safetensors")
    flat_head = SimpleNamespace(**_stored(asset)["head"])
    D, d = model.backbone.out_dim, model.token_dim
    old = build_head(flat_head, d, D)
    old.load_state_dict(model.head.state_dict())
    z = torch.randn(6, D, generator=torch.Generator().manual_seed(0))
    draws = [head.sample(z, 1.0, torch.Generator().manual_seed(1))
             for head in (old.eval(), model.head)]
    assert torch.equal(*draws)


def test_an_old_run_config_loads_migrated_and_names_no_changed_key():
    """The run's config.yaml (flat layout) and today's packaged recipe agree on every key
    `--resume` compares, so the run resumes."""
    saved = yaml.safe_load(OLD_RUN_CONFIG.read_text())
    assert {"vsd", "guide", "distill"} <= set(saved) and "noise_dim" in saved["head"]
    old = load_config(str(OLD_RUN_CONFIG))
    assert from_saved_dict(saved) == old and old.section("vsd") is None
    assert "noise_dim" not in old.to_dict()["head"] and old.head.prediction == "v"
    now = load_config("teacher_long")
    for sec in ("audio", "codec", "text", "model", "head"):
        assert asdict(getattr(now, sec)) == asdict(getattr(old, sec)), sec


@pytest.mark.slow
def test_a_run_folder_saved_in_the_flat_layout_resumes(tiny_text_dir, tmp_path):
    import energytta.train.loop as loop

    corpus = tmp_path / "train.jsonl"
    sf.write(tmp_path / "a.wav", (0.3 * np.sin(np.arange(19200) / 9)).astype(np.float32), 16000)
    corpus.write_text(json.dumps({"audio": "a.wav", "caption": "a beep"}) + "\n")
    out = tmp_path / "run"
    base = [f"text.model={tiny_text_dir}", f"data.train={corpus}", f"data.val={corpus}",
            f"train.out_dir={out}", "train.sample_prompts=[]", "data.batch_size=1",
            "train.ckpt_every=1"]
    loop.train(load_config("tiny", [*base, "train.steps=2"]))
    # rewrite the run as the loop saved it before sections; a value set in a section the
    # objective never read (a teacher's distill.weight) is dropped with the rest
    for state in out.glob("step-*/state.json"):
        doc = json.loads(state.read_text())
        doc["config"] = flat(doc["config"])
        doc["config"]["distill"]["weight"] = 5.0
        state.write_text(json.dumps(doc))
    (out / "config.yaml").write_text(yaml.safe_dump(flat(yaml.safe_load(
        (out / "config.yaml").read_text())), sort_keys=False))
    with pytest.raises(UserError, match=r"^--resume \S+: model.width=64 \(the run has 32\) "
                                        r"changed since the run started; drop"):
        loop.train(load_config("tiny", [*base, "train.steps=3", "model.width=64"]),
                   resume=True)
    loop.train(load_config(str(out / "config.yaml"), [*base, "train.steps=3"]), resume=True)
    assert sorted(p.name for p in out.glob("step-*"))[-1] == "step-0000003"
    assert "vsd" not in yaml.safe_load((out / "config.yaml").read_text())
