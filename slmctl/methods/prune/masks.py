"""Sparsity masks from importance scores: unstructured (per row or per matrix) and N:M.

A mask is a bool tensor shaped like the weight, True where the weight is *pruned*. Ties are broken
by position (stable sort), so equal scores — no calibration signal — give the same mask every time.
"""

from __future__ import annotations

from ...errors import UsageError


def parse_pattern(pattern: str | None) -> tuple[int, int] | None:
    """'2:4' -> (2, 4): keep at most N non-zeros in every M consecutive weights of a row."""
    if pattern is None or pattern == "":
        return None
    try:
        n, m = (int(x) for x in pattern.split(":"))
    except ValueError:
        raise UsageError(f"cannot read --pattern {pattern!r}", hint="write it as N:M, e.g. 2:4 or 4:8") from None
    if not 0 < n < m:
        raise UsageError(f"--pattern {pattern}: N must be between 1 and M-1", hint="e.g. 2:4 keeps 2 of every 4 weights")
    return n, m


SELECT_MIN = 64  # along a dimension this long or longer, the k lowest are found by selection, not a sort


def _lowest(score, k: int, dim: int):
    """True at the ``k`` lowest scores along ``dim``, ties going to the earlier position: the first k of a
    stable ascending sort. Long rows use selection (``kthvalue``, linear time) for the k-th lowest value: every
    score below it, then the first of those equal to it until there are k, which is the stable sort's set."""
    import torch

    n = score.shape[dim]
    if k <= 0:
        return torch.zeros(score.shape, dtype=torch.bool, device=score.device)
    if n >= SELECT_MIN and k < n and score.is_floating_point() and not bool(torch.isnan(score).any()):
        thr = torch.kthvalue(score, k, dim=dim, keepdim=True).values
        lt = score < thr
        eq = score == thr
        need = k - lt.sum(dim, keepdim=True)
        if bool((eq.sum(dim, keepdim=True) > need).any()):  # ties at the threshold: the earliest ones
            eq &= eq.cumsum(dim) <= need
        return lt | eq
    idx = torch.sort(score, dim=dim, stable=True)[1].narrow(dim, 0, k)
    mask = torch.zeros(score.shape, dtype=torch.bool, device=score.device)
    return mask.scatter_(dim, idx, True)


def unstructured_mask(score, sparsity: float, *, per_row: bool = True):
    """Prune the ``round(sparsity * n)`` lowest scores of each row (or of the whole matrix)."""
    if not 0.0 <= sparsity < 1.0:
        raise UsageError(f"sparsity {sparsity} is outside [0, 1)", hint="e.g. --sparsity 0.5")
    if per_row:
        k = int(round(score.shape[1] * sparsity))
        return _lowest(score, k, 1)
    flat = score.reshape(-1)
    return _lowest(flat, int(round(flat.numel() * sparsity)), 0).reshape(score.shape)


def nm_mask(score, n: int, m: int):
    """Prune the M-N lowest scores in every group of M consecutive input columns (N:M sparsity)."""
    rows, cols = score.shape
    if cols % m:
        raise UsageError(f"an N:M pattern needs the input width ({cols}) to be a multiple of M={m}",
                         hint="choose M that divides every layer's input size, e.g. 2:4")
    g = score.reshape(rows, cols // m, m)
    return _lowest(g, m - n, 2).reshape(rows, cols)


def check_nm(weight, n: int, m: int) -> bool:
    """True when every group of M consecutive weights in each row has at most N non-zeros."""
    rows, cols = weight.shape
    nz = (weight.reshape(rows, cols // m, m) != 0).sum(-1)
    return bool((nz <= n).all())
