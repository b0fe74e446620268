"""ONNX on disk: save an exported program (external data past 2 GB), side files, and the external-data
safety check every ONNX reader in slmctl runs before handing a file to onnxruntime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import FormatError

# protobuf cannot hold a message over 2 GiB; keep a margin for the graph itself
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
DATA_SUFFIX = ".data"


def save_program(program, path: Path, *, external_data: bool) -> list[Path]:
    """Write a torch.onnx ONNXProgram to ``path``; with ``external_data`` the weights go to ``<name>.data``
    beside it (one file, referenced by a plain name). Returns the files written."""
    program.save(str(path), external_data=external_data)
    files = [path]
    data = path.with_name(path.name + DATA_SUFFIX)
    if data.is_file():
        files.append(data)
    return files


def save_model(model, path: Path, *, external_data: bool | None = None) -> list[Path]:
    """Write an onnx.ModelProto; external data (one ``<name>.data`` file) when asked or when it would pass 2 GB."""
    import onnx

    if external_data is None:
        external_data = model.ByteSize() > EXTERNAL_DATA_THRESHOLD if _small_enough(model) else True
    data = path.with_name(path.name + DATA_SUFFIX)
    if external_data:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        return [path, data]
    onnx.save_model(model, str(path))
    return [path]


def _small_enough(model) -> bool:
    try:
        model.ByteSize()
        return True
    except Exception:  # protobuf refuses to size a message over 2 GiB
        return False


def copy_side_files(src_dir: Path, dst_dir: Path, names) -> list[str]:
    copied = []
    for name in names:
        if (src_dir / name).is_file():
            shutil.copyfile(src_dir / name, dst_dir / name)
            copied.append(name)
    return copied


def write_json(path: Path, doc: dict) -> None:
    path.write_text(json.dumps(doc, indent=2) + "\n")


def check_external_data(model_file: Path, model=None) -> None:
    """Refuse an ONNX model whose external data lies outside its folder (``../``, absolute paths, symlinks
    out of the folder) or is missing, before onnxruntime reads a byte: the checks of slmctl.io.onnx."""
    import onnx

    from .onnx import _all_tensors, _uses_external, external_location

    if model is None:
        try:
            model = onnx.load(str(model_file), load_external_data=False)
        except Exception as exc:  # protobuf raises DecodeError and others
            raise FormatError(f"{model_file}: not a readable ONNX model ({type(exc).__name__})") from None
    for t in _all_tensors(model):
        if _uses_external(t):
            external_location(t, model_file.parent, model_file)
