"""Depth pruning: remove whole decoder layers chosen by how little they change the hidden state.

- ``bi``: Block Influence, BI_l = 1 − E[cos(x_l, x_{l+1})]; the K lowest-BI layers go.
  Men et al., "ShortGPT: Layers in Large Language Models are More Redundant Than You Expect" (2024),
  https://arxiv.org/abs/2403.03853
- ``angular``: the block of K consecutive layers whose input and output are closest in angular
  distance arccos(cos)/π goes. Gromov et al., "The Unreasonable Ineffectiveness of the Deeper
  Layers" (2024), https://arxiv.org/abs/2403.17887
- ``last``: drop the last K layers (the naive baseline).
"""

from __future__ import annotations

import math
from collections import deque

from ...errors import UsageError
from ...registry import Registry

DEPTH_METRICS: Registry[str] = Registry("depth metric")
DEPTH_METRICS.add("bi", "bi", "Block Influence, ShortGPT (https://arxiv.org/abs/2403.03853)")
DEPTH_METRICS.add("angular", "angular", "angular distance of a K-layer block (https://arxiv.org/abs/2403.17887)")
DEPTH_METRICS.add("last", "last", "the last K layers (baseline)")


def token_cos(a, b):
    """(sum of per-token cosine similarities, number of tokens) between two (…, D) tensors."""
    import torch

    c = torch.nn.functional.cosine_similarity(a.reshape(-1, a.shape[-1]).float(), b.reshape(-1, b.shape[-1]).float(),
                                              dim=-1)
    return float(c.sum()), c.numel()


class BoundaryCos:
    """Mean cosine between hidden states ``span`` layers apart, fed one layer boundary at a time.

    Keeps only the last ``span`` boundaries, so memory is (span + 1) activation sets.
    """

    def __init__(self, n_layers: int, span: int):
        self.span = span
        self.sums = [0.0] * (n_layers - span + 1)
        self.counts = [0] * (n_layers - span + 1)
        self.single = [0.0] * n_layers
        self.single_n = [0] * n_layers
        self._win: deque = deque(maxlen=span + 1)
        self._k = 0

    def push(self, acts: list) -> None:
        """The activations (one tensor per chunk) at boundary k = 0 (embeddings), 1, …, L."""
        self._win.append(acts)
        k = self._k
        if k >= 1:
            prev = self._win[-2]
            for a, b in zip(prev, acts):
                s, n = token_cos(a, b)
                self.single[k - 1] += s
                self.single_n[k - 1] += n
        if k >= self.span:
            first = self._win[0]
            for a, b in zip(first, acts):
                s, n = token_cos(a, b)
                self.sums[k - self.span] += s
                self.counts[k - self.span] += n
        self._k += 1

    def block_influence(self) -> list[float]:
        return [1.0 - s / max(n, 1) for s, n in zip(self.single, self.single_n)]

    def angular(self) -> list[float]:
        """Angular distance between the input of layer l and the output of layer l+span-1, for each l."""
        return [math.acos(max(-1.0, min(1.0, s / max(n, 1)))) / math.pi for s, n in zip(self.sums, self.counts)]


def choose_layers(n_layers: int, k: int, metric: str, stats: BoundaryCos | None = None) -> list[int]:
    """The indices of the ``k`` layers to remove."""
    DEPTH_METRICS.get(metric)
    if not 0 < k < n_layers:
        raise UsageError(f"cannot remove {k} of {n_layers} layers", hint=f"choose --layers between 1 and {n_layers - 1}")
    if metric == "last":
        return list(range(n_layers - k, n_layers))
    if metric == "bi":
        bi = stats.block_influence()
        order = sorted(range(n_layers), key=lambda i: (bi[i], i))
        return sorted(order[:k])
    ang = stats.angular()
    start = min(range(len(ang)), key=lambda i: (ang[i], i))
    return list(range(start, start + k))
