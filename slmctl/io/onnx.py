"""ONNX: open a model for inspection without loading external data blobs."""

from __future__ import annotations

from pathlib import Path

from ..errors import FormatError
from .artifact import Artifact
from .lazy import LazyTensor


def model_file(path: Path) -> Path:
    if path.is_dir():
        cands = [path / "model.onnx"] if (path / "model.onnx").is_file() else sorted(path.glob("*.onnx"))
        if not cands:
            raise FormatError(f"{path}: no .onnx file in the folder")
        return cands[0]
    return path


def open_onnx(path: Path) -> Artifact:
    import onnx

    f = model_file(path)
    try:
        model = onnx.load(str(f), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and others
        raise FormatError(f"{f}: not a readable ONNX model ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    from onnx import helper

    tensors = {}
    for init in model.graph.initializer:
        dt = helper.tensor_dtype_to_np_dtype(init.data_type)
        shape = tuple(int(d) for d in init.dims)
        n = 1
        for d in shape:
            n *= d
        tensors[init.name] = LazyTensor(init.name, str(dt), shape, n * dt.itemsize, lambda: None, str(f))
    meta = {p.key: p.value for p in model.metadata_props}
    cfg = None
    folder = f.parent
    if (folder / "config.json").is_file():
        import json

        try:
            cfg = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError):
            cfg = None
    return Artifact(path, "onnx", cfg, meta, tensors, [f], onnx=model)
