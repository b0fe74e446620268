"""ggml's block quantisers as vectorised numpy: k-quants (q2_K ... q6_K), the importance-weighted
searches of every type (what ``llama-quantize --imatrix`` does), quantise-on-given-scales and
dequantisation.

Every search works on all blocks of a tensor at once; the per-weight loops of ggml's C code
become loops over the 16 or 32 positions of a block (or over the search steps), each a numpy
operation over every block. Float32 arithmetic is kept in ggml's order (sums accumulate
sequentially, left to right, as the C loops do), so the bytes equal ggml's reference quantisers
(``quantize_row_*_ref``, no importance matrix) and its importance-weighted ones
(``quantize_row_*_impl`` with ``quant_weights``): tests/methods/test_gguf_kquants.py checks both against
llama.cpp's own output.

Each type is split into three steps so that error-correcting methods (GPTQ on the block grid,
slmctl.methods.quantize.gguf_gptq) can reuse them:

* ``search(x, qw)`` -> a ``Blocks`` (the stored scale fields and the codes): ggml's scale search;
* ``Blocks.grid()`` -> per sub-block (scale, offset) such that a code ``q`` stands for
  ``scale * q - offset``, and the code range: codes can be chosen anew on these fixed scales;
* ``pack(blocks)`` -> the bytes of the GGUF blocks; ``dequantize(kind, bytes, n)`` -> float32.

Reference (maths only, re-derived here): https://github.com/ggml-org/llama.cpp/blob/master/ggml/src/ggml-quants.c
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...io.gguf_types import block_bytes, block_size

F = np.float32
QK_K = 256
GROUP_MAX_EPS = F(1e-15)

#: code range (inclusive) of each type's codes as ``Blocks.codes`` holds them
CODE_RANGE = {"q8_0": (-128, 127), "q4_0": (0, 15), "q4_1": (0, 15), "q5_0": (0, 31), "q5_1": (0, 31),
              "q2_k": (0, 3), "q3_k": (0, 7), "q4_k": (0, 15), "q5_k": (0, 31), "q6_k": (0, 63)}
#: symmetric types: the code that stands for 0
ZERO = {"q8_0": 0, "q4_0": 8, "q5_0": 16, "q3_k": 4, "q6_k": 32}
#: weights per sub-block sharing one (scale, offset)
SUB = {"q8_0": 32, "q4_0": 32, "q4_1": 32, "q5_0": 32, "q5_1": 32, "q2_k": 16, "q3_k": 16, "q4_k": 32,
       "q5_k": 32, "q6_k": 16}


# ---------------------------------------------------------------- float32 helpers in ggml's order
def nearest_int(v) -> np.ndarray:
    """ggml's nearest_int: add 1.5 * 2**23 in float32 and read the mantissa (ties to even; any input)."""
    with np.errstate(all="ignore"):
        s = np.asarray(v, dtype=F) + F(12582912.0)
    return (s.view(np.int32) & np.int32(0x7FFFFF)) - np.int32(0x400000)


def seqsum(a: np.ndarray) -> np.ndarray:
    """Sum over the last axis left to right in float32, as a C loop ``s += a[i]`` does."""
    return np.cumsum(a, axis=-1, dtype=F)[..., -1]


def _f16(v: np.ndarray) -> np.ndarray:
    """float32 -> float16 -> float32 (the value ggml stores and reads back)."""
    return np.asarray(v, dtype=F).astype(np.float16).astype(F)


