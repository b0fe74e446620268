"""Lazy tensors: name, dtype, shape and a loader, so a model can be walked without loading it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class LazyTensor:
    """A tensor known by its metadata; ``load()`` reads it (as a torch tensor) only when asked."""

    name: str
    dtype: str  # storage dtype as the file names it: "F32", "BF16", "Q4_1", ...
    shape: tuple[int, ...]
    nbytes: int  # bytes on disk
    loader: Callable[[], Any] = field(repr=False)
    source: str = ""  # file it lives in
    row_loader: Callable[[Any], Any] | None = field(default=None, repr=False)  # rows(idx) without the rest


    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def load(self):
        return self.loader()

    def rows(self, idx):
        """Rows ``idx`` (sorted, unique ints) of a 2-D tensor, read alone where the format allows it (safetensors:
        one read per run of consecutive rows), so an embedding's few used rows cost no more than themselves."""
        if self.row_loader is not None:
            return self.row_loader(idx)
        import torch

        return self.load()[torch.as_tensor(list(idx), dtype=torch.long)]
