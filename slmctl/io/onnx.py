"""ONNX: open a model for inspection without loading external data blobs.

A model from a stranger may name any file as its external data: ``../../etc/passwd``, an absolute
path, or a link that leads out of the folder. Every tensor's external data (initializers and the
tensors inside nodes) is checked when the model is opened, before any of it is read: it must name a
regular file inside the model's folder, reached without leaving it, and its offset and length must
lie inside that file.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from ..errors import FormatError, InputError, UnsupportedError
from .lazy import LazyTensor

# TensorProto.DataType -> (torch dtype name, bytes per element); others are listed but not loaded
_TORCH = {1: ("float32", 4), 2: ("uint8", 1), 3: ("int8", 1), 4: ("uint16", 2), 5: ("int16", 2), 6: ("int32", 4),
          7: ("int64", 8), 9: ("bool", 1), 10: ("float16", 2), 11: ("float64", 8), 12: ("uint32", 4),
          13: ("uint64", 8), 16: ("bfloat16", 2), 17: ("float8_e4m3fn", 1), 19: ("float8_e5m2", 1)}
EXTERNAL = 1  # TensorProto.EXTERNAL


def model_file(path: Path) -> Path:
    if path.is_dir():
        cands = [path / "model.onnx"] if (path / "model.onnx").is_file() else sorted(path.glob("*.onnx"))
        if not cands:
            raise FormatError(f"{path}: no .onnx file in the folder")
        return cands[0]
    return path


def _all_tensors(model) -> list:
    """Every TensorProto of the model: initializers, and tensors inside node attributes and subgraphs."""
    try:
        from onnx.external_data_helper import _get_all_tensors

        return list(_get_all_tensors(model))
    except ImportError:  # pragma: no cover - older/newer onnx
        return list(model.graph.initializer)


def _uses_external(t) -> bool:
    return t.data_location == EXTERNAL or len(t.external_data) > 0


def _non_negative(text: str | None, what: str, where: str) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or not text.isascii():
        raise FormatError(f"{where}: external data {what} {text[:40]!r} is not a non-negative integer")
    return int(text)


def external_location(t, folder: Path, model_path: Path) -> tuple[Path, int, int | None]:
    """(file, offset, length) of a tensor's external data, after checking it stays inside ``folder``."""
    where = f"{model_path}: tensor {_text(t.name)[:200]!r}"
    info = {_text(kv.key): _text(kv.value) for kv in t.external_data}
    loc = info.get("location")
    if not loc or "\0" in loc or "\ufffd" in loc:
        raise FormatError(f"{where}: external data has no usable location ({(loc or '')[:200]!r})")
    try:
        return _external_location(info, loc, where, folder)
    except (OSError, RuntimeError) as exc:  # a name too long, a loop of links, a folder we may not read
        reason = getattr(exc, "strerror", None) or str(exc)[:200]
        raise InputError(f"{where}: cannot use external data {loc[:200]!r}: {reason}") from None


def _text(v) -> str:
    """protobuf hands back bytes for strings that are not valid UTF-8."""
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _external_location(info: dict[str, str], loc: str, where: str, folder: Path) -> tuple[Path, int, int | None]:
    hint = "slmctl reads external data only from files inside the model's folder; do not trust this model"
    if PurePosixPath(loc).is_absolute() or PureWindowsPath(loc).is_absolute() or PureWindowsPath(loc).drive \
            or loc.startswith(("/", "\\")):
        raise InputError(f"{where}: refused: external data points at the absolute path {loc[:200]!r}", hint=hint)
    parts = PureWindowsPath(loc).parts  # splits on / and \ alike
    if ".." in parts:
        raise InputError(f"{where}: refused: external data location {loc[:200]!r} leaves the model folder", hint=hint)
    root = folder.resolve()
    target = folder.joinpath(*parts)
    # walk the components: a symbolic link may point anywhere inside the folder, never out of it
    cur = folder
    for part in parts:
        cur = cur / part
        if cur.is_symlink():
            real = cur.resolve()
            if real != root and root not in real.parents:
                raise InputError(f"{where}: refused: external data {loc[:200]!r} is a symbolic link out of the "
                                 f"model folder (to {real})", hint=hint)
    real = target.resolve()
    if root not in real.parents:
        raise InputError(f"{where}: refused: external data {loc[:200]!r} resolves outside the model folder", hint=hint)
    if not target.is_file():
        raise InputError(f"{where}: external data file {loc[:200]!r} is missing or not a file",
                         hint="copy the whole model folder, with the files beside model.onnx")
    offset = _non_negative(info.get("offset"), "offset", where) or 0
    length = _non_negative(info.get("length"), "length", where)
    size = target.stat().st_size
    if offset > size or (length is not None and offset + length > size):
        raise FormatError(f"{where}: external data [{offset}, {offset + (length or 0)}) lies beyond the end of "
                          f"{loc[:200]!r} ({size} bytes)", hint="the file is truncated or corrupt")
    return target, offset, length