def _signed_max(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(value with the largest magnitude, its magnitude) per row; the first one on ties."""
    idx = np.abs(x).argmax(axis=-1)[..., None]
    mx = np.take_along_axis(x, idx, axis=-1)[..., 0]
    return mx, np.abs(mx)


def _div(a, b):
    with np.errstate(all="ignore"):
        return (np.asarray(a, dtype=F) / np.asarray(b, dtype=F)).astype(F)


# ---------------------------------------------------------------- ggml's scale searches, vectorised
def make_qx_quants(x: np.ndarray, nmax: int, qw: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric search (rmse_type 1): (scale per block, codes 0..2*nmax-1). ``x`` is (blocks, n)."""
    mx, amax = _signed_max(x)
    zero = amax < GROUP_MAX_EPS
    mx = np.where(zero, F(1), mx)[:, None]
    w = x * x if qw is None else np.broadcast_to(qw, x.shape).astype(F)
    wx = w * x

    def attempt(iscale):
        lo = np.clip(nearest_int(iscale * x), -nmax, nmax - 1)
        lf = lo.astype(F)
        return lo, seqsum(wx * lf), seqsum(w * lf * lf)

    lo, sumlx, suml2 = attempt(_div(F(-nmax), mx))
    L = lo + nmax
    scale = np.where(suml2 != 0, _div(sumlx, suml2), F(0)).astype(F)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        lo, sumlx, suml2 = attempt(_div(-(F(nmax) + F(0.1) * F(step)), mx))
        with np.errstate(all="ignore"):
            upd = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        L = np.where(upd[:, None], lo + nmax, L)
        scale = np.where(upd, _div(sumlx, suml2), scale)
        best = np.where(upd, scale * sumlx, best)
    return np.where(zero, F(0), scale), np.where(zero[:, None], 0, L)


def make_q3_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """q3_K's reference search (do_rmse): coordinate descent on the codes, weights x^2."""
    mx, amax = _signed_max(x)
    zero = amax < GROUP_MAX_EPS
    mx = np.where(zero, F(1), mx)[:, None]
    L = np.clip(nearest_int(_div(F(-nmax), mx) * x), -nmax, nmax - 1)
    w = x * x
    wx = w * x
    lf = L.astype(F)
    sumlx, suml2 = _descend(x, w, L, seqsum(wx * lf), seqsum(w * lf * lf),
                            lambda v: np.clip(v, -nmax, nmax - 1), lambda v: v, weights_first=False)
    scale = np.where(suml2 > 0, _div(sumlx, suml2), F(0))
    return np.where(zero, F(0), scale), np.where(zero[:, None], 0, L + nmax)


def _descend(x, w, L, sumlx, suml2, clamp, store, *, weights_first: bool):
    """ggml's coordinate descent on the codes (make_q3_quants, make_qp_quants): up to 5 sweeps, each code
    moved to its best value with the others fixed when that raises sumlx^2 / suml2. ``L`` changes in place.

    ``weights_first``: make_qp_quants' test (the other codes' suml2 must be positive first) rather than
    make_q3_quants' (the new suml2 must be)."""
    with np.errstate(all="ignore"):
        for _ in range(5):
            changed = np.zeros(len(x), dtype=bool)
            for i in range(x.shape[1]):
                wi, xi, li = w[:, i], x[:, i], L[:, i].astype(F)
                slx = sumlx - wi * xi * li
                sl2 = suml2 - wi * li * li
                new = clamp(nearest_int(xi * sl2 / slx))
                nf = new.astype(F)
                slx2 = slx + wi * xi * nf
                sl22 = sl2 + wi * nf * nf
                ok = (sl2 > 0) if weights_first else (sl22 > 0)
                acc = (slx > 0) & ok & (new != L[:, i]) & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22)
                L[:, i] = np.where(acc, store(new), L[:, i])
                sumlx = np.where(acc, slx2, sumlx)
                suml2 = np.where(acc, sl22, suml2)
                changed |= acc
            if not changed.any():
                break
    return sumlx, suml2


