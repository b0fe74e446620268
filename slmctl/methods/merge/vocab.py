"""Embedding rows re-ordered to a target vocabulary, filling tokens a model lacks as mergekit does.

Reference: mergekit's tokenizer/embed.py (PermutedVocabulary,
https://github.com/arcee-ai/mergekit/blob/main/mergekit/tokenizer/embed.py): a token only one model
has takes that model's row; otherwise the base's row if the base has it; otherwise the mean of the
rows of the models that have it; a token no model has gets zeros.
"""

from __future__ import annotations

from typing import Mapping


def permute_embeddings(tensors: Mapping, vocabs: Mapping[str, Mapping[str, int]], target: Mapping[str, int],
                       base: str | None = None, axis: int = 0) -> dict:
    """{model: tensor} with the vocabulary axis re-indexed to ``target`` ({token: id})."""
    import torch

    models = list(tensors)
    views = {m: tensors[m].movedim(axis, 0) for m in models}
    dtype = views[models[0]].dtype
    for v in views.values():
        dtype = torch.promote_types(dtype, v.dtype)
    shape = views[models[0]].shape[1:]
    n = max(len(target), max(target.values(), default=-1) + 1)
    perm = {m: {tid: vocabs[m].get(tok, -1) for tok, tid in target.items()} for m in models}
    for m in models:  # rows past a model's tensor (a tokenizer larger than its embedding) count as absent
        rows = views[m].shape[0]
        perm[m] = {k: (v if v < rows else -1) for k, v in perm[m].items()}
    default: dict[int, object] = {}
    for tok, tid in target.items():
        have = [m for m in models if perm[m][tid] >= 0]
        if len(have) == len(models):
            continue
        if len(have) == 1:
            default[tid] = views[have[0]][perm[have[0]][tid]]
        elif not have:
            default[tid] = torch.zeros(shape, dtype=dtype)
        elif base is not None and base in have:
            default[tid] = views[base][perm[base][tid]]
        else:
            default[tid] = sum(views[m][perm[m][tid]].to(dtype) for m in have) / len(have)
    out = {}
    for m in models:
        new = torch.zeros((n, *shape), dtype=dtype)
        for tok, tid in target.items():
            src = perm[m][tid]
            new[tid] = views[m][src] if src >= 0 else default[tid]
        out[m] = new.movedim(0, axis)
    return out
