"""Tensor-name facts shared by every family, for the code that works on names without a model.

Where a family has an :class:`ArchSpec`, its ``block_prefix`` is the answer; for the families slmctl reads
but has no GGUF spec for (GPT-NeoX, OPT, BERT-style encoders, ...), the decoder blocks are recognised by
the container that holds them: ``layers`` (Llama and most), ``h`` (GPT-2), ``blocks``, ``layer`` (BERT).
Every module that asks "is this tensor inside block N?" asks here.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

# the attribute that holds the decoder blocks (a torch ModuleList, a tensor-name component)
BLOCK_CONTAINERS = ("layers", "h", "blocks", "layer")
# the outermost "<prefix>.<container>.<N>." of a name; the prefix is lazy so a block inside a block
# (experts.N under layers.N) is never taken for the decoder block
_BLOCK = re.compile(r"^(?P<prefix>(?:[^.]+\.)*?(?:" + "|".join(BLOCK_CONTAINERS) + r"))\.(?P<idx>\d+)\.(?P<rest>.+)$")

# config keys that hold the block count, in the order families use them
DEPTH_KEYS = ("num_hidden_layers", "n_layer", "num_layers")

# tensors with one row per vocabulary entry (input embeddings and output heads), by name suffix
VOCAB_SUFFIXES = ("embed_tokens.weight", "lm_head.weight", "wte.weight", "embed_in.weight", "embed_out.weight",
                  "word_embeddings.weight", "output.weight", "token_embd.weight")
# name parts of the tensors that come before the first block (embeddings; GPT-2's position table)
EMBEDDING_MARKS = ("embed", "wte", "wpe", "token_embd")
# an output head that a tied model leaves out, and the input embeddings it is tied to
TIED_HEAD = {"lm_head.weight": ("model.embed_tokens.weight", "transformer.wte.weight", "model.embed_in.weight")}


def split_block(name: str, prefix: str | None = None) -> tuple[str, int, str] | None:
    """``(prefix, block index, rest)`` of a tensor inside a decoder block, else None.

    With ``prefix`` (``"model.layers"``) only names under it count; without, the outermost block container."""
    if prefix is not None:
        if not name.startswith(prefix + "."):
            return None
        idx, _, rest = name[len(prefix) + 1:].partition(".")
        return (prefix, int(idx), rest) if idx.isdigit() and rest else None
    m = _BLOCK.match(name)
    return (m["prefix"], int(m["idx"]), m["rest"]) if m else None


def layer_index(name: str) -> int | None:
    """The decoder block a tensor belongs to, or None outside the blocks."""
    s = split_block(name)
    return s[1] if s else None


def block_prefix(names: Iterable[str], config: dict[str, Any] | None = None) -> str | None:
    """The prefix of a model's decoder blocks (``model.layers``, ``transformer.h``, ``backbone.layers``).

    The family's spec says it when the names use it (or one of the spec's aliases); otherwise the block
    container that most tensors sit in (a vision tower's blocks are outnumbered by the decoder's)."""
    names = list(names)
    if config is not None:
        from . import spec_for
        from ..errors import UnsupportedError

        try:
            spec = spec_for(config)
        except UnsupportedError:
            spec = None
        if spec is not None:
            ours = spec.block_prefix.rstrip(".")
            for cand in [ours] + [other + ours[len(mine):] for other, mine in spec.aliases if ours.startswith(mine)]:
                if any(split_block(n, cand) for n in names):
                    return cand
    counts: dict[str, int] = {}
    for n in names:
        s = split_block(n)
        if s:
            counts[s[0]] = counts.get(s[0], 0) + 1
    return max(counts, key=counts.get) if counts else None


def depth(config: dict[str, Any]) -> int | None:
    """The block count config.json states, or None."""
    return next((config[k] for k in DEPTH_KEYS if isinstance(config.get(k), int)), None)
