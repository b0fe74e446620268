"""Passthrough: copy one model's tensor, optionally scaled; with slices, builds frankenmerges.

Reference: mergekit's ``passthrough``
(https://github.com/arcee-ai/mergekit/blob/main/mergekit/merge_methods/passthrough.py); the layer
stacking itself is the pipeline's slice plan (e.g. SOLAR's depth up-scaling, https://arxiv.org/abs/2312.15166).
"""

from __future__ import annotations

from .base import MergeMethod, register


def passthrough(tensor, scale: float | None = None):
    """The tensor itself, or ``tensor * scale``."""
    return tensor if scale is None else tensor * scale


def _apply(tensors, base, params, options, generator=None):
    (key,) = tensors
    return passthrough(tensors[key], params[key].get("scale"))


register(MergeMethod(
    "passthrough", _apply, "https://arxiv.org/abs/2312.15166", base="none",
    tensor_params={"scale": None}, max_models=1, rowwise=True,
    doc="Copy tensors from one model per slice (layer stacking / frankenmerges); needs --config slices.",
))
