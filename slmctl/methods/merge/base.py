"""The merge method registry and the shape of one entry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ...registry import Registry

REQUIRED = object()  # a tensor parameter with no default


@dataclass(frozen=True)
class MergeMethod:
    """One merge method as the pipeline sees it.

    ``apply(tensors, base, params, options, generator)`` gets the input tensors of the models that
    are not the base ({model key: tensor}, in config order), the base tensor (or None), each model's
    tensor parameters resolved for this tensor ({key: {name: value}}), the global options, and a
    seeded ``torch.Generator`` (random methods only). It returns the merged tensor.
    """

    name: str
    apply: Callable[..., Any]
    url: str
    base: str = "none"  # "none" (a base is only another input), "optional", "required"
    tensor_params: dict[str, Any] = field(default_factory=dict)  # name -> default or REQUIRED
    options: dict[str, Any] = field(default_factory=dict)  # name -> default
    random: bool = False
    doc: str = ""
    min_models: int = 1
    max_models: int | None = None
    # each output element depends only on the same element of the inputs (no per-tensor statistics, no random
    # draws): the pipeline may merge a big tensor a block of rows at a time, with the same result
    rowwise: bool = False


METHODS: Registry[MergeMethod] = Registry("merge method")


def register(m: MergeMethod) -> MergeMethod:
    METHODS.add(m.name, m, m.doc)
    return m


def register_pairwise(name: str, fn: Callable[[float, Any, Any], Any], url: str, doc: str) -> MergeMethod:
    """A method of exactly two models, the base and one other, steered by one option ``t``:
    ``fn(t, base, other)`` (SLERP, NearSwap)."""

    def apply(tensors, base, params, options, generator=None):
        (other,) = tensors.values()
        return fn(float(options["t"]), base, other)

    return register(MergeMethod(name, apply, url, base="required", options={"t": REQUIRED}, min_models=1,
                                max_models=1, doc=doc))
