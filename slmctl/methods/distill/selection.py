"""Sample selection for distillation, as in LLKD (Li et al. 2024, "Learning with Less: Knowledge
Distillation from Large Language Models via Unlabeled Data", https://arxiv.org/abs/2411.08028).

LLKD keeps the samples where the teacher is confident (its labels are reliable) and the student
still has a high information need (it is uncertain). Here a sample is one packed block of tokens:
teacher confidence is the mean of the teacher's top-1 probability over its tokens, student need is
the mean entropy of the student's prediction, normalised by log(vocab). The thresholds are dynamic:
quantiles of the current batch, so the kept share stays near ``keep`` as both models change.
"""

from __future__ import annotations

import math
from typing import Callable

from ...registry import Registry

SELECTORS: Registry[Callable] = Registry("sample selection")


def teacher_confidence(teacher, temperature: float = 1.0):
    """Per sample: mean top-1 probability of the teacher (full logits, or a top-k (log_probs, indices) pair
    from ``losses.teacher_topk``)."""
    import torch.nn.functional as F

    if isinstance(teacher, tuple):  # a top-k cache holds the log-probs at the temperature already
        return teacher[0].float().amax(-1).exp().mean(-1)
    return F.softmax(teacher.float() / temperature, dim=-1).amax(-1).mean(-1)


def student_need(student_logits):
    """Per sample: mean entropy of the student's next-token distribution, divided by log(vocab)."""
    import torch.nn.functional as F

    lp = F.log_softmax(student_logits.float(), dim=-1)
    ent = -(lp.exp() * lp).sum(-1)
    return ent.mean(-1) / math.log(student_logits.shape[-1])


@SELECTORS.register("llkd")
def llkd_select(student_logits, teacher, *, keep: float = 0.5, temperature: float = 1.0):
    """Keep samples with high teacher confidence and high student need (LLKD,
    https://arxiv.org/abs/2411.08028); returns a boolean mask over the batch, never empty."""
    import torch

    if not 0.0 < keep <= 1.0:
        from ...errors import UsageError

        raise UsageError(f"--select-keep must lie in (0, 1], got {keep}")
    with torch.no_grad():
        conf = teacher_confidence(teacher, temperature)
        need = student_need(student_logits.detach())
        if keep >= 1.0 or conf.numel() == 1:
            return torch.ones_like(conf, dtype=torch.bool)
        # each criterion keeps sqrt(keep) of the batch, so together they keep about `keep` when independent
        q = 1.0 - math.sqrt(keep)
        mask = (conf >= torch.quantile(conf, q)) & (need >= torch.quantile(need, q))
        if not mask.any():
            mask[torch.argmax(conf * need)] = True
        return mask
