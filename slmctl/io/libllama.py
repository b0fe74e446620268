"""The llama.cpp binding (llama-cpp-python): opening GGUF files the same way everywhere (eval backend, llamacpp
target, tests), and llama.cpp's own quantiser (``model_quantize``, through ctypes).

llama.cpp's AMX matmul segfaults on the first forward on some AMX CPUs (Sapphire Rapids class, in VMs
too; ggml-org/llama.cpp#20824, closed unfixed); it does on this project's machine with any quantised
GGUF. When the build reports AMX_INT8 we load without extra buffer types, which also gives up the
repacked kernels llama.cpp has for some quant types (Q4_0, IQ4_NL, Q8_0, ...).
``SLMCTL_LLAMACPP_AMX=1`` keeps them (for a fixed llama.cpp).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from ..errors import SlmctlError, UnsupportedError

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


@contextlib.contextmanager
def quiet_fds():
    """llama.cpp prints on fd 1 and 2; stdout carries only slmctl's result."""
    if os.environ.get("SLMCTL_DEBUG") == "1":
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def model_quantize(src: Path, dst: Path, ftype: int, outtype: str, imatrix: dict | None = None,
                   nthread: int | None = None, allow_requantize: bool = False) -> None:
    """llama.cpp's own quantiser (``llama_model_quantize``) from GGUF ``src`` to ``dst`` as llama_ftype ``ftype``
    (``outtype`` names it in messages); ``imatrix``: {tensor name: per-column mean squared activation}."""
    import numpy as np

    try:
        import ctypes

        import llama_cpp
    except ImportError:
        raise UnsupportedError("k-quants need llama-cpp-python (llama.cpp's quantiser)",
                               hint="pip install 'slmctl[gguf]' (builds llama.cpp, about 5 minutes)") from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = int(nthread or os.environ.get("SLMCTL_THREADS", os.cpu_count() or 1))
    params.allow_requantize = bool(allow_requantize)
    keep = []
    if imatrix:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, v) in enumerate(sorted(imatrix.items())):
            arr = np.ascontiguousarray(v, dtype=np.float32)
            keep.append(arr)
            entries[i].name = name.encode()
            entries[i].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = arr.size
        entries[len(imatrix)].name = None
        keep.append(entries)
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    with quiet_fds():
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0 or not dst.is_file():
        raise SlmctlError(f"llama.cpp could not quantise {src} to {outtype.upper()} (code {rc})",
                          hint="rerun with SLMCTL_DEBUG=1 to see llama.cpp's log")
