"""Export to one .safetensors file with every tensor and the provenance in its header."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ... import provenance
from ...errors import UnsupportedError, UsageError
from .to_hf import stream_tensors
from .formats import EXPORTERS

Log = Callable[[str], None]


@EXPORTERS.register("safetensors")
def export_safetensors(art, ref: str, out: Path, *, dtype: str, max_shard_size, force: bool, log: Log,
                       progress=None):
    """One .safetensors file with every tensor and the provenance in its header."""
    from ...io.artifact import PROVENANCE_KEY
    from ...io.atomic import atomic_path
    from ...io.convert import write_provenance_file
    from ...io.safetensors import ShardedWriter

    if max_shard_size:
        raise UsageError("--max-shard-size needs --format hf (a single .safetensors file is one shard)")
    if art.format == "gguf":
        raise UnsupportedError(f"{art.path}: GGUF -> a single .safetensors file is not supported",
                               hint="use --format hf, which dequantises and renames the tensors")
    rec, finish = provenance.input_record_later(ref, art.path, art)  # hashed while the tensors are written
    prov = provenance.build("export", {"format": "safetensors", "dtype": dtype}, [rec])
    with atomic_path(out, force=force) as tmp:
        with ShardedWriter(tmp.parent, single_file=tmp, metadata={PROVENANCE_KEY: provenance.dumps(prov)}) as w:
            for name, t in stream_tensors(art, dtype, progress):
                w.add(name, t)
            finish()  # the header is written when the block ends: with the digest in it
            w.meta[PROVENANCE_KEY] = provenance.dumps(prov)
    write_provenance_file(out.with_name(out.name + ".slmctl.json"), prov)
    return out
