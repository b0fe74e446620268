"""SLERP: spherical linear interpolation between a base model and one other model.

Reference: Shoemake, "Animating rotation with quaternion curves" (SIGGRAPH 1985),
https://en.wikipedia.org/wiki/Slerp ; as used for model merges by mergekit
(https://github.com/arcee-ai/mergekit/blob/main/mergekit/merge_methods/slerp.py), whose arithmetic
this follows (float32 work, whole-tensor angle, linear fallback for near-colinear pairs) so the
two agree to rounding.
"""

from __future__ import annotations

from .base import register_pairwise

DOT_THRESHOLD = 0.9995
CHUNK = 1 << 20  # entries per chunk of float32 scratch


def slerp(t: float, v0, v1, *, dot_threshold: float = DOT_THRESHOLD, eps: float = 1e-8):
    """Interpolate from ``v0`` (t=0) to ``v1`` (t=1) along the great circle between their directions.

    The angle is that between the two flattened tensors. Nearly colinear or opposite tensors
    (|cos| > ``dot_threshold``) are interpolated linearly instead. Float32 work in chunks of
    CHUNK entries, so scratch memory stays small next to the inputs. Returns ``v0``'s dtype.
    """
    import torch

    work = torch.float64 if v0.dtype == torch.float64 else torch.float32
    a = v0.reshape(-1)
    b = v1.reshape(-1)
    n = a.numel()
    if n == 0:
        return v0.clone()
    tt = torch.tensor(float(t), dtype=work)
    ch = range(0, n, CHUNK)
    na = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(a[s:s + CHUNK].to(work)) for s in ch]))
    nb = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(b[s:s + CHUNK].to(work)) for s in ch]))
    na = torch.where(na > eps, na, 1)
    nb = torch.where(nb > eps, nb, 1)
    dot = torch.stack([((a[s:s + CHUNK].to(work) / na) * (b[s:s + CHUNK].to(work) / nb)).sum() for s in ch])
    dot = dot.sum().clamp(-1, 1)
    if dot.abs() > dot_threshold:
        ca, cb = 1 - tt, tt
    else:
        theta = torch.acos(dot)
        sn = torch.sin(theta)
        ca, cb = torch.sin((1 - tt) * theta) / sn, torch.sin(tt * theta) / sn
    out = torch.empty_like(a)
    for s in ch:
        out[s:s + CHUNK] = ca * a[s:s + CHUNK].to(work) + cb * b[s:s + CHUNK].to(work)
    return out.reshape(v0.shape)


register_pairwise("slerp", slerp, "https://en.wikipedia.org/wiki/Slerp",
                  "Spherical interpolation from the base (t=0) to the other model (t=1); exactly two models, --t.")
