"""Several processes: the global sample stream across a resume under another process count,
DDP's find_unused_parameters only where an objective needs it, the shipped accelerate configs
and the documented launch commands (run as written with 2 CPU processes), FSDP checkpoints
(gathered on save, sharded again on resume, bit for bit), one run folder for all processes."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from safetensors.torch import load_file

import energytta.train.loop as loop
from energytta.config import CONFIG_DIR, load_config
from energytta.train.cli import EPILOG, build_parser
from energytta.errors import UserError
from energytta.train.distributed import check_fsdp, same_checkpoint
from energytta.train.seeds import seed_step
from energytta.train.stream import BatchStream, Position, resume_position

REPO = Path(__file__).resolve().parent.parent


def _stream(data, world: int, rank: int, batch: int, pos: Position) -> BatchStream:
    return BatchStream(data, lambda b: b, batch, seed=5, rank=rank, world=world,
                       num_workers=0, pos=pos)


def _steps(data, world: int, batch: int, pos: Position, steps: int) -> list[list[int]]:
    """The samples each global step reads (all ranks together), for `steps` steps."""
    iters = [iter(_stream(data, world, r, batch, Position(**vars(pos)))) for r in range(world)]
    return [sum((next(it) for it in iters), []) for _ in range(steps)]


@pytest.mark.parametrize("before,after", [((2, 3), (3, 2)), ((2, 3), (1, 3)), ((1, 4), (2, 2))])
def test_resume_under_another_process_count_continues_the_global_stream(before, after):
    data = list(range(40))
    (w0, b0), (w1, b1) = before, after
    perm = _stream(data, 1, 0, 1, Position()).epoch_batches(0)  # the epoch's order
    perm = [i for batch in perm for i in batch]
    done = _steps(data, w0, b0, Position(), 3)  # 3 steps, then the run stops
    saved = Position(0, 3)  # what state.json holds for that run
    pos = resume_position(saved, w0, b0, w1, b1)
    rest = _steps(data, w1, b1, pos, (40 - 3 * w0 * b0) // (w1 * b1))
    read = [sorted(step, key=perm.index) for step in done + rest]
    flat = [i for step in read for i in step]
    assert len(set(flat)) == len(flat)  # nothing read twice in the epoch
    assert flat == perm[:len(flat)]  # ... nothing skipped: the same global order
    assert len(flat) > 40 - w1 * b1  # only the tail that fills no global batch is left
    nxt = iter(_stream(data, w1, 0, b1, pos))
    for _ in range(len(rest) + 1):  # and the next epoch starts at its own beginning
        batch = next(nxt)
    assert batch == _stream(data, w1, 0, b1, Position()).epoch_batches(1)[0]
    assert resume_position(saved, w0, b0, w0, b0) is saved  # same count: as saved


def test_a_resumed_run_reads_the_saved_process_count(tiny_text_dir, corpus, tmp_path):
    """A run of 2 processes (its state.json says so) resumed by one process goes on at
    the sample where the two stopped, not at the one process's own batch count."""
    out = tmp_path / "run"
    over = [f"text.model={tiny_text_dir}", f"data.train={corpus / 'test.jsonl'}",
            f"train.out_dir={out}", "data.batch_size=2", "train.sample_prompts=[]"]
    loop.train(load_config("tiny", [*over, "train.steps=2"]))
    state_file = out / "step-0000002" / "state.json"
    state = json.loads(state_file.read_text())
    assert state["world_size"] == 1 and state["data"] == {"epoch": 0, "batch": 2, "start": 0}
    state["world_size"] = 2  # as written by `accelerate launch --num_processes 2`
    state_file.write_text(json.dumps(state))
    trainer = loop.Trainer(load_config("tiny", [*over, "train.steps=4"]), resume=True)
    assert trainer.stream.pos == Position(0, 0, 2 * 2 * 2)  # 2 steps × 2 processes × 2
    whole = [i for b in trainer.stream.epoch_batches(0) for i in b]
    assert next(trainer.batches)[0] == whole[8:10]


