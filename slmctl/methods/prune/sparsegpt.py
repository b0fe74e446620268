"""SparseGPT: one-shot pruning with an optimal-brain-surgeon update of the remaining weights.

Reference: Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
One-Shot" (2023), https://arxiv.org/abs/2301.00774 ; code https://github.com/IST-DASLab/sparsegpt
The Hessian is H = 2/n · XᵀX of the layer's calibration inputs; weights are processed in column
blocks, the mask chosen per block by w²/[H⁻¹]²_jj, and each pruned weight's error spread over the
columns to its right through the Cholesky factor of H⁻¹.
"""

from __future__ import annotations

from ...errors import SlmctlError
from .pruner import UNSTRUCTURED, Pruner


def sparsegpt_prune(weight, stats, *, sparsity: float, pattern: tuple[int, int] | None = None,
                    blocksize: int = 128, percdamp: float = 0.01):
    """Prune ``weight`` (out, in) with the OBS update, given ``stats['hessian']`` (in, in)."""
    import torch

    rows, cols = weight.shape
    H = stats["hessian"].float().clone()
    # work on Wᵀ (in, out): the column being pruned is then one contiguous row, and the per-column
    # step is two vector ops (error, rank-1 update) instead of a dozen small ones
    WT = weight.detach().float().t().contiguous()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    WT[dead] = 0
    idx = torch.arange(cols)
    H[idx, idx] += percdamp * torch.mean(torch.diag(H))
    try:
        Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    except RuntimeError:  # torch raises LinAlgError (a RuntimeError) on a non-PD Hessian
        raise SlmctlError("the calibration Hessian is not positive definite even after damping",
                          hint="use more calibration samples (--samples) or --method wanda") from None
    del H
    prune_n, prune_m = (pattern[1] - pattern[0], pattern[1]) if pattern else (0, 0)
    if prune_m and blocksize % prune_m:
        blocksize = prune_m * max(1, blocksize // prune_m)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = WT[i1:i2]  # (count, rows), a view: updated in place
        Hinv1 = Hinv[i1:i2, i1:i2]
        d1 = torch.diag(Hinv1).reshape(-1, 1)
        # scale[i, r] = 1/[H⁻¹]_ii where weight (r, i1+i) is pruned, else 0: the error of column i is W1[i]·scale[i]
        if prune_n == 0:
            tmp = (W1 ** 2 / d1 ** 2).t().reshape(-1)  # row-major over (rows, count), as the reference orders it
            k = int(round(tmp.numel() * sparsity))
            mask = torch.zeros(tmp.numel(), dtype=torch.bool)
            mask[torch.sort(tmp, stable=True)[1][:k]] = True
            scale = mask.reshape(rows, count).t().float() / d1
        else:
            scale = torch.zeros(count, rows)
        Err1 = torch.empty(count, rows)
        for i in range(count):
            if prune_n and i % prune_m == 0:
                tmp = W1[i:i + prune_m] ** 2 / d1[i:i + prune_m] ** 2  # (m, rows)
                g = torch.zeros_like(tmp).scatter_(0, torch.sort(tmp, dim=0, stable=True)[1][:prune_n], 1.0)
                scale[i:i + prune_m] = g / d1[i:i + prune_m]
            e = torch.mul(W1[i], scale[i], out=Err1[i])
            W1[i:].addr_(Hinv1[i, i:], e, alpha=-1.0)
        W1.masked_fill_(scale != 0, 0.0)  # the pruned weights are now ~0 up to rounding: make them exact
        if i2 < cols:
            WT[i2:].addmm_(Hinv[i1:i2, i2:].t(), Err1, alpha=-1.0)
    return WT.t().contiguous().to(weight.dtype)


UNSTRUCTURED.add("sparsegpt", Pruner(sparsegpt_prune, needs="hessian"),
                 "OBS update, layer by layer (Frantar & Alistarh 2023, https://arxiv.org/abs/2301.00774)")
