"""GPTQ: quantise columns one at a time, spreading each rounding error over the columns not yet
quantised through the inverse Hessian ``H = 2 X^T X`` of the layer's calibration inputs.

Options: damping (a fraction of mean(diag H) added to the diagonal), act-order (columns in
decreasing order of diag H), static groups (group grids fixed from the unquantised weight, so the
stored g_idx stays trivial even with act-order), true-sequential (the linears of a decoder layer
are quantised in forward order, each group's Hessian taken from inputs that already pass through
the quantised linears before it) and scale search (each group's grid, per row, is the min/max grid
shrunk by the factor among ``SHRINKS`` with the least rounding error weighted by diag H, rather than
the plain min/max grid: clipping a few outliers buys finer steps for the columns that matter).

Reference: Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers", https://arxiv.org/abs/2210.17323 (reference code: https://github.com/IST-DASLab/gptq).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from ...errors import UsageError
from .common import QUANTIZERS, QuantConfig, QuantResult, minmax_qparams


@dataclass(frozen=True)
class GPTQConfig:
    """GPTQ options: damping fraction, act-order, static groups, true-sequential, block size, and
    whether group grids are searched (importance-weighted clipping) or plain min/max."""

    damp: float = 0.01
    act_order: bool = True
    static_groups: bool = True
    true_sequential: bool = True
    block_size: int = 128
    scale_search: bool = True

    def __post_init__(self):
        if not 0 < self.damp < 1:
            raise UsageError(f"--damp {self.damp} must lie in (0, 1)", hint="0.01 is the usual value")
        if self.block_size < 1:
            raise UsageError("GPTQ block size must be positive")


class HessianAccumulator:
    """Running ``2/n * sum x^T x`` over the rows of the inputs it is given.

    Below ``BIG_HESSIAN`` columns each batch's ``x^T x`` is a float32 matmul (fast BLAS) summed into a
    float64 total, so thousands of batches do not lose precision while the expensive part stays in float32.
    From ``BIG_HESSIAN`` columns on (the down projections of 0.5B+ models: a 8960-column float64 Hessian is
    642 MB, and each batch's float32 product and its float64 copy are two more of those) the total is float32,
    updated in place (``addmm_`` on its upper triangle, by blocks of rows: the lower one is its mirror), and
    ``result()`` mirrors and scales it in place: one n x n buffer, as the peers keep.
    """

    def __init__(self, columns: int):
        import torch

        self.big = columns >= BIG_HESSIAN
        self.S = torch.zeros(columns, columns, dtype=torch.float32 if self.big else torch.float64)
        self.n = 0
        self._done = False

    def add(self, x) -> None:
        import torch

        if self._done:
            raise RuntimeError("HessianAccumulator.add after result()")
        x = x.reshape(-1, x.shape[-1]).to(torch.float32)
        if self.big:  # the upper triangle only, by blocks of rows (about 56% of the products); result() mirrors it
            step = self._step()
            for a in range(0, x.shape[1], step):
                self.S[a:a + step, a:].addmm_(x[:, a:a + step].T, x[:, a:])
        else:
            self.S += (x.T @ x).to(torch.float64)
        self.n += x.shape[0]

    def _step(self) -> int:
        """Rows per block of a big total (SYM_BLOCKS blocks)."""
        return -(-self.S.shape[0] // SYM_BLOCKS)

    def result(self):
        import torch

        if self.big:  # mirrored and scaled in place, once: the accumulator is spent
            if not self._done:
                step = self._step()
                for a in range(0, self.S.shape[0], step):
                    self.S[a + step:, a:a + step] = self.S[a:a + step, a + step:].T
                self.S.mul_(2.0 / max(self.n, 1))
                self._done = True
            return self.S
        return (self.S * (2.0 / max(self.n, 1))).to(torch.float32)

    def take(self):
        """``result()``, and the accumulator lets go of its buffer: a big Hessian (which GPTQ turns into its
        inverse factor in place) is freed as soon as its taker drops it, not when the accumulator goes."""
        H = self.result()
        self.S = None
        return H


def gptq_quantize_weight(W, H, cfg: QuantConfig, gcfg: GPTQConfig = GPTQConfig(), bias=None,
                         own_hessian: bool = False) -> QuantResult:
    """GPTQ for one weight (out, in) given its Hessian (in, in). Returns codes, grids and g_idx.
    ``own_hessian``: ``H`` and ``W`` are the caller's to spend (a big H becomes the inverse factor in its own
    buffer; W is worked on in place)."""
    import torch

    # a weight the caller built for this call (own_hessian: it is spent too) is updated in place, not copied
    W = W.detach() if own_hessian and W.dtype == torch.float32 else W.detach().clone().float()
    rows, cols = W.shape
    maxq = cfg.maxq
    g = cfg.group_len(cols)
    n_groups = cfg.n_groups(cols)

    diag = torch.diag(H).to(torch.float64)
    dead = diag == 0
    diag[dead] = 1
    W[:, dead] = 0

    static = None
    if cfg.group_size != -1 and gcfg.static_groups:
        if gcfg.scale_search:
            h = diag.float()
            static = [searched_qparams(W[:, i * g:(i + 1) * g], h[i * g:(i + 1) * g], cfg) for i in range(n_groups)]
        else:
            static = [minmax_qparams(W[:, i * g:(i + 1) * g], cfg) for i in range(n_groups)]

    perm = None
    if gcfg.act_order:
        perm = torch.argsort(diag, descending=True, stable=True)
        W = _permute_columns_(W, perm)  # W is this call's own (handed over or cloned above)
        invperm = torch.argsort(perm)

    hdiag = (diag if perm is None else diag[perm]).float() if gcfg.scale_search and static is None and cfg.group_size != -1 else None
    Hinv = inverse_hessian_factor(H, gcfg.damp, perm, overwrite=own_hessian)
    del H

    # codes of up to 8 bits in one byte each (a quarter of int32's memory; every consumer widens them)
    Q = torch.zeros(rows, cols, dtype=torch.uint8 if maxq <= 255 else torch.int32)
    scales = [None] * n_groups
    zeros = [None] * n_groups
    loss = torch.zeros(rows, dtype=torch.float64)
    scale = zero = None
    if cfg.group_size == -1:
        scale, zero = minmax_qparams(W, cfg)
        scales[0], zeros[0] = scale, zero
    bs = gcfg.block_size
    threads = torch.get_num_threads() if cols >= BIG_HESSIAN else 1
    with _few_threads():
        _gptq_blocks(W, Hinv, Q, scales, zeros, static, perm, loss, scale, zero, cfg, bs, hdiag, threads)
    if perm is not None:
        Q = _permute_columns_(Q, invperm)
    if cfg.group_size == -1:
        g_idx = torch.zeros(cols, dtype=torch.int32)
    elif static is not None or perm is None:
        g_idx = torch.arange(cols, dtype=torch.int32) // g
    else:
        # groups were formed in act-order: column perm[k] belongs to group k // g
        g_idx = (torch.arange(cols, dtype=torch.int32) // g)[invperm]
    scale_t = torch.stack(scales)
    zero_t = torch.stack(zeros).to(torch.int32)
    return QuantResult(Q, scale_t, zero_t, g_idx, cfg, bias, info={"loss": float(loss.sum()), "row_loss": loss})


def _permute_columns_(M, order, rows_per_slice: int | None = None):
    """``M[:, order]`` written back into M a slice of rows at a time, so no second matrix of M's size is made
    (a slice's gathered copy is a few MB). M must be the caller's own."""
    step = rows_per_slice or max(1, (1 << 20) // max(M.shape[1], 1))
    for a in range(0, M.shape[0], step):
        M[a:a + step] = M[a:a + step, order]
    return M


SHRINKS = tuple(round(1.0 - 0.02 * k, 2) for k in range(16))  # 1.00, 0.98, ... 0.70
SEARCH_ELEMENTS = 1 << 22  # candidates x rows x group columns searched at once (16 MB of float32 scratch)


def searched_qparams(w, h, cfg: QuantConfig, shrinks=SHRINKS):
    """Per-row (scale, zero) of one group ``w`` (rows, g) chosen among min/max grids shrunk by each of
    ``shrinks`` (clipping the extremes), the one with the least importance-weighted rounding error
    ``sum_j h_j (w_j - q(w_j))^2``, ``h`` being diag(H) of the group's columns (how much each input
    column matters to the layer's output). Shrink 1.0 is the plain min/max grid, so the result is never
    worse than it on that error."""
    import torch

    w = w.float()
    h = h.float().clamp(min=0)
    step = max(1, SEARCH_ELEMENTS // max(1, len(shrinks) * w.shape[1]))
    if w.shape[0] > step:  # rows are independent: a slice at a time keeps the (shrinks, rows, g) scratch small
        parts = [searched_qparams(w[a:a + step], h, cfg, shrinks) for a in range(0, w.shape[0], step)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    f = torch.tensor(shrinks, dtype=torch.float32)[:, None]  # every candidate at once: (shrinks, rows)
    s, z = minmax_qparams(w, cfg, shrink=f)
    # ((w - quantize_column(w, s, z)) ** 2 * h).sum(-1), in one buffer (in place: the same values, bit for bit)
    s3, z3 = s[:, :, None], z[:, :, None]
    t = w / s3
    t.round_().add_(z3).clamp_(0, cfg.maxq).sub_(z3).mul_(s3)
    err = t.neg_().add_(w).square_().mul_(h).sum(-1)
    best = err.argmin(0)  # the first of equal errors: the least clipping
    rows = torch.arange(w.shape[0])
    best_s, best_z = s[best, rows], z[best, rows]
    return best_s, best_z


class _few_threads:
    """The column loop is thousands of tiny ops: one thread avoids thread hand-offs that dominate
    (14x faster on a busy 2-core machine than with two threads handing work back and forth)."""

    def __enter__(self):
        import torch

        self.n = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.n)


def _gptq_blocks(W, Hinv, Q, scales, zeros, static, perm, loss, scale, zero, cfg, bs, hdiag=None, threads: int = 1):
    """The column loop, in numpy: thousands of tiny vector ops, where torch's per-op overhead dominates.
    ``threads``: for the update of the columns after each block (one big matrix product per block; for a
    Hessian of BIG_HESSIAN columns and more it is most of the loop's arithmetic)."""
    import numpy as np
    import torch

    cols = W.shape[1]
    g = cfg.group_len(cols)
    maxq = cfg.maxq
    Qn = Q.numpy()
    static_np = [(s.numpy(), z.numpy()) for s, z in static] if static is not None else None
    s_n = z_n = None
    if scale is not None:
        s_n, z_n = scale.numpy(), zero.numpy()
    for i1 in range(0, cols, bs):
        i2 = min(i1 + bs, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2].contiguous()
        Wn, En, Hn = W1.numpy(), Err1.numpy(), Hinv1.numpy()
        for i in range(i2 - i1):
            col = i1 + i
            if cfg.group_size != -1:
                if static_np is not None:
                    gid = (int(perm[col]) if perm is not None else col) // g
                    s_n, z_n = static_np[gid]
                    scales[gid], zeros[gid] = static[gid]
                elif col % g == 0:
                    # as the reference code: the grid of a group comes from W as the previous blocks left it
                    scale, zero = (minmax_qparams(W[:, col:col + g], cfg) if hdiag is None
                                   else searched_qparams(W[:, col:col + g], hdiag[col:col + g], cfg))
                    scales[col // g], zeros[col // g] = scale, zero
                    s_n, z_n = scale.numpy(), zero.numpy()
            w = Wn[:, i]
            d = Hn[i, i]
            q = np.clip(np.rint(w / s_n) + z_n, 0, maxq)
            Qn[:, col] = q
            err = (w - s_n * (q - z_n)) / d
            Wn[:, i:] -= np.outer(err, Hn[i, i:])
            En[:, i] = err
        torch.set_num_threads(threads)
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
        torch.set_num_threads(1)
        loss += (Err1.double() ** 2).sum(1) / 2  # sum of (w - q)^2 / d^2 / 2, as the reference reports


def inverse_hessian_factor(H, damp: float, perm=None, overwrite: bool = False):
    """Upper Cholesky factor (float32) of the damped inverse of ``H`` in the column order ``perm`` (None: as
    it is), dead columns (no positive diagonal) set to 1 first; ``H`` itself is left as it is unless
    ``overwrite`` (big Hessians then become the factor, in their own buffer). GPTQ on
    safetensors and on GGUF grids (gguf_gptq.prepare) both invert through here.

    Below ``BIG_HESSIAN`` columns: float64, and the reference's steps (Cholesky, its inverse, Cholesky of that).
    From ``BIG_HESSIAN`` columns on (see ``_big_inverse_factor``): float32 and one factorisation, with all
    threads, in place but for the Cholesky itself."""
    import torch

    if H.shape[0] >= BIG_HESSIAN:
        return _big_inverse_factor(H, damp, perm, overwrite=overwrite)
    H = H.detach().clone().to(torch.float64)
    dead = torch.diag(H) <= 0
    H[dead, dead] = 1
    if perm is not None:
        H = H[perm][:, perm]
    return _inverse_cholesky(H, damp)


def _inverse_cholesky(H, damp: float):
    """Upper Cholesky factor of H^-1 after damping; more damping if H is not positive definite."""
    import torch

    # one thread: LAPACK's multi-threaded inverse of a 1536 x 1536 Hessian slowed down tenfold when the cores were
    # busy. Hessians of BIG_HESSIAN columns and more go through _big_inverse_factor (all threads) instead.
    with _few_threads():
        return _inverse_cholesky_damped(H, damp)


BIG_HESSIAN = 2048
SYM_BLOCKS = 8  # blocks of rows of a big Hessian's running total (its upper triangle is summed, then mirrored)


def _big_inverse_factor(H, damp: float, perm=None, overwrite: bool = False):
    """The upper Cholesky factor U of ``A^-1``, A = the damped ``H`` in the order ``perm``, from one Cholesky
    factorisation: with J the reversal of the column order and ``J A J = L L^T``,
    ``A^-1 = J L^-T L^-1 J = (J L^-1 J)^T (J L^-1 J)``, and ``J L^-1 J`` is upper triangular with a positive
    diagonal, so it is U. That is a Cholesky and a triangular inverse (about n^3 flops) where the reference's
    Cholesky, ``cholesky_inverse`` and second Cholesky take 4/3 n^3, in float32 (as the reference code and the
    peers invert) rather than float64.

    Memory: everything happens in one n x n buffer (the reordering, LAPACK's Cholesky, the triangular inverse by
    halves, the reversal); only torch's Cholesky, the fallback, factorises a second one. ``overwrite``: that buffer is ``H``
    itself (float32, contiguous), which then holds U; otherwise a copy, and ``H`` is left alone."""
    import torch

    n = H.shape[0]
    order = (torch.arange(n) if perm is None else torch.as_tensor(perm)).flip(0)
    if overwrite and H.dtype == torch.float32 and H.is_contiguous():
        M = H.detach()
    else:
        M = H.detach().to(torch.float32, copy=True).contiguous()
    _reorder_symmetric_(M, order)  # J A J, undamped
    d = M.diagonal()
    d[d <= 0] = 1  # dead columns (no input ever reached them)
    mean = float(d.mean())
    added = 0.0
    potrf = _lapack_potrf()
    for k in range(6):
        step = damp * (10 ** k) * mean
        d += step - added
        added = step
        if potrf is not None:
            ok = _cholesky_in_place(M, potrf)
        else:
            L, info = torch.linalg.cholesky_ex(M)  # torch factorises a copy: M stays for a retry
            ok = int(info) == 0
            if ok:
                M.copy_(L)
            del L
        if ok:
            del d
            M.tril_()
            _lower_inverse_(M)
            _reverse_(M)  # J L^-1 J
            return M
    raise UsageError("GPTQ: the Hessian is not positive definite even with heavy damping",
                     hint="use more calibration samples (--samples) or --method rtn")


@functools.cache
def _lapack_potrf():
    """LAPACK's single-precision Cholesky (``spotrf_``) from the BLAS/LAPACK library torch links (MKL on x86
    builds), or None where torch does not export it or with ``SLMCTL_LAPACK=0``: then torch's own Cholesky,
    which works on a copy."""
    if os.environ.get("SLMCTL_LAPACK", "1") == "0":
        return None
    try:
        import ctypes

        import torch

        fn = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so")).spotrf_
    except (OSError, AttributeError):
        return None
    fn.restype = None
    fn.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_void_p,
                   ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)]
    return fn


def _cholesky_in_place(M, potrf) -> bool:
    """Lower Cholesky factor of the symmetric, C-contiguous float32 ``M`` written over its lower triangle (the
    strict upper one is left as it was); False if ``M`` is not positive definite, and then ``M`` is as it was.

    LAPACK reads memory column-major, where M's rows are its columns: ``uplo='L'`` there is the call torch makes
    on its column-major copy (so the factor is the same, bit for bit) and writes L^T into M's upper triangle,
    leaving M's lower one as it was; a transpose by blocks then puts L in the lower triangle. On failure the
    upper triangle and diagonal are restored from the untouched lower one and a saved diagonal."""
    import ctypes

    n = M.shape[0]
    diag = M.diagonal().clone()
    N, info = ctypes.c_int(n), ctypes.c_int(0)
    potrf(b"L", ctypes.byref(N), ctypes.c_void_p(M.data_ptr()), ctypes.byref(N), ctypes.byref(info))
    if info.value < 0:
        raise RuntimeError(f"spotrf: argument {-info.value} is invalid")
    if info.value == 0:
        _transpose_(M)
        return True
    step = 512
    for a in range(0, n, step):  # mirror the untouched strict lower triangle back, a block of columns at a time
        b = min(n, a + step)
        lo = M[a:b, a:b].tril(-1)
        M[a:b, a:b] = lo + lo.T
        M[:a, a:b] = M[a:b, :a].T
    M.diagonal().copy_(diag)
    return False


def _transpose_(M, step: int = 512) -> None:
    """A square matrix transposed in place, a pair of blocks at a time."""
    n = M.shape[0]
    for a in range(0, n, step):
        b = min(n, a + step)
        M[a:b, a:b] = M[a:b, a:b].T.clone()
        for c in range(b, n, step):
            d = min(n, c + step)
            t = M[a:b, c:d].T.clone()
            M[a:b, c:d] = M[c:d, a:b].T
            M[c:d, a:b] = t


def _reorder_symmetric_(M, order, rows_per_block: int = 512) -> None:
    """``M[order][:, order]`` in place: the rows by following the permutation's cycles (one row of scratch),
    then the columns a block of rows at a time."""
    import torch

    idx = [int(i) for i in order]
    n = len(idx)
    if idx == list(range(n)):
        return
    seen = bytearray(n)
    for s in range(n):
        if seen[s] or idx[s] == s:
            seen[s] = 1
            continue
        first = M[s].clone()
        i = s
        while True:  # row i takes row idx[i], which is read before it is overwritten
            seen[i] = 1
            j = idx[i]
            if j == s:
                M[i] = first
                break
            M[i] = M[j]
            i = j
    cols = torch.as_tensor(idx)
    for a in range(0, n, rows_per_block):
        M[a:a + rows_per_block] = M[a:a + rows_per_block].index_select(1, cols)


def _reverse_(M, chunk: int = 1 << 20) -> None:
    """Both dimensions of a contiguous matrix reversed in place (element k of the flat buffer swaps with
    element N-1-k), ``chunk`` elements of scratch at a time."""
    flat = M.view(-1)
    N = flat.numel()
    for k in range(0, N // 2, chunk):
        e = min(chunk, N // 2 - k)
        head = flat[k:k + e].clone()
        flat[k:k + e] = flat[N - k - e:N - k].flip(0)
        flat[N - k - e:N - k] = head.flip(0)


def _lower_inverse_(L, leaf: int = 512) -> None:
    """Inverse of a lower-triangular L (zero above the diagonal), in place, by halves:
    inv([[A, 0], [C, D]]) = [[A^-1, 0], [-D^-1 C A^-1, D^-1]]; the off-diagonal blocks are matrix products (fast
    BLAS) with one block of scratch, the leaves triangular solves."""
    _fill_lower_inverse(L, 0, L.shape[0], leaf)


def _fill_lower_inverse(L, a: int, b: int, leaf: int) -> None:
    """Rows/columns a..b-1 of ``_lower_inverse_``. A module function, not a recursive closure: a closure that
    calls itself is a reference cycle, which kept the n x n matrix alive until the cyclic collector ran."""
    import torch

    if b - a <= leaf:
        blk = L[a:b, a:b]
        blk.copy_(torch.linalg.solve_triangular(blk, torch.eye(b - a, dtype=L.dtype), upper=False))
        return
    m = (a + b) // 2
    _fill_lower_inverse(L, a, m, leaf)
    _fill_lower_inverse(L, m, b, leaf)
    C = L[m:b, a:m]
    t = C @ L[a:m, a:m]  # C A^-1
    C.copy_(t)
    del t
    t = L[m:b, m:b] @ C  # D^-1 C A^-1
    C.copy_(t).neg_()


def _inverse_cholesky_damped(H, damp: float):
    import torch

    mean = torch.mean(torch.diag(H))
    cols = H.shape[0]
    idx = torch.arange(cols)
    for k in range(6):
        Hd = H.clone()
        Hd[idx, idx] += damp * (10 ** k) * mean
        try:
            L = torch.linalg.cholesky(Hd)
            Hinv = torch.cholesky_inverse(L)
            return torch.linalg.cholesky(Hinv, upper=True).float()
        except RuntimeError:
            continue
    raise UsageError("GPTQ: the Hessian is not positive definite even with heavy damping",
                     hint="use more calibration samples (--samples) or --method rtn")


@QUANTIZERS.register("gptq", "GPTQ: Hessian-aware rounding from calibration activations")
def quantize_gptq(layer, cfg: QuantConfig, *, names: list[str], step, gptq: GPTQConfig | None = None,
                  log=None, **_) -> dict[str, QuantResult]:
    """GPTQ for the linears ``names`` of a decoder layer (a layerwise LayerStep gives the inputs).

    Linears that share one input (q/k/v, gate/up) share one Hessian and are quantised as one
    stacked weight: GPTQ treats rows independently, so this equals quantising them one by one.
    With true-sequential, each group's inputs come from a forward that stops at that group
    (the quantised linears before it already in place); without, one forward serves them all.
    """
    import torch

    from ...layerwise import release_freed_memory

    gcfg = gptq or GPTQConfig()
    want = set(names)
    groups = [[n for n in grp if n in want] for grp in step.groups()]
    groups = [grp for grp in groups if grp]
    out: dict[str, QuantResult] = {}
    if not gcfg.true_sequential:
        accs = {grp[0]: HessianAccumulator(layer.get_submodule(grp[0]).in_features) for grp in groups}
        step.recapture(list(accs), on_input=lambda n, x: accs[n].add(x), stop_early=True)
        for grp in groups:
            out.update(_quantize_group(layer, grp, accs.pop(grp[0]).take(), cfg, gcfg))
        return out
    for grp in groups:
        acc = HessianAccumulator(layer.get_submodule(grp[0]).in_features)
        step.recapture([grp[0]], on_input=lambda n, x: acc.add(x), stop_early=True, replayable=len(grp) == 1)
        out.update(_quantize_group(layer, grp, acc.take(), cfg, gcfg))
        del acc
        if layer.get_submodule(grp[0]).in_features >= BIG_HESSIAN:
            release_freed_memory()  # the big Hessian's scratch, before the next group's activations
    return out


def _quantize_group(layer, grp: list[str], H, cfg: QuantConfig, gcfg: GPTQConfig) -> dict[str, QuantResult]:
    """GPTQ of the linears ``grp`` (same input, Hessian ``H``) as one row-stacked weight; weights updated."""
    import torch

    lins = [layer.get_submodule(n) for n in grp]
    with torch.no_grad():
        # the stack and the Hessian are handed over, not kept here: GPTQ works on both in place and frees them
        res = gptq_quantize_weight(torch.cat([lin.weight.data.float() for lin in lins], 0), H, cfg, gcfg,
                                   own_hessian=True)
        del H
        out = {}
        row = 0
        for n, lin in zip(grp, lins):
            r = slice(row, row + lin.out_features)
            row += lin.out_features
            part = QuantResult(res.q[r].contiguous(), res.scale[:, r].contiguous(), res.zero[:, r].contiguous(),
                               res.g_idx.clone(), cfg, lin.bias.data.clone() if lin.bias is not None else None,
                               info={"loss": float(res.info["row_loss"][r].sum())})
            lin.weight.data = part.dequantize().to(lin.weight.dtype)
            out[n] = part
    return out
