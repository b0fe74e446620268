"""Sparsification of task vectors (deltas), shared by TIES, DARE, breadcrumbs and DELLA.

References: TIES (Yadav et al. 2023, https://arxiv.org/abs/2306.01708) keeps the largest
magnitudes; DARE (Yu et al. 2023, https://arxiv.org/abs/2311.03099) keeps a random fraction and
rescales; breadcrumbs (https://arxiv.org/abs/2312.06795) also drops the largest outliers; DELLA
(https://arxiv.org/abs/2406.11617) drops with magnitude-ranked probabilities. Semantics follow
mergekit's sparsify.py: the rescale matches the L1 norm of the delta before the drop.
"""

from __future__ import annotations


def rescaled_masked(tensor, mask, rescale: bool, eps: float = 1e-7):
    """``tensor * mask``; with ``rescale``, scaled so its L1 norm equals the unmasked tensor's."""
    masked = tensor * mask
    if not rescale:
        return masked
    before = tensor.abs().sum()
    after = masked.abs().sum()
    if before < eps or after < eps:
        return masked
    return masked * (before / after)


def top_k_mask(w, k: int):
    """Boolean mask of the ``k`` largest entries of the flat tensor ``w``, as mergekit's
    ``argsort(w, descending=True)[:k]`` selects them, in O(n) where that is exact.

    The k-th largest value comes from a selection (numpy's ``partition`` on CPU, ``kthvalue``
    elsewhere), not a full sort. When exactly ``k`` entries are >= that value (the usual case) the
    top-k set is unique, so any exact sort picks the same one. Only when the value is tied across
    the cut do the picks depend on the sort's internal order; then (and when there are NaNs) we
    sort with the same torch call as mergekit, which gives the same result.
    """
    import torch

    n = w.numel()
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=w.device)
    if w.device.type == "cpu":  # numpy's introselect is several times faster than torch.kthvalue on CPU
        import numpy as np

        part = np.partition(w.numpy(), n - k)
        thr = torch.tensor(part[n - k], dtype=w.dtype)
        has_nan = bool(np.isnan(part[n - k:].max()))  # NaN sorts last; max() propagates it
        del part
    else:
        thr = torch.kthvalue(w, n - k + 1).values
        has_nan = bool(torch.isnan(w).any())
    keep = w >= thr
    if has_nan or int(torch.count_nonzero(keep)) != k:
        keep = torch.zeros(n, dtype=torch.bool, device=w.device)
        keep[torch.argsort(w, descending=True)[:k]] = True
    return keep


def magnitude(tensor, density: float, rescale: bool = False):
    """Keep the ``density`` fraction of entries with the largest magnitude (at least one)."""
    import torch

    if density >= 1:
        return tensor
    if density <= 0 or tensor.numel() == 0:
        return torch.zeros_like(tensor)
    k = max(1, int(density * tensor.numel()))
    w = tensor.abs().reshape(-1)
    if w.device.type == "cpu":
        w = w.float()
    mask = top_k_mask(w, k).to(tensor.dtype)
    del w
    return rescaled_masked(tensor, mask.reshape_as(tensor), rescale)


def magnitude_outliers(tensor, density: float, rescale: bool = False, gamma: float = 0.01):
    """Drop the ``gamma`` fraction of largest entries, then the smallest, to keep ``density``."""
    import torch

    if density >= 1:
        return tensor
    n = tensor.numel()
    target = int(density * n)
    n_top = int(gamma * n)
    n_bot = max(0, n - target - n_top)
    w = tensor.abs().reshape(-1)
    if w.device.type == "cpu":
        w = w.float()
    idx = torch.sort(w, descending=False).indices
    mask = torch.zeros(n, dtype=tensor.dtype, device=tensor.device)
    mask[idx[n_bot:n_bot + target]] = 1
    return rescaled_masked(tensor, mask.reshape_as(tensor), rescale)


def bernoulli(tensor, density: float, rescale: bool = True, generator=None):
    """Keep each entry with probability ``density`` (DARE's random drop), seeded by ``generator``."""
    import torch

    if density >= 1:
        return tensor
    work = tensor.dtype if tensor.dtype == torch.bfloat16 else torch.float32
    mask = torch.bernoulli(torch.full_like(tensor, density, dtype=work), generator=generator)
    return rescaled_masked(tensor.to(work), mask, rescale).to(tensor.dtype)


def della_magprune(tensor, density: float, epsilon: float, rescale: bool = True, generator=None):
    """Drop with probabilities from density-epsilon (smallest) to density+epsilon (largest) per row."""
    import torch

    if density >= 1:
        return tensor
    if density <= 0:
        return torch.zeros_like(tensor)
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise ValueError("epsilon must keep density +/- epsilon inside (0, 1)")
    shape = tensor.shape
    work = tensor.dtype if tensor.dtype == torch.bfloat16 else torch.float32
    t = tensor.unsqueeze(0) if tensor.dim() < 2 else tensor
    ranks = torch.argsort(t.abs(), dim=1, descending=False).argsort(dim=1).to(work) + 1
    lo = ranks.min(dim=1, keepdim=True).values
    hi = ranks.max(dim=1, keepdim=True).values
    rank_norm = ((ranks - lo) / (hi - lo)).clamp(0, 1)
    probs = (density - epsilon) + rank_norm * 2 * epsilon
    mask = torch.bernoulli(probs, generator=generator).to(work)
    return rescaled_masked(t.to(work), mask, rescale).to(tensor.dtype).reshape(shape)
