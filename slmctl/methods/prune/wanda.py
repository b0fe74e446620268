"""Wanda: prune by |W_ij| * ||X_j||_2, compared within each output row.

Reference: Sun et al., "A Simple and Effective Pruning Approach for Large Language Models" (2023),
https://arxiv.org/abs/2306.11695 ; code https://github.com/locuslab/wanda
"""

from __future__ import annotations

from .pruner import UNSTRUCTURED, Pruner
from .masks import nm_mask, unstructured_mask


def wanda_score(weight, sq_norm):
    """|W| times the L2 norm of each input feature over the calibration tokens (``sq_norm``: sum of x^2)."""
    return weight.abs().float() * sq_norm.float().clamp_min(0).sqrt().reshape(1, -1)


def wanda_prune(weight, stats, *, sparsity: float, pattern: tuple[int, int] | None = None):
    """Zero the lowest |W|·‖X‖ weights of each row (or M-N of every M with a pattern). No weight update."""
    score = wanda_score(weight, stats["sq_norm"])
    mask = nm_mask(score, *pattern) if pattern else unstructured_mask(score, sparsity, per_row=True)
    return weight.masked_fill(mask, 0)


UNSTRUCTURED.add("wanda", Pruner(wanda_prune, needs="norm"),
                 "|W|·‖X‖ per output row (Sun et al. 2023, https://arxiv.org/abs/2306.11695)")
