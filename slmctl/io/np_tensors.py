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

_CHUNK = 16 << 20  # bytes read and converted at a time
_NP = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1"}


@lru_cache(maxsize=64)
def _header(path: str):
    return read_header(path)


def load_float32(lazy, rows: tuple[int, int] | None = None) -> np.ndarray:
    """The tensor as a float32 numpy array (bf16 widened exactly; other floats cast).

    ``rows=(i, j)``: only rows i..j-1 of the outermost dimension, read from the file alone when the
    tensor is in a safetensors file (so a huge embedding converts in slices, never whole).
    """
    reader = RowReader.of(lazy)
    if reader is None:  # not a plain safetensors tensor: torch decodes
        t = lazy.load()
        if hasattr(t, "float"):
            t = t.float().numpy()
        a = np.asarray(t, dtype=np.float32)
        return a if rows is None else a[rows[0]:rows[1]]
    if rows is not None and not reader.shape:
        raise FormatError(f"{reader.path}: tensor {lazy.name!r} is a scalar; it has no rows")
    n = reader.shape[0] if reader.shape else 1
    i, j = (0, n) if rows is None else (max(0, rows[0]), min(n, rows[1]))
    j = max(i, j)
    per_row = reader.row_bytes // reader.dtype.itemsize
    out = np.empty((j - i) * per_row, dtype=np.float32)
    step = max(1, _CHUNK // max(reader.row_bytes, 1))  # converted a chunk at a time: memory near the result
    with open(reader.path, "rb", buffering=0) as f:
        for a in range(i, j, step):
            reader.read(f, a, min(j, a + step), out[(a - i) * per_row:])
    return out.reshape((j - i, *reader.shape[1:]) if reader.shape else ())


class RowReader:
    """Rows of one plain safetensors tensor, read straight into a caller's float32 buffer.

    The streaming exporter converts a tensor a slice of rows at a time; reading each slice into the
    same small buffers (the raw bytes and the float32 rows, both reused) keeps them in the CPU caches and
    spares the kernel a fresh zeroed page for every megabyte, which is most of the cost of widening
    bf16 when each slice gets new arrays. Any stored float or integer type is read (cast to float32; a scalar is
    one row); ``RowReader.of(lazy)`` is None for any other source or type.
    """

    def __init__(self, path: str, name: str, ent, start: int):
        self.path, self.name = path, name
        self.dtype = np.dtype("<u2" if ent.dtype == "BF16" else _NP[ent.dtype])
        self.bf16 = ent.dtype == "BF16"
        self.shape = tuple(ent.shape)
        self.offset = start + ent.begin
        self.nbytes = ent.end - ent.begin
        self.row_bytes = self.nbytes // max(self.shape[0], 1) if self.shape else self.nbytes
        self._raw = None

    @classmethod
    def of(cls, lazy) -> "RowReader | None":
        src = str(getattr(lazy, "source", "") or "")
        if not src.endswith(".safetensors"):
            return None
        entries, _, start = _header(src)
        ent = entries.get(lazy.name)
        if ent is None or (ent.dtype not in _NP and ent.dtype != "BF16"):
            return None
        return cls(src, lazy.name, ent, start)

    def read(self, f, i: int, j: int, out: np.ndarray) -> np.ndarray:
        """Rows i..j-1 into ``out`` (float32, at least that many elements): a view of ``out`` shaped as the rows.
        ``f`` is the open file (binary, unbuffered or buffered); the raw bytes go through one reused buffer."""
        n = (j - i) * self.row_bytes
        count = n // self.dtype.itemsize
        dst = out[:count]
        if self.dtype == np.float32:
            raw = memoryview(dst).cast("B")
        else:
            if self._raw is None or self._raw.nbytes < n:
                self._raw = np.empty(n, dtype=np.uint8)
            raw = memoryview(self._raw[:n])
        f.seek(self.offset + i * self.row_bytes)
        got = f.readinto(raw)
        if got != n:
            raise FormatError(f"{self.path}: file shrank while reading tensor {self.name!r}")
        if self.dtype != np.float32:
            part = self._raw[:n].view(self.dtype)
            if self.bf16:  # the top half of a float32: widen exactly
                np.left_shift(part, 16, out=dst.view(np.uint32), dtype=np.uint32)
            else:
                dst[:] = part
        return dst.reshape(j - i, *self.shape[1:]) if self.shape else dst.reshape(())
