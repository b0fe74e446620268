"""Magnitude pruning: drop the smallest |W| of each weight matrix.

Reference: Han et al., "Learning both Weights and Connections for Efficient Neural Networks" (2015),
https://arxiv.org/abs/1506.02626 — the baseline of the Wanda and SparseGPT papers (per matrix).
"""

from __future__ import annotations

from .pruner import UNSTRUCTURED, Pruner
from .masks import nm_mask, unstructured_mask


def magnitude_prune(weight, stats=None, *, sparsity: float, pattern: tuple[int, int] | None = None):
    """Zero the lowest-|W| weights: ``sparsity`` of the matrix, or M-N of every M with a pattern."""
    score = weight.abs().float()
    mask = nm_mask(score, *pattern) if pattern else unstructured_mask(score, sparsity, per_row=False)
    return weight.masked_fill(mask, 0)


UNSTRUCTURED.add("magnitude", Pruner(magnitude_prune, needs=None),
                 "smallest |W| per matrix (Han et al. 2015, https://arxiv.org/abs/1506.02626)")
