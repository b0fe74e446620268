"""Hook specifications for target plugins (pluggy), in the style of simonw/llm.

A plugin is a module with ``@hookimpl`` functions; each hook receives a ``register`` callback.
Built-in targets register through the same hooks (slmctl.targets.builtin).
"""

from __future__ import annotations

import pluggy

PROJECT = "slmctl"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_targets(register):
    """Register hardware targets: call ``register(TargetSubclass)`` (or an instance) once per target."""
