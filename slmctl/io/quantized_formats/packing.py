"""The bit stream both layouts pack codes into, and the affine dequantisation they share."""

from __future__ import annotations

import math


def pack_rows(values, bits: int):
    """Pack unsigned ``bits``-bit codes (rows, cols) into int32 (rows, ceil(cols*bits/32)), bit stream per row."""
    import torch

    v = values.to(torch.int64) & ((1 << bits) - 1)
    rows, cols = v.shape
    padded = -(-cols // 32) * 32
    if padded != cols:
        v = torch.nn.functional.pad(v, (0, padded - cols))
    v = v.reshape(rows, padded // 32, 32)
    words = torch.zeros(rows, padded // 32, bits + 1, dtype=torch.int64)
    for k in range(32):
        off = k * bits
        w, s = divmod(off, 32)
        words[:, :, w] |= (v[:, :, k] << s) & 0xFFFFFFFF
        if s + bits > 32:
            words[:, :, w + 1] |= v[:, :, k] >> (32 - s)
    words = words[:, :, :bits].reshape(rows, -1)[:, : math.ceil(cols * bits / 32)]
    return _to_int32(words)


def unpack_rows(packed, bits: int, cols: int):
    """Inverse of pack_rows: int64 codes (rows, cols)."""
    import torch

    p = packed.to(torch.int64) & 0xFFFFFFFF
    rows, n = p.shape
    groups = -(-n // bits)
    if groups * bits != n:
        p = torch.nn.functional.pad(p, (0, groups * bits - n))
    p = torch.cat([p.reshape(rows, groups, bits), torch.zeros(rows, groups, 1, dtype=torch.int64)], -1)
    mask = (1 << bits) - 1
    out = torch.empty(rows, groups, 32, dtype=torch.int64)
    for k in range(32):
        w, s = divmod(k * bits, 32)
        val = p[:, :, w] >> s
        if s + bits > 32:
            val = val | (p[:, :, w + 1] << (32 - s))
        out[:, :, k] = val & mask
    return out.reshape(rows, groups * 32)[:, :cols]


def _to_int32(words):
    import torch

    w = words & 0xFFFFFFFF
    return torch.where(w >= 1 << 31, w - (1 << 32), w).to(torch.int32)


def dequantize(q, scale, zero, g_idx):
    """``scale * (q - zero)`` with per-column groups: (out, in) float32 (methods.quantize uses this one too)."""
    gi = g_idx.long()
    return scale[gi].T * (q.float() - zero[gi].T.float())
