"""Every out-of-range config value is one line naming its key, at load."""
import subprocess
from pathlib import Path

import pytest

from energytta.checkpoint import load_inference
from energytta.config import ConfigError, load_config
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
    # choices and ranges that parts used to check on their own, after loading
    ("head.noise_type=laplace", "head.noise_type"), ("distill.loss=l1", "distill.loss"),
    ("sample.cfg_schedule=square", "sample.cfg_schedule"),
    ("model.mask_ratio_min=0", "model.mask_ratio_min"), ("head.alpha=2", "head.alpha"),
    ("vsd.tv_norm=l3", "vsd.tv_norm"), ("data.kind=video", "data.kind"),
    ("model.pos_embed=sinusoid", "model.pos_embed"), ("head.prediction=score", "head.prediction"),
    ("head.noise_schedule=sigmoid", "head.noise_schedule"),
    ("model.guidance_head=conv", "model.guidance_head"),
]


@pytest.mark.parametrize("override,key", BAD)
def test_bad_value_names_its_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config("tiny", [override])
    msg = str(err.value)
    assert key in msg and "\n" not in msg


def test_every_packaged_config_and_shipped_checkpoint_is_valid():
    for path in sorted((Path(__file__).resolve().parents[1] / "energytta" / "configs")
                       .glob("*.yaml")):
        load_config(path.stem)
    for asset in ("student", "teacher", "guided", "captiononly"):
        validate(load_inference(ASSETS / f"{asset}.safetensors")[0])


def test_rules_name_real_keys():
    cfg = load_config()
    for key in RULES:  # a typo in the table would never fire
        obj = cfg
        for part in key.split("."):
            obj = getattr(obj, part)


def test_cli_exits_with_one_line_instead_of_hanging(tmp_path):
    out = subprocess.run(["energytta-train", "--config", "tiny",
                          "data.batch_size=-1", f"train.out_dir={tmp_path / 'r'}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "data.batch_size" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "r").exists()
