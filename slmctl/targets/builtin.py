"""The built-in targets register through the same hook as outside plugins."""

from __future__ import annotations

from .hookspecs import hookimpl


@hookimpl
def register_targets(register):
    from .llamacpp import LlamaCppTarget
    from .ort import OnnxRuntimeTarget
    from .pytorch import TorchTarget

    register(TorchTarget)
    register(OnnxRuntimeTarget)
    register(LlamaCppTarget)
