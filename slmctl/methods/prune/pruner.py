"""The unstructured pruners' registry: each method module registers a ``Pruner`` here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from ...registry import Registry


@dataclass(frozen=True)
class Pruner:
    fn: Callable
    needs: Optional[str]  # None, "norm" or "hessian"

    def __call__(self, weight, stats=None, **kw):
        return self.fn(weight, stats, **kw)


UNSTRUCTURED: Registry[Pruner] = Registry("prune method")
