"""Tensors of a safetensors-backed artifact as float32 numpy arrays, without importing torch.

The GGUF exporter converts with numpy only; reading through numpy keeps torch (a few hundred MB of
resident memory and seconds of import) out of the process. Other sources fall back to
``LazyTensor.load()``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import FormatError
from .safetensors import read_header

_NP = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1"}


@lru_cache(maxsize=64)
def _header(path: str):
    return read_header(path)


def load_float32(lazy) -> np.ndarray:
    """The tensor as a float32 numpy array (bf16 widened exactly; other floats cast)."""
    src = getattr(lazy, "source", "")
    if not src or not str(src).endswith(".safetensors"):
        t = lazy.load()
        if hasattr(t, "float"):
            t = t.float().numpy()
        return np.asarray(t, dtype=np.float32)
    entries, _, start = _header(str(src))
    ent = entries.get(lazy.name)
    if ent is None:
        return np.asarray(lazy.load().float().numpy(), dtype=np.float32)
    n = ent.end - ent.begin
    with open(Path(src), "rb") as f:
        f.seek(start + ent.begin)
        buf = f.read(n)
    if len(buf) != n:
        raise FormatError(f"{src}: file shrank while reading tensor {lazy.name!r}")
    if ent.dtype == "BF16":
        a = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << np.uint32(16)).view(np.float32)
    elif ent.dtype in _NP:
        a = np.frombuffer(buf, dtype=_NP[ent.dtype])
        a = a if a.dtype == np.float32 else a.astype(np.float32)
    else:  # fp8 and the rest: let torch decode them
        return np.asarray(lazy.load().float().numpy(), dtype=np.float32)
    return a.reshape(ent.shape)
