"""NearSwap: take the other model's value where it is close to the base's, keep the base elsewhere.

Reference: https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001 ; mergekit's nearswap.py.
"""

from __future__ import annotations

from .base import register_pairwise


def nearswap(t: float, base, other):
    """w * other + (1 - w) * base with w = clamp(t / |base - other|, 0, 1)."""
    import torch

    w = (t / torch.abs(base - other).clamp(min=1e-6)).clamp(min=0, max=1)
    return w * other + (1 - w) * base


register_pairwise("nearswap", nearswap, "https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001",
                  "NearSwap: swap in the other model's entries that lie within --t of the base's.")
