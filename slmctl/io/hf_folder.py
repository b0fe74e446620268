"""Write an HF model folder: side files from the source, a new config.json, streamed safetensors, provenance."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterable

from .artifact import PROVENANCE_FILE, PROVENANCE_KEY, SIDE_FILES
from .atomic import atomic_path


def write_hf_folder(out: Path, *, src_dir: Path, config: dict[str, Any], tensors: Iterable[tuple[str, Any]],
                    prov: dict[str, Any], force: bool = False, max_shard_size: int | None = None) -> Path:
    """``tensors`` is consumed one at a time (memory stays near one tensor); written atomically.

    ``prov`` is serialised after the last tensor, so a streaming producer may complete it (e.g. the
    sparsity it achieved) while its tensors are written.
    """
    from .. import provenance
    from .convert import write_provenance_file
    from .safetensors import ShardedWriter

    with atomic_path(out, force=force, is_dir=True) as tmp:
        for name in SIDE_FILES:
            if name != "config.json" and (src_dir / name).is_file():
                shutil.copyfile(src_dir / name, tmp / name)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        with ShardedWriter(tmp, max_shard_size=max_shard_size, metadata={PROVENANCE_KEY: provenance.dumps(prov)}) as w:
            for name, t in tensors:
                w.add(name, t)
            w.meta[PROVENANCE_KEY] = provenance.dumps(prov)
        write_provenance_file(tmp / PROVENANCE_FILE, prov)
    return out


def load_state(art, names=None) -> dict[str, Any]:
    """Every tensor of an opened artifact (or those in ``names``), loaded."""
    return {n: art.tensors[n].load() for n in (names if names is not None else art.tensors)}
