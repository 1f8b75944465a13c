"""Dependency direction (DESIGN): `teachers` builds on `energytta`; energytta never names
`teachers` and reaches its parts through the head registry and entry points."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from torch import nn

import energytta
from energytta.config import load_config
from energytta.errors import UserError

PACKAGE = Path(energytta.__file__).resolve().parent
IMPORTERS = ("import_module", "__import__")


def _imported(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import in a module: statements (also inside functions) and
    `importlib.import_module("...")` / `__import__("...")` calls with a literal name."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if name in IMPORTERS and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def test_energytta_source_never_imports_teachers():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, module in _imported(ast.parse(path.read_text(encoding="utf-8"))):
            if module == "teachers" or module.startswith("teachers."):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
    assert not offenders, "energytta must not name teachers:\n" + "\n".join(offenders)


def test_the_diffusion_head_is_found_through_its_entry_point():
    from teachers.diffusion_head import DiffusionHead

    from energytta.models.heads import build_head, head_kinds

    assert {"diffusion", "energy"} <= set(head_kinds())
    head = build_head(load_config("tiny").head, 160, 32)  # tiny: head.kind=diffusion
    assert isinstance(head, DiffusionHead)


def test_registered_heads_are_built_and_unknown_kinds_list_them(monkeypatch):
    import energytta.models.heads as heads

    monkeypatch.setitem(heads._BUILDERS, "linear", lambda cfg, d, D: nn.Linear(D, d))
    cfg = load_config("tiny").head
    cfg.kind = "linear"
    assert isinstance(heads.build_head(cfg, 160, 32), nn.Linear)
    cfg.kind = "flow"
    with pytest.raises(UserError, match="diffusion, energy, linear") as e:
        heads.build_head(cfg, 160, 32)
    assert "\n" not in str(e.value)


def test_the_teacher_loader_is_the_teachers_entry_point():
    import teachers

    from energytta.plugins import load_plugin

    assert load_plugin("energytta.teachers", "load_teacher") is teachers.load_teacher
    assert load_plugin("energytta.teachers", "no-such-loader") is None