def make_qkx_quants(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int,
                    use_mad: bool, v3: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Affine search (make_qkx2_quants; ``v3``: make_qkx3_quants): (scale, -min, codes 0..nmax).

    As in ggml, a better fit found at one step moves the minimum that the next steps start from.
    """
    w = np.broadcast_to(w, x.shape).astype(F)
    mn = np.minimum(x.min(axis=1), F(0))
    mx = x.max(axis=1)
    sum_w = seqsum(w)
    sum_x = seqsum(w * x)
    flat = (mx <= mn) if v3 else (mx == mn)
    with np.errstate(all="ignore"):
        iscale = _div(F(nmax), mx - mn)
        scale = _div(F(1), iscale)
        L = np.clip(nearest_int(iscale[:, None] * (x - mn[:, None])), 0, nmax)

        def err(sc, m, lf):
            d = sc[:, None] * lf + m[:, None] - x
            return seqsum(w * (np.abs(d) if use_mad else d * d))

        best = err(scale, mn, L.astype(F))
        for step in range(nstep + 1):
            iscale = _div(F(rmin) + F(rdelta) * F(step) + F(nmax), mx - mn)
            lo = np.clip(nearest_int(iscale[:, None] * (x - mn[:, None])), 0, nmax)
            lf = lo.astype(F)
            wl = w * lf
            sum_l, sum_l2, sum_xl = seqsum(wl), seqsum(wl * lf), seqsum(wl * x)
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = _div(sum_w * sum_xl - sum_x * sum_l, D)
            this_min = _div(sum_l2 * sum_x - sum_l * sum_xl, D)
            pos = this_min > 0
            this_min = np.where(pos, F(0), this_min)
            this_scale = np.where(pos, _div(sum_xl, sum_l2), this_scale)
            cur = err(this_scale, this_min, lf)
            upd = (D > 0) & (cur < best)
            L = np.where(upd[:, None], lo, L)
            best = np.where(upd, cur, best)
            scale = np.where(upd, this_scale, scale)
            mn = np.where(upd, this_min, mn)
    scale = np.where(flat, F(0), scale).astype(F)
    return scale, (-mn).astype(F), np.where(flat[:, None], 0, L)


def make_qp_quants(x: np.ndarray, nmax: int, qw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positive values onto 0..nmax with weights (the super-block scales of k-quants): (scale, codes)."""
    mx = x.max(axis=1)
    zero = mx < GROUP_MAX_EPS
    mx = np.where(zero, F(1), mx)
    with np.errstate(all="ignore"):
        iscale = _div(F(nmax), mx)
        L8 = nearest_int(iscale[:, None] * x) & 0xFF  # stored as uint8
        scale = _div(F(1), iscale)
        d = x - scale[:, None] * L8.astype(F)
        best = seqsum(qw * d * d)
        for step in range(-4, 5):
            if step == 0:
                continue
            isc = _div(F(0.1) * F(step) + F(nmax), mx)
            sc = _div(F(1), isc)
            lo = np.minimum(nearest_int(isc[:, None] * x), nmax)
            d = x - sc[:, None] * lo.astype(F)
            mse = seqsum(qw * d * d)
            upd = mse < best
            best = np.where(upd, mse, best)
            iscale = np.where(upd, isc, iscale)
        lo = np.minimum(nearest_int(iscale[:, None] * x), nmax)
        lf = lo.astype(F)
        sumlx, suml2 = seqsum(qw * x * lf), seqsum(qw * lf * lf)
        L = lo & 0xFF
        sumlx, suml2 = _descend(x, qw, L, sumlx, suml2, lambda v: np.minimum(v, nmax), lambda v: v & 0xFF,
                                weights_first=True)
        scale = np.where(suml2 > 0, _div(sumlx, suml2), F(0))
    return np.where(zero, F(0), scale).astype(F), np.where(zero[:, None], 0, L)


# ---------------------------------------------------------------- blocks: stored fields + codes
@dataclass
class Blocks:
    """One tensor's blocks of ``kind``: the stored fields (float16 scales as float32 values, integer
    sub-block scales/mins) and the codes ``codes`` (blocks, weights per block) in CODE_RANGE."""

    kind: str
    codes: np.ndarray
    d: np.ndarray                      # (blocks,) super-block / block scale, float16-representable
    dmin: np.ndarray | None = None     # (blocks,) q2_K/q4_K/q5_K super-block min scale; q4_1/q5_1 min
    sc: np.ndarray | None = None       # (blocks, subs) integer sub-block scales (k-quants)
    mn: np.ndarray | None = None       # (blocks, subs) integer sub-block mins (q2_K, q4_K, q5_K)
    extra: dict = field(default_factory=dict)

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """(scale, offset) per sub-block (blocks, subs): a code q stands for ``scale * q - offset``."""
        s, o, z = self._grid()
        return s, (o if z is None else s * F(z))

    def _grid(self):
        """(scale, offset or None, zero code or None): symmetric types store codes q = k + zero."""
        k, d = self.kind, self.d[:, None]
        if k in ZERO:
            if k == "q3_k":
                return d * (self.sc.astype(F) - F(32)), None, ZERO[k]
            if k == "q6_k":
                return d * self.sc.astype(F), None, ZERO[k]
            return d, None, ZERO[k]
        if k in ("q4_1", "q5_1"):
            return d, -self.dmin[:, None], None
        return d * self.sc.astype(F), self.dmin[:, None] * self.mn.astype(F), None

    def requantize(self, x: np.ndarray) -> None:
        """Codes anew for ``x`` (blocks, n) on the stored scales, as ggml's final pass does (nearest code
        of x / scale, or of (x + offset) / scale); sub-blocks whose scale is 0 keep their codes."""
        s, o, z = self._grid()
        sub = SUB[self.kind]
        lo, hi = CODE_RANGE[self.kind]
        xs = x.reshape(len(x), -1, sub)
        with np.errstate(all="ignore"):
            if z is None:
                q = np.clip(nearest_int((xs + o[..., None]) / s[..., None]), lo, hi)
            else:
                q = np.clip(nearest_int(xs / s[..., None]), lo - z, hi - z) + z
        keep = (s == 0)[..., None]
        self.codes = np.where(keep, self.codes.reshape(xs.shape), q).reshape(x.shape)

    def values(self) -> np.ndarray:
        """The dequantised weights (blocks, n), float32 in ggml's dequantiser's order."""
        s, o, z = self._grid()
        sub = SUB[self.kind]
        q = self.codes.reshape(len(self.codes), -1, sub)
        if z is None:
            v = s[..., None] * q.astype(F) - o[..., None]
        else:
            v = (q - z).astype(F) * s[..., None]
        return v.reshape(self.codes.shape)


def _rows(x: np.ndarray, n: int) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=F)
    if x.shape[-1] % n:
        raise ValueError(f"row length {x.shape[-1]} is not a multiple of {n}")
    return x.reshape(-1, n)


