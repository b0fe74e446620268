"""Opening GGUF files in llama-cpp-python the same way everywhere (eval backend, llamacpp target, tests).

llama.cpp's AMX matmul segfaults on the first forward on some AMX CPUs (Sapphire Rapids class, in VMs
too; ggml-org/llama.cpp#20824, closed unfixed); it does on this project's machine with any quantised
GGUF. When the build reports AMX_INT8 we load without extra buffer types, which also gives up the
repacked kernels llama.cpp has for some quant types (Q4_0, IQ4_NL, Q8_0, ...).
``SLMCTL_LLAMACPP_AMX=1`` keeps them (for a fixed llama.cpp).
"""

from __future__ import annotations

import contextlib
import os

AMX_ENV = "SLMCTL_LLAMACPP_AMX"


def amx_disabled() -> bool:
    """Whether to keep llama.cpp off its extra weight buffers (AMX, repacking) on this machine."""
    if os.environ.get(AMX_ENV) == "1":
        return False
    import llama_cpp

    info = llama_cpp.llama_print_system_info()
    info = info.decode(errors="replace") if isinstance(info, bytes) else str(info)
    return "AMX_INT8 = 1" in info


class NoExtraBuffers:
    """Build a ``Llama`` with ``use_extra_bufts = False`` (its constructor does not take the flag)."""

    def __enter__(self):
        import llama_cpp.llama_cpp as C

        self._c, self._orig = C, C.llama_model_default_params

        def params():
            p = self._orig()
            p.use_extra_bufts = False
            return p

        C.llama_model_default_params = params
        return self

    def __exit__(self, *exc):
        self._c.llama_model_default_params = self._orig


def open_llama(path, *, no_extra_buffers: bool | None = None, **kwargs):
    """``llama_cpp.Llama(model_path=path, **kwargs)``, without extra buffers where AMX would crash
    (``no_extra_buffers``: the caller's own ``amx_disabled()``, when it already asked)."""
    from llama_cpp import Llama

    if no_extra_buffers is None:
        no_extra_buffers = amx_disabled()
    guard = NoExtraBuffers() if no_extra_buffers else contextlib.nullcontext()
    with guard:
        return Llama(model_path=str(path), **kwargs)
