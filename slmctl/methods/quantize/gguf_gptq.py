"""GPTQ onto ggml's own block grids: error-correcting GGUF quantisation.

llama.cpp quantises every block alone. Here the block scales (and mins) come from ggml's
importance-weighted scale search (slmctl.methods.quantize.gguf_kquants, the importance being the
layer's mean squared input per column, i.e. what ``--imatrix`` gives llama-quantize), and are
then held fixed, while the codes are chosen one column at a time with GPTQ's error feedback: the
rounding error of each column is spread over the columns not yet quantised through the inverse
Hessian of the layer's calibration inputs. The result is a set of ordinary GGUF blocks (any
llama.cpp build reads them) whose output error is lower than per-block rounding gives.

Reference: Frantar et al., "GPTQ", https://arxiv.org/abs/2210.17323; ggml's block formats:
https://github.com/ggml-org/llama.cpp/blob/master/ggml/src/ggml-quants.c
"""

from __future__ import annotations

import numpy as np

from . import gguf_kquants as K
from .gptq import _few_threads, inverse_hessian_factor


def _columns(blk: K.Blocks, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Per weight (rows, cols): the scale and offset of its sub-block (a code q stands for s*q - o)."""
    s, o = blk.grid()
    sub = K.SUB[blk.kind]
    per_row = cols // sub
    s = np.repeat(s.reshape(rows, per_row), sub, axis=1)
    o = np.repeat(o.reshape(rows, per_row), sub, axis=1)
    return s.astype(np.float32), o.astype(np.float32)


def prepare(H, *, damp: float = 0.01, act_order: bool = True):
    """(column order, upper Cholesky factor of the damped inverse Hessian in that order, diag(H)).

    Weights that share one input (q/k/v, gate/up) share this.
    """
    import torch

    H = torch.as_tensor(H)
    diag = torch.diag(H).numpy().astype(np.float32)
    perm = np.argsort(-diag, kind="stable") if act_order else np.arange(len(diag))
    return perm, inverse_hessian_factor(H, damp, torch.as_tensor(perm) if act_order else None).numpy(), diag


def gptq_blocks(kind: str, W: np.ndarray, H=None, *, damp: float = 0.01, act_order: bool = True,
                block_size: int = 128, importance: np.ndarray | None = None, prepared=None) -> K.Blocks:
    """GGUF ``kind`` blocks for W (rows, cols) with GPTQ codes on ggml's searched scales.

    ``H``: the layer's Hessian (cols, cols) ``2/n X^T X`` (torch or numpy), or ``prepared``
    (from :func:`prepare`, shared by weights with one input); ``importance``: per-column weights
    of the scale search (default diag(H) / 2, the mean squared input, as llama.cpp's imatrix).
    """
    W = np.ascontiguousarray(W, dtype=np.float32)
    rows, cols = W.shape
    perm, Hp, diag = prepared if prepared is not None else prepare(H, damp=damp, act_order=act_order)
    qw = importance_of((perm, Hp, diag), importance)
    blk = K.search(kind, W, qw)
    S, O = _columns(blk, rows, cols)
    lo, hi = K.CODE_RANGE[kind]
    Q = gptq_codes(W, S, O, lo, hi, blk.codes.reshape(rows, cols), (perm, Hp), block_size=block_size)
    blk.codes = Q.reshape(blk.codes.shape)
    return blk


def importance_of(prepared, importance: np.ndarray | None = None) -> np.ndarray:
    """Per-column weights of the scale search: ``importance``, else diag(H) / 2 (the mean squared input, as
    llama.cpp's imatrix); columns that never see an input get the smallest positive weight."""
    qw = np.asarray(importance if importance is not None else prepared[2] / 2, dtype=np.float32)
    pos = qw[qw > 0]
    return np.where(qw > 0, qw, np.float32(pos.min() if pos.size else 1.0))


def gptq_codes(W: np.ndarray, S: np.ndarray, O: np.ndarray, lo: int, hi: int, C0: np.ndarray, prepared,
               *, block_size: int = 128) -> np.ndarray:
    """Integer codes (rows, cols) in [lo, hi] for W on a fixed grid, chosen column by column with GPTQ's
    error feedback: a code q of weight (r, c) stands for ``S[r, c] * q - O[r, c]``; ``C0`` holds the codes
    kept where the scale is 0; ``prepared`` is (column order, upper Cholesky factor of the damped inverse
    Hessian in that order) from :func:`prepare`."""
    rows, cols = W.shape
    perm, Hp = prepared[0], prepared[1]
    Wp, Sp, Op = W[:, perm].astype(np.float32), S[:, perm], O[:, perm]
    Cp = C0[:, perm]
    Q = np.empty((rows, cols), dtype=np.int32)
    with _few_threads(), np.errstate(all="ignore"):
        for i1 in range(0, cols, block_size):
            i2 = min(i1 + block_size, cols)
            W1 = Wp[:, i1:i2]
            E1 = np.zeros_like(W1)
            H1 = Hp[i1:i2, i1:i2]
            for i in range(i2 - i1):
                c = i1 + i
                w, s, o = W1[:, i], Sp[:, c], Op[:, c]
                q = np.where(s == 0, Cp[:, c], np.clip(np.rint((w + o) / s), lo, hi))
                Q[:, c] = q
                err = (w - (s * q - o)) / H1[i, i]
                W1[:, i:] -= np.outer(err, H1[i, i:])
                E1[:, i] = err
            Wp[:, i2:] -= E1 @ Hp[i1:i2, i2:]
    out = np.empty_like(Q)
    out[:, perm] = Q
    return out


def output_error(W: np.ndarray, Wq: np.ndarray, H) -> float:
    """tr((W - Wq) H (W - Wq)^T) / rows: the layer-output error the Hessian measures."""
    D = np.asarray(W, dtype=np.float64) - np.asarray(Wq, dtype=np.float64)
    Hn = np.asarray(H, dtype=np.float64)
    return float(np.einsum("ij,jk,ik->", D, Hn, D) / len(D))