def _row_sigma2(x: np.ndarray, per_row: int, n: int) -> np.ndarray:
    """sum(x^2)/n_per_row of each weight's row, repeated for each of the row's blocks of n."""
    r = np.ascontiguousarray(x, dtype=F).reshape(-1, per_row)
    s = seqsum(r * r) / F(per_row)
    return np.repeat(s.astype(F), per_row // n)


def _qw_blocks(qw: np.ndarray, x: np.ndarray, n: int) -> np.ndarray:
    """The per-column importance (n_per_row,) laid over every block of x (blocks, n)."""
    qw = np.asarray(qw, dtype=F).reshape(-1)
    return np.broadcast_to(qw.reshape(-1, n), (len(x) // (qw.size // n), qw.size // n, n)).reshape(-1, n)


def search(kind: str, x: np.ndarray, qw: np.ndarray | None = None) -> Blocks:
    """ggml's scale search for ``kind`` over a 2-D tensor ``x`` (rows, n_per_row).

    Without ``qw`` this is the reference quantiser (``quantize_row_*_ref``); with ``qw`` (the
    importance, one value per column) the importance-weighted one llama-quantize uses with an
    importance matrix. The codes are ggml's final codes.
    """
    x = np.ascontiguousarray(x, dtype=F)
    per_row = x.shape[-1]
    n = block_size(kind)
    b = _rows(x, n)
    qwb = None if qw is None else _qw_blocks(qw, b, n)
    return _SEARCH[kind](b, qwb, x.reshape(-1, per_row))


def _ggml_ref(kind):
    from .gguf_blocks import GGUF_BLOCK_TYPES

    return lambda b: unpack(kind, GGUF_BLOCK_TYPES.get(kind)(b))


def _legacy_sym(kind, nmax):
    def run(b, qw, x2):
        if kind == "q8_0" or qw is None:
            return _ggml_ref(kind)(b)
        sig = _row_sigma2(x2, x2.shape[1], 32)[:, None]
        d, L = make_qx_quants(b, nmax, qw * np.sqrt(sig + b * b))
        return Blocks(kind, L.astype(np.int32), _f16(d))
    return run


def _legacy_affine(kind, nmax):
    def run(b, qw, x2):
        if qw is None:
            return _ggml_ref(kind)(b)
        sig = _row_sigma2(x2, x2.shape[1], 32)[:, None]
        d, m, L = make_qkx_quants(b, qw * np.sqrt(sig + b * b), nmax, -0.9, 0.05, 36, False, v3=True)
        return Blocks(kind, L.astype(np.int32), _f16(d), dmin=_f16(-m))
    return run


def _sub_weights(b: np.ndarray, qw, sub: int, sigma_scale: float):
    """k-quant per-weight weights: qw * sqrt(sigma2 + x^2), sigma2 = scale * mean(x^2) of the super-block."""
    sig = (F(sigma_scale) * seqsum(b * b) / F(QK_K)).astype(F)
    return qw * np.sqrt(sig[:, None] + b * b), sig


def _search_q4k_q5k(kind, nmax):
    def run(b, qw, _x2):
        nb, subs = len(b), QK_K // 32
        xs = b.reshape(-1, 32)
        if qw is None:  # reference: weights av_x + |x| with av_x the sub-block's rms
            av = np.sqrt(seqsum(xs * xs) / F(32))
            w = av[:, None] + np.abs(xs)
            r = (-1.0, 0.1, 20) if kind == "q4_k" else (-0.5, 0.1, 15)
            scales, mins, L = make_qkx_quants(xs, w, nmax, *r, False)
            scales, mins = scales.reshape(nb, subs), mins.reshape(nb, subs)
            max_scale, max_min = scales.max(axis=1), mins.max(axis=1)
            max_scale, max_min = np.maximum(max_scale, F(0)), np.maximum(max_min, F(0))
            inv_s = np.where(max_scale > 0, _div(F(63), max_scale), F(0))
            inv_m = np.where(max_min > 0, _div(F(63), max_min), F(0))
            ls = np.minimum(nearest_int(inv_s[:, None] * scales) & 0xFF, 63)
            lm = np.minimum(nearest_int(inv_m[:, None] * mins) & 0xFF, 63)
            d, dmin = _f16(max_scale / F(63)), _f16(max_min / F(63))
        else:
            w, _ = _sub_weights(b, qw, 32, 2.0)
            w = w.reshape(-1, 32)
            sw = seqsum(w).reshape(nb, subs)
            scales, mins, L = make_qkx_quants(xs, w, nmax, -0.9, 0.05, 36, False, v3=True)
            db, ls = make_qp_quants(scales.reshape(nb, subs), 63, sw)
            mb, lm = make_qp_quants(mins.reshape(nb, subs), 63, sw)
            ls, lm = np.minimum(ls, 63), np.minimum(lm, 63)
            d, dmin = _f16(db), _f16(mb)
        blk = Blocks(kind, L.reshape(nb, QK_K).astype(np.int32), d, dmin=dmin, sc=ls.astype(np.int32),
                     mn=lm.astype(np.int32))
        blk.requantize(b)
        return blk
    return run


def _search_q2k(b, qw, _x2):
    nb, subs = len(b), QK_K // 16
    xs = b.reshape(-1, 16)
    if qw is None:
        scales, mins, L = make_qkx_quants(xs, np.abs(xs), 3, -0.5, 0.1, 15, True)
        scales, mins = scales.reshape(nb, subs), mins.reshape(nb, subs)
        max_scale = np.maximum(scales.max(axis=1), F(0))
        max_min = np.maximum(mins.max(axis=1), F(0))
        inv_s = np.where(max_scale > 0, _div(F(15), max_scale), F(0))
        inv_m = np.where(max_min > 0, _div(F(15), max_min), F(0))
        ls = np.where(max_scale[:, None] > 0, nearest_int(inv_s[:, None] * scales) & 0xFF, 0)
        lm = np.where(max_min[:, None] > 0, nearest_int(inv_m[:, None] * mins), 0)
        byte = (ls | (lm << 4)) & 0xFF
        ls, lm = byte & 0xF, byte >> 4
        d = np.where(max_scale > 0, _f16(max_scale / F(15)), F(0))
        dmin = np.where(max_min > 0, _f16(max_min / F(15)), F(0))
    else:
        w, _ = _sub_weights(b, qw, 16, 1.0)
        w = w.reshape(-1, 16)
        sw = seqsum(w).reshape(nb, subs)
        scales, mins, L = make_qkx_quants(xs, w, 3, -0.9, 0.05, 36, False, v3=True)
        dm, ls = make_qp_quants(scales.reshape(nb, subs), 15, sw)
        mm, lm = make_qp_quants(mins.reshape(nb, subs), 15, sw)
        byte = (ls | (lm << 4)) & 0xFF
        ls, lm = byte & 0xF, byte >> 4
        d, dmin = _f16(dm), _f16(mm)
    blk = Blocks("q2_k", L.reshape(nb, QK_K).astype(np.int32), d, dmin=dmin, sc=ls.astype(np.int32),
                 mn=lm.astype(np.int32))
    blk.requantize(b)
    return blk


def _search_q3k(b, qw, _x2):
    nb, subs = len(b), QK_K // 16
    xs = b.reshape(-1, 16)
    if qw is None:
        scales, L = make_q3_quants(xs, 4)
        scales = scales.reshape(nb, subs)
        mx, amax = _signed_max(scales)
        nz = mx != 0
        iscale = _div(F(-32), np.where(nz, mx, F(1)))
        l6 = np.clip(nearest_int(iscale[:, None] * scales).astype(np.int8).astype(np.int32), -32, 31) + 32
        l6 = np.where(nz[:, None], l6, 0)
        d = np.where(nz, _f16(_div(F(1), iscale)), F(0))
    else:
        w, _ = _sub_weights(b, qw, 16, 2.0)
        w = w.reshape(-1, 16)
        sw = seqsum(w).reshape(nb, subs)
        scales, L = make_qx_quants(xs, 4, w)
        db, l6 = make_qx_quants(scales.reshape(nb, subs), 32, sw)
        l6 = l6 & 0x3F  # the 6-bit field keeps the low bits
        d = _f16(db)
    blk = Blocks("q3_k", L.reshape(nb, QK_K).astype(np.int32), d, sc=l6.astype(np.int32))
    blk.requantize(b)
    return blk


def _search_q6k(b, qw, _x2):
    nb, subs = len(b), QK_K // 16
    xs = b.reshape(-1, 16)
    scales, L = make_qx_quants(xs, 32, None if qw is None else qw.reshape(-1, 16))
    scales = scales.reshape(nb, subs)
    mx, amax = _signed_max(scales)
    zero = amax < GROUP_MAX_EPS
    iscale = _div(F(-128), np.where(zero, F(1), mx))
    sc = np.minimum(nearest_int(iscale[:, None] * scales), 127).astype(np.int8).astype(np.int32)
    d = _f16(_div(F(1), iscale))
    L = L.reshape(nb, QK_K)
    blk = Blocks("q6_k", L.astype(np.int32), np.where(zero, F(0), d), sc=np.where(zero[:, None], 0, sc))
    blk.requantize(b)
    # an all-zero super-block is stored as zeros (codes 0)
    blk.codes = np.where(zero[:, None], 0, blk.codes)
    return blk


_SEARCH = {"q8_0": _legacy_sym("q8_0", 0), "q4_0": _legacy_sym("q4_0", 8), "q5_0": _legacy_sym("q5_0", 16),
           "q4_1": _legacy_affine("q4_1", 15), "q5_1": _legacy_affine("q5_1", 31),
           "q4_k": _search_q4k_q5k("q4_k", 15), "q5_k": _search_q4k_q5k("q5_k", 31), "q2_k": _search_q2k,
           "q3_k": _search_q3k, "q6_k": _search_q6k}


# ---------------------------------------------------------------- packing
def _u8(a) -> np.ndarray:
    return (np.asarray(a) & 0xFF).astype(np.uint8)


def _h(v: np.ndarray) -> np.ndarray:
    return np.asarray(v, dtype=F).astype(np.float16).view(np.uint8).reshape(len(v), 2)


def _pack_k4_scales(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """q4_K/q5_K's 12 bytes of eight 6-bit scales and mins."""
    out = np.zeros((len(ls), 12), dtype=np.int32)
    out[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    out[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    return _u8(out)


def _unpack_k4_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = s.astype(np.int32)
    ls = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    lm = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    return ls, lm


def _crumbs(L: np.ndarray) -> np.ndarray:
    """2-bit codes (blocks, 256) -> 64 bytes: byte l of each half of 128 holds codes l, l+32, l+64, l+96."""
    q = L.reshape(len(L), 2, 4, 32)
    return _u8(q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(len(L), 64)


def _uncrumbs(qs: np.ndarray) -> np.ndarray:
    q = qs.astype(np.int32).reshape(len(qs), 2, 1, 32)
    return ((q >> (2 * np.arange(4).reshape(1, 1, 4, 1))) & 3).reshape(len(qs), 256)


def pack(blk: Blocks) -> np.ndarray:
    """The GGUF bytes (blocks, bytes per block) of ``blk``."""
    k, L, nb = blk.kind, blk.codes.astype(np.int32), len(blk.codes)
    if k in ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0"):
        parts = [_h(blk.d)]
        if k in ("q4_1", "q5_1"):
            parts.append(_h(blk.dmin))
        if k == "q8_0":
            parts.append(L.astype(np.int8).view(np.uint8))
        else:
            if k in ("q5_0", "q5_1"):
                mask = (((L >> 4) & 1).astype(np.uint32) << np.arange(32, dtype=np.uint32)).sum(1, dtype=np.uint32)
                parts.append(mask.astype("<u4").view(np.uint8).reshape(nb, 4))
            parts.append(_u8((L[:, :16] & 0xF) | ((L[:, 16:] & 0xF) << 4)))
        return np.concatenate(parts, axis=1)
    if k == "q2_k":
        return np.concatenate([_u8(blk.sc | (blk.mn << 4)), _crumbs(L), _h(blk.d), _h(blk.dmin)], axis=1)
    if k == "q3_k":
        hm = (L > 3).astype(np.int32).reshape(nb, 8, 32)  # bit b of byte m: code 32 * b + m
        hmask = _u8((hm << np.arange(8).reshape(1, 8, 1)).sum(1))
        l6 = blk.sc.astype(np.int32)
        sc = np.zeros((nb, 12), dtype=np.int32)
        sc[:, 0:8] = (l6[:, 0:8] & 0xF) | ((l6[:, 8:16] & 0xF) << 4)
        hi = (l6 >> 4).reshape(nb, 4, 4)  # [j // 4, j % 4]
        sc[:, 8:12] = (hi << (2 * np.arange(4).reshape(1, 4, 1))).sum(1)
        return np.concatenate([hmask, _crumbs(L & 3), _u8(sc), _h(blk.d)], axis=1)
    if k in ("q4_k", "q5_k"):
        q = L.reshape(nb, 4, 2, 32)
        ql = _u8((q[:, :, 0] & 0xF) | ((q[:, :, 1] & 0xF) << 4)).reshape(nb, 128)
        parts = [_h(blk.d), _h(blk.dmin), _pack_k4_scales(blk.sc, blk.mn)]
        if k == "q5_k":
            hb = (q >> 4) & 1  # (nb, 4, 2, 32): bit 2*k + h of byte j
            sh = (2 * np.arange(4).reshape(1, 4, 1, 1) + np.arange(2).reshape(1, 1, 2, 1))
            parts.append(_u8((hb << sh).sum((1, 2))))
        return np.concatenate(parts + [ql], axis=1)
    if k == "q6_k":
        q = L.reshape(nb, 2, 4, 32)
        ql = np.concatenate([(q[:, :, 0] & 0xF) | ((q[:, :, 2] & 0xF) << 4),
                             (q[:, :, 1] & 0xF) | ((q[:, :, 3] & 0xF) << 4)], axis=2).reshape(nb, 128)
        qh = ((q >> 4) << (2 * np.arange(4).reshape(1, 1, 4, 1))).sum(2).reshape(nb, 64)
        return np.concatenate([_u8(ql), _u8(qh), blk.sc.astype(np.int8).view(np.uint8), _h(blk.d)], axis=1)
    raise ValueError(f"cannot pack {k}")


def unpack(kind: str, data: np.ndarray) -> Blocks:
    """GGUF bytes -> Blocks (fields and codes) of ``kind``."""
    nbytes, n = block_bytes(kind), block_size(kind)
    raw = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1, nbytes)
    nb = len(raw)

    def h(a, b):
        return raw[:, a:b].copy().view(np.float16).astype(F)[:, 0]

    if kind in ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0"):
        off = 4 if kind in ("q4_1", "q5_1") else 2
        dmin = h(2, 4) if off == 4 else None
        if kind == "q8_0":
            return Blocks(kind, raw[:, 2:].view(np.int8).astype(np.int32), h(0, 2))
        hi = 0
        if kind in ("q5_0", "q5_1"):
            mask = raw[:, off:off + 4].copy().view("<u4")[:, 0].astype(np.uint32)
            hi = ((mask[:, None] >> np.arange(32, dtype=np.uint32)) & 1).astype(np.int32) << 4
            off += 4
        qs = raw[:, off:off + 16].astype(np.int32)
        L = np.concatenate([qs & 0xF, qs >> 4], axis=1) | hi
        return Blocks(kind, L, h(0, 2), dmin=dmin)
    if kind == "q2_k":
        s = raw[:, :16].astype(np.int32)
        return Blocks(kind, _uncrumbs(raw[:, 16:80]), h(80, 82), dmin=h(82, 84), sc=s & 0xF, mn=s >> 4)
    if kind == "q3_k":
        hm = raw[:, :32].astype(np.int32)
        hbit = ((hm[:, None, :] >> np.arange(8).reshape(1, 8, 1)) & 1).reshape(nb, 256)
        L = _uncrumbs(raw[:, 32:96]) | (hbit << 2)
        s = raw[:, 96:108].astype(np.int32)
        lo = np.concatenate([s[:, 0:8] & 0xF, s[:, 0:8] >> 4], axis=1)
        hi = ((s[:, 8:12][:, None, :] >> (2 * np.arange(4).reshape(1, 4, 1))) & 3).reshape(nb, 16)
        return Blocks(kind, L, h(108, 110), sc=lo | (hi << 4))
    if kind in ("q4_k", "q5_k"):
        ls, lm = _unpack_k4_scales(raw[:, 4:16])
        off = 16
        hi = 0
        if kind == "q5_k":
            qh = raw[:, 16:48].astype(np.int32)  # (nb, 32)
            sh = (2 * np.arange(4).reshape(1, 4, 1, 1) + np.arange(2).reshape(1, 1, 2, 1))
            hi = ((qh[:, None, None, :] >> sh) & 1) << 4
            off = 48
        ql = raw[:, off:off + 128].astype(np.int32).reshape(nb, 4, 1, 32)
        L = ((ql >> np.array([0, 4]).reshape(1, 1, 2, 1)) & 0xF) | hi
        return Blocks(kind, L.reshape(nb, 256), h(0, 2), dmin=h(2, 4), sc=ls, mn=lm)
    if kind == "q6_k":
        ql = raw[:, :128].astype(np.int32).reshape(nb, 2, 2, 32)
        qh = raw[:, 128:192].astype(np.int32).reshape(nb, 2, 1, 32)
        lo = np.stack([ql[:, :, 0] & 0xF, ql[:, :, 1] & 0xF, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], axis=2)
        hi = (qh >> (2 * np.arange(4).reshape(1, 1, 4, 1))) & 3
        return Blocks(kind, (lo | (hi << 4)).reshape(nb, 256), h(208, 210),
                      sc=raw[:, 192:208].view(np.int8).astype(np.int32))
    raise ValueError(f"cannot unpack {kind}")


def quantize(kind: str, x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    """ggml's quantiser for ``kind`` (the importance-weighted one with ``qw``): bytes shaped (rows, row bytes)."""
    x = np.ascontiguousarray(x, dtype=F)
    rows = x.reshape(-1, x.shape[-1]) if x.ndim > 1 else x.reshape(1, -1)
    out = pack(search(kind, rows, qw))
    return out.reshape(*x.shape[:-1], -1) if x.ndim > 1 else out.reshape(-1)


def dequantize(kind: str, data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """GGUF block bytes -> float32 weights of ``shape`` (ggml's dequantisers)."""
    return unpack(kind, data).values().reshape(shape)
