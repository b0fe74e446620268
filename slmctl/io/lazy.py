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

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def load(self):
        return self.loader()
