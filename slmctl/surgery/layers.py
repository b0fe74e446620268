"""Drop decoder layers: renumber the tensors and cut every per-layer array of the config."""

from __future__ import annotations

from typing import Any, Hashable, Sequence

from ..arch.names import DEPTH_KEYS, block_prefix, layer_index, split_block  # noqa: F401 (layer_index re-exported)
from ..errors import UsageError

# config keys that are not per-layer even when their length happens to equal the layer count
NOT_PER_LAYER = {"architectures", "eos_token_id", "bos_token_id", "pad_token_id", "bad_words_ids", "suppress_tokens",
                 "begin_suppress_tokens", "forced_decoder_ids"}
# per-layer patterns kept as one string, a letter a layer: Nemotron-H's "M-M*-"
PATTERN_KEYS = ("hybrid_override_pattern",)


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


def drop_layers(names, drop: list[int], n: int, prefix: str | None = None) -> dict[str, str | None]:
    """{old name: new name, or None when its layer is dropped}; kept layers are renumbered 0..n-k-1.

    ``prefix``: where the decoder blocks live (``model.layers``); by default the block container most
    names sit in (arch.names.block_prefix)."""
    names = list(names)
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
    prefix = prefix if prefix is not None else block_prefix(names)
    out: dict[str, str | None] = {}
    for name in names:
        s = split_block(name, prefix) if prefix is not None else None
        if not s:
            out[name] = name
            continue
        _, i, rest = s
        out[name] = None if i in drop_set else f"{prefix}.{new_index[i]}.{rest}"
    return out


def pick_layer_lists(config: dict[str, Any], picks: Sequence[tuple[Hashable, int]],
                     configs: dict[Hashable, dict[str, Any]] | None = None, *, n: int | None = None,
                     skip=NOT_PER_LAYER) -> dict[str, Any]:
    """A copy of ``config`` whose per-layer entries follow a new stack of blocks.

    New block j is block ``picks[j][1]`` of the model whose config is ``configs[picks[j][0]]`` (by default
    one model: ``config`` itself, under the key None). Per-layer entries: each list of length ``n`` (the
    layer count of ``config``) whose key is not in ``skip``, each list of ``slmctl_per_layer`` and the
    pattern strings (PATTERN_KEYS). An entry some picked model lacks, or holds too short, stays as it was.
    Depth keys and index-valued keys are the caller's (they differ between cutting and stacking)."""
    configs = {None: config} if configs is None else configs
    n = n_layers(config) if n is None else n

    def pick(get):
        vals = []
        for key, i in picks:
            seq = get(configs[key])
            if not isinstance(seq, (list, str)) or i >= len(seq):
                return None
            vals.append(seq[i])
        return vals

    out = dict(config)
    for k, v in config.items():
        is_pattern = k in PATTERN_KEYS and isinstance(v, str)
        if (isinstance(v, list) or is_pattern) and len(v) == n and n > 0 and k not in skip:
            new = pick(lambda c, k=k: c.get(k))
            if new is not None:
                out[k] = "".join(new) if is_pattern else new
    per = config.get("slmctl_per_layer")
    if isinstance(per, dict):
        out["slmctl_per_layer"] = dict(per)
        for k in per:
            new = pick(lambda c, k=k: (c.get("slmctl_per_layer") or {}).get(k))
            if new is not None:
                out["slmctl_per_layer"][k] = new
    return out


def renamed_config(config: dict[str, Any], drop: list[int]) -> dict[str, Any]:
    """config.json without the dropped layers: the layer count and every per-layer list cut to match."""
    n = n_layers(config)
    keep = [i for i in range(n) if i not in set(drop)]
    cfg = pick_layer_lists(config, [(None, i) for i in keep], n=n)
    for k in DEPTH_KEYS:
        if isinstance(cfg.get(k), int):
            cfg[k] = len(keep)
    # LFM2's attention layers as an index list
    if isinstance(cfg.get("full_attn_idxs"), list):
        cfg["full_attn_idxs"] = [j for j, i in enumerate(keep) if i in set(config["full_attn_idxs"])]
    # max_window_layers (qwen2): the first N layers use full attention; keep it within the new depth
    if isinstance(cfg.get("max_window_layers"), int):
        cfg["max_window_layers"] = sum(1 for i in keep if i < config["max_window_layers"])
    if isinstance(cfg.get("text_config"), dict):
        cfg["text_config"] = renamed_config(cfg["text_config"], drop)
    return cfg
