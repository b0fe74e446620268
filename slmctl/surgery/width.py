"""Shrink attention heads, MLP channels and hidden channels of Llama-style models, config included.

The family table is data: where each projection lives and which norms carry the hidden size; where the
blocks, the embedding, the head and the final norm live comes from the family's ArchSpec.
"""

from __future__ import annotations

from typing import Any

from ..arch import head_dim, spec_for
from ..errors import UnsupportedError, UsageError

_LLAMA = dict(q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
              o="self_attn.o_proj", gate="mlp.gate_proj", up="mlp.up_proj", down="mlp.down_proj", hidden=True)
WIDTH_FAMILIES: dict[str, dict[str, Any]] = {
    "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA, "qwen3": _LLAMA,
    # Gemma scales the embeddings by sqrt(hidden_size): a narrower hidden size changes that constant
    "gemma2": dict(_LLAMA, hidden=False),
    "gemma3_text": dict(_LLAMA, hidden=False),  # its Q/K norms are per head: head pruning leaves them
    "smollm3": _LLAMA, "granite": _LLAMA,
    # OLMo 2 normalises the whole Q and K projections: their norm weights lose the pruned heads' channels too
    "olmo2": dict(_LLAMA, qk_norm=("self_attn.q_norm", "self_attn.k_norm")),
    # Phi-3 / Phi-4-mini store Q, K, V as one qkv_proj (q rows, then k, then v) and gate/up as one gate_up_proj
    "phi3": dict(_LLAMA, q=None, k=None, v=None, gate=None, up=None, qkv="self_attn.qkv_proj",
                 gate_up="mlp.gate_up_proj", uniform=True),
}
PER_LAYER_KEY = "slmctl_per_layer"


def family(config: dict[str, Any], *, hidden: bool = False) -> dict[str, Any]:
    mt = config.get("model_type")
    fam = WIDTH_FAMILIES.get(mt)
    if fam is None:
        raise UnsupportedError(f"width pruning does not support model_type {mt!r} yet",
                               hint="supported: " + ", ".join(sorted(WIDTH_FAMILIES)) + "; depth and unstructured "
                                    "pruning work for every family")
    if hidden and not fam["hidden"]:
        raise UnsupportedError(f"{mt}: pruning the hidden size is not supported (its embedding scale depends on it)",
                               hint="prune heads and MLP channels only (--heads-ratio, --mlp-ratio)")
    spec = spec_for(config)
    return dict(fam, prefix=spec.block_prefix + "{i}.", norms=spec.hidden_norms,
                embed=spec.embedding.removesuffix(".weight"), lm_head=spec.head.removesuffix(".weight"),
                final_norm=spec.hf_top("output_norm.weight").removesuffix(".weight"))


def _span(units: list[int], size: int):
    import torch

    return torch.tensor([u * size + j for u in units for j in range(size)], dtype=torch.long)


def shrink(state: dict[str, Any], config: dict[str, Any], plan: dict[str, Any]) -> tuple[dict, dict]:
    """Apply ``plan`` to a state dict and its config; returns (new state, new config).

    ``plan``: ``heads`` {layer: (kept query heads, kept kv heads)}, ``mlp`` {layer: kept channels},
    ``hidden``: kept hidden channels or None. Kept indices must be ascending; query heads grouped by
    their kv head, as ``methods.prune.width_importance.keep_heads`` returns them.
    """
    import torch

    fam = family(config, hidden=plan.get("hidden") is not None)
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if fam.get("qkv") and rope.get("rope_type", rope.get("type")) == "longrope" and (plan.get("heads") or plan.get("hidden") is not None):
        raise UnsupportedError(f"{config.get('model_type')} with LongRoPE: transformers checks the short/long factors "
                               "against hidden_size / num_attention_heads, so a model with fewer heads or a narrower "
                               "hidden size would not load", hint="prune MLP channels only (--mlp-ratio)")
    st = dict(state)
    cfg = dict(config)
    n = cfg["num_hidden_layers"]
    H = cfg["num_attention_heads"]
    KV = cfg.get("num_key_value_heads") or H
    hd = head_dim(cfg)
    inter = cfg["intermediate_size"]
    per = cfg.get(PER_LAYER_KEY) or {}
    heads = list(per.get("num_attention_heads", [H] * n))
    kvs = list(per.get("num_key_value_heads", [KV] * n))
    inters = list(per.get("intermediate_size", [inter] * n))

    def sel(name: str, dim: int, idx) -> None:
        if name in st:
            st[name] = st[name].index_select(dim, idx)

    for i in range(n):
        p = fam["prefix"].format(i=i)
        if i in plan.get("heads", {}):
            q_keep, kv_keep = plan["heads"][i]
            if len(q_keep) % len(kv_keep):
                raise UsageError(f"layer {i}: {len(q_keep)} query heads cannot share {len(kv_keep)} kv heads evenly")
            qi, kvi = _span(q_keep, hd), _span(kv_keep, hd)
            for t in ("weight", "bias"):
                sel(f"{p}{fam['q']}.{t}", 0, qi)
                sel(f"{p}{fam['k']}.{t}", 0, kvi)
                sel(f"{p}{fam['v']}.{t}", 0, kvi)
                if fam.get("qkv"):
                    sel(f"{p}{fam['qkv']}.{t}", 0, torch.cat([qi, H * hd + kvi, (H + KV) * hd + kvi]))
            sel(f"{p}{fam['o']}.weight", 1, qi)
            if fam.get("qk_norm"):
                sel(f"{p}{fam['qk_norm'][0]}.weight", 0, qi)
                sel(f"{p}{fam['qk_norm'][1]}.weight", 0, kvi)
            heads[i], kvs[i] = len(q_keep), len(kv_keep)
        if i in plan.get("mlp", {}):
            idx = torch.tensor(plan["mlp"][i], dtype=torch.long)
            for t in ("weight", "bias"):
                sel(f"{p}{fam['gate']}.{t}", 0, idx)
                sel(f"{p}{fam['up']}.{t}", 0, idx)
                if fam.get("gate_up"):
                    sel(f"{p}{fam['gate_up']}.{t}", 0, torch.cat([idx, inter + idx]))
            sel(f"{p}{fam['down']}.weight", 1, idx)
            inters[i] = len(idx)
    hidden = plan.get("hidden")
    if hidden is not None:
        h = torch.tensor(hidden, dtype=torch.long)
        for name in (f"{fam['embed']}.weight", f"{fam['lm_head']}.weight"):
            sel(name, 1, h)
        sel(f"{fam['final_norm']}.weight", 0, h)
        sel(f"{fam['final_norm']}.bias", 0, h)
        for i in range(n):
            p = fam["prefix"].format(i=i)
            for role in ("q", "k", "v", "gate", "up", "qkv", "gate_up"):
                if fam.get(role):
                    sel(f"{p}{fam[role]}.weight", 1, h)
            for role in ("o", "down"):
                sel(f"{p}{fam[role]}.weight", 0, h)
                sel(f"{p}{fam[role]}.bias", 0, h)
            for norm in fam["norms"]:
                sel(f"{p}{norm}.weight", 0, h)
                sel(f"{p}{norm}.bias", 0, h)
        cfg["hidden_size"] = len(hidden)
    cfg["head_dim"] = hd
    new_per = {}
    for key, vals in (("num_attention_heads", heads), ("num_key_value_heads", kvs), ("intermediate_size", inters)):
        cfg[key] = max(vals)
        if len(set(vals)) > 1:
            new_per[key] = vals
    if new_per and fam.get("uniform"):
        raise UnsupportedError(f"{config.get('model_type')}: per-layer widths do not load in transformers for this "
                               "family (its fused projections are sized from config.json)",
                               hint="use the same ratio for every layer (no --adaptive)")
    if new_per:
        cfg[PER_LAYER_KEY] = new_per
    else:
        cfg.pop(PER_LAYER_KEY, None)
    return st, cfg