def _unused(cfg) -> list[str]:
    """Trainable parameters one training step leaves without a gradient."""
    trainer = loop.Trainer(cfg, resume=False)
    loss, _ = trainer.loss_module(seed_step(trainer.device, 0, 0, 0, 0), **trainer._next_inputs())
    loss.backward()
    return [n for n, p in trainer.loss_module.named_parameters()
            if p.requires_grad and p.grad is None]


@pytest.mark.slow
def test_find_unused_parameters_is_on_only_where_a_parameter_goes_unused(
        tiny_text_dir, corpus, tiny_ckpts, tmp_path):
    base = [f"text.model={tiny_text_dir}", f"data.train={corpus / 'test.jsonl'}",
            "data.batch_size=2", "model.text_dropout=0.0"]  # no caption dropped at all
    teacher = load_config("tiny", [*base, f"train.out_dir={tmp_path / 't'}"])
    student = load_config("tiny", [*base, f"train.out_dir={tmp_path / 's'}", "head.kind=energy",
                                   f"teacher.ckpt={tiny_ckpts['teacher']}"])
    vsd = load_config("tiny", [*base, f"train.out_dir={tmp_path / 'c'}", "data.kind=captions",
                               "train.objective=captiononly", "head.kind=onestep",
                               "model.noise_inputs=true", f"teacher.ckpt={tiny_ckpts['teacher']}"])
    for cfg in (teacher, student):
        assert not loop.find_unused_parameters(cfg) and _unused(cfg) == []
    assert loop.find_unused_parameters(vsd) and _unused(vsd)  # its null text gets no gradient
    teacher.train.find_unused_parameters = True  # the key turns it on for any objective
    assert loop.find_unused_parameters(teacher)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _commands(text: str) -> list[list[str]]:
    """The `accelerate launch` commands of `text` (continuations joined), as argument lists."""
    lines = text.replace("\\\n", " ").splitlines()
    return [shlex.split(ln, comments=True) for ln in lines
            if ln.strip().startswith("accelerate launch")]


def _launches(page: str) -> list[list[str]]:
    """The `accelerate launch` commands of a docs page's bash blocks."""
    text = (REPO / "docs" / page).read_text(encoding="utf-8")
    return _commands("\n".join(re.findall(r"```bash\n(.*?)```", text, flags=re.S)))


def _config_file(cmd: list[str]) -> Path | None:
    return (REPO / cmd[cmd.index("--config_file") + 1]).resolve() if "--config_file" in cmd \
        else None


ACCELERATE = CONFIG_DIR / "accelerate"
DOCUMENTED = [*_launches("training.md"), *_launches("real-data.md"), *_launches("cli.md"),
              *_commands(EPILOG)]  # and `energytta-train --help`


def test_the_shipped_accelerate_configs_read_with_accelerates_own_loader():
    configs = {p.stem: load_config_from_file(str(p)) for p in sorted(ACCELERATE.glob("*.yaml"))}
    assert set(configs) == {"cpu", "fsdp", "fsdp_cpu", "multi_gpu", "multi_node"}
    kinds = {name: c.distributed_type.value for name, c in configs.items()}
    assert kinds == {"cpu": "MULTI_GPU", "fsdp": "FSDP", "fsdp_cpu": "FSDP",
                     "multi_gpu": "MULTI_GPU", "multi_node": "MULTI_GPU"}
    for name in ("cpu", "fsdp_cpu"):  # gloo, two processes: what the tests below launch
        assert configs[name].use_cpu and configs[name].num_processes == 2
    node = configs["multi_node"]  # the placeholders each machine sets
    assert node.num_machines > 1 and node.machine_rank == 0 and node.main_process_ip
    from energytta.models import blocks
    for name in ("fsdp", "fsdp_cpu"):
        fsdp = configs[name].fsdp_config
        assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
        assert isinstance(getattr(blocks, fsdp["fsdp_transformer_layer_cls_to_wrap"]), type)
    for c in configs.values():  # the run's precision is train.mixed_precision's
        assert c.mixed_precision == "no"


