"""Entry-point plugins: how energytta reaches code that is built on top of it.

DESIGN's dependency rule: `teachers` imports `energytta`, so `energytta` never names
`teachers`. A package that adds parts announces them in an entry-point group of its
distribution (setup.cfg `[options.entry_points]`), and energytta looks them up by group
and name, loading the code only when it is used:

- `energytta.heads`: head kind -> class or function `(head_cfg, token_dim, cond_dim) -> Head`
  (`energytta.models.heads.build_head`);
- `energytta.teachers`: `load_teacher` -> `(path, device) -> (cfg, TTAModel)`, frozen
  (the student objective, `energytta.train.objectives.student`).

The same "module:attribute" form names the lazy entries of energytta's own registries
(`load_object`), so a heavy or optional module is imported only when it is used.
"""
from __future__ import annotations

from importlib.metadata import EntryPoint, distributions
from typing import Any


def _group(group: str) -> dict[str, EntryPoint]:
    """name -> entry point of `group`, over every copy of every distribution's metadata.

    `importlib.metadata.entry_points` keeps only the first copy of a distribution on
    sys.path, so a stale `energytta.egg-info` left in a checkout by an older install
    would hide the installed copy's entry points; reading them all avoids that.
    """
    found: dict[str, EntryPoint] = {}
    for dist in distributions():
        for ep in dist.entry_points.select(group=group):
            found.setdefault(ep.name, ep)
    return found


def plugin_names(group: str) -> list[str]:
    """Names announced in the entry-point `group` by the installed distributions."""
    return sorted(_group(group))


def load_object(spec: str) -> Any:
    """The object a "module:attribute" string names, imported now: the registries' lazy
    entries (codecs, objectives) use the entry points' own syntax and loader."""
    return EntryPoint(name=spec, value=spec, group="energytta").load()


def load_plugin(group: str, name: str) -> Any | None:
    """The object entry point `name` of `group` points at (imported now), or None."""
    ep = _group(group).get(name)
    return None if ep is None else ep.load()
