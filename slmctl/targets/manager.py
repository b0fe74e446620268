"""The plugin manager: built-in targets and entry-point plugins (group ``slmctl.targets``) through one hook.

Which installed plugins load is controlled by ``SLMCTL_LOAD_PLUGINS``:

- unset: every plugin in the entry-point group, except under pytest (``PYTEST_CURRENT_TEST`` set), where
  none load, so tests never pick up stray installed plugins by accident;
- ``""``: none;
- ``"openvino,other"``: only those (entry-point names or distribution names).

A plugin that fails (raises on import, implements no hook, raises in its hook, registers something that
is not a Target) is recorded with a message naming it; the other targets keep working.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import pluggy

from ..errors import SlmctlError, UsageError
from . import hookspecs
from .target import Target

GROUP = "slmctl.targets"
ENV = "SLMCTL_LOAD_PLUGINS"
HOOKS = ("register_targets",)


class PluginError(SlmctlError):
    """A target plugin could not be loaded or used."""


@dataclass
class PluginInfo:
    name: str
    source: str  # builtin | entry point | runtime
    version: str | None = None
    distribution: str | None = None
    targets: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "version": self.version,
                "distribution": self.distribution, "targets": list(self.targets), "error": self.error}


def plugin_filter() -> set[str] | None:
    """Names of the entry-point plugins to load; None means all of them."""
    raw = os.environ.get(ENV)
    if raw is None:
        return set() if os.environ.get("PYTEST_CURRENT_TEST") else None
    return {p.strip() for p in raw.split(",") if p.strip()}


class TargetManager:
    def __init__(self, load_entry_points: bool = True):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._plugins: dict[str, PluginInfo] = {}
        self._targets: dict[str, tuple[Target, str]] = {}
        self._dirty = True
        from . import builtin

        self._add(builtin, "builtin", PluginInfo("builtin", "builtin", version=_slmctl_version()))
        if load_entry_points:
            self._load_entry_points()

    # ---------------------------------------------------------------- loading
    def _load_entry_points(self) -> None:
        from importlib.metadata import entry_points

        wanted = plugin_filter()
        if wanted is not None and not wanted:
            return
        seen = set()
        for ep in entry_points(group=GROUP):
            dist = getattr(ep, "dist", None)
            dname = getattr(dist, "name", None) if dist else None
            if wanted is not None and ep.name not in wanted and (dname not in wanted):
                continue
            if ep.name in seen or ep.name in self._plugins:
                continue
            seen.add(ep.name)
            info = PluginInfo(ep.name, "entry point", version=getattr(dist, "version", None) if dist else None,
                              distribution=dname)
            try:
                obj = ep.load()
            except BaseException as exc:  # a plugin raising on import must not stop the others
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                info.error = f"failed to import {ep.value}: {type(exc).__name__}: {exc}"
                self._plugins[ep.name] = info
                continue
            self._add(obj, ep.name, info)

    def _add(self, obj: Any, name: str, info: PluginInfo) -> None:
        self._plugins[name] = info
        try:
            self.pm.register(obj, name=name)
        except pluggy.PluginValidationError as exc:
            info.error = f"invalid hook: {exc}"
            return
        except ValueError as exc:  # already registered
            info.error = str(exc)
            return
        unknown = [n for n in dir(obj) if n.startswith("register_") and n not in HOOKS
                   and callable(getattr(obj, n, None)) and hasattr(getattr(obj, n), "slmctl_impl")]
        if not self.pm.get_hookcallers(obj) or unknown:
            self.pm.unregister(obj)
            info.error = (f"implements no slmctl hook (expected one of: {', '.join(HOOKS)}"
                          + (f"; found unknown {', '.join(unknown)}" if unknown else "") + ")")
        self._dirty = True

    def _collect(self) -> None:
        if not self._dirty:
            return
        self._targets = {}
        for info in self._plugins.values():
            if info.error is None:
                info.targets = []
        for impl in self.pm.hook.register_targets.get_hookimpls():
            pname = impl.plugin_name
            info = self._plugins.get(pname)
            if info is None or info.error is not None:
                continue
            found: list[tuple[Target, str]] = []

            def register(target, _found=found):
                if isinstance(target, type) and issubclass(target, Target):
                    target = target()
                if not isinstance(target, Target):
                    raise TypeError(f"register() takes a slmctl.targets.Target subclass or instance, "
                                    f"not {type(target).__name__}")
                if not target.name or target.name == "?":
                    raise TypeError(f"{type(target).__name__} has no name")
                _found.append(target)

            try:
                impl.function(register=register)
            except Exception as exc:
                info.error = f"register_targets failed: {type(exc).__name__}: {exc}"
                continue
            for t in found:
                if t.name in self._targets:
                    other = self._targets[t.name][1]
                    info.error = f"target {t.name!r} is already registered by plugin {other!r}"
                    continue
                self._targets[t.name] = (t, pname)
                info.targets.append(t.name)
        self._dirty = False

    # ---------------------------------------------------------------- runtime registration
    def register(self, plugin: Any, name: str | None = None) -> str:
        """Register a plugin object (module or instance with @hookimpl functions) at runtime."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        if name in self._plugins:
            raise UsageError(f"a plugin named {name!r} is already registered")
        info = PluginInfo(name, "runtime")
        self._add(plugin, name, info)
        self._dirty = True
        self._collect()
        if info.error:
            err = info.error
            self._plugins.pop(name, None)
            raise PluginError(f"plugin {name!r}: {err}", hint="see plugins/README.md for the hook to implement")
        return name

    def unregister(self, name: str) -> None:
        if name not in self._plugins:
            raise UsageError(f"no plugin named {name!r}", hint="valid: " + ", ".join(sorted(self._plugins)))
        if self.pm.get_plugin(name) is not None:
            self.pm.unregister(name=name)
        del self._plugins[name]
        self._dirty = True

    # ---------------------------------------------------------------- queries
    def targets(self) -> dict[str, tuple[Target, str]]:
        """{target name: (target, plugin name)}."""
        self._collect()
        return dict(self._targets)

    def plugins(self) -> list[PluginInfo]:
        self._collect()
        return list(self._plugins.values())

    def get(self, name: str) -> Target:
        self._collect()
        if name in self._targets:
            return self._targets[name][0]
        broken = [p for p in self._plugins.values() if p.error and (p.name == name or name in p.targets)]
        if broken:
            p = broken[0]
            raise PluginError(f"target {name!r}: plugin {p.name!r} is broken: {p.error}",
                              hint=f"reinstall or remove the plugin ({p.distribution or p.name}); "
                                   f"`slmctl plugins` lists what loaded")
        import difflib

        close = difflib.get_close_matches(name, self._targets, n=1)
        bad = [p.name for p in self._plugins.values() if p.error]
        raise UsageError(f"unknown target {name!r}",
                         hint=(f"did you mean {close[0]!r}? " if close else "")
                         + "valid: " + ", ".join(sorted(self._targets))
                         + (f" (broken plugins: {', '.join(bad)})" if bad else ""))


def _slmctl_version() -> str:
    from .. import __version__

    return __version__


_MANAGER: TargetManager | None = None


def manager() -> TargetManager:
    """The process-wide manager, built on first use."""
    global _MANAGER
    if _MANAGER is None:
        _MANAGER = TargetManager()
    return _MANAGER


def reset() -> None:
    """Forget the manager (tests; after changing SLMCTL_LOAD_PLUGINS)."""
    global _MANAGER
    _MANAGER = None
