"""Learning-rate schedules as multipliers of the peak rate, for torch.optim.lr_scheduler.LambdaLR."""

from __future__ import annotations

import math
from typing import Callable

from ...registry import Registry

SCHEDULES: Registry[Callable[..., Callable[[int], float]]] = Registry("schedule")


@SCHEDULES.register("cosine")
def cosine(total: int, *, warmup: int = 0, min_ratio: float = 0.1, **_) -> Callable[[int], float]:
    """Linear warmup, then cosine decay to ``min_ratio`` of the peak; SGDR, https://arxiv.org/abs/1608.03983."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        span = max(1, total - warmup)
        t = min(1.0, (step - warmup) / span)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return f


@SCHEDULES.register("wsd")
def wsd(total: int, *, warmup: int = 0, decay_frac: float = 0.1, min_ratio: float = 0.0, **_) -> Callable[[int], float]:
    """Warmup-stable-decay: linear warmup, a constant peak, then a decay over the last ``decay_frac`` of the
    steps (exponential-shaped as in MiniCPM, https://arxiv.org/abs/2404.06395) down to ``min_ratio``."""
    decay = max(1, round(total * decay_frac))
    start = total - decay

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if step < start:
            return 1.0
        t = min(1.0, (step - start + 1) / decay)
        # MiniCPM's decay: 0.5 ** (t / T) shape; rescaled so it ends exactly at min_ratio
        shaped = (0.5 ** (t * 10) - 0.5 ** 10) / (1 - 0.5 ** 10)
        return min_ratio + (1 - min_ratio) * shaped

    return f


def lr_lambda(name: str, total: int, *, warmup: int = 0, **kw) -> Callable[[int], float]:
    return SCHEDULES.get(name)(total, warmup=warmup, **kw)