def _loader(t, shape: tuple[int, ...], ext: tuple[Path, int, int | None] | None, model_path: Path):
    def load():
        import torch

        where = f"{model_path}: tensor {_text(t.name)[:200]!r}"
        if t.data_type not in _TORCH:
            raise UnsupportedError(f"{where}: ONNX data type {t.data_type} cannot be loaded as a torch tensor")
        tname, size = _TORCH[t.data_type]
        n = 1
        for d in shape:
            n *= d
        want = n * size
        if ext is not None:
            path, offset, length = ext
            if length is not None and length != want:
                raise FormatError(f"{where}: external data holds {length} bytes, shape {list(shape)} needs {want}")
            # check before reading: f.read(want) would first allocate ``want`` bytes, however big
            avail = path.stat().st_size - offset
            if want > avail:
                raise FormatError(f"{where}: shape {list(shape)} needs {want} bytes of external data, "
                                  f"the file holds {max(avail, 0)} from offset {offset}",
                                  hint="the file is truncated or corrupt")
            with open(path, "rb") as f:
                f.seek(offset)
                raw = f.read(want)
            if len(raw) != want:
                raise FormatError(f"{where}: external data ends after {len(raw)} of {want} bytes",
                                  hint="the file is truncated or corrupt")
        elif t.raw_data:
            raw = t.raw_data
            if len(raw) != want:
                raise FormatError(f"{where}: raw data holds {len(raw)} bytes, shape {list(shape)} needs {want}")
        else:  # typed fields (float_data, int64_data, ...): numpy_helper knows their encodings
            from onnx import numpy_helper

            try:
                arr = numpy_helper.to_array(t)
            except Exception as exc:  # onnx raises ValueError, TypeError and others on inconsistent data
                raise FormatError(f"{where}: data does not match shape {list(shape)} "
                                  f"({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__})") from None
            raw = arr.tobytes()
            if len(raw) != want:
                raise FormatError(f"{where}: holds {len(raw)} bytes, shape {list(shape)} needs {want}")
        dt = getattr(torch, tname)
        if n == 0:
            return torch.empty(shape, dtype=dt)
        return torch.frombuffer(bytearray(raw), dtype=dt).reshape(shape)

    return load


def read_onnx(path: Path) -> tuple[dict | None, dict, dict[str, LazyTensor], list[Path], Any]:
    """(config, metadata, lazy tensors, files, the ONNX ModelProto without external data) of an ONNX model;
    io.artifact.open_artifact wraps them in an Artifact."""
    import onnx

    f = model_file(path)
    try:
        model = onnx.load(str(f), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and others
        raise FormatError(f"{f}: not a readable ONNX model ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    from onnx import helper

    folder = f.parent
    # refuse hostile external data before anything else happens
    for t in _all_tensors(model):
        if _uses_external(t):
            external_location(t, folder, f)
    tensors = {}
    for init in model.graph.initializer:
        where = f"{f}: tensor {_text(init.name)[:200]!r}"
        try:
            dt = helper.tensor_dtype_to_np_dtype(init.data_type)
        except (KeyError, ValueError, TypeError):
            raise FormatError(f"{where}: unknown ONNX data type {init.data_type}") from None
        shape = tuple(int(d) for d in init.dims)
        if len(shape) > 64:
            raise FormatError(f"{where}: {len(shape)} dimensions (at most 64 are supported)")
        if any(d < 0 for d in shape):
            raise FormatError(f"{where}: negative dimension in shape {list(shape)}")
        n = 1
        for d in shape:
            n *= d
        if init.name in tensors:
            raise FormatError(f"{where}: initializer appears twice")
        tensors[init.name] = LazyTensor(init.name, str(dt), shape, n * dt.itemsize,
                                        _loader(init, shape, external_location(init, folder, f) if _uses_external(init) else None, f), str(f))
    meta = {p.key: p.value for p in model.metadata_props}
    cfg = None
    if (folder / "config.json").is_file():
        import json

        try:
            cfg = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError, RecursionError):
            cfg = None
        if not isinstance(cfg, dict):
            cfg = None
    return cfg, meta, tensors, [f], model


__all__ = ["read_onnx", "model_file", "external_location"]
