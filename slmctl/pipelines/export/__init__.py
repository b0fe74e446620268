"""The ``export`` verb: one module per format (hf, safetensors, gguf, onnx), each registered in ``registry``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ...errors import UsageError
from .registry import DTYPES, EXPORTERS, get_exporter

Log = Callable[[str], None]


def _nolog(msg: str) -> None:
    pass


def export(src: str, out: str | Path, fmt: str = "hf", *, dtype: str = "auto", max_shard_size: str | int | None = None,
           force: bool = False, allow_pickle: bool = False, log: Log = _nolog, progress=None, **options: Any) -> Path:
    """Convert a model to another format; returns the output path.

    ``options`` are the format's own (gguf: outtype, imatrix, data, ...; onnx: external_data, ...)."""
    from ...io.resolve import load_artifact

    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}", hint="valid: " + ", ".join(DTYPES))
    fn = get_exporter(fmt)
    art, path = load_artifact(src, allow_pickle=allow_pickle, log=log)
    return fn(art, src, Path(out), dtype=dtype, max_shard_size=max_shard_size, force=force, log=log,
              progress=progress, **options)


__all__ = ["DTYPES", "EXPORTERS", "export", "get_exporter"]
