"""Task arithmetic and its sparsified, sign-elected relatives: TIES, DARE, breadcrumbs, DELLA.

All add a weighted mix of task vectors (model - base) to the base:
  task_arithmetic  https://arxiv.org/abs/2212.04089  (Ilharco et al. 2022)
  ties             https://arxiv.org/abs/2306.01708  (Yadav et al. 2023): magnitude trim + sign election
  dare_ties / dare_linear  https://arxiv.org/abs/2311.03099  (Yu et al. 2023): random drop + rescale
  breadcrumbs / breadcrumbs_ties  https://arxiv.org/abs/2312.06795
  della / della_linear  https://arxiv.org/abs/2406.11617
Semantics and defaults follow mergekit's generalized_task_arithmetic.py, so configs port unchanged.
"""

from __future__ import annotations

import os
from typing import Sequence

from . import sparsify as sp
from .base import REQUIRED, MergeMethod, register


PARALLEL_SAFE = ("magnitude", "magnitude_outliers")  # sparsifications that draw no random numbers
PARALLEL_MIN = 1 << 20  # entries; below this a thread costs more than it saves


def sign_mask(deltas, method: str = "sum"):
    """Which entries agree with the elected sign: 'sum' = sign of the summed deltas (TIES),
    'count' = the sign most deltas have. ``deltas`` is stacked [models, ...]."""
    sign = deltas.sign()
    if method == "sum":
        majority = (deltas.sum(dim=0) >= 0).to(deltas.dtype) * 2 - 1
    elif method == "count":
        majority = (sign.sum(dim=0) >= 0).to(deltas.dtype) * 2 - 1
    else:
        raise ValueError(f"unknown consensus {method!r}")
    return sign == majority


def task_arithmetic(base, deltas, weights: Sequence[float], *, consensus: str | None = None,
                    normalize: bool = False, lam: float = 1.0):
    """base + lam * mix(weights_i * delta_i); with ``consensus``, only deltas agreeing with the elected
    sign count; with ``normalize``, the mix is divided by the (agreeing) weights' sum.

    ``deltas`` is a list of tensors or one stacked [models, ...] tensor (which is modified in place)."""
    import torch

    if len(deltas) == 0:
        return base
    d = deltas if isinstance(deltas, torch.Tensor) else torch.stack([x.to(base.dtype) for x in deltas], dim=0)
    w = torch.tensor([float(x) for x in weights], dtype=d.dtype)
    while w.dim() < d.dim():
        w = w.unsqueeze(-1)
    d.mul_(w)
    if consensus:
        mask = sign_mask(d, consensus)
        d.mul_(mask)
        mixed = d.sum(dim=0)
        del d
        divisor = (w * mask).sum(dim=0)
        del mask
        divisor[divisor == 0] = 1
    else:
        mixed = d.sum(dim=0)
        del d
        divisor = w.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        mixed /= divisor
    if lam != 1:
        mixed *= lam
    return (base + mixed).to(base.dtype)


def _make(name: str, url: str, doc: str, *, consensus: str | None = None, sparsification: str | None = None,
          normalize: bool = False, rescale: bool = False) -> MergeMethod:
    tparams: dict = {"weight": REQUIRED, "density": 1.0}
    if sparsification == "magnitude_outliers":
        tparams["gamma"] = 0.01
    if sparsification == "della_magprune":
        tparams["epsilon"] = 0.15

    def apply(tensors, base, params, options, generator=None):
        import torch

        keys = list(tensors)
        weights = [params[k]["weight"] for k in keys]
        d = torch.empty((len(keys), *base.shape), dtype=base.dtype)
        # the caller hands over its inputs, so each is freed once its delta is made
        inputs = [tensors.pop(k) for k in keys]

        def one(i: int) -> None:
            x, inputs[i] = inputs[i], None
            delta = x.to(base.dtype) - base
            del x
            p = params[keys[i]]
            if sparsification == "magnitude":
                delta = sp.magnitude(delta, p["density"], options["rescale"])
            elif sparsification == "random":
                delta = sp.bernoulli(delta, p["density"], options["rescale"], generator=generator)
            elif sparsification == "magnitude_outliers":
                delta = sp.magnitude_outliers(delta, p["density"], options["rescale"], gamma=p["gamma"])
            elif sparsification == "della_magprune":
                delta = sp.della_magprune(delta, p["density"], p["epsilon"], options["rescale"], generator=generator)
            d[i] = delta

        workers = min(len(keys), os.cpu_count() or 1)
        if sparsification in PARALLEL_SAFE and workers > 1 and base.numel() >= PARALLEL_MIN:
            # a sort or selection runs on one core; the models' deltas are independent, so sparsify them
            # side by side (deterministic: no shared generator, each writes its own row of d)
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(workers) as ex:
                list(ex.map(one, range(len(keys))))
        else:
            for i in range(len(keys)):
                one(i)
        return task_arithmetic(base, d, weights, consensus=consensus,
                               normalize=bool(options["normalize"]), lam=float(options["lambda"]))

    return register(MergeMethod(
        name, apply, url, base="required", tensor_params=tparams,
        options={"normalize": normalize, "rescale": rescale, "lambda": 1.0, "int8_mask": False},
        random=sparsification in ("random", "della_magprune"), doc=doc,
        rowwise=sparsification is None and consensus is None,
    ))


_make("task_arithmetic", "https://arxiv.org/abs/2212.04089",
      "base + sum of weighted task vectors (model - base); --base, --weights, --lambda.")
_make("ties", "https://arxiv.org/abs/2306.01708",
      "TIES: keep the --density largest deltas, elect signs, average agreeing deltas; --base.",
      consensus="sum", sparsification="magnitude", normalize=True)
_make("dare_ties", "https://arxiv.org/abs/2311.03099",
      "DARE + TIES sign election: drop deltas at random (keep --density, --seed), rescale; --base.",
      consensus="sum", sparsification="random", rescale=True)
_make("dare_linear", "https://arxiv.org/abs/2311.03099",
      "DARE: drop deltas at random (keep --density, --seed), rescale, add weighted; --base.",
      sparsification="random", rescale=True)
_make("breadcrumbs", "https://arxiv.org/abs/2312.06795",
      "Model breadcrumbs: drop the largest (gamma) and smallest deltas, keep --density; --base.",
      sparsification="magnitude_outliers")
_make("breadcrumbs_ties", "https://arxiv.org/abs/2312.06795", "Breadcrumbs with TIES sign election; --base.",
      consensus="sum", sparsification="magnitude_outliers")
_make("della", "https://arxiv.org/abs/2406.11617",
      "DELLA: magnitude-ranked random drop (density +/- epsilon), rescale, sign election; --base.",
      consensus="sum", sparsification="della_magprune", normalize=True, rescale=True)
_make("della_linear", "https://arxiv.org/abs/2406.11617", "DELLA without sign election; --base.",
      sparsification="della_magprune", rescale=True)
