"""The bit stream both layouts pack codes into, and the affine dequantisation they share."""

from __future__ import annotations

import math


PACK_ELEMENTS = 1 << 21  # codes packed at once: the int64 working copies stay about 16 MB


def pack_rows(values, bits: int):
    """Pack unsigned ``bits``-bit codes (rows, cols) into int32 (rows, ceil(cols*bits/32)), bit stream per row.
    Rows are independent: a big matrix is packed a slice of rows at a time."""
    import torch

    rows = values.shape[0]
    step = max(1, PACK_ELEMENTS // max(values.shape[1], 1))
    if rows > step:
        return torch.cat([_pack_rows(values[a:a + step], bits) for a in range(0, rows, step)])
    return _pack_rows(values, bits)


def _pack_rows(values, bits: int):
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


DEQUANT_ELEMENTS = 1 << 20  # elements per row slice: each temporary about 4 MB, not the weight's size


def dequantize(q, scale, zero, g_idx):
    """``scale * (q - zero)`` with per-column groups: (out, in) float32 (methods.quantize uses this one too).
    Computed a slice of rows at a time into the result, so the temporaries (the codes as floats, the gathered
    scales and zeros) stay a few MB instead of four copies of the weight; the same arithmetic per element."""
    import torch

    gi = g_idx.long()
    rows = q.shape[0]
    step = max(1, DEQUANT_ELEMENTS // max(q.shape[1] if q.dim() > 1 else 1, 1))
    out = None
    for a in range(0, rows, step):
        b = min(rows, a + step)
        part = scale[gi, a:b].T * (q[a:b].float() - zero[gi, a:b].T.float())
        if out is None:
            out = torch.empty((rows, *part.shape[1:]), dtype=part.dtype)
        out[a:b] = part
    return out if out is not None else scale[gi].T * (q.float() - zero[gi].T.float())
