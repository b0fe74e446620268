"""Drop decoder layers: renumber the tensors and cut every per-layer array of the config."""

from __future__ import annotations

import re
from typing import Any

from ..errors import UsageError

# tensor names of decoder layers across families: model.layers.N., transformer.h.N., ...
LAYER_RE = re.compile(r"^((?:model\.|transformer\.|gpt_neox\.|model\.decoder\.|backbone\.)?(?:layers|h|blocks))\.(\d+)\.")
DEPTH_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
# config keys that are not per-layer even when their length happens to equal the layer count
NOT_PER_LAYER = {"architectures", "eos_token_id", "bos_token_id", "pad_token_id", "bad_words_ids", "suppress_tokens",
                 "begin_suppress_tokens", "forced_decoder_ids"}


def layer_index(name: str) -> int | None:
    m = LAYER_RE.match(name)
    return int(m.group(2)) if m else None


def n_layers(config: dict[str, Any]) -> int:
    for k in DEPTH_KEYS:
        if isinstance(config.get(k), int):
            return config[k]
    if isinstance(config.get("layers_block_type"), list):  # Nemotron-H saves its pattern, not a count
        return len(config["layers_block_type"])
    tc = config.get("text_config")
    if isinstance(tc, dict):
        return n_layers(tc)
    raise UsageError("config.json has no layer count (num_hidden_layers / n_layer)")


def drop_layers(names, drop: list[int], n: int) -> dict[str, str | None]:
    """{old name: new name, or None when its layer is dropped}; kept layers are renumbered 0..n-k-1."""
    drop_set = set(drop)
    bad = [i for i in drop_set if not 0 <= i < n]
    if bad:
        raise UsageError(f"layer(s) {sorted(bad)} do not exist (the model has {n})")
    if len(drop_set) >= n:
        raise UsageError(f"dropping {len(drop_set)} of {n} layers leaves none")
    new_index = {}
    j = 0
    for i in range(n):
        if i not in drop_set:
            new_index[i] = j
            j += 1
    out: dict[str, str | None] = {}
    for name in names:
        m = LAYER_RE.match(name)
        if not m:
            out[name] = name
            continue
        i = int(m.group(2))
        out[name] = None if i in drop_set else f"{m.group(1)}.{new_index[i]}.{name[m.end():]}"
    return out


def _cut(value: list, keep: list[int]) -> list:
    return [value[i] for i in keep]


def renamed_config(config: dict[str, Any], drop: list[int]) -> dict[str, Any]:
    """config.json without the dropped layers: the layer count and every per-layer list cut to match."""
    cfg = dict(config)
    n = n_layers(cfg)
    keep = [i for i in range(n) if i not in set(drop)]
    for k in DEPTH_KEYS:
        if isinstance(cfg.get(k), int):
            cfg[k] = len(keep)
    for k, v in list(cfg.items()):
        if isinstance(v, list) and len(v) == n and k not in NOT_PER_LAYER:
            cfg[k] = _cut(v, keep)
    per = cfg.get("slmctl_per_layer")
    if isinstance(per, dict):
        cfg["slmctl_per_layer"] = {k: _cut(v, keep) for k, v in per.items()}
    # per-layer patterns kept as strings or index lists: Nemotron-H's "M-M*-", LFM2's attention layer indices
    pat = cfg.get("hybrid_override_pattern")
    if isinstance(pat, str) and len(pat) == n:
        cfg["hybrid_override_pattern"] = "".join(_cut(list(pat), keep))
    if isinstance(cfg.get("full_attn_idxs"), list):
        cfg["full_attn_idxs"] = [j for j, i in enumerate(keep) if i in set(config["full_attn_idxs"])]
    # max_window_layers (qwen2): the first N layers use full attention; keep it within the new depth
    if isinstance(cfg.get("max_window_layers"), int):
        cfg["max_window_layers"] = sum(1 for i in keep if i < config["max_window_layers"])
    if isinstance(cfg.get("text_config"), dict):
        cfg["text_config"] = renamed_config(cfg["text_config"], drop)
    return cfg
