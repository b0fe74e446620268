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
    src = getattr(lazy, "source", "")
    entries, start, ent = {}, 0, None
    if src and str(src).endswith(".safetensors"):
        entries, _, start = _header(str(src))
        ent = entries.get(lazy.name)
    if ent is None or (ent.dtype not in _NP and ent.dtype != "BF16"):  # not a plain safetensors float: torch decodes
        t = lazy.load()
        if hasattr(t, "float"):
            t = t.float().numpy()
        a = np.asarray(t, dtype=np.float32)
        return a if rows is None else a[rows[0]:rows[1]]
    src_dtype = np.dtype("<u2" if ent.dtype == "BF16" else _NP[ent.dtype])
    shape = tuple(ent.shape)
    begin, n = ent.begin, ent.end - ent.begin
    if rows is not None:
        if not shape:
            raise FormatError(f"{src}: tensor {lazy.name!r} is a scalar; it has no rows")
        row = n // max(shape[0], 1)
        i, j = max(0, rows[0]), min(shape[0], rows[1])
        begin, n, shape = begin + i * row, max(0, j - i) * row, (max(0, j - i), *shape[1:])
    out = np.empty(n // src_dtype.itemsize, dtype=np.float32)
    with open(Path(src), "rb") as f:
        f.seek(start + begin)
        if src_dtype == np.float32:  # straight into the result, no second copy
            got = f.readinto(memoryview(out).cast("B"))
        else:  # converted chunk by chunk, so memory stays near the float32 result
            got, step = 0, _CHUNK // src_dtype.itemsize
            for i in range(0, out.size, step):
                buf = f.read(min(step, out.size - i) * src_dtype.itemsize)
                part = np.frombuffer(buf, dtype=src_dtype)
                if ent.dtype == "BF16":  # bf16 is the top half of a float32: widen exactly, in place (no temporaries)
                    np.left_shift(part, 16, out=out[i:i + part.size].view(np.uint32), dtype=np.uint32)
                else:
                    out[i:i + part.size] = part
                got += len(buf)
    if got != n:
        raise FormatError(f"{src}: file shrank while reading tensor {lazy.name!r}")
    return out.reshape(shape)


class RowReader:
    """Rows of one plain safetensors tensor, read straight into a caller's float32 buffer.

    The streaming exporter converts a tensor a slice of rows at a time; reading each slice into the
    same small buffers (the raw bytes and the float32 rows, both reused) keeps them in the CPU caches and
    spares the kernel a fresh zeroed page for every megabyte, which is most of the cost of widening
    bf16 when each slice gets new arrays. ``RowReader.of(lazy)`` is None for any other source.
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
        if ent is None or len(ent.shape) < 1 or (ent.dtype not in _NP and ent.dtype != "BF16") \
                or not np.issubdtype(np.dtype(_NP.get(ent.dtype, "<f2")), np.floating):
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
        return dst.reshape(j - i, *self.shape[1:])