def test_every_documented_launch_names_a_shipped_config_and_parses():
    assert len(DOCUMENTED) >= 9
    named = {_config_file(cmd) for cmd in DOCUMENTED} - {None}
    assert named == set(ACCELERATE.glob("*.yaml"))  # every shipped file is documented
    for cmd in DOCUMENTED:
        assert cmd[:2] == ["accelerate", "launch"] and "-m" in cmd, cmd
        if _config_file(cmd) is None:  # flags instead of a file: several processes need this
            assert "--multi_gpu" in cmd, cmd
        args = cmd[cmd.index("-m") + 2:]
        assert cmd[cmd.index("-m") + 1] == "energytta.train.cli"
        overrides = [a for a in build_parser().parse_intermixed_args(args).overrides
                     if "$" not in a]
        load_config(build_parser().parse_intermixed_args(args).config, overrides)


def _documented(config: str) -> list[str]:
    """The one documented command that launches `config` (a file name under
    configs/accelerate/)."""
    found = [cmd for cmd in DOCUMENTED if _config_file(cmd) == ACCELERATE / config]
    assert len(found) == 1, found
    return found[0]


def _run(cmd: list[str], over: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    """`cmd` as written (a free port added), `over` appended, on 2 CPU processes."""
    assert cmd[:2] == ["accelerate", "launch"]
    argv = [sys.executable, "-m", "accelerate.commands.launch",
            "--main_process_port", str(_free_port()), *cmd[2:], *over]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def _tiny(tiny_text_dir: Path, corpus: Path, out: Path, steps: int) -> list[str]:
    return [f"text.model={tiny_text_dir}", f"data.train={corpus / 'test.jsonl'}",
            "data.batch_size=2", f"train.steps={steps}", f"train.out_dir={out}",
            "train.sample_prompts=[]"]


@pytest.mark.slow
def test_the_documented_cpu_launch_runs_two_processes(tiny_text_dir, corpus, tmp_path):
    """docs/training.md's CPU command with configs/accelerate/cpu.yaml: two processes (DDP
    over gloo); a bare `--num_processes 2` without --multi_gpu or a file starts one."""
    out = tmp_path / "run"
    proc = _run(_documented("cpu.yaml"), _tiny(tiny_text_dir, corpus, out, 2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((out / "step-0000002" / "state.json").read_text())
    assert state["world_size"] == 2 and "FSDP" not in proc.stdout
    assert not torch.cuda.is_available()  # really the CPU (gloo) case


def _tensors(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.name: load_file(p) for p in sorted(folder.glob("*.safetensors"))}


def _assert_identical(a: Path, b: Path) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert set(ta) == set(tb) and {"model.safetensors", "optim.safetensors"} <= set(ta)
    for name in ta:
        assert ta[name].keys() == tb[name].keys(), name
        for k in ta[name]:
            assert torch.equal(ta[name][k], tb[name][k]), (name, k)


@pytest.mark.slow
def test_fsdp_saves_full_state_and_resumes_bit_for_bit(tiny_text_dir, corpus, tmp_path):
    """configs/accelerate/fsdp_cpu.yaml (FSDP-2 over gloo, 2 processes): 4 steps straight vs
    the same run resumed from its step 2 give identical weights, EMA and optimizer state;
    the files are the gathered full state, so one process resumes them without FSDP."""
    fsdp = _documented("fsdp_cpu.yaml")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    over = ["train.ckpt_every=1", "train.keep_last=0"]
    proc = _run(fsdp, [*_tiny(tiny_text_dir, corpus, straight, 4), *over])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sharded over 2 processes" in proc.stdout  # accelerate alone would run DDP here
    resumed.mkdir()
    shutil.copytree(straight / "step-0000002", resumed / "step-0000002")
    proc = _run(fsdp, ["--resume", *_tiny(tiny_text_dir, corpus, resumed, 4), *over])
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_identical(straight / "step-0000004", resumed / "step-0000004")
    # the EMA averaged the whole (gathered) weights: step 4's is step 3's moved toward them
    ema3, ema4, model4 = (load_file(straight / f"step-000000{s}" / f"{n}.safetensors")
                          for s, n in ((3, "ema"), (4, "ema"), (4, "model")))
    decay = min(load_config("tiny").train.ema_decay, (1 + 3) / (10 + 3))  # 4th update
    assert all(torch.equal(ema3[k].lerp_(model4[k], 1 - decay), ema4[k]) for k in ema4
               if ema4[k].is_floating_point())
    assert load_file(straight / "model.safetensors").keys() == \
        load_file(resumed / "model.safetensors").keys()
    # one process, no FSDP: the full state loads as any other checkpoint
    trainer = loop.Trainer(load_config("tiny", _tiny(tiny_text_dir, corpus, straight, 5)),
                           resume=True)
    assert trainer.step == 4 and trainer.acc.num_processes == 1
    full = load_file(straight / "step-0000004" / "model.safetensors")
    assert all(torch.equal(v, full[k]) for k, v in trainer.model.state_dict().items())


def test_fsdp_set_ups_the_loop_does_not_handle_are_one_line():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from energytta.train.objectives.student import StudentObjective
    from energytta.train.objectives.teacher import TeacherObjective
    teacher = object.__new__(TeacherObjective)
    fsdp2 = SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=True)
    check_fsdp(fsdp2, teacher)  # the teacher trains under FSDP-2
    check_fsdp(SimpleNamespace(distributed_type=DistributedType.MULTI_GPU), teacher)
    with pytest.raises(UserError, match="FSDP version 1 is not supported: set fsdp_version: 2"):
        check_fsdp(SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=False),
                   teacher)
    with pytest.raises(UserError, match="not StudentObjective: launch this run with DDP"):
        check_fsdp(fsdp2, object.__new__(StudentObjective))


def test_processes_that_see_different_step_folders_are_refused():
    same_checkpoint(["step-0000004 (state ab)"] * 3, Path("run"))
    with pytest.raises(UserError, match="process 1 sees no checkpoint .* process 0 sees "
                                        "step-0000004 .* a filesystem all of them mount"):
        same_checkpoint(["step-0000004 (state ab)", ""], Path("run"))


WRAPPER = """import os, sys
from pathlib import Path
os.chdir(sys.argv.pop(1 + int(os.environ["RANK"])))  # this process's own view of `run`
sys.argv.pop(1)
from energytta.errors import run_cli
from energytta.train.cli import main
raise SystemExit(run_cli(main))
"""


@pytest.mark.slow
def test_a_resume_on_machines_without_a_shared_out_dir_stops_in_one_line(
        tiny_text_dir, corpus, tmp_path):
    """Two processes whose relative train.out_dir resolves to different folders (as on two
    machines without a shared filesystem): each sees another step folder -> one line, exit 2."""
    views = [tmp_path / "machine0", tmp_path / "machine1"]
    for view, steps in zip(views, (2, 1)):
        (view / "run" / f"step-{steps:07d}").mkdir(parents=True)
        (view / "run" / f"step-{steps:07d}" / "state.json").write_text("{}")
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(WRAPPER)
    cmd = ["accelerate", "launch", "--config_file", str(ACCELERATE / "cpu.yaml"), str(wrapper),
           *map(str, views), "--config", "tiny", "--resume"]
    proc = _run(cmd, _tiny(tiny_text_dir, corpus, Path("run"), 3))
    assert proc.returncode != 0
    line = ("error: --resume: process 1 sees step-0000001 (state ")
    assert line in proc.stderr, proc.stderr[-3000:]
    assert "every machine must read the same train.out_dir" in proc.stderr
