"""SparseGPT: one-shot pruning with an optimal-brain-surgeon update of the remaining weights.

Reference: Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
One-Shot" (2023), https://arxiv.org/abs/2301.00774 ; code https://github.com/IST-DASLab/sparsegpt
The Hessian is H = 2/n · XᵀX of the layer's calibration inputs; weights are processed in column
blocks, the mask chosen per block by w²/[H⁻¹]²_jj, and each pruned weight's error spread over the
columns to its right through the Cholesky factor of H⁻¹.
"""

from __future__ import annotations

from ...errors import SlmctlError
from . import UNSTRUCTURED, Pruner


def sparsegpt_prune(weight, stats, *, sparsity: float, pattern: tuple[int, int] | None = None,
                    blocksize: int = 128, percdamp: float = 0.01):
    """Prune ``weight`` (out, in) with the OBS update, given ``stats['hessian']`` (in, in)."""
    import torch

    W = weight.detach().float().clone()
    rows, cols = W.shape
    H = stats["hessian"].float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    idx = torch.arange(cols)
    H[idx, idx] += percdamp * torch.mean(torch.diag(H))
    try:
        Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    except RuntimeError:  # torch raises LinAlgError (a RuntimeError) on a non-PD Hessian
        raise SlmctlError("the calibration Hessian is not positive definite even after damping",
                          hint="use more calibration samples (--samples) or --method wanda") from None
    prune_n, prune_m = (pattern[1] - pattern[0], pattern[1]) if pattern else (0, 0)
    if prune_m and blocksize % prune_m:
        blocksize = prune_m * max(1, blocksize // prune_m)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d1 = torch.diag(Hinv1).reshape(1, -1)
        if prune_n == 0:
            tmp = (W1 ** 2 / d1 ** 2).reshape(-1)
            k = int(round(tmp.numel() * sparsity))
            mask1 = torch.zeros(tmp.numel(), dtype=torch.bool)
            mask1[torch.sort(tmp, stable=True)[1][:k]] = True
            mask1 = mask1.reshape(W1.shape)
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if prune_n and i % prune_m == 0:
                tmp = W1[:, i:i + prune_m] ** 2 / d1[:, i:i + prune_m] ** 2
                mask1.scatter_(1, i + torch.sort(tmp, dim=1, stable=True)[1][:, :prune_n], True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W.to(weight.dtype)


UNSTRUCTURED.add("sparsegpt", Pruner(sparsegpt_prune, needs="hessian"),
                 "OBS update, layer by layer (Frantar & Alistarh 2023, https://arxiv.org/abs/2301.00774)")
