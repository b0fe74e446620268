"""Folding a LoRA adapter into its base weight: W + scale * B @ A.

Reference: Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models" (2021),
https://arxiv.org/abs/2106.09685 ; rsLoRA scaling alpha / sqrt(r): https://arxiv.org/abs/2312.03732 ;
PEFT's merge_and_unload (https://github.com/huggingface/peft).
"""

from __future__ import annotations


def lora_scale(alpha: float, rank: int, *, rslora: bool = False) -> float:
    """alpha / r, or alpha / sqrt(r) for rsLoRA."""
    return alpha / (rank ** 0.5) if rslora else alpha / rank


def fold_lora(weight, lora_a, lora_b, scale: float, *, fan_in_fan_out: bool = False):
    """``weight + scale * (B @ A)`` in float32, returned in ``weight``'s dtype.

    ``lora_a`` is [r, in], ``lora_b`` [out, r]; with ``fan_in_fan_out`` (GPT-2 Conv1D) the weight
    is stored [in, out] and the delta is transposed. Embedding adapters (A [r, vocab], B [hidden, r])
    fold as ``(B @ A).T``, which the caller asks for with ``fan_in_fan_out=True``.
    """
    import torch

    delta = lora_b.to(torch.float32) @ lora_a.to(torch.float32)
    if fan_in_fan_out:
        delta = delta.T
    if delta.shape != weight.shape:
        raise ValueError(f"LoRA delta {tuple(delta.shape)} does not fit weight {tuple(weight.shape)}")
    return (weight.to(torch.float32) + scale * delta).to(weight.dtype)
