"""safetensors: a validating header reader and a streaming, sharded writer.

The header is checked before any tensor is touched: its length against the file, every dtype,
shape and offset pair, and overlaps, so a hostile or truncated file ends in a FormatError.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..errors import FormatError, InputError
from .atomic import Writeback
from .lazy import LazyTensor

MAX_HEADER = 100 * 1024 * 1024  # the reference implementation's own limit
MAX_RANK = 64  # torch's own limit on dimensions; what slmctl writes it must read back

# safetensors dtype -> (itemsize in bytes, torch dtype name)
DTYPES: dict[str, tuple[float, str]] = {
    "F64": (8, "float64"), "F32": (4, "float32"), "F16": (2, "float16"), "BF16": (2, "bfloat16"),
    "I64": (8, "int64"), "I32": (4, "int32"), "I16": (2, "int16"), "I8": (1, "int8"),
    "U8": (1, "uint8"), "U16": (2, "uint16"), "U32": (4, "uint32"), "U64": (8, "uint64"),
    "BOOL": (1, "bool"), "F8_E4M3": (1, "float8_e4m3fn"), "F8_E5M2": (1, "float8_e5m2"),
}
TORCH_TO_ST = {v[1]: k for k, v in DTYPES.items()}


@dataclass
class _Entry:
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def read_header(path: str | os.PathLike) -> tuple[dict[str, _Entry], dict[str, str], int]:
    """Parse and validate a safetensors header: (entries, metadata, data start offset)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise FormatError(f"{path}: not a safetensors file (only {size} bytes)",
                                  hint="the file is truncated; download or export it again")
            (n,) = struct.unpack("<Q", head)
            if 8 + n > size:
                raise FormatError(f"{path}: header length {n} runs past the end of the file ({size} bytes)",
                                  hint="the file is truncated; download or export it again")
            if n > MAX_HEADER or n == 0:
                raise FormatError(f"{path}: header length {n} is not plausible (file has {size} bytes)",
                                  hint="this is not a safetensors file, or it is corrupt")
            raw = f.read(n)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        # ValueError covers bad UTF-8, bad JSON and integers past Python's digit limit;
        # RecursionError, arrays nested thousands deep
        reason = "nested too deep" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise FormatError(f"{path}: header is not valid JSON ({reason})",
                          hint="this is not a safetensors file, or it is corrupt") from None
    if not isinstance(header, dict):
        raise FormatError(f"{path}: header is not a JSON object")
    data_start = 8 + n
    data_size = size - data_start
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise FormatError(f"{path}: __metadata__ must map strings to strings")
    entries: dict[str, _Entry] = {}
    for name, info in header.items():
        where = f"{path}: tensor {name!r}"
        if not isinstance(info, dict):
            raise FormatError(f"{where}: entry is not an object")
        dtype, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPES:
            raise FormatError(f"{where}: unknown dtype {dtype!r}", hint=f"known: {', '.join(DTYPES)}")
        if (not isinstance(shape, list) or len(shape) > MAX_RANK
                or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**53 for d in shape)):
            raise FormatError(f"{where}: bad shape {shape!r}")
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)):
            raise FormatError(f"{where}: bad data_offsets {offs!r}")
        b, e = offs
        if not 0 <= b <= e <= data_size:
            raise FormatError(f"{where}: data_offsets [{b}, {e}] lie outside the data ({data_size} bytes)",
                              hint="the file is truncated or corrupt")
        want = math.prod(shape) * DTYPES[dtype][0]
        if e - b != want:
            raise FormatError(f"{where}: {e - b} bytes for shape {shape} of {dtype} (needs {want})")
        entries[name] = _Entry(dtype, tuple(shape), b, e)
    last = 0
    for name, ent in sorted(entries.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if ent.begin < last and ent.end > ent.begin:
            raise FormatError(f"{path}: tensor {name!r} overlaps another tensor's bytes")
        last = max(last, ent.end)
    return entries, meta, data_start


def _loader(path: Path, ent: _Entry, data_start: int):
    def load():
        import torch

        n = ent.end - ent.begin
        buf = bytearray(n)
        with open(path, "rb") as f:
            f.seek(data_start + ent.begin)
            got = f.readinto(buf)
        if got != n:
            raise FormatError(f"{path}: file shrank while reading a tensor")
        tdtype = getattr(torch, DTYPES[ent.dtype][1])
        if n == 0:
            return torch.empty(ent.shape, dtype=tdtype)
        return torch.frombuffer(buf, dtype=tdtype).reshape(ent.shape)

    return load


def _row_loader(path: Path, ent: _Entry, data_start: int):
    """Reader of rows ``idx`` of a 2-D tensor (``LazyTensor.rows``), one read per run of consecutive rows."""

    def rows(idx):
        import torch

        idx = [int(i) for i in idx]
        n_rows, width = ent.shape
        row_bytes = width * DTYPES[ent.dtype][0]
        buf = bytearray(len(idx) * row_bytes)
        view = memoryview(buf)
        with open(path, "rb") as f:
            k = 0
            while k < len(idx):  # one read per run of consecutive rows
                if not 0 <= idx[k] < n_rows:
                    raise IndexError(f"{path}: row {idx[k]} of a {n_rows}-row tensor")
                e = k + 1
                while e < len(idx) and idx[e] == idx[e - 1] + 1:
                    e += 1
                f.seek(data_start + ent.begin + idx[k] * row_bytes)
                want = (e - k) * row_bytes
                if f.readinto(view[k * row_bytes:e * row_bytes]) != want:
                    raise FormatError(f"{path}: file shrank while reading a tensor")
                k = e
        tdtype = getattr(torch, DTYPES[ent.dtype][1])
        if not buf:
            return torch.empty((0, width), dtype=tdtype)
        return torch.frombuffer(buf, dtype=tdtype).reshape(len(idx), width)

    return rows


def open_file(path: str | os.PathLike) -> tuple[dict[str, LazyTensor], dict[str, str]]:
    """Lazy tensors and metadata of one .safetensors file."""
    path = Path(path)
    entries, meta, start = read_header(path)
    out = {
        name: LazyTensor(name, e.dtype, e.shape, e.end - e.begin, _loader(path, e, start), str(path),
                         _row_loader(path, e, start) if len(e.shape) == 2 else None)
        for name, e in entries.items()
    }
    return out, meta


def parse_size(text: str | int | None) -> int | None:
    """'2GB', '500MB', '1.5GiB' or a byte count."""
    if text is None or text == "":
        return None
    if isinstance(text, int):
        return text
    t = text.strip().upper().replace("IB", "B")
    units = {"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40, "B": 1}
    for u, m in units.items():
        if t.endswith(u):
            try:
                return int(float(t[: -len(u)]) * m)
            except ValueError:
                break
    try:
        return int(t)
    except ValueError:
        from ..errors import UsageError

        raise UsageError(f"cannot read size {text!r}", hint="write it like 2GB, 500MB or 1048576") from None


def _contiguous(tensor):
    import numpy as np
    import torch

    if isinstance(tensor, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(tensor))
    return tensor.detach().cpu().contiguous()


def _header_room(names: list[str], metadata: dict[str, str] | None) -> int:
    """Bytes to reserve for a shard's header (8-byte length included), 8-aligned: every named tensor's entry
    with room for long shapes and offsets, and the metadata twice over (provenance is completed at the end)."""
    meta = len(json.dumps(metadata or {}))
    n = 8 + 64 + sum(len(x.encode()) + 160 for x in names) + 2 * meta + (64 << 10)
    return -(-n // 8) * 8


class ShardedWriter:
    """Stream tensors into safetensors shards of at most ``max_shard_size`` bytes.

    Each shard's tensor bytes go to a scratch file as they arrive (memory stays near one tensor);
    on close the header is written and the bytes are appended behind it. With one shard the file
    is ``model.safetensors``; with more, ``model-0000i-of-0000n.safetensors`` plus an index.

    As a context manager it closes on success (unless closed already; ``meta`` may be completed inside
    the block) and, on an exception, removes the scratch files and lets the exception through.
    """

    def __init__(self, folder: Path, *, max_shard_size: int | None = None, metadata: dict[str, str] | None = None,
                 single_file: Path | None = None, prefix: str = "model", expected: list[str] | None = None):
        self.folder = Path(folder)
        # the names of the tensors to come, when the caller knows them: each shard's scratch file then starts with
        # room for its header, and a header that fits is written into it, so the shard is renamed into place
        # instead of copied behind its header (which wrote every byte twice)
        self._reserve = _header_room(expected, metadata) if expected else 0
        self.max = max_shard_size
        self.meta = dict(metadata or {})
        self.meta.setdefault("format", "pt")
        self.single_file = single_file
        self.prefix = prefix
        self._shards: list[dict[str, Any]] = []
        self._names: set[str] = set()
        self.paths: list[Path] | None = None  # set by close()
        self._new_shard()

    def __enter__(self) -> "ShardedWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self.paths is None:
            self.close()

    def _new_shard(self) -> None:
        i = len(self._shards)
        if self.single_file is not None:  # beside the (temporary) output file, sharing its name
            scratch = self.single_file.parent / f"{self.single_file.name}.body{i}"
        else:
            scratch = self.folder / f".shard{i}.body"
        fh = open(scratch, "wb")
        if self._reserve:
            fh.seek(self._reserve)  # a hole the header is written into on close
        self._shards.append({"scratch": scratch, "fh": fh, "entries": {}, "size": 0,
                             "writeback": Writeback(fh, self._reserve)})

    def add(self, name: str, tensor) -> None:
        """Append one tensor (torch or numpy), converted to contiguous bytes."""
        t = _contiguous(tensor)
        self.add_chunks(name, tuple(t.shape), [t])

    def add_chunks(self, name: str, shape: tuple[int, ...], chunks) -> None:
        """Append one tensor of ``shape`` given as consecutive pieces (e.g. blocks of rows, all of one dtype),
        each written as it comes: memory stays near one piece rather than the tensor."""
        import math

        import torch

        if name in self._names:
            raise ValueError(f"tensor {name} written twice")
        self._names.add(name)
        it = iter(chunks)
        t = _contiguous(next(it))
        dtype = TORCH_TO_ST[str(t.dtype).removeprefix("torch.")]
        nbytes = math.prod(shape) * t.element_size()
        cur = self._shards[-1]
        if self.max and cur["size"] and cur["size"] + nbytes > self.max:
            self._new_shard()
            cur = self._shards[-1]
        begin = cur["size"]
        wrote = 0
        while t is not None:
            if TORCH_TO_ST[str(t.dtype).removeprefix("torch.")] != dtype:
                raise ValueError(f"tensor {name}: pieces of different dtypes")
            n = t.numel() * t.element_size()
            if n:
                # flatten before the byte view: a 0-d tensor (a scalar) cannot be viewed as bytes
                cur["fh"].write(memoryview(t.reshape(-1).view(torch.uint8).numpy()) if t.dtype != torch.bool
                                else t.numpy().tobytes())
                cur["writeback"].wrote()  # the disk writes while the next pieces come
            wrote += n
            t = next(it, None)
            if t is not None:
                t = _contiguous(t)
        if wrote != nbytes:
            raise ValueError(f"tensor {name}: {wrote} bytes written for shape {list(shape)} (needs {nbytes})")
        cur["size"] += nbytes
        cur["entries"][name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, begin + nbytes]}

    def close(self) -> list[Path]:
        """Write headers and final shard files; return their paths (again, when called twice)."""
        if self.paths is not None:
            return self.paths
        n = len(self._shards)
        paths: list[Path] = []
        weight_map: dict[str, str] = {}
        total = 0
        for i, sh in enumerate(self._shards):
            sh["fh"].close()
            if self.single_file is not None:
                dest = self.single_file
            elif n == 1:
                dest = self.folder / f"{self.prefix}.safetensors"
            else:
                dest = self.folder / f"{self.prefix}-{i + 1:05d}-of-{n:05d}.safetensors"
            header = dict(sh["entries"])
            header["__metadata__"] = self.meta
            raw = json.dumps(header, separators=(",", ":"), sort_keys=False).encode()
            raw += b" " * (-len(raw) % 8)  # align the data to 8 bytes, as the reference writer does
            room = self._reserve - 8
            if self._reserve and len(raw) <= room:  # spaces pad a JSON header (the format allows whitespace)
                with open(sh["scratch"], "r+b") as out:
                    out.write(struct.pack("<Q", room))
                    out.write(raw + b" " * (room - len(raw)))
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(sh["scratch"], dest)
            else:
                with open(dest, "wb") as out, open(sh["scratch"], "rb") as body:
                    out.write(struct.pack("<Q", len(raw)))
                    out.write(raw)
                    body.seek(self._reserve)
                    shutil.copyfileobj(body, out, 8 << 20)
                    out.flush()
                    os.fsync(out.fileno())
                os.unlink(sh["scratch"])
            paths.append(dest)
            total += sh["size"]
            for name in sh["entries"]:
                weight_map[name] = dest.name
        if n > 1 and self.single_file is None:
            index = {"metadata": {"total_size": total, **self.meta}, "weight_map": weight_map}
            (self.folder / f"{self.prefix}.safetensors.index.json").write_text(json.dumps(index, indent=2))
        self.paths = paths
        return paths

    def abort(self) -> None:
        for sh in self._shards:
            try:
                sh["fh"].close()  # flushing may fail again on a full disk: the scratch goes anyway
            except OSError:
                pass
            try:
                os.unlink(sh["scratch"])
            except FileNotFoundError:
                pass


def write_tensors(folder: Path, tensors: Iterable[tuple[str, Any]], **kw) -> list[Path]:
    with ShardedWriter(folder, **kw) as w:
        for name, t in tensors:
            w.add(name, t)
        return w.close()
