"""GGUF legacy block quantisation (q8_0, q4_0, q4_1, q5_0, q5_1) as vectorised numpy block maths.

Each function takes a float32 array whose last dimension is a multiple of 32 and returns the packed
bytes (uint8, last dimension = blocks per row * bytes per block) exactly as ggml's reference
quantisers lay them out (ggml-quants.c ``quantize_row_*_ref``), so the output is bit-identical to
``gguf.quants.quantize``. Reference: https://github.com/ggml-org/llama.cpp/blob/master/ggml/src/ggml-quants.c
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ...io.gguf_types import block_bytes
from ...registry import Registry

QK = 32  # every legacy type uses blocks of 32 weights

# name -> (bytes per block of 32, quantiser)
GGUF_BLOCK_TYPES: Registry[Callable[[np.ndarray], np.ndarray]] = Registry("GGUF block type")


def _blocks(x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 0 or x.shape[-1] % QK:
        raise ValueError(f"row length {x.shape[-1] if x.ndim else 0} is not a multiple of {QK}")
    return x.reshape(-1, QK), x.shape


def _pack(parts: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    out = np.concatenate(parts, axis=1)
    return out.reshape(*shape[:-1], shape[-1] // QK * out.shape[1])


def _inverse(d: np.ndarray) -> np.ndarray:
    """1/d in float32, 0 where d is 0 (an all-zero block quantises to zeros)."""
    safe = np.where(d == 0, np.float32(1), d)
    return np.where(d == 0, np.float32(0), np.float32(1) / safe).astype(np.float32)


_JUST_BELOW_HALF = np.nextafter(np.float32(0.5), np.float32(0))


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """C roundf: halves go away from zero. trunc(x + copysign(0.49999997, x)) in float32 equals roundf for
    every float32 (checked exhaustively for |x| < 2**24; above that every float is an integer), in two passes
    over the data instead of the five of trunc/where/sign."""
    y = np.copysign(_JUST_BELOW_HALF, x)
    y += x
    return np.trunc(y, out=y)


def _magnitudes(b: np.ndarray) -> np.ndarray:
    """|b| as the bits of a float32 with the sign cleared, read as uint32: for floats their order is the order of
    the magnitudes, and integer max/argmax run several times faster than numpy's float reductions (no NaN checks)."""
    return b.view(np.uint32) & np.uint32(0x7FFFFFFF)


def _absmax(b: np.ndarray) -> np.ndarray:
    """Per block (row of ``b``), the largest magnitude, as a (blocks, 1) float32 column."""
    return _magnitudes(b).max(axis=1, keepdims=True).view(np.float32)


def _signed_absmax(b: np.ndarray) -> np.ndarray:
    """Per block, the value with the largest magnitude, sign kept (first one on ties)."""
    idx = _magnitudes(b).argmax(axis=1)[:, None]
    return np.take_along_axis(b, idx, axis=1)


def _f16_bytes(v: np.ndarray) -> np.ndarray:
    return v.astype(np.float16).view(np.uint8)


def _nibbles(q: np.ndarray) -> np.ndarray:
    """Weights j and j+16 share a byte: j in the low nibble, j+16 in the high one."""
    return (q[:, :16] & np.uint8(0x0F)) | (q[:, 16:] << np.uint8(4))


