"""Linear merge: a weighted average of the models' tensors.

Reference: Wortsman et al., "Model soups" (2022), https://arxiv.org/abs/2203.05482 ;
mergekit's ``linear`` (https://github.com/arcee-ai/mergekit/blob/main/mergekit/merge_methods/linear.py).
"""

from __future__ import annotations

from typing import Sequence

from .base import REQUIRED, MergeMethod, register


def linear(tensors: Sequence, weights: Sequence[float], *, normalize: bool = True):
    """sum_i w_i * x_i, divided by sum_i w_i when ``normalize``; float32 work (float64 stays)."""
    import torch

    first = tensors[0]
    work = torch.float64 if first.dtype == torch.float64 else torch.float32
    w = torch.tensor([float(x) for x in weights], dtype=work)
    res = torch.zeros_like(first, dtype=work)
    for x, c in zip(tensors, w):
        res.addcmul_(x.to(work), c)
    if normalize:
        res = res / w.sum()
    return res.to(first.dtype)


def _apply(tensors, base, params, options, generator=None):
    keys = list(tensors)
    return linear([tensors[k] for k in keys], [params[k]["weight"] for k in keys],
                  normalize=bool(options["normalize"]))


register(MergeMethod(
    "linear", _apply, "https://arxiv.org/abs/2203.05482", base="none",
    tensor_params={"weight": REQUIRED}, options={"normalize": True}, rowwise=True,
    doc="Weighted average of the models (model soups); --weights, normalised by their sum.",
))
