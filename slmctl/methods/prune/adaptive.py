"""Layer-wise adaptive ratios: prune less where a layer matters more, the average held at the target.

References: OWL, Yin et al., "Outlier Weighed Layerwise Sparsity" (2023), https://arxiv.org/abs/2310.05175
(layer score = share of |W|·‖X‖ scores above M times their mean); Adapt-Pruner, Pan et al. (2025),
https://arxiv.org/abs/2502.03460 (layer importance from 1 − cos(input, output)).
"""

from __future__ import annotations

from ...registry import Registry

ADAPTIVE: Registry[object] = Registry("adaptive metric")


def allocate(scores: list[float], target: float, lam: float = 0.08, lo: float = 0.0, hi: float = 0.95) -> list[float]:
    """Per-layer ratios spread over a range of width 2·lam, whose mean is ``target``; the highest score gets the lowest ratio.

    Scores are min-max normalised (as OWL does), so only their order and spacing matter. Clamping to
    [lo, hi] is followed by a correction so the mean stays at the target where the bounds allow.
    """
    n = len(scores)
    if n == 0:
        return []
    smin, smax = min(scores), max(scores)
    if smax - smin <= 1e-12:
        return [target] * n
    norm = [(s - smin) / (smax - smin) * 2 * lam for s in scores]
    mean = sum(norm) / n
    ratios = [min(hi, max(lo, target - (v - mean))) for v in norm]
    for _ in range(20):  # re-centre after clamping
        err = target - sum(ratios) / n
        if abs(err) < 1e-9:
            break
        free = [i for i, r in enumerate(ratios) if lo < r < hi] or list(range(n))
        for i in free:
            ratios[i] = min(hi, max(lo, ratios[i] + err * n / len(free)))
    return ratios


def outlier_ratio(scores: list, m: float = 5.0) -> float:
    """Share of entries above ``m`` times the mean, over all score matrices of one layer (OWL's LOD)."""
    import torch

    flat = torch.cat([s.reshape(-1).float() for s in scores])
    return float((flat > m * flat.mean()).float().mean())


ADAPTIVE.add("owl", outlier_ratio, "share of Wanda scores above 5x their mean (OWL, https://arxiv.org/abs/2310.05175)")
ADAPTIVE.add("bi", None, "Block Influence 1 - cos(in, out) (Adapt-Pruner, https://arxiv.org/abs/2502.03460)")
