"""Dependency direction (DESIGN): `teachers` and `research` build on `energytta`; energytta
never names either (it reaches the teacher's parts through the head registry and entry
points), and no module imports itself back through others (no import circles)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from torch import nn

import energytta
from energytta.config import load_config
from energytta.errors import UserError

PACKAGE = Path(energytta.__file__).resolve().parent
ROOT = PACKAGE.parent
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


@pytest.mark.parametrize("outside", ["teachers", "research"])
def test_energytta_source_never_imports_what_builds_on_it(outside):
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, module in _imported(ast.parse(path.read_text(encoding="utf-8"))):
            if module == outside or module.startswith(outside + "."):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
    assert not offenders, f"energytta must not name {outside}:\n" + "\n".join(offenders)


# ------------------------------------------------------------------------- import circles
def _modules(packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name -> file, for every module of `packages` under the checkout."""
    found = {}
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the modules of `modules` it imports. `from a.b import c` counts as an
    import of `a.b.c` when that is a module, else of `a.b`."""
    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        targets = {known(module) for _, module in _imported(tree)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets |= {known(f"{node.module}.{a.name}") for a in node.names
                            if f"{node.module}.{a.name}" in modules}
        graph[name] = {t for t in targets if t and t != name}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One import path per circle: [a, b, ..., a] (depth-first search, back edges)."""
    state, stack, found = {}, [], []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_the_circle_finder_finds_circles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e2"}, "e2": {"e"}}
    assert _circles(graph) == [["a", "b", "c", "a"], ["e", "e2", "e"]]
    assert _circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_circles():
    """No module of energytta, teachers or research imports itself back through others.

    Checked statically over every import: module-level statements, imports inside
    functions (lazy imports still make the two modules depend on each other, and hide the
    circle until a code path runs them), and `importlib.import_module("...")` /
    `__import__("...")` with a literal name. Not counted: names resolved at run time from
    strings (the codec and objective registries' "module:class" entries, entry points) and
    the implicit import of a package's `__init__` by its submodules.
    """
    circles = _circles(_import_graph(_modules(("energytta", "teachers", "research"))))
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


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


def test_training_and_diagnostics_never_reach_the_inference_pipeline():
    """The shipped-model names live beside the checkpoint code, so training objectives and
    the diagnostics resolve "teacher" / "student" without importing `energytta.pipeline`."""
    paths = [*sorted((PACKAGE / "train").rglob("*.py")), PACKAGE / "eval" / "diagnostics.py"]
    offenders = [f"{path.relative_to(ROOT)}:{line}" for path in paths
                 for line, module in _imported(ast.parse(path.read_text(encoding="utf-8")))
                 if module == "energytta.pipeline"]
    assert not offenders, "imports energytta.pipeline: " + ", ".join(offenders)


def test_module_attribute_names_load_through_one_helper():
    from energytta.audio.codec import MelCodec, codec_class
    from energytta.plugins import load_object

    assert load_object("energytta.audio.codec:MelCodec") is MelCodec is codec_class("mel")
