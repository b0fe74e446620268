"""Export to a Hugging Face folder: config, tokenizer and sharded safetensors, with provenance."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ... import provenance
from ...errors import InputError, UnsupportedError
from .formats import EXPORTERS

Log = Callable[[str], None]


def _torch_dtype(dtype: str):
    import torch

    return None if dtype == "auto" else getattr(torch, dtype)


def stream_tensors(art, dtype: str, progress=None):
    """(name, tensor) pairs one at a time, cast to ``dtype`` (floating tensors only)."""
    target = _torch_dtype(dtype)
    names = list(art.tensors)
    it = progress(names, desc="tensors") if progress else names
    for name in it:
        t = art.tensors[name].load()
        if target is not None and t.is_floating_point():
            t = t.to(target)
        yield name, t


@EXPORTERS.register("hf")
def export_hf(art, ref: str, out: Path, *, dtype: str, max_shard_size, force: bool, log: Log, progress=None):
    """An HF folder: config, tokenizer and sharded safetensors, with provenance."""
    from ...io.convert import gguf_to_hf
    from ...io.hf_folder import write_hf_folder
    from ...io.safetensors import parse_size

    shard = parse_size(max_shard_size)
    if art.format == "gguf":
        log(f"importing {art.path.name} (GGUF) into an HF folder")
        return gguf_to_hf(art.path, out, force=force, ref=ref, max_shard_size=shard,
                          dtype=None if dtype == "auto" else dtype, log=log)
    if art.format == "onnx":
        raise UnsupportedError(f"{art.path}: ONNX -> HF is not supported", hint="export from the original HF model")
    if art.config is None:
        raise InputError(f"{art.path}: no config.json beside the weights, so an HF folder cannot be built",
                         hint="use --format safetensors, or put the model's config.json next to it")
    rec, finish = provenance.input_record_later(ref, art.path, art)  # hashed while the tensors are written
    prov = provenance.build("export", {"format": "hf", "dtype": dtype, "max_shard_size": shard}, [rec])
    cfg = dict(art.config)
    if dtype != "auto":
        cfg["dtype"] = dtype
        cfg.pop("torch_dtype", None)
    return write_hf_folder(out, src_dir=art.path if art.path.is_dir() else art.path.parent, config=cfg,
                           tensors=stream_tensors(art, dtype, progress), prov=prov, force=force,
                           max_shard_size=shard, expected=list(art.tensors), finish=finish)
