"""Per-token statistics computed window by window; only scalars per token are kept, never logits."""

from __future__ import annotations

import math

import numpy as np


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


class Stats:
    """Accumulates NLL, and (with a reference) KL(ref || model) and top-1 agreement."""

    def __init__(self):
        self.nll: list[np.ndarray] = []
        self.ref_nll: list[np.ndarray] = []
        self.kl: list[np.ndarray] = []
        self.same: list[np.ndarray] = []

    def add(self, ids: list[int], logits: np.ndarray, ref_logits: np.ndarray | None = None) -> None:
        """Score tokens 1..n-1 of the window from the logits at positions 0..n-2."""
        target = np.asarray(ids[1:])
        lp = log_softmax(logits[:-1])
        self.nll.append(-lp[np.arange(len(target)), target])
        if ref_logits is not None:
            if ref_logits.shape[-1] != logits.shape[-1]:
                n = min(ref_logits.shape[-1], logits.shape[-1])
                ref_logits, logits, lp = ref_logits[:, :n], logits[:, :n], log_softmax(logits[:-1, :n])
            rp = log_softmax(ref_logits[:-1])
            self.ref_nll.append(-rp[np.arange(len(target)), target])
            self.kl.append(np.maximum((np.exp(rp) * (rp - lp)).sum(-1), 0.0))
            self.same.append(rp.argmax(-1) == lp.argmax(-1))

    @property
    def tokens(self) -> int:
        return int(sum(len(x) for x in self.nll))

    def report(self) -> dict:
        nll = np.concatenate(self.nll)
        out = {"tokens": int(nll.size), "nll": float(nll.mean()), "ppl": float(math.exp(nll.mean()))}
        if self.kl:
            kl = np.concatenate(self.kl)
            ref = np.concatenate(self.ref_nll)
            out["reference_ppl"] = float(math.exp(ref.mean()))
            out["ppl_ratio"] = out["ppl"] / out["reference_ppl"]
            out["ppl_increase_pct"] = (out["ppl_ratio"] - 1.0) * 100.0
            out["kld"] = {"mean": float(kl.mean()), "median": float(np.median(kl)),
                          "p99": float(np.percentile(kl, 99)), "max": float(kl.max())}
            out["top1_agreement_pct"] = float(np.concatenate(self.same).mean() * 100.0)
        return out
