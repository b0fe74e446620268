"""Importance matrices on disk, in llama.cpp's GGUF imatrix format (what llama-quantize reads).

Per weight ``W``: tensors ``W.in_sum2`` (f32, sum of squared activations per input channel) and
``W.counts`` (f32, tokens seen), plus ``imatrix.datasets``, ``imatrix.chunk_count`` and
``imatrix.chunk_size``. The legacy ``.dat`` format is read too.
Reference: https://github.com/ggml-org/llama.cpp/blob/master/tools/imatrix/README.md
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from ..errors import FormatError, InputError
from .atomic import atomic_path
from .gguf_writer import STRING, GGUFStreamWriter


def write_imatrix(path: Path, sums: dict[str, tuple[np.ndarray, int]], *, datasets: list[str], chunk_size: int,
                  chunk_count: int, force: bool = False, provenance: str | None = None) -> Path:
    with atomic_path(path, force=force) as tmp:
        w = GGUFStreamWriter(tmp, None)
        w.add_string("general.type", "imatrix")
        w.add_array("imatrix.datasets", datasets, STRING)
        w.add_u32("imatrix.chunk_count", chunk_count)
        w.add_u32("imatrix.chunk_size", chunk_size)
        if provenance:
            w.add_string("slmctl.provenance", provenance)
        names = sorted(sums)
        for n in names:
            w.add_tensor_info(f"{n}.in_sum2", (len(sums[n][0]),), "f32")
            w.add_tensor_info(f"{n}.counts", (1,), "f32")
        w.open()
        try:
            for n in names:
                s, c = sums[n]
                w.write_tensor(f"{n}.in_sum2", np.asarray(s, dtype=np.float32))
                w.write_tensor(f"{n}.counts", np.array([c], dtype=np.float32))
            w.close()
        except BaseException:
            w.abort()
            raise
    return path


def read_imatrix(path: Path) -> dict[str, np.ndarray]:
    """{tensor name: mean squared activation per input channel} from a GGUF or legacy .dat imatrix."""
    if not path.is_file():
        raise InputError(f"importance matrix {path} does not exist")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"GGUF":
        from .gguf import read

        g = read(path)
        lazy = g.lazy_tensors()
        out: dict[str, np.ndarray] = {}
        for name, lt in lazy.items():
            if not name.endswith(".in_sum2"):
                continue
            base = name[: -len(".in_sum2")]
            if base + ".counts" not in lazy:
                raise FormatError(f"{path}: {name} has no matching .counts tensor")
            s = lt.load().numpy().astype(np.float32).reshape(-1)
            c = lazy[base + ".counts"].load().numpy().astype(np.float32).reshape(-1)
            n = len(c)
            if n < 1 or s.size % n:
                raise FormatError(f"{path}: {name} has {s.size} values for {n} count(s)")
            s = s.reshape(n, -1) / np.maximum(c, 1)[:, None]
            out[base] = s.reshape(-1)
        if not out:
            raise FormatError(f"{path}: no *.in_sum2 tensors; not an importance matrix")
        return out
    return _read_legacy(path)


def _read_legacy(path: Path) -> dict[str, np.ndarray]:
    data = path.read_bytes()
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(data):
            raise FormatError(f"{path}: truncated importance matrix (needs {n} bytes at {pos})",
                              hint="recompute it: slmctl export MODEL --format gguf --outtype q4_k_m --data TEXT")
        b = data[pos:pos + n]
        pos += n
        return b

    (n_entries,) = struct.unpack("<i", take(4))
    if n_entries < 1 or n_entries > 1 << 20:
        raise FormatError(f"{path}: not an importance matrix ({n_entries} entries)")
    out = {}
    for _ in range(n_entries):
        (ln,) = struct.unpack("<i", take(4))
        if ln < 1 or ln > 1024:
            raise FormatError(f"{path}: bad tensor name length {ln}")
        name = take(ln).decode("utf-8", "replace")
        ncall, nval = struct.unpack("<ii", take(8))
        if nval < 1 or nval * 4 > len(data):
            raise FormatError(f"{path}: bad value count {nval} for {name}")
        vals = np.frombuffer(take(4 * nval), dtype="<f4").astype(np.float32)
        out[name] = vals / max(ncall, 1)  # legacy files store sums scaled to ncall calls
    return out
