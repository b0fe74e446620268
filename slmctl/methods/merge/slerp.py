"""SLERP: spherical linear interpolation between a base model and one other model.

Reference: Shoemake, "Animating rotation with quaternion curves" (SIGGRAPH 1985),
https://en.wikipedia.org/wiki/Slerp ; as used for model merges by mergekit
(https://github.com/arcee-ai/mergekit/blob/main/mergekit/merge_methods/slerp.py), whose arithmetic
this follows (float32 work, whole-tensor angle, linear fallback for near-colinear pairs) so the
two agree to rounding.
"""

from __future__ import annotations

from .base import REQUIRED, MergeMethod, register

DOT_THRESHOLD = 0.9995


def slerp(t: float, v0, v1, *, dot_threshold: float = DOT_THRESHOLD, eps: float = 1e-8):
    """Interpolate from ``v0`` (t=0) to ``v1`` (t=1) along the great circle between their directions.

    The angle is that between the two flattened tensors. Nearly colinear or opposite tensors
    (|cos| > ``dot_threshold``) are interpolated linearly instead. Returns ``v0``'s dtype.
    """
    import torch

    work = torch.float64 if v0.dtype == torch.float64 else torch.float32
    a = v0.reshape(-1).to(work)
    b = v1.reshape(-1).to(work)
    if a.numel() == 0:
        return v0.clone()
    tt = torch.tensor(float(t), dtype=work)
    na = torch.linalg.vector_norm(a)
    nb = torch.linalg.vector_norm(b)
    na = torch.where(na > eps, na, 1)
    nb = torch.where(nb > eps, nb, 1)
    dot = ((a / na) * (b / nb)).sum().clamp(-1, 1)
    if dot.abs() > dot_threshold:
        ca, cb = 1 - tt, tt
    else:
        theta = torch.acos(dot)
        s = torch.sin(theta)
        ca, cb = torch.sin((1 - tt) * theta) / s, torch.sin(tt * theta) / s
    return (ca * a + cb * b).reshape(v0.shape).to(v0.dtype)


def _apply(tensors, base, params, options, generator=None):
    (other,) = tensors.values()
    return slerp(float(options["t"]), base, other)


register(MergeMethod(
    "slerp", _apply, "https://en.wikipedia.org/wiki/Slerp", base="required",
    options={"t": REQUIRED}, min_models=1, max_models=1,
    doc="Spherical interpolation from the base (t=0) to the other model (t=1); exactly two models, --t.",
))
