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

from dataclasses import dataclass

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


def gptq_quantize_weight(W, H, cfg: QuantConfig, gcfg: GPTQConfig = GPTQConfig(), bias=None) -> QuantResult:
    """GPTQ for one weight (out, in) given its Hessian (in, in). Returns codes, grids and g_idx."""
    import torch

    W = W.detach().clone().float()
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
        W = W[:, perm]
        invperm = torch.argsort(perm)

    hdiag = (diag if perm is None else diag[perm]).float() if gcfg.scale_search and static is None and cfg.group_size != -1 else None
    Hinv = inverse_hessian_factor(H, gcfg.damp, perm)

    Q = torch.zeros(rows, cols, dtype=torch.int32)
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
        Q = Q[:, invperm]
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


SHRINKS = tuple(round(1.0 - 0.02 * k, 2) for k in range(16))  # 1.00, 0.98, ... 0.70


def searched_qparams(w, h, cfg: QuantConfig, shrinks=SHRINKS):
    """Per-row (scale, zero) of one group ``w`` (rows, g) chosen among min/max grids shrunk by each of
    ``shrinks`` (clipping the extremes), the one with the least importance-weighted rounding error
    ``sum_j h_j (w_j - q(w_j))^2``, ``h`` being diag(H) of the group's columns (how much each input
    column matters to the layer's output). Shrink 1.0 is the plain min/max grid, so the result is never
    worse than it on that error."""
    import torch

    w = w.float()
    h = h.float().clamp(min=0)
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


def inverse_hessian_factor(H, damp: float, perm=None):
    """Upper Cholesky factor (float32) of the damped inverse of ``H`` in the column order ``perm`` (None: as
    it is), dead columns (no positive diagonal) set to 1 first; ``H`` itself is left as it is. GPTQ on
    safetensors and on GGUF grids (gguf_gptq.prepare) both invert through here.

    Below ``BIG_HESSIAN`` columns: float64, and the reference's steps (Cholesky, its inverse, Cholesky of that).
    From ``BIG_HESSIAN`` columns on (see ``_big_inverse_factor``): float32 and one factorisation, with all
    threads, in two n x n buffers."""
    import torch

    if H.shape[0] >= BIG_HESSIAN:
        return _big_inverse_factor(H, damp, perm)
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


def _big_inverse_factor(H, damp: float, perm=None):
    """The upper Cholesky factor U of ``A^-1``, A = the damped ``H`` in the order ``perm``, from one Cholesky
    factorisation: with J the reversal of the column order and ``J A J = L L^T``,
    ``A^-1 = J L^-T L^-1 J = (J L^-1 J)^T (J L^-1 J)``, and ``J L^-1 J`` is upper triangular with a positive
    diagonal, so it is U. That is a Cholesky and a triangular inverse (about n^3 flops) where the reference's
    Cholesky, ``cholesky_inverse`` and second Cholesky take 4/3 n^3, in float32 (as the reference code and the
    peers invert) rather than float64, and in two n x n buffers rather than six."""
    import torch

    n = H.shape[0]
    order = torch.arange(n) if perm is None else torch.as_tensor(perm)
    rev = order.flip(0)
    M = H.detach().to(torch.float32)[rev[:, None], rev]  # J A J, undamped (a new buffer: H is left alone)
    d = M.diagonal()
    d[d <= 0] = 1  # dead columns (no input ever reached them)
    mean = float(d.mean())
    added = 0.0
    for k in range(6):
        step = damp * (10 ** k) * mean
        d += step - added
        added = step
        L, info = torch.linalg.cholesky_ex(M)
        if int(info) == 0:
            del M, d
            Linv = _lower_inverse(L)
            del L
            return Linv.flip((0, 1))
        del L
    raise UsageError("GPTQ: the Hessian is not positive definite even with heavy damping",
                     hint="use more calibration samples (--samples) or --method rtn")


def _lower_inverse(L, leaf: int = 512):
    """Inverse of a lower-triangular L, by halves: inv([[A, 0], [C, D]]) = [[A^-1, 0], [-D^-1 C A^-1, D^-1]];
    the off-diagonal blocks are matrix products (fast BLAS), the leaves triangular solves."""
    import torch

    out = torch.zeros_like(L)

    def fill(a: int, b: int) -> None:
        if b - a <= leaf:
            out[a:b, a:b] = torch.linalg.solve_triangular(L[a:b, a:b], torch.eye(b - a, dtype=L.dtype), upper=False)
            return
        m = (a + b) // 2
        fill(a, m)
        fill(m, b)
        out[m:b, a:m] = -(out[m:b, m:b] @ (L[m:b, a:m] @ out[a:m, a:m]))

    fill(0, L.shape[0])
    return out


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

    gcfg = gptq or GPTQConfig()
    want = set(names)
    groups = [[n for n in grp if n in want] for grp in step.groups()]
    groups = [grp for grp in groups if grp]
    out: dict[str, QuantResult] = {}
    if not gcfg.true_sequential:
        accs = {grp[0]: HessianAccumulator(layer.get_submodule(grp[0]).in_features) for grp in groups}
        step.recapture(list(accs), on_input=lambda n, x: accs[n].add(x), stop_early=True)
        for grp in groups:
            out.update(_quantize_group(layer, grp, accs[grp[0]].result(), cfg, gcfg))
        return out
    for grp in groups:
        acc = HessianAccumulator(layer.get_submodule(grp[0]).in_features)
        step.recapture([grp[0]], on_input=lambda n, x: acc.add(x), stop_early=True, replayable=len(grp) == 1)
        out.update(_quantize_group(layer, grp, acc.result(), cfg, gcfg))
    return out


def _quantize_group(layer, grp: list[str], H, cfg: QuantConfig, gcfg: GPTQConfig) -> dict[str, QuantResult]:
    """GPTQ of the linears ``grp`` (same input, Hessian ``H``) as one row-stacked weight; weights updated."""
    import torch

    lins = [layer.get_submodule(n) for n in grp]
    with torch.no_grad():
        W = torch.cat([lin.weight.data.float() for lin in lins], 0)
        res = gptq_quantize_weight(W, H, cfg, gcfg)
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
