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
from .common import QUANTIZERS, QuantConfig, QuantResult, minmax_qparams, quantize_column


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

    Each batch's ``x^T x`` is a float32 matmul (fast BLAS), summed into a float64 total, so
    thousands of batches do not lose precision while the expensive part stays in float32.
    """

    def __init__(self, columns: int):
        import torch

        self.S = torch.zeros(columns, columns, dtype=torch.float64)
        self.n = 0

    def add(self, x) -> None:
        import torch

        x = x.reshape(-1, x.shape[-1]).to(torch.float32)
        self.S += (x.T @ x).to(torch.float64)
        self.n += x.shape[0]

    def result(self):
        import torch

        return (self.S * (2.0 / max(self.n, 1))).to(torch.float32)


def gptq_quantize_weight(W, H, cfg: QuantConfig, gcfg: GPTQConfig = GPTQConfig(), bias=None) -> QuantResult:
    """GPTQ for one weight (out, in) given its Hessian (in, in). Returns codes, grids and g_idx."""
    import torch

    W = W.detach().clone().float()
    H = H.detach().clone().to(torch.float64)
    rows, cols = W.shape
    maxq = cfg.maxq
    g = cfg.group_len(cols)
    n_groups = cfg.n_groups(cols)

    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    static = None
    if cfg.group_size != -1 and gcfg.static_groups:
        if gcfg.scale_search:
            h = torch.diag(H).float()
            static = [searched_qparams(W[:, i * g:(i + 1) * g], h[i * g:(i + 1) * g], cfg) for i in range(n_groups)]
        else:
            static = [minmax_qparams(W[:, i * g:(i + 1) * g], cfg) for i in range(n_groups)]

    perm = None
    if gcfg.act_order:
        perm = torch.argsort(torch.diag(H), descending=True, stable=True)
        W = W[:, perm]
        H = H[perm][:, perm]
        invperm = torch.argsort(perm)

    hdiag = torch.diag(H).float() if gcfg.scale_search and static is None and cfg.group_size != -1 else None
    Hinv = _inverse_cholesky(H, gcfg.damp)

    Q = torch.zeros(rows, cols, dtype=torch.int32)
    scales = [None] * n_groups
    zeros = [None] * n_groups
    loss = torch.zeros(rows, dtype=torch.float64)
    scale = zero = None
    if cfg.group_size == -1:
        scale, zero = minmax_qparams(W, cfg)
        scales[0], zeros[0] = scale, zero
    bs = gcfg.block_size
    with _few_threads():
        _gptq_blocks(W, Hinv, Q, scales, zeros, static, perm, loss, scale, zero, cfg, bs, hdiag)
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
    err = ((w - quantize_column(w, s[:, :, None], z[:, :, None], cfg.maxq)) ** 2 * h).sum(-1)
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


def _gptq_blocks(W, Hinv, Q, scales, zeros, static, perm, loss, scale, zero, cfg, bs, hdiag=None):
    """The column loop, in numpy: thousands of tiny vector ops, where torch's per-op overhead dominates."""
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
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
        loss += (Err1.double() ** 2).sum(1) / 2  # sum of (w - q)^2 / d^2 / 2, as the reference reports


def _inverse_cholesky(H, damp: float):
    """Upper Cholesky factor of H^-1 after damping; more damping if H is not positive definite."""
    import torch

    # one thread for the usual sizes: LAPACK's multi-threaded inverse of a 1536 x 1536 Hessian slowed down
    # tenfold when the cores were busy. From BIG_HESSIAN columns on (the down projections of 0.5B+ models) each
    # call is seconds of work on one thread and dominated GPTQ's time at those sizes; there all threads pay off.
    if H.shape[0] >= BIG_HESSIAN:
        return _inverse_cholesky_damped(H, damp)
    with _few_threads():
        return _inverse_cholesky_damped(H, damp)


BIG_HESSIAN = 2048


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