def _high_bits(q: np.ndarray) -> np.ndarray:
    """Bit 4 of each of the 32 weights as a little-endian 32-bit mask (4 bytes)."""
    bits = (q >> np.uint8(4)).astype(np.uint32) & np.uint32(1)
    mask = (bits << np.arange(QK, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)
    return mask.astype("<u4").view(np.uint8).reshape(-1, 4)


@GGUF_BLOCK_TYPES.register("q8_0")
def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    """8-bit, one f16 scale per 32 weights: q = round(x / (absmax/127))."""
    b, shape = _blocks(x)
    d = (_absmax(b) / np.float32(127)).astype(np.float32)
    q = _round_half_away(b * _inverse(d)).astype(np.int8).view(np.uint8)
    return _pack([_f16_bytes(d), q], shape)


def _symmetric(x: np.ndarray, half: int):
    """(shape, scale, codes) of ggml's symmetric grids: scale = signed absmax / -half,
    q = trunc(x/scale + half + 0.5) clipped to 0..2*half-1."""
    b, shape = _blocks(x)
    d = (_signed_absmax(b) / np.float32(-half)).astype(np.float32)
    q = np.trunc(b * _inverse(d) + np.float32(half + 0.5)).astype(np.uint8).clip(0, 2 * half - 1)
    return shape, d, q


def _affine(x: np.ndarray, top: int):
    """(shape, scale, minimum, codes) of ggml's affine grids: scale = (max - min) / top,
    q = trunc((x - min)/scale + 0.5) clipped to 0..top."""
    b, shape = _blocks(x)
    lo = b.min(axis=1, keepdims=True)
    d = ((b.max(axis=1, keepdims=True) - lo) / np.float32(top)).astype(np.float32)
    q = np.trunc((b - lo) * _inverse(d) + np.float32(0.5)).astype(np.uint8).clip(0, top)
    return shape, d, lo, q


@GGUF_BLOCK_TYPES.register("q4_0")
def quantize_q4_0(x: np.ndarray) -> np.ndarray:
    """4-bit symmetric: scale = signed absmax / -8, q = trunc(x/scale + 8.5) clipped to 0..15."""
    shape, d, q = _symmetric(x, 8)
    return _pack([_f16_bytes(d), _nibbles(q)], shape)


@GGUF_BLOCK_TYPES.register("q4_1")
def quantize_q4_1(x: np.ndarray) -> np.ndarray:
    """4-bit affine: scale = (max - min) / 15 and an f16 minimum per block."""
    shape, d, lo, q = _affine(x, 15)
    return _pack([_f16_bytes(d), _f16_bytes(lo), _nibbles(q)], shape)


@GGUF_BLOCK_TYPES.register("q5_0")
def quantize_q5_0(x: np.ndarray) -> np.ndarray:
    """5-bit symmetric: scale = signed absmax / -16; the fifth bits packed in a 32-bit mask."""
    shape, d, q = _symmetric(x, 16)
    return _pack([_f16_bytes(d), _high_bits(q), _nibbles(q)], shape)


@GGUF_BLOCK_TYPES.register("q5_1")
def quantize_q5_1(x: np.ndarray) -> np.ndarray:
    """5-bit affine: scale = (max - min) / 31, f16 minimum, fifth bits in a 32-bit mask."""
    shape, d, lo, q = _affine(x, 31)
    return _pack([_f16_bytes(d), _f16_bytes(lo), _high_bits(q), _nibbles(q)], shape)


def quantize_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (round to nearest even, NaN kept quiet), as ggml_compute_fp32_to_bf16."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    rounded = (u.astype(np.uint64) + np.uint64(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint64(16)
    out = np.where(nan, (u >> np.uint32(16)) | np.uint32(64), rounded)
    return out.astype(np.uint16)


def packed_row_bytes(kind: str, row: int) -> int:
    return row // QK * block_bytes(kind)


# ---------------------------------------------------------------- an existing integer grid onto GGUF blocks
#: GGUF block types that hold the values ``d * (q - zero)`` of a ``bits``-bit grid exactly, smallest
#: first: symmetric grids (zero = 2**(bits-1)) need signed codes in range; asymmetric ones an affine
#: block (``d * q + m``; m is stored as float16, so within half a float16 step of ``-d * zero``)
def exact_block_types(bits: int, sym: bool) -> list[str]:
    if sym:  # the affine types hold a symmetric grid too: m = -d * 2**(bits-1) is exact in float16
        return [t for t, lim in (("q4_0", 4), ("q4_1", 4), ("q5_0", 5), ("q5_1", 5), ("q8_0", 8)) if bits <= lim]
    return [t for t, lim in (("q4_1", 4), ("q5_1", 5), ("q8_0", 7)) if bits <= lim]


def quantize_on_grid(kind: str, x: np.ndarray, d: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """GGUF ``kind`` blocks for ``x`` whose values already lie on the grid ``d * (q - zero)``.

    ``d`` and ``zero`` have x's shape and are constant over each block of 32; the block scale is
    ``d`` itself (no search), so the codes are the grid's own codes and dequantising the blocks
    gives back ``x`` (affine types: up to the float16 rounding of the minimum ``-d * zero``).
    """
    b, shape = _blocks(x)
    db = np.asarray(d, dtype=np.float32).reshape(-1, QK)[:, :1]
    zb = np.asarray(zero, dtype=np.float32).reshape(-1, QK)[:, :1]
    k = np.rint(b * _inverse(db))  # the signed integer q - zero of each weight
    if kind in ("q4_0", "q5_0", "q8_0"):
        half = {"q4_0": 8, "q5_0": 16, "q8_0": 0}[kind]
        lo, hi = (-128, 127) if kind == "q8_0" else (-half, half - 1)
        if (k < lo).any() or (k > hi).any():
            raise ValueError(f"grid codes {int(k.min())}..{int(k.max())} do not fit {kind}")
        if kind == "q8_0":
            return _pack([_f16_bytes(db), k.astype(np.int8).view(np.uint8)], shape)
        q = (k + half).astype(np.uint8)
        parts = [_f16_bytes(db)] + ([_high_bits(q)] if kind == "q5_0" else []) + [_nibbles(q)]
        return _pack(parts, shape)
    if kind in ("q4_1", "q5_1"):
        m = (-db * zb).astype(np.float16).astype(np.float32)
        q = np.rint((b - m) * _inverse(db))
        top = 15 if kind == "q4_1" else 31
        if (q < 0).any() or (q > top).any():
            raise ValueError(f"grid codes {int(q.min())}..{int(q.max())} do not fit {kind}")
        q = q.astype(np.uint8)
        parts = [_f16_bytes(db), _f16_bytes(m)] + ([_high_bits(q)] if kind == "q5_1" else []) + [_nibbles(q)]
        return _pack(parts, shape)
    raise ValueError(f"no on-grid packing for {kind}")