def apply_per_layer(model, config: dict[str, Any]) -> None:
    """Resize a freshly built Llama-style model's layers to ``slmctl_per_layer`` sizes (before loading weights).

    transformers' Llama/Qwen/Mistral attention reshapes with ``-1`` heads, so per-layer head counts
    work once the projections have their pruned shapes and ``num_key_value_groups`` is set per layer.
    """
    import torch

    per = config.get(PER_LAYER_KEY) or {}
    if not per:
        return
    fam = family(config)
    n = config["num_hidden_layers"]
    hd = head_dim(config)
    hidden = config["hidden_size"]
    layers = model.model.layers
    for i in range(n):
        layer = layers[i]
        attn, mlp = layer.self_attn, layer.mlp
        h = per.get("num_attention_heads", [config["num_attention_heads"]] * n)[i]
        kv = per.get("num_key_value_heads", [config.get("num_key_value_heads") or config["num_attention_heads"]] * n)[i]
        inter = per.get("intermediate_size", [config["intermediate_size"]] * n)[i]

        def lin(old, i_f, o_f):
            return torch.nn.Linear(i_f, o_f, bias=old.bias is not None, dtype=old.weight.dtype)

        attn.q_proj = lin(attn.q_proj, hidden, h * hd)
        attn.k_proj = lin(attn.k_proj, hidden, kv * hd)
        attn.v_proj = lin(attn.v_proj, hidden, kv * hd)
        attn.o_proj = lin(attn.o_proj, h * hd, hidden)
        attn.num_key_value_groups = h // kv
        for name, size in zip(fam.get("qk_norm", ()), (h * hd, kv * hd)):
            layer.get_submodule(name).weight = torch.nn.Parameter(torch.ones(size))
        for attr in ("num_heads", "num_attention_heads"):
            if hasattr(attn, attr):
                setattr(attn, attr, h)
        mlp.gate_proj = lin(mlp.gate_proj, hidden, inter)
        mlp.up_proj = lin(mlp.up_proj, hidden, inter)
        mlp.down_proj = lin(mlp.down_proj, inter, hidden)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = inter
    del fam


def load_per_layer_model(art, trust_remote_code: bool = False):
    """The fp32 transformers model of an artifact whose config.json has ``slmctl_per_layer``, without remote code.

    transformers' ``from_pretrained`` cannot hold per-layer head/FFN sizes for Llama-style models, so
    the model is built from the config (largest sizes), each layer resized (``apply_per_layer``), and
    the weights loaded; every tensor must find its place.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..errors import InputError

    folder = art.path if art.path.is_dir() else art.path.parent
    cfg = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=trust_remote_code).float()
    apply_per_layer(model, art.config)
    state = {n: t.load().float() for n, t in art.tensors.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and art.config.get("tie_word_embeddings"))]
    if missing or unexpected:
        raise InputError(f"{folder}: weights do not match the per-layer config "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})",
                         hint="the tensors and slmctl_per_layer in config.json disagree; prune the model again")
    model.tie_weights()
    return model.eval()
