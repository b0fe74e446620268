"""Width pruning: Minitron-style activation importance for attention heads, MLP channels and hidden channels.

Reference: Muralidharan et al., "Compact Language Models via Pruning and Knowledge Distillation"
(Minitron, 2024), https://arxiv.org/abs/2407.14679 — importance is the size of each unit's
activation on calibration text: a head's attention output, an MLP neuron's activation, a hidden
channel's LayerNorm output; aggregated by the mean over the sequence and the L2 norm over the batch.
Heads are pruned inside each GQA group (the same number kept per group), or whole groups when each
group has one query head, so every kept query head still has its own key/value head.
"""

from __future__ import annotations

from ...errors import UsageError


class Importance:
    """Accumulate per-channel importance of (B, S, C) activations: mean |x| over S, L2 over B."""

    def __init__(self):
        self.sq = None

    def add(self, x) -> None:
        m = x.detach().float().abs().mean(dim=1)  # (B, C)
        s = (m ** 2).sum(0)
        self.sq = s if self.sq is None else self.sq + s

    def value(self):
        return self.sq.sqrt()


def head_activations(x, n_heads: int):
    """(B, S, H*hd) attention output before o_proj -> (B, S, H) per-head L2 norm."""
    b, s, c = x.shape
    return x.reshape(b, s, n_heads, c // n_heads).float().norm(dim=-1)


def top_k(score, k: int) -> list[int]:
    """Indices of the ``k`` largest scores, in ascending index order (ties to the lower index)."""
    import torch

    order = torch.sort(-score.float(), stable=True)[1][:k]
    return sorted(int(i) for i in order)


def keep_count(n: int, ratio: float, multiple: int = 1) -> int:
    """How many of ``n`` units stay when ``ratio`` of them go (at least one, a multiple of ``multiple``)."""
    if not 0.0 <= ratio < 1.0:
        raise UsageError(f"ratio {ratio} is outside [0, 1)")
    k = int(round(n * (1.0 - ratio) / multiple)) * multiple
    return max(multiple, min(n, k))


def keep_heads(score, n_heads: int, n_kv: int, ratio: float) -> tuple[list[int], list[int]]:
    """(kept query heads, kept key/value heads) for one layer, GQA-consistent."""

    per = n_heads // n_kv
    s = score.float().reshape(n_kv, per)
    if per > 1:
        k = keep_count(per, ratio)
        q = []
        for g in range(n_kv):
            q += [g * per + j for j in top_k(s[g], k)]
        return q, list(range(n_kv))
    kv = top_k(s.sum(1), keep_count(n_kv, ratio))
    return kv, kv
