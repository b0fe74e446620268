"""Write an HF model folder: side files from the source, a new config.json, streamed safetensors, provenance."""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .artifact import PROVENANCE_FILE, PROVENANCE_KEY, SIDE_FILES
from .atomic import atomic_path


@contextmanager
def hf_folder(out: Path, *, src_dir: Path | None, config: dict[str, Any] | None, prov: dict[str, Any],
              force: bool = False, max_shard_size: int | None = None, expected: list[str] | None = None,
              finish: Callable[[], Any] | None = None) -> Iterator[Any]:
    """The one HF-folder writer: yields a ShardedWriter (``w.add(name, tensor)``; ``w.folder`` is the folder
    being written, for any other file) and renames the folder into place when the block ends without error.

    The side files (tokenizer, generation config) are copied from ``src_dir`` (None: none) and ``config``
    written as config.json (None: the caller writes it). ``prov`` goes into every shard header and into
    slmctl.json; it is serialised when the block ends, so the caller may complete it (e.g. the sparsity a
    streaming producer achieved, the inputs' hashes) inside the block. ``expected``: the names of the tensors
    to come, when known (each shard is then renamed into place rather than copied behind its header).
    ``finish`` (provenance.input_record_later's) is called when the block ends, before ``prov`` is serialised:
    the inputs are hashed while the tensors are written.
    """
    from .. import provenance
    from .atomic import write_provenance_file
    from .safetensors import ShardedWriter

    with atomic_path(out, force=force, is_dir=True) as tmp:
        if src_dir is not None:
            for name in SIDE_FILES:
                if name != "config.json" and (src_dir / name).is_file():
                    shutil.copyfile(src_dir / name, tmp / name)
        if config is not None:
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        with ShardedWriter(tmp, max_shard_size=max_shard_size, metadata={PROVENANCE_KEY: provenance.dumps(prov)},
                           expected=expected) as w:
            yield w
            if finish is not None:
                finish()
            w.meta[PROVENANCE_KEY] = provenance.dumps(prov)
        write_provenance_file(tmp / PROVENANCE_FILE, prov)


def write_hf_folder(out: Path, *, src_dir: Path, config: dict[str, Any], tensors: Iterable[tuple[str, Any]],
                    prov: dict[str, Any], force: bool = False, max_shard_size: int | None = None,
                    expected: list[str] | None = None, finish: Callable[[], Any] | None = None) -> Path:
    """``tensors`` is consumed one at a time (memory stays near one tensor); written atomically (hf_folder).
    ``expected``: the names ``tensors`` will give, when known; ``finish``: see hf_folder."""
    with hf_folder(out, src_dir=src_dir, config=config, prov=prov, force=force, max_shard_size=max_shard_size,
                   expected=expected, finish=finish) as w:
        for name, t in tensors:
            w.add(name, t)
    return out


def load_state(art, names=None) -> dict[str, Any]:
    """Every tensor of an opened artifact (or those in ``names``), loaded."""
    return {n: art.tensors[n].load() for n in (names if names is not None else art.tensors)}
