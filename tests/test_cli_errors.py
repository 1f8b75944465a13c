"""Bad devices, export destinations and argument orders are one line."""
import pytest
import torch

from energytta.cli import export_main, sample_main
from energytta.errors import UserError
from energytta.checkpoint import SHIPPED
from energytta.train.cli import build_parser
from energytta.utils import pick_device


@pytest.mark.parametrize("name", ["foo", "cuda", "cuda:3", "tpu"])
def test_unusable_devices_are_user_errors(name):
    if name.startswith("cuda") and torch.cuda.is_available() and name == "cuda":
        pytest.skip("this machine has CUDA")
    with pytest.raises(UserError, match="device"):
        pick_device(name)
    assert pick_device("cpu").type == "cpu" and pick_device("auto").type in ("cpu", "cuda")


def test_export_refuses_a_folder_or_a_file_in_the_way(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    for out, match in ((tmp_path, "name the destination file"),
                       (tmp_path / "f" / "x.safetensors", "a file is in the way")):
        assert export_main([str(SHIPPED["student"]), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and match in err[0]


def test_overrides_may_come_on_both_sides_of_resume():
    args = build_parser().parse_intermixed_args(
        ["--config", "tiny", "train.steps=3", "--resume", "train.out_dir=x"])
    assert args.resume and args.overrides == ["train.steps=3", "train.out_dir=x"]


def test_a_failed_sampling_run_leaves_no_empty_folder(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a beep\n")
    out = tmp_path / "new"
    assert sample_main(["--prompts", str(prompts), "--out-dir", str(out), "--device", "foo"]) == 2
    assert "unknown device" in capsys.readouterr().err and not out.exists()


def test_a_local_file_named_like_a_shipped_model_does_not_shadow_it(tmp_path, monkeypatch):
    from energytta.checkpoint import SHIPPED, resolve_checkpoint

    monkeypatch.chdir(tmp_path)
    (tmp_path / "student").write_text("not a model")
    assert resolve_checkpoint("student") == SHIPPED["student"]
    assert resolve_checkpoint("./student").resolve() == (tmp_path / "student").resolve()
