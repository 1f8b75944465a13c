"""Every out-of-range config value is one line naming its key, at load."""
import subprocess
from pathlib import Path

import pytest

from energytta.checkpoint import load_inference
from energytta.config import HEAD_SECTIONS, SECTION_CLASSES, ConfigError, load_config
from energytta.config_rules import RULES, validate

ASSETS = Path(__file__).resolve().parents[1] / "energytta" / "assets"

BAD = [
    ("data.batch_size=-1", "data.batch_size"),  # was an endless loop of empty epochs
    ("data.batch_size=0", "data.batch_size"),  # was a ZeroDivisionError
    ("train.lr=nan", "train.lr"), ("train.lr=-1", "train.lr"), ("train.lr=inf", "train.lr"),
    ("model.num_heads=3", "model.width"), ("data.num_workers=-1", "data.num_workers"),
    ("train.steps=0", "train.steps"), ("train.steps=-5", "train.steps"),
    ("train.out_dir=", "train.out_dir"), ("model.dropout=1.5", "model.dropout"),
    ("sample.cfg=inf", "sample.cfg"), ("sample.temperature=inf", "sample.temperature"),
    ("sample.seed=-1", "sample.seed"), (f"sample.seed={2 ** 63}", "sample.seed"),
    ("head.num_samples=1", "head.num_samples"),
    ("train.betas=[0.9,1.5]", "train.betas"),
    # an empty or inverted mel band trained on a constant mel and exited 0
    ("audio.f_min=9000", "audio.f_min"), ("audio.f_min=8000", "audio.f_min"),
    ("audio.f_max=12000", "audio.f_max"), ("audio.win_length=2048", "audio.win_length"),
    ("head.sample_max_t=-50", "head.sample_max_t"),  # was accepted: only -1 means T-1
    ("head.sample_max_t=1000", "head.sample_max_t"),
    ("head.num_timesteps=1000000000", "head.num_timesteps"),  # tables of 10^9 numbers
    # choices and ranges that parts used to check on their own, after loading
    ("head.noise_type=laplace", "head.noise_type"), ("distill.loss=l1", "distill.loss"),
    ("sample.cfg_schedule=square", "sample.cfg_schedule"),
    ("model.mask_ratio_min=0", "model.mask_ratio_min"), ("head.alpha=2", "head.alpha"),
    ("vsd.tv_norm=l3", "vsd.tv_norm"), ("data.kind=video", "data.kind"),
    ("model.pos_embed=sinusoid", "model.pos_embed"), ("head.prediction=score", "head.prediction"),
    ("head.noise_schedule=sigmoid", "head.noise_schedule"),
    ("model.guidance_head=conv", "model.guidance_head"),
]


# the keys of an objective's section or of one head kind exist only with that objective / kind
CONTEXT = {"distill": ["head.kind=energy"], "vsd": ["train.objective=captiononly"],
           **{f"head.{k}": ["head.kind=energy"] for k in ("num_samples", "noise_type", "alpha")}}


@pytest.mark.parametrize("override,key", BAD)
def test_bad_value_names_its_key(override, key):
    context = CONTEXT.get(key, CONTEXT.get(key.split(".")[0], []))
    with pytest.raises(ConfigError) as err:
        load_config("tiny", [*context, override])
    msg = str(err.value)
    assert key in msg and "\n" not in msg


def test_every_packaged_config_and_shipped_checkpoint_is_valid():
    for path in sorted((Path(__file__).resolve().parents[1] / "energytta" / "configs")
                       .glob("*.yaml")):
        load_config(path.stem)
    load_config("tiny", ["head.sample_max_t=-1"]), load_config("tiny", ["head.sample_max_t=999"])
    for asset in ("student", "teacher", "guided", "captiononly"):
        validate(load_inference(ASSETS / f"{asset}.safetensors")[0])


def test_rules_name_real_keys():
    cfg = load_config()
    for key in RULES:  # a typo in the table would never fire
        section, name = key.split(".")
        # an objective's section or a head kind's keys: a config that has them
        obj = (SECTION_CLASSES[section]() if section in SECTION_CLASSES else
               next((c() for c in HEAD_SECTIONS.values() if hasattr(c(), name)), cfg.head)
               if section == "head" else getattr(cfg, section))
        getattr(obj, name)


def test_cli_exits_with_one_line_instead_of_hanging(tmp_path):
    out = subprocess.run(["energytta-train", "--config", "tiny",
                          "data.batch_size=-1", f"train.out_dir={tmp_path / 'r'}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "data.batch_size" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "r").exists()


def test_a_key_given_twice_in_yaml_is_refused_naming_it(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("base: tiny\ntrain:\n  lr: 1.0e-3\n  steps: 3\n  lr: 1.0\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'lr' at line 5") as err:
        load_config(str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="duplicate key 'width'"):  # an override's YAML
        load_config("tiny", ["model={width: 64, width: 32}"])
    assert load_config("tiny", ["model={width: 64}"]).model.width == 64


@pytest.mark.parametrize("text", ["train: " + "[" * 100_000 + "]" * 100_000,
                                  '{"train":' * 100_000 + "1" + "}" * 100_000])
def test_a_config_nested_100k_deep_is_one_line(text, tmp_path, capsys):
    from energytta.cli import train_main

    path = tmp_path / "deep.yaml"
    path.write_text(text)
    assert train_main(["--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nested too deeply" in err[0], err[-3:]
