"""GGUF: a bounds-checked reader (metadata, tensor infos, lazy dequantising loaders).

Every count, length and offset is checked against the bytes that remain before anything is
allocated, so a hostile file ends in a FormatError instead of a crash, a hang or a huge allocation.
Block maths for dequantisation comes from the ``gguf`` package.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FormatError, InputError, UnsupportedError
from .lazy import LazyTensor

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4

# GGUF value types: id -> (struct code, size); 8 = string, 9 = array
_SCALARS = {0: ("B", 1), 1: ("b", 1), 2: ("H", 2), 3: ("h", 2), 4: ("I", 4), 5: ("i", 4),
            6: ("f", 4), 7: ("?", 1), 10: ("Q", 8), 11: ("q", 8), 12: ("d", 8)}
_NP = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8", 12: "<f8"}
STRING, ARRAY = 8, 9


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order (slowest first): reversed GGUF ne[]
    type_id: int
    type_name: str
    offset: int  # absolute file offset
    nbytes: int


@dataclass
class GGUFFile:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    data_start: int = 0

    def lazy_tensors(self) -> dict[str, LazyTensor]:
        return {n: LazyTensor(n, t.type_name, t.shape, t.nbytes, _loader(self.path, t), str(self.path))
                for n, t in self.tensors.items()}


class _Cursor:
    def __init__(self, buf, path: Path):
        self.buf, self.pos, self.path, self.size = buf, 0, path, len(buf)

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise FormatError(f"{self.path}: {what} needs {n} bytes at offset {self.pos}, "
                              f"past the end of the file ({self.size} bytes)",
                              hint="the file is truncated or corrupt; download or export it again")

    def scalar(self, vtype: int, what: str):
        code, size = _SCALARS[vtype]
        self.need(size, what)
        (v,) = struct.unpack_from("<" + code, self.buf, self.pos)
        self.pos += size
        return v

    def u32(self, what: str) -> int:
        return self.scalar(4, what)

    def u64(self, what: str) -> int:
        return self.scalar(10, what)

    def string(self, what: str) -> str:
        n = self.u64(f"length of {what}")
        self.need(n, what)
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int, what: str, depth: int = 0):
        if vtype in _SCALARS:
            return self.scalar(vtype, what)
        if vtype == STRING:
            return self.string(what)
        if vtype == ARRAY:
            if depth > 2:
                raise FormatError(f"{self.path}: {what}: arrays nested too deep")
            etype = self.u32(f"element type of {what}")
            count = self.u64(f"length of {what}")
            if etype in _SCALARS:
                import numpy as np

                size = _SCALARS[etype][1]
                self.need(count * size, what)
                arr = np.frombuffer(self.buf, dtype=_NP[etype], count=count, offset=self.pos).copy()
                self.pos += count * size
                return arr
            if etype not in (STRING, ARRAY):
                raise FormatError(f"{self.path}: {what}: unknown array element type {etype}")
            # each element needs at least 8 bytes (a length): check before looping
            self.need(count * 8, what)
            return [self.value(etype, what, depth + 1) for _ in range(count)]
        raise FormatError(f"{self.path}: {what}: unknown value type {vtype}",
                          hint="the file is corrupt or from a newer GGUF version")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


# keys whose type the GGUF spec fixes and that slmctl reads: a file that breaks them is corrupt
_KNOWN_KEYS = {
    "general.architecture": (lambda v: isinstance(v, str), "a string"),
    "general.alignment": (_is_int, "an integer"),
    "general.file_type": (_is_int, "an integer"),
    "general.name": (lambda v: isinstance(v, str), "a string"),
    "tokenizer.ggml.model": (lambda v: isinstance(v, str), "a string"),
    "tokenizer.ggml.pre": (lambda v: isinstance(v, str), "a string"),
    "tokenizer.ggml.tokens": (_is_str_list, "an array of strings"),
    "tokenizer.ggml.bos_token_id": (_is_int, "an integer"),
    "tokenizer.ggml.eos_token_id": (_is_int, "an integer"),
    "tokenizer.chat_template": (lambda v: isinstance(v, str), "a string"),
    "slmctl.provenance": (lambda v: isinstance(v, str), "a string"),
}


def _check_known_keys(path: Path, meta: dict[str, Any]) -> None:
    for key, (ok, what) in _KNOWN_KEYS.items():
        if key in meta and not ok(meta[key]):
            raise FormatError(f"{path}: metadata {key!r} must be {what}, not {type(meta[key]).__name__}",
                              hint="the file is corrupt or was written by a broken converter")


def read(path: str | os.PathLike) -> GGUFFile:
    """Parse and validate a GGUF file's header, metadata and tensor infos."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    path = Path(path)
    try:
        size = path.stat().st_size
        if size < 24:
            raise FormatError(f"{path}: not a GGUF file (only {size} bytes)")
        with open(path, "rb") as f:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        c = _Cursor(buf, path)
        if bytes(buf[:4]) != MAGIC:
            raise FormatError(f"{path}: not a GGUF file (magic {bytes(buf[:4])!r}, expected b'GGUF')")
        c.pos = 4
        version = c.u32("version")
        if version not in (2, 3):
            raise UnsupportedError(f"{path}: GGUF version {version} is not supported (2 and 3 are)",
                                   hint="convert the file with a current llama.cpp")
        n_tensors = c.u64("tensor count")
        n_kv = c.u64("metadata count")
        # a KV needs >= 8 (key length) + 4 (type) + 1 bytes; a tensor info >= 8 + 4 + 8 + 4 + 8
        if n_kv * 13 > size - c.pos or n_tensors * 32 > size - c.pos:
            raise FormatError(f"{path}: claims {n_tensors} tensors and {n_kv} metadata entries, "
                              f"more than a {size}-byte file can hold", hint="the file is corrupt or hostile")
        meta: dict[str, Any] = {}
        for i in range(n_kv):
            key = c.string(f"metadata key #{i}")
            vtype = c.u32(f"type of {key}")
            meta[key] = c.value(vtype, f"metadata {key!r}")
        _check_known_keys(path, meta)
        align = meta.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(align, int) or align <= 0 or align & (align - 1) or align > 1 << 20:
            raise FormatError(f"{path}: general.alignment {align!r} is not a power of two")
        infos = []
        for i in range(n_tensors):
            name = c.string(f"tensor #{i} name")
            nd = c.u32(f"tensor {name!r} dims")
            if nd == 0 or nd > MAX_DIMS:
                raise FormatError(f"{path}: tensor {name!r} has {nd} dimensions (1 to {MAX_DIMS} allowed)")
            ne = [c.u64(f"tensor {name!r} dim") for _ in range(nd)]
            tid = c.u32(f"tensor {name!r} type")
            off = c.u64(f"tensor {name!r} offset")
            infos.append((name, ne, tid, off))
        data_start = c.pos + (-c.pos % align)
        tensors: dict[str, TensorInfo] = {}
        for name, ne, tid, off in infos:
            try:
                qt = GGMLQuantizationType(tid)
            except ValueError:
                raise UnsupportedError(f"{path}: tensor {name!r} has unknown type id {tid}",
                                       hint="the file is corrupt or needs a newer slmctl/gguf package") from None
            block, tsize = GGML_QUANT_SIZES[qt]
            if any(d > 1 << 40 for d in ne):
                raise FormatError(f"{path}: tensor {name!r} has an implausible shape {ne}")
            n = 1
            for d in ne:
                n *= d
            if ne[0] % block:
                raise FormatError(f"{path}: tensor {name!r}: row of {ne[0]} is not a multiple of {qt.name} blocks ({block})")
            nbytes = n // block * tsize
            start = data_start + off
            if off % align or start + nbytes > size:
                raise FormatError(f"{path}: tensor {name!r} data [{start}, {start + nbytes}) lies beyond the end "
                                  f"of the file ({size} bytes) or is misaligned",
                                  hint="the file is truncated; download or export it again")
            if name in tensors:
                raise FormatError(f"{path}: tensor {name!r} appears twice")
            tensors[name] = TensorInfo(name, tuple(reversed(ne)), tid, qt.name, start, nbytes)
        return GGUFFile(path, version, meta, tensors, data_start)
    finally:
        buf.close()


