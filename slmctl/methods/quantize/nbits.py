"""4-bit weights in onnxruntime's MatMulNBits layout, from slmctl's own calibrated quantisation.

MatMulNBits (com.microsoft) stores, for a MatMul weight B (K, N), each output column's K inputs in
blocks of ``block_size``: codes q in 0..15, one float scale per block and, when asymmetric, one
4-bit zero point per block (absent: 8); a weight stands for ``scale * (q - zero_point)``.

The scales come from ggml's importance-weighted searches (the ones llama-quantize uses with an
importance matrix: symmetric ``make_qx_quants`` as for Q4_0, affine ``make_qkx3_quants`` as for
Q4_1 with the zero point rounded to a code), generalised to any block size; the importance is the
layer's mean squared input per column. The codes are then chosen column by column with GPTQ's error
feedback on those fixed scales (slmctl.methods.quantize.gguf_gptq.gptq_codes). At block 32,
symmetric, the grid is exactly Q4_0's, so the file carries the same weights as slmctl's GGUF Q4_0
tensors of the same layer (given the same Hessian).

Layout reference: https://github.com/microsoft/onnxruntime/blob/main/docs/ContribOperators.md#com.microsoft.MatMulNBits
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import gguf_kquants as K
from .gguf_gptq import gptq_codes, importance_of, prepare

F = np.float32


@dataclass
class NBits:
    """One weight's MatMulNBits tensors: ``packed`` (N, blocks, block_size // 2) uint8, ``scales``
    (N, blocks) float32, ``zero_points`` (N, ceil(blocks / 2)) uint8 or None (symmetric: 8)."""

    packed: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    codes: np.ndarray  # (N, blocks * block_size) int, for checks
    zeros: np.ndarray  # (N, blocks) int zero point per block
    K: int
    block_size: int

    def values(self) -> np.ndarray:
        """The weights as onnxruntime dequantises them, (N, K) float32 (HF Linear layout)."""
        n, nb = self.scales.shape
        q = self.codes.reshape(n, nb, self.block_size).astype(F)
        v = (q - self.zeros[..., None].astype(F)) * self.scales[..., None]
        return v.reshape(n, -1)[:, :self.K]


def _pad(W: np.ndarray, block_size: int) -> np.ndarray:
    pad = (-W.shape[1]) % block_size
    return np.pad(W, ((0, 0), (0, pad))) if pad else W


def search(W: np.ndarray, qw: np.ndarray, block_size: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Importance-weighted scale search over the blocks of W (N, Kp), Kp a multiple of block_size:
    (scale (N, blocks), integer zero point (N, blocks), codes (N, Kp))."""
    n, kp = W.shape
    b = W.reshape(-1, block_size)
    # the weights ggml's imatrix searches use: importance * sqrt(row variance + w^2)
    sig = (np.sum(W.astype(np.float64) ** 2, axis=1) / kp).astype(F)
    sig = np.repeat(sig, kp // block_size)[:, None]
    qwb = np.broadcast_to(qw.reshape(1, -1, block_size), (n, kp // block_size, block_size)).reshape(-1, block_size)
    w = qwb * np.sqrt(sig + b * b)
    if symmetric:
        d, L = K.make_qx_quants(b, 8, w)
        zp = np.full(len(b), 8, dtype=np.int32)
    else:
        d, m, L = K.make_qkx_quants(b, w, 15, -0.9, 0.05, 36, False, v3=True)
        # a code stands for d*q - m; MatMulNBits needs d*(q - zp) with an integer zp
        with np.errstate(all="ignore"):
            zp = np.where(d > 0, np.clip(np.rint(m / d), 0, 15), 0).astype(np.int32)
    return d.reshape(n, -1).astype(F), zp.reshape(n, -1), L.reshape(n, kp).astype(np.int32)


def quantize_weight(W: np.ndarray, *, block_size: int = 32, symmetric: bool = True, H=None, prepared=None,
                    importance: np.ndarray | None = None, damp: float = 0.01, act_order: bool = True,
                    gptq: bool = True) -> NBits:
    """MatMulNBits tensors for an HF-layout weight W (N out, K in).

    With ``H`` (the layer's input Hessian, K x K) or ``prepared`` (from gguf_gptq.prepare), the scales are
    searched with importance diag(H)/2 and the codes chosen with GPTQ's error feedback; without, the
    importance-free search alone (``importance`` may still weight it). Blocks running past K are padded with
    zero weights, which MatMulNBits never multiplies.
    """
    W = np.ascontiguousarray(W, dtype=F)
    n, k = W.shape
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"MatMulNBits block size must be a power of 2 >= 16, not {block_size}")
    Wp = _pad(W, block_size)
    kp = Wp.shape[1]
    if (H is not None or prepared is not None) and gptq:
        if prepared is None:
            Hp = np.zeros((kp, kp), dtype=np.float64)
            Hp[:k, :k] = np.asarray(H, dtype=np.float64)
            prepared = prepare(Hp, damp=damp, act_order=act_order)
        qw = importance_of(prepared, importance)
    else:
        qw = np.ones(kp, dtype=F) if importance is None else np.pad(np.asarray(importance, dtype=F), (0, kp - k))
        prepared = None
    d, zp, L = search(Wp, qw, block_size, symmetric)
    if prepared is not None:
        S = np.repeat(d, block_size, axis=1)
        O = S * np.repeat(zp, block_size, axis=1).astype(F)
        L = gptq_codes(Wp, S, O, 0, 15, L, prepared, block_size=128)
    return pack(L, d, None if symmetric else zp, k, block_size)


def pack(codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None, k: int, block_size: int) -> NBits:
    """MatMulNBits' bytes: two codes per byte, the first in the low nibble; zero points likewise per row."""
    n, kp = codes.shape
    nb = kp // block_size
    c = codes.astype(np.uint8).reshape(n, nb, block_size // 2, 2)
    packed = (c[..., 0] | (c[..., 1] << 4)).astype(np.uint8)
    zpb = None
    z = np.full((n, nb), 8, dtype=np.int32) if zeros is None else zeros.astype(np.int32)
    if zeros is not None:
        zz = zeros.astype(np.uint8)
        if nb % 2:
            zz = np.pad(zz, ((0, 0), (0, 1)), constant_values=8)
        zz = zz.reshape(n, -1, 2)
        zpb = (zz[..., 0] | (zz[..., 1] << 4)).astype(np.uint8)
    return NBits(packed, scales.astype(F), zpb, codes, z, k, block_size)


def prepare_hessian(H, k_padded: int, *, damp: float = 0.01, act_order: bool = True):
    """gguf_gptq.prepare on H padded with zero rows/columns to the blocks' width (weights that share an input
    share this)."""
    H = np.asarray(H, dtype=np.float64)
    k = H.shape[0]
    if k_padded != k:
        Hp = np.zeros((k_padded, k_padded), dtype=np.float64)
        Hp[:k, :k] = H
        H = Hp
    return prepare(H, damp=damp, act_order=act_order)
