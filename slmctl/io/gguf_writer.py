"""A streaming GGUF (v3) writer: metadata and tensor infos first, then tensor data one at a time.

Every tensor's name, shape and type is declared before any data is written (the infos hold the
offsets), so the caller streams tensors in order with memory near the largest one. The writer is an
explicit state machine (KV -> INFOS -> DATA -> closed) and refuses misuse loudly.
Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .atomic import Writeback
from .gguf_types import ggml_types

ALIGNMENT = 32

# GGUF value types (gguf.md)
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?", U64: "<Q",
           I64: "<q", F64: "<d"}
_NP = {U8: "<u1", I8: "<i1", U16: "<u2", I16: "<i2", U32: "<u4", I32: "<i4", F32: "<f4", BOOL: "<u1", U64: "<u8",
       I64: "<i8", F64: "<f8"}



class GGUFWriterError(RuntimeError):
    """Misuse of the writer (a programming error, not a user error)."""


@dataclass
class _Info:
    name: str
    shape: tuple[int, ...]  # numpy order (outermost first)
    gtype: str
    nbytes: int
    offset: int = 0


def tensor_nbytes(shape: tuple[int, ...], gtype: str) -> int:
    _, blk, size = ggml_types()[gtype]
    row = shape[-1] if shape else 1
    if row % blk:
        raise GGUFWriterError(f"row of {row} is not a multiple of the {gtype} block ({blk})")
    n = 1
    for d in shape[:-1]:
        n *= d
    return n * (row // blk) * size


def _pad(n: int, align: int = ALIGNMENT) -> int:
    return (align - n % align) % align


def _str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


class GGUFStreamWriter:
    """Write one GGUF file: ``add_*`` metadata, ``add_tensor_info`` for all tensors, then ``write_tensor`` each."""

    def __init__(self, path: str | os.PathLike, arch: str | None):
        self.path = Path(path)
        self._kv: list[bytes] = []
        self._keys: set[str] = set()
        self._infos: list[_Info] = []
        self._state = "kv"
        self._f: BinaryIO | None = None
        self._next = 0
        if arch is not None:  # an imatrix file has none
            self.add_string("general.architecture", arch)

    # ---------------------------------------------------------------- metadata
    def add(self, key: str, value: Any, vtype: int, item: int | None = None) -> None:
        if self._state != "kv":
            raise GGUFWriterError(f"metadata {key!r} added after the tensor infos")
        if key in self._keys:
            raise GGUFWriterError(f"metadata key {key!r} added twice")
        if (vtype == ARRAY) != (item is not None):
            raise GGUFWriterError(f"metadata {key!r}: an array needs an item type, a scalar none")
        self._keys.add(key)
        self._kv.append(_str(key) + struct.pack("<I", vtype) + self._value(value, vtype, item))

    def add_string(self, key: str, v: str) -> None:
        self.add(key, v, STRING)

    def add_u32(self, key: str, v: int) -> None:
        self.add(key, int(v), U32)

    def add_f32(self, key: str, v: float) -> None:
        self.add(key, float(v), F32)

    def add_bool(self, key: str, v: bool) -> None:
        self.add(key, bool(v), BOOL)

    def add_array(self, key: str, values, item: int) -> None:
        self.add(key, values, ARRAY, item)

    def has(self, key: str) -> bool:
        return key in self._keys

    @staticmethod
    def _value(value: Any, vtype: int, item: int | None) -> bytes:
        if vtype == ARRAY:
            head = struct.pack("<I", item) + struct.pack("<Q", len(value))
            if item == STRING:
                body = b"".join(_str(s) for s in value)
            else:
                body = np.asarray(value, dtype=_NP[item]).tobytes()
            return head + body
        if vtype == STRING:
            return _str(value)
        return struct.pack(_SCALAR[vtype], value)

    # ---------------------------------------------------------------- tensors
    def add_tensor_info(self, name: str, shape: tuple[int, ...], gtype: str) -> None:
        if self._state not in ("kv", "infos"):
            raise GGUFWriterError(f"tensor info {name!r} added after data writing began")
        if gtype not in ggml_types():
            raise GGUFWriterError(f"unknown ggml type {gtype!r}")
        if len(name.encode()) >= 64:
            raise GGUFWriterError(f"tensor name {name!r} is longer than 63 bytes")
        self._state = "infos"
        nbytes = tensor_nbytes(tuple(shape), gtype)
        info = _Info(name, tuple(int(d) for d in shape), gtype, nbytes, self._next)
        self._next += nbytes + _pad(nbytes)
        self._infos.append(info)

    def open(self) -> None:
        """Write the header, metadata and tensor infos; afterwards only tensor data may follow."""
        if self._state == "data":
            raise GGUFWriterError("header written twice")
        names = [i.name for i in self._infos]
        if len(set(names)) != len(names):
            raise GGUFWriterError("tensor names are not unique")
        self._f = open(self.path, "wb", buffering=1 << 20)
        head = [b"GGUF", struct.pack("<IQQ", 3, len(self._infos), len(self._kv))]
        head.extend(self._kv)
        for i in self._infos:
            dims = tuple(reversed(i.shape)) or (1,)  # ggml order: fastest dimension first
            head.append(_str(i.name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
                        + struct.pack("<IQ", ggml_types()[i.gtype][0], i.offset))
        blob = b"".join(head)
        self._head = blob
        self._f.write(blob)
        self._f.write(b"\0" * _pad(len(blob)))
        self._data_start = len(blob) + _pad(len(blob))
        self._by_name = {i.name: i for i in self._infos}
        self._state = "data"
        self._written = 0
        self._writeback = Writeback(self._f)

    def write_at(self, name: str, offset: int, data) -> None:
        """Write ``data`` at byte ``offset`` of tensor ``name``'s bytes, from any thread and in any order
        (positional writes: pwrite), so a converter can stream a tensor out a slice at a time through one small
        reused buffer: no tensor-sized array, no page faults for one. Each tensor written so is then committed
        in file order with ``filled(name)``."""
        if self._state != "data" or self._f is None:
            raise GGUFWriterError("write_at before open() or after close()")
        info = self._by_name[name]
        buf = memoryview(np.ascontiguousarray(data)).cast("B")
        if offset < 0 or offset + buf.nbytes > info.nbytes:
            raise GGUFWriterError(f"tensor {name!r}: bytes {offset}..{offset + buf.nbytes} outside its {info.nbytes}")
        self._pwrite(buf, self._data_start + info.offset + offset)

    def _pwrite(self, buf: memoryview, pos: int) -> None:
        try:
            while buf.nbytes:
                n = os.pwrite(self._f.fileno(), buf, pos)
                buf, pos = buf[n:], pos + n
        except OSError as exc:  # name the file (a full disk says where)
            raise OSError(exc.errno, exc.strerror, str(self.path)) from None

    def filled(self, name: str) -> None:
        """The next tensor in file order was written with write_at(): move past it."""
        info = self._next_info(name)
        end = self._data_start + info.offset + info.nbytes
        if _pad(info.nbytes):
            self._pwrite(memoryview(b"\0" * _pad(info.nbytes)), end)
        self._f.seek(end + _pad(info.nbytes))
        self._written += 1
        self._writeback.wrote()

    def _next_info(self, name: str) -> _Info:
        if self._state != "data" or self._f is None:
            raise GGUFWriterError("write_tensor before open() or after close()")
        if self._written >= len(self._infos):
            raise GGUFWriterError(f"tensor {name!r} is one more than declared")
        info = self._infos[self._written]
        if info.name != name:
            raise GGUFWriterError(f"tensor {name!r} written where {info.name!r} was declared")
        return info

    def write_tensor(self, name: str, data: np.ndarray) -> None:
        """Write the next tensor's bytes (already converted to its declared type)."""
        info = self._next_info(name)
        buf = memoryview(np.ascontiguousarray(data)).cast("B")
        if buf.nbytes != info.nbytes:
            raise GGUFWriterError(f"tensor {name!r}: {buf.nbytes} bytes, declared {info.nbytes} ({info.gtype} {info.shape})")
        self._f.write(buf)
        self._f.write(b"\0" * _pad(info.nbytes))
        self._written += 1
        self._writeback.wrote()  # the disk writes while the next tensors convert

    def patch_header(self, old: str, new: str) -> None:
        """Overwrite ``old``, which occurs exactly once in the written metadata, with ``new`` of the same
        UTF-8 length, in place (e.g. a provenance hash computed while the tensors were written)."""
        ob, nb = old.encode(), new.encode()
        if self._state != "data" or self._f is None:
            raise GGUFWriterError("patch_header before open() or after close()")
        if len(ob) != len(nb):
            raise GGUFWriterError(f"patch_header: {len(nb)} bytes cannot replace {len(ob)}")
        at = self._head.find(ob)
        if at < 0 or self._head.find(ob, at + 1) >= 0:
            raise GGUFWriterError(f"patch_header: {old!r} " + ("does not occur" if at < 0 else "occurs more than once")
                                 + " in the metadata")
        self._f.flush()
        os.pwrite(self._f.fileno(), nb, at)
        self._head = self._head[:at] + nb + self._head[at + len(ob):]

    def close(self) -> None:
        if self._f is None:
            raise GGUFWriterError("close() before open()")
        if self._written != len(self._infos):
            missing = self._infos[self._written].name
            self.abort()
            raise GGUFWriterError(f"closed with {len(self._infos) - self._written} tensor(s) unwritten, first {missing!r}")
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        self._f = None
        self._state = "closed"

    def abort(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        self._state = "closed"

    @property
    def infos(self) -> list[_Info]:
        return list(self._infos)
