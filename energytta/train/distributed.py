"""Several processes beyond DDP: FSDP on accelerate, and the run folder all processes share.

FSDP (torch's `fully_shard`, accelerate's FSDP version 2) shards weights, gradients and
optimizer state over the processes. Checkpoints stay what they are without FSDP: every
process gathers the full weights and the full optimizer state for a save (the main process
writes them), and a resume shards them again. So a run saved under FSDP resumes with or
without it and under any process count, and `model.safetensors` is the same file. The price
is one full copy of the weights per process while saving, which the EMA copy (kept whole on
every process) costs anyway.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from energytta.errors import UserError

FSDP_CONFIG = "configs/accelerate/fsdp.yaml"


def fsdp_requested() -> bool:
    """Whether `accelerate launch` was given an FSDP config (it exports this variable)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def enable_cpu_fsdp(acc: Any) -> None:
    """Turn accelerate's FSDP on for CPU processes (gloo).

    accelerate keeps FSDP for accelerators and, given an FSDP config on CPU, silently runs
    DDP instead; its FSDP-2 preparation itself runs on CPU tensors, so the sharded path can
    be tried (and is tested) without a GPU.
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if fsdp_requested() and acc.distributed_type == DistributedType.MULTI_CPU:
        acc.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # read from the launch env
        # where accelerate records it on GPUs: every later AcceleratorState() copies it
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        acc.state.distributed_type = DistributedType.FSDP


def is_fsdp(acc: Any) -> bool:
    from accelerate.utils import DistributedType

    return acc.distributed_type == DistributedType.FSDP


def check_fsdp(acc: Any, objective: Any) -> None:
    """Refuse (UserError, one line) the FSDP set-ups the loop does not handle."""
    if not is_fsdp(acc):
        return
    if not getattr(acc, "is_fsdp2", False):  # an accelerate too old for it says nothing
        raise UserError("FSDP version 1 is not supported: set fsdp_version: 2 in the accelerate "
                        f"config (as {FSDP_CONFIG} does; it needs torch >= 2.6)")
    if isinstance(objective, nn.Module) or not objective.ema:
        # its own trainable parts (a frozen teacher, projections) would be sharded too, and
        # validation / samples / export run on the main process alone
        raise UserError(f"FSDP trains the teacher objective only, not {type(objective).__name__}:"
                        " launch this run with DDP (configs/accelerate/multi_gpu.yaml)")


@contextlib.contextmanager
def whole_parameters(module: nn.Module) -> Iterator[None]:
    """Inside, every sharded parameter of `module` is replaced by its full tensor, gathered
    in its own (fp32 master) dtype, so an EMA reads whole weights whatever FSDP's
    mixed-precision policy all-gathers for compute; the shards are put back on exit. A
    collective under FSDP (every process must enter it); a no-op otherwise."""
    from torch.distributed.tensor import DTensor

    swapped = []
    for owner in module.modules():
        for name, p in list(owner._parameters.items()):
            if isinstance(p, DTensor):
                swapped.append((owner, name, p))
                owner._parameters[name] = nn.Parameter(p.detach().full_tensor(),
                                                       requires_grad=False)
    try:
        yield
    finally:
        for owner, name, p in swapped:
            owner._parameters[name] = p


def _full(value: Any) -> Any:
    from torch.distributed.tensor import DTensor

    return value.full_tensor() if isinstance(value, DTensor) else value


def full_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """`module.state_dict()` with every sharded tensor gathered (a collective)."""
    return {k: _full(v) for k, v in module.state_dict().items()}


def full_optimizer_state(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """`opt.state_dict()` with every sharded tensor gathered: the plain optimizer's format
    (state keyed by parameter index). A collective: every process must call it."""
    sd = opt.state_dict()
    state = {i: {k: _full(v) for k, v in s.items()} for i, s in sd["state"].items()}
    return {"state": state, "param_groups": sd["param_groups"]}


def load_full_optimizer_state(opt: torch.optim.Optimizer, sd: dict[str, Any]) -> None:
    """Load a full optimizer state (as saved) into `opt` whose parameters may be sharded:
    each process keeps its own slice of every tensor shaped like its parameter."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = [p for group in opt.param_groups for p in group["params"]]
    state = {}
    for i, s in sd["state"].items():
        p = params[int(i)]
        if isinstance(p, DTensor):  # every process holds the full tensor: no communication
            s = {k: distribute_tensor(v.to(p.device), p.device_mesh, p.placements,
                                      src_data_rank=None)
                 if torch.is_tensor(v) and v.shape == p.shape else v for k, v in s.items()}
        state[i] = s
    opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})


# ------------------------------------------------------------------ the shared run folder
def checkpoint_fingerprint(folder: Path | None) -> str:
    """What a process sees of the newest step folder of its run folder: its name and
    state.json's hash ("" when it found none)."""
    if folder is None:
        return ""
    try:
        digest = hashlib.sha256((folder / "state.json").read_bytes()).hexdigest()[:16]
    except OSError:  # pruned or unreadable: still a fact to compare
        digest = "unreadable"
    return f"{folder.name} (state {digest})"


def same_checkpoint(seen: list[str], out_dir: Path) -> None:
    """Refuse a resume whose processes read different step folders (`seen[rank]`): the
    processes of different machines must see one `train.out_dir`."""
    for rank, what in enumerate(seen):
        if what != seen[0]:
            raise UserError(
                f"--resume: process {rank} sees {what or 'no checkpoint'} in {out_dir} but "
                f"process 0 sees {seen[0] or 'no checkpoint'}: every machine must read the same "
                "train.out_dir; put it on a filesystem all of them mount (NFS, Lustre, ...)")


def check_same_checkpoint(acc: Any, folder: Path | None, out_dir: Path) -> None:
    """`same_checkpoint` over all processes (a collective; one process: nothing to do)."""
    if acc.num_processes == 1:
        return
    from accelerate.utils import gather_object

    same_checkpoint(gather_object([checkpoint_fingerprint(folder)]), out_dir)