def _loader(path: Path, info: TensorInfo):
    def load():
        import numpy as np
        import torch
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        qt = GGMLQuantizationType(info.type_id)
        if info.nbytes == 0:  # an empty tensor: no bytes to view or dequantise (and no row to reshape into)
            return torch.zeros(info.shape, dtype=torch.bfloat16 if qt == GGMLQuantizationType.BF16
                               else torch.float16 if qt == GGMLQuantizationType.F16 else torch.float32)
        with open(path, "rb") as f:
            f.seek(info.offset)
            raw = f.read(info.nbytes)
        if len(raw) != info.nbytes:
            raise FormatError(f"{path}: file shrank while reading tensor {info.name!r}")
        if qt == GGMLQuantizationType.F32:
            arr = np.frombuffer(raw, dtype="<f4").reshape(info.shape)
            return torch.from_numpy(arr.copy())
        if qt == GGMLQuantizationType.F16:
            return torch.from_numpy(np.frombuffer(raw, dtype="<f2").reshape(info.shape).copy())
        if qt == GGMLQuantizationType.BF16:
            return torch.frombuffer(bytearray(raw), dtype=torch.bfloat16).reshape(info.shape)
        data = np.frombuffer(raw, dtype=np.uint8)
        try:
            arr = dequantize(data.reshape(info.shape[:-1] + (-1,)) if len(info.shape) > 1 else data, qt)
        except NotImplementedError:
            raise UnsupportedError(f"{path}: cannot dequantise tensor {info.name!r} of type {qt.name}") from None
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32).reshape(info.shape))

    return load


def scalar_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Metadata without the big arrays (vocabularies), for display."""
    out = {}
    for k, v in meta.items():
        if isinstance(v, (list,)) or hasattr(v, "shape"):
            out[k] = f"[{len(v)} items]"
        else:
            out[k] = v
    return out
