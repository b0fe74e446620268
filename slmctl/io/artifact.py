"""Open any model artifact — HF folder, .safetensors, .gguf, .onnx, pickle — by extension or magic."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FormatError, InputError, UnsupportedError
from .lazy import LazyTensor

PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth")
# files that travel with a model folder besides its weights
SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt",
              "added_tokens.json", "chat_template.jinja", "chat_template.json", "preprocessor_config.json")
PROVENANCE_KEY = "slmctl.provenance"
PROVENANCE_FILE = "slmctl.json"


def sniff(path: Path) -> str:
    """The artifact format of ``path``: hf, safetensors, gguf, onnx or pickle."""
    if not path.exists():
        raise InputError(f"{path} does not exist", hint="check the path, or use sample:smollm2-135m")
    if path.is_dir():
        names = {p.name for p in path.iterdir()}
        if "model.onnx" in names or any(n.endswith(".onnx") for n in names):
            return "onnx"
        if "config.json" in names and ("model.safetensors" in names or "model.safetensors.index.json" in names
                                       or any(n.endswith(".safetensors") for n in names)):
            return "hf"
        if names & set(PICKLE_NAMES):
            return "pickle"
        if any(n.endswith(".gguf") for n in names) and len([n for n in names if n.endswith(".gguf")]) == 1:
            return "gguf"
        raise InputError(f"{path} is a folder without a model slmctl can read",
                         hint="expected config.json with *.safetensors, a .gguf or an .onnx file")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc
    suffix = path.suffix.lower()
    if head[:4] == b"GGUF":
        return "gguf"
    if suffix == ".gguf":
        raise FormatError(f"{path}: not a GGUF file (magic {head[:4]!r}, expected b'GGUF')")
    # the suffix decides before the pickle magic: a safetensors header length whose low byte is
    # 0x80 (or whose bytes read "PK") is a valid safetensors file, not a pickle; a pickle named
    # .safetensors fails the safetensors checks and is never unpickled
    if suffix == ".safetensors":
        return "safetensors"
    if suffix == ".onnx":
        return "onnx"
    if head[:2] in (b"PK",) or head[:1] == b"\x80" or suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"):
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    raise InputError(f"{path}: unknown model format", hint="slmctl reads HF folders, .safetensors, .gguf and .onnx")


@dataclass
class Artifact:
    """A model on disk, opened lazily."""

    path: Path
    format: str
    config: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # safetensors header metadata / GGUF KV
    tensors: dict[str, LazyTensor] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)  # the files the weights live in
    gguf: Any = None
    onnx: Any = None

    @property
    def model_type(self) -> str | None:
        if self.config:
            return self.config.get("model_type")
        if self.format == "gguf":
            return self.metadata.get("general.architecture")
        return None

    @property
    def architecture(self) -> str | None:
        if self.config and self.config.get("architectures"):
            return self.config["architectures"][0]
        return self.model_type

    def provenance(self) -> dict | None:
        """The provenance record this artifact carries, or None when it has none or it is malformed."""
        raw = self.metadata.get(PROVENANCE_KEY)
        if raw is None and self.path.is_dir() and (self.path / PROVENANCE_FILE).is_file():
            return _parse_provenance(self.path / PROVENANCE_FILE)
        if self.path.is_file():
            # the sidecar is written after its file and describes the last step; it wins over a record
            # embedded by an earlier step (llama.cpp's quantiser copies the source's GGUF metadata)
            side = self.path.with_name(self.path.name + ".slmctl.json")
            if side.is_file():
                rec = _parse_provenance(side)
                if rec is not None or raw is None:
                    return rec
        if isinstance(raw, str):
            return _parse_provenance(raw)
        return None

    def size_on_disk(self) -> int:
        if self.path.is_dir():
            return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        return self.path.stat().st_size


MAX_PROVENANCE_DEPTH = 64


def _parse_provenance(src: str | Path) -> dict | None:
    """Decode a provenance record and check its shape; a file from a stranger may carry anything."""
    try:
        text = src.read_text(encoding="utf-8") if isinstance(src, Path) else src
        doc = json.loads(text)
    except (OSError, ValueError, RecursionError):
        return None
    return doc if _valid_provenance(doc, 0) else None


def _valid_provenance(p: Any, depth: int) -> bool:
    if not isinstance(p, dict) or depth > MAX_PROVENANCE_DEPTH:
        return False
    if not isinstance(p.get("verb", ""), str):
        return False
    if not isinstance(p.get("recipe") or {}, dict) or not isinstance(p.get("versions", {}), dict):
        return False
    inputs = p.get("inputs", [])
    if not isinstance(inputs, list):
        return False
    for inp in inputs:
        if not isinstance(inp, dict):
            return False
        if inp.get("provenance") is not None and not _valid_provenance(inp["provenance"], depth + 1):
            return False
    return True


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8, bad JSON, huge integers, deep nesting
        reason = "nested too deep" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise FormatError(f"{path}: not valid JSON ({reason})") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc


def open_artifact(path: str | os.PathLike, *, allow_pickle: bool = False) -> Artifact:
    from . import gguf as gguf_io
    from . import safetensors as st

    path = Path(path)
    fmt = sniff(path)
    if fmt == "pickle":
        return _open_pickle(path, allow_pickle)
    if fmt == "safetensors":
        tensors, meta = st.open_file(path)
        cfg = path.parent / "config.json"
        return Artifact(path, "safetensors", _read_json(cfg) if cfg.is_file() else None, dict(meta), tensors, [path])
    if fmt == "gguf":
        if path.is_dir():
            path = next(p for p in path.iterdir() if p.suffix == ".gguf")
        g = gguf_io.read(path)
        return Artifact(path, "gguf", None, g.metadata, g.lazy_tensors(), [path], gguf=g)
    if fmt == "onnx":
        from . import onnx as onnx_io

        cfg, meta, tensors, files, model = onnx_io.read_onnx(path)
        return Artifact(path, "onnx", cfg, meta, tensors, files, onnx=model)
    # HF folder
    config = _read_json(path / "config.json")
    if not isinstance(config, dict):
        raise FormatError(f"{path / 'config.json'}: not a JSON object")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        idx = _read_json(index)
        wmap = idx.get("weight_map") if isinstance(idx, dict) else None
        if not isinstance(wmap, dict):
            raise FormatError(f"{index}: no weight_map")
        files = []
        for fname in dict.fromkeys(wmap.values()):
            if not isinstance(fname, str) or "/" in fname or "\\" in fname or fname.startswith("."):
                raise FormatError(f"{index}: shard name {fname!r} is not a plain file name")
            files.append(path / fname)
    elif (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    else:
        files = sorted(path.glob("*.safetensors"))
    tensors: dict[str, LazyTensor] = {}
    meta: dict[str, str] = {}
    for f in files:
        if not f.is_file():
            raise InputError(f"{path}: shard {f.name} is missing", hint="download the complete model folder")
        t, m = st.open_file(f)
        for name in t:
            if name in tensors:
                raise FormatError(f"{path}: tensor {name!r} appears in two shards")
        tensors.update(t)
        meta = meta or m
    return Artifact(path, "hf", config, meta, tensors, files)


def _open_pickle(path: Path, allow_pickle: bool) -> Artifact:
    if not allow_pickle:
        raise InputError(
            f"{path} is a pickle checkpoint; unpickling it could run arbitrary code",
            hint="convert it to safetensors with a tool you trust, or pass --allow-pickle "
                 "(then it is loaded with torch.load(weights_only=True))",
        )
    import torch

    folder = path if path.is_dir() else path.parent
    files = [path] if path.is_file() else [folder / n for n in ("pytorch_model.bin", "model.pt", "model.pth")
                                           if (folder / n).is_file()]
    tensors: dict[str, LazyTensor] = {}
    for f in files:
        try:
            sd = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # torch raises many kinds here
            raise FormatError(f"{f}: cannot load as a weights-only pickle ({str(exc).splitlines()[0]})",
                              hint="the file holds more than tensors; it will not be unpickled") from None
        if not isinstance(sd, dict):
            raise FormatError(f"{f}: pickle does not hold a state dict")
        for name, t in sd.items():
            if isinstance(t, torch.Tensor):
                tensors[name] = LazyTensor(name, str(t.dtype).removeprefix("torch."), tuple(t.shape),
                                           t.numel() * t.element_size(), (lambda t=t: t), str(f))
    cfg = folder / "config.json"
    return Artifact(path, "pickle", _read_json(cfg) if cfg.is_file() else None, {}, tensors, files)
