"""Reading a PyTorch checkpoint file (`.pt`, `.pth`) without running pickled code.

`torch.load(weights_only=True)` with numpy's scalar types allowed (training checkpoints store
an epoch or a metric as np.float64), also under numpy 1's module name. Files written with
pickle protocol >= 4, which torch's weights-only reader does not parse (it stops at the
FRAME opcode), are read by Python's unpickler restricted to the same short allow-list of
globals (the "restricting globals" recipe of the pickle documentation) over the file's zip
archive. Anything else pickled in the file is refused with one line naming it.
"""
from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from energytta.errors import UserError


def _numpy_safe_globals() -> list:
    """numpy scalars (an epoch or a metric stored as np.float64) and their dtypes, also
    under numpy 1's module name, which files written before numpy 2 carry."""
    from numpy._core.multiarray import scalar

    dtypes = {type(np.dtype(t)) for t in ("f8", "f4", "f2", "i8", "i4", "b1")}  # BUILD needs
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *dtypes]


class _AllowListUnpickler(pickle.Unpickler):
    """Python's documented "restricting globals" unpickler over a torch zip archive: tensors,
    containers and numpy scalars only (the set weights_only allows for these files)."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(file)
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str):
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(f"Unsupported global: {module}.{name}")
        return allowed

    def persistent_load(self, pid) -> torch.Tensor:
        # ('storage', dtype (from a torch.<Type>Storage global), key, location, numel), as
        # torch.save writes it: the storage comes back as a flat tensor of that dtype
        _, dtype, key, _, numel = pid
        raw = bytearray(self.archive.read(f"{self.prefix}/data/{key}"))
        return torch.frombuffer(raw, dtype=dtype)[:numel] if raw else torch.empty(0, dtype=dtype)


def _rebuild_tensor(flat: torch.Tensor, offset: int, size, stride, *_) -> torch.Tensor:
    """torch._utils._rebuild_tensor_v2 on a flat storage tensor (grad flags dropped)."""
    return torch.as_strided(flat, tuple(size), tuple(stride), offset)


def _allowed_globals() -> dict:
    from numpy._core.multiarray import scalar

    allowed = {("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
               ("torch._utils", "_rebuild_parameter"): lambda data, *_: data,
               ("collections", "OrderedDict"): OrderedDict,
               ("torch", "Size"): torch.Size,
               ("numpy.core.multiarray", "scalar"): scalar,
               ("numpy._core.multiarray", "scalar"): scalar,
               ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): __import__("codecs").encode}
    for name, dtype in (("Float", torch.float32), ("Double", torch.float64),
                        ("Half", torch.float16), ("BFloat16", torch.bfloat16),
                        ("Long", torch.int64), ("Int", torch.int32), ("Short", torch.int16),
                        ("Char", torch.int8), ("Byte", torch.uint8), ("Bool", torch.bool)):
        allowed[("torch", f"{name}Storage")] = dtype
    return allowed


_ALLOWED = _allowed_globals()


def _load_allow_listed(path: Path):
    with zipfile.ZipFile(path) as archive:
        pkl = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
        with archive.open(pkl) as f:
            return _AllowListUnpickler(f, archive, pkl[:-len("/data.pkl")]).load()


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a `.pt` / `.pth` checkpoint, `module.` (DDP) prefixes removed.

    Accepts a bare state dict or one under "state_dict" (LAION-CLAP, Lightning) or "model"
    (MS-CLAP, PANNs).
    Raises:
        UserError: missing file, not a torch checkpoint, or one that needs pickled objects.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()), \
                warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Detected pickle protocol")  # handled below
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported operand" not in str(e):  # a global outside the allow-list
            raise _needs_pickle(path, e) from None
        try:  # pickle protocol >= 4: the same allow-list, through Python's unpickler
            obj = _load_allow_listed(path)
        except pickle.UnpicklingError as e2:
            raise _needs_pickle(path, e2) from None
        except (zipfile.BadZipFile, StopIteration, KeyError, EOFError) as e2:
            raise _not_torch(path, e2) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise _not_torch(path, e) from None
    return _state_dict(path, obj)


def _not_torch(path: Path, e: BaseException) -> UserError:
    return UserError(f"{path}: not a PyTorch checkpoint ({first_line(e)}); pass the .pt / "
                     ".pth file as its authors released it")


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message (torch's run to many)."""
    return next((s.strip() for s in str(e).splitlines() if s.strip()), type(e).__name__)


def _needs_pickle(path: Path, e: BaseException) -> UserError:
    found = re.search(r"Unsupported global: (?:GLOBAL )?([\w.]+)|but got <class '([\w.]+)'>",
                      str(e))
    what = found.group(found.lastindex) if found else first_line(e)
    return UserError(f"{path}: holds pickled Python objects ({what}), which energytta never "
                     "unpickles; only if you trust the file, keep its weights alone and "
                     "convert that: python -c \"import torch; c = torch.load('" + str(path) +
                     "', weights_only=False); torch.save({'state_dict': c.get('state_dict', "
                     "c.get('model'))}, 'weights.pt')\"")


def _state_dict(path: Path, obj) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or \
            not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path}: no state dict of tensors inside (a bare one, or under "
                        "'state_dict' or 'model'); pass the model checkpoint itself")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}
