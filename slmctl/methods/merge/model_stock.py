"""Model Stock: move from the base toward the models' average by a factor set by their angle.

Reference: Jang et al., "Model Stock: All we need is just a few fine-tuned models" (2024),
https://arxiv.org/abs/2403.19522 ; semantics of mergekit's model_stock.py.
"""

from __future__ import annotations

from typing import Sequence

from .base import MergeMethod, register


def model_stock(base, models: Sequence, *, filter_wise: bool = False):
    """t * mean(models) + (1 - t) * base, t = k cos / (1 + (k - 1) cos), cos = mean pairwise cosine
    of the task vectors (per row with ``filter_wise``). Needs at least two models besides the base."""
    import torch

    shape = base.shape
    w0, ws = base, list(models)
    if filter_wise:
        if w0.dim() == 1:
            w0, ws = w0.unsqueeze(0), [w.unsqueeze(0) for w in ws]
    else:
        w0, ws = w0.reshape(-1), [w.reshape(-1) for w in ws]
    offsets = [w - w0 for w in ws]
    cos = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1:]:
            norm = torch.norm(a, dim=-1) * torch.norm(b, dim=-1)
            cos.append(((a * b).sum(dim=-1) / norm.clamp(min=1e-6)).clamp(-1, 1))
    c = torch.stack(cos).mean(dim=0).unsqueeze(-1)
    k = len(ws)
    den = 1 + (k - 1) * c
    singular = den.abs() < 1e-6
    t = torch.where(singular, torch.zeros_like(c), (k * c) / torch.where(singular, torch.ones_like(den), den))
    avg = sum(ws) / k
    return (t * avg + (1 - t) * w0).reshape(shape)


def _apply(tensors, base, params, options, generator=None):
    return model_stock(base, list(tensors.values()), filter_wise=bool(options["filter_wise"]))


register(MergeMethod(
    "model_stock", _apply, "https://arxiv.org/abs/2403.19522", base="required",
    options={"filter_wise": False}, min_models=2,
    doc="Model Stock: interpolate base -> average of >= 2 models by their task vectors' angle; --base.",
))
