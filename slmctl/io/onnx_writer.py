"""ONNX on disk: save an exported program (external data past 2 GB), side files, and the external-data
safety check every ONNX reader in slmctl runs before handing a file to onnxruntime."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..errors import FormatError, InputError

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


def external_locations(model) -> list[str]:
    """Every external-data ``location`` named by the model's initializers (and Constant nodes)."""
    from onnx.external_data_helper import _get_all_tensors

    locs = []
    for t in _get_all_tensors(model):
        if t.data_location == 1:  # TensorProto.EXTERNAL
            for e in t.external_data:
                if e.key == "location":
                    locs.append(e.value)
    return locs


def check_external_data(model_file: Path, model=None) -> None:
    """Refuse an ONNX model whose external data lies outside its folder (``../``, absolute paths, symlinks
    out of the folder) or is missing: onnxruntime would otherwise read any file the user can read."""
    import onnx

    if model is None:
        try:
            model = onnx.load(str(model_file), load_external_data=False)
        except Exception as exc:  # protobuf raises DecodeError and others
            raise FormatError(f"{model_file}: not a readable ONNX model ({type(exc).__name__})") from None
    folder = model_file.resolve().parent
    for loc in dict.fromkeys(external_locations(model)):
        bad = os.path.isabs(loc) or loc.startswith(("/", "\\")) or any(part == ".." for part in Path(loc).parts) \
            or ":" in loc
        target = (model_file.parent / loc)
        if not bad:
            try:
                resolved = target.resolve()
                bad = folder != resolved and folder not in resolved.parents
            except (OSError, RuntimeError):
                bad = True
        if bad:
            raise InputError(f"{model_file}: external data location {loc!r} points outside the model's folder",
                             hint="refusing to read it; only load ONNX models whose weights live beside them")
        if not target.is_file():
            raise InputError(f"{model_file}: external data file {loc!r} is missing",
                             hint="copy the whole model folder, including its .data file")
