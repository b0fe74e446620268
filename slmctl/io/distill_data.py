"""Disk side of distillation: packed token blocks, the top-k teacher-logit cache, checkpoints and
the distilled student folder. Everything here writes through temporaries and renames.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import InputError, UsageError
from .atomic import atomic_path

CACHE_VERSION = 2  # 2: values are full-vocabulary log-probs at the temperature, float32
CKPT_VERSION = 1
CKPT_FILE = "checkpoint.pt"
CKPT_META = "checkpoint.json"


# ---------------------------------------------------------------- data
def pack_blocks(ids: list[int], seq_len: int):
    """Cut a token stream into consecutive blocks of ``seq_len`` (the ragged tail is dropped): LongTensor (N, seq_len)."""
    import torch

    if seq_len < 2:
        raise UsageError(f"--seq-len must be at least 2, got {seq_len}")
    n = len(ids) // seq_len
    if n == 0:
        raise InputError(f"the data has {len(ids)} tokens, fewer than one block of --seq-len {seq_len}",
                         hint="use more text or a smaller --seq-len")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def load_blocks(source: str, tokenize: Callable[[str], list[int]], seq_len: int, *, field: str = "text",
                heldout: int = 8, max_tokens: int | None = None):
    """(train blocks, held-out blocks, sha256 of all tokens): ``source`` packed to ``seq_len``; the last
    ``heldout`` blocks are kept apart for evaluation during training."""
    from ..calib import load_text

    text = load_text(source, purpose="train", field=field)
    if max_tokens is not None:
        text = text[: max(1, max_tokens) * 8]  # at most ~8 characters a token: tokenise only what may be needed
    ids = tokenize(text)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    blocks = pack_blocks(ids, seq_len)
    if heldout < 0:
        raise UsageError("--heldout must be 0 or more")
    if blocks.shape[0] <= heldout:
        raise InputError(f"{source}: {blocks.shape[0]} block(s) of {seq_len} tokens leave none for training after "
                         f"{heldout} held-out block(s)", hint="use more text, a smaller --seq-len or --heldout")
    sha = hashlib.sha256(blocks.numpy().tobytes()).hexdigest()
    n = blocks.shape[0] - heldout
    return blocks[:n].clone(), blocks[n:].clone(), sha


# ---------------------------------------------------------------- teacher top-k cache
class TeacherCache:
    """The teacher's top-k for some of the training blocks, on disk and reusable across runs.

    A cache folder holds one entry per (teacher, tokens, seq_len, k, temperature): ``meta.json``,
    ``blocks.npy`` (the block ids it covers), ``values.npy`` (float32, (n, seq_len, k): the teacher's
    full-vocabulary log-probabilities of its k most likely tokens, so the tail mass is known) and
    ``indices.npy`` (int32).
    A run that needs blocks the entry lacks computes only those and rewrites the entry atomically.
    """

    def __init__(self, folder: Path, key: dict[str, Any]):
        self.root = Path(folder)
        self.key = dict(key, version=CACHE_VERSION)
        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:20]
        self.path = self.root / f"topk-{digest}"
        self.rows: dict[int, int] = {}
        self.values = self.indices = None

    def load(self) -> set[int]:
        """Open the entry if it exists; the block ids it covers."""
        import numpy as np

        if not (self.path / "meta.json").is_file():
            return set()
        try:
            meta = json.loads((self.path / "meta.json").read_text())
            blocks = np.load(self.path / "blocks.npy")
            self.values = np.load(self.path / "values.npy", mmap_mode="r")
            self.indices = np.load(self.path / "indices.npy", mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise InputError(f"teacher cache {self.path} is unreadable ({exc})",
                             hint=f"remove it (rm -r {self.path}) and run again to rebuild it") from None
        if meta.get("key") != self.key or len(blocks) != self.values.shape[0] or self.values.shape != self.indices.shape:
            raise InputError(f"teacher cache {self.path} does not match its key",
                             hint=f"remove it (rm -r {self.path}) and run again to rebuild it")
        self.rows = {int(b): i for i, b in enumerate(blocks.tolist())}
        return set(self.rows)

    def extend(self, missing: list[int], compute: Callable[[list[int]], tuple[Any, Any]], batch: int,
               progress: Callable | None = None) -> None:
        """Compute ``missing`` blocks with ``compute(block_ids) -> (values, indices)`` and rewrite the entry."""
        import numpy as np

        old = sorted(self.rows, key=self.rows.get)
        all_blocks = old + sorted(missing)
        seq_len, k = self.key["seq_len"], self.key["k"]
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path, force=True, is_dir=True) as tmp:
            vals = np.lib.format.open_memmap(tmp / "values.npy", mode="w+", dtype=np.float32,
                                             shape=(len(all_blocks), seq_len, k))
            idxs = np.lib.format.open_memmap(tmp / "indices.npy", mode="w+", dtype=np.int32,
                                             shape=(len(all_blocks), seq_len, k))
            if old:
                vals[: len(old)] = self.values[[self.rows[b] for b in old]]
                idxs[: len(old)] = self.indices[[self.rows[b] for b in old]]
            bar = progress(total=len(missing), desc="teacher cache", unit="block") if progress else None
            try:
                todo = sorted(missing)
                for s in range(0, len(todo), batch):
                    ids = todo[s:s + batch]
                    v, i = compute(ids)
                    vals[len(old) + s: len(old) + s + len(ids)] = v.numpy().astype(np.float32)
                    idxs[len(old) + s: len(old) + s + len(ids)] = i.numpy().astype(np.int32)
                    if bar is not None:
                        bar.update(len(ids))
            finally:
                if bar is not None:
                    bar.close()
            vals.flush()
            idxs.flush()
            del vals, idxs
            np.save(tmp / "blocks.npy", np.asarray(all_blocks, dtype=np.int64))
            (tmp / "meta.json").write_text(json.dumps({"key": self.key, "blocks": len(all_blocks)}, indent=2) + "\n")
        self.load()

    def get(self, block_ids: Iterable[int]):
        """(values float32, indices int64) tensors of shape (len(block_ids), seq_len, k)."""
        import numpy as np
        import torch

        rows = [self.rows[int(b)] for b in block_ids]
        v = torch.from_numpy(np.asarray(self.values[rows], dtype=np.float32))
        i = torch.from_numpy(np.asarray(self.indices[rows], dtype=np.int64))
        return v, i


# ---------------------------------------------------------------- checkpoints
def save_checkpoint(folder: Path, state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write ``state`` (tensors, numbers, strings) as the one checkpoint in ``folder``, replacing the last
    one only once the new one is complete."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{CKPT_FILE}.{os.getpid()}.tmp"
    try:
        torch.save(state, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, folder / CKPT_FILE)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    mtmp = folder / f".{CKPT_META}.{os.getpid()}.tmp"
    mtmp.write_text(json.dumps(dict(meta, version=CKPT_VERSION), indent=2, sort_keys=True) + "\n")
    os.replace(mtmp, folder / CKPT_META)
    return folder / CKPT_FILE


def load_checkpoint(folder: Path) -> dict[str, Any] | None:
    """The checkpoint in ``folder``, or None if there is none. Loaded with weights_only=True (no pickle code)."""
    import torch

    p = Path(folder) / CKPT_FILE
    if not p.is_file():
        return None
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign file
        raise InputError(f"checkpoint {p} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                         hint=f"remove {folder} and start again without --resume") from None


def remove_checkpoints(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------- the student
def save_student(model, src_folder: Path, out: Path, *, prov: dict, force: bool) -> Path:
    """An HF folder for the trained student: config, tokenizer files copied from ``src_folder``, safetensors
    with the provenance in the header and slmctl.json beside it."""
    from ..hf import unique_state_items
    from .hf_folder import hf_folder

    with hf_folder(out, src_dir=Path(src_folder), config=None, prov=prov, force=force) as w:
        model.config.save_pretrained(w.folder)
        for name, t in unique_state_items(model):  # tied weights are stored once, as transformers does
            w.add(name, t.detach().float().cpu())
    return out
