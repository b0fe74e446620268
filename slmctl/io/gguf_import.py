"""GGUF -> transformers model for the families transformers' own GGUF loader does not know (OLMo 2, Granite,
SmolLM3) or reads back wrongly (Gemma 3: the sliding/full layer pattern, the local RoPE base and the query
scale are not in its table). The family's spec (slmctl.arch) is read backwards: GGUF names -> HF names,
GGUF keys -> config.json keys, and each quirk undone (Q/K rows un-permuted, ``norm - 1`` for Gemma).

The tokenizer is rebuilt from the GGUF's ``tokenizer.ggml.*`` metadata by transformers, which needs no
model of the architecture for it.
"""

from __future__ import annotations

from typing import Any

from ..errors import FormatError, UnsupportedError

# GGUF architectures imported here -> (slmctl spec name, transformers model_type)
OWN_IMPORT = {"gemma3": ("gemma3", "gemma3_text"), "smollm3": ("smollm3", "smollm3"),
              "granite": ("granite", "granite"), "olmo2": ("olmo2", "olmo2"),
              "nemotron_h": ("nemotron_h", "nemotron_h")}
# inverses of slmctl.pipelines.export.gguf_build.TENSOR_OPS (GGUF array -> HF tensor)
_UNDO_OPS = {"squeeze": lambda t: t.unsqueeze(1), "neg_exp_col": lambda t: (-t.double()).log().float().reshape(-1),
             "col": lambda t: t.reshape(-1), "per_group": lambda t: t.reshape(-1)}


def _nemotron_h_config(cfg: dict[str, Any], key) -> dict[str, Any]:
    """Nemotron-H's block kinds come back from the per-layer arrays: KV heads > 0 is attention, an FFN width
    > 0 an MLP block, neither a Mamba-2 block (llama.cpp's own rule)."""
    kv, ff = key("attention.head_count_kv"), key("feed_forward_length")
    if not isinstance(kv, list) or not isinstance(ff, list):
        raise FormatError("a nemotron_h GGUF needs per-layer attention.head_count_kv and feed_forward_length arrays")
    heads = int(key("ssm.time_step_rank"))
    cfg.update(layers_block_type=["full_attention" if k else "mlp" if f else "linear_attention" for k, f in zip(kv, ff)],
               num_key_value_heads=max(kv) or cfg.get("num_attention_heads"), intermediate_size=max(ff) or 1,
               head_dim=int(key("attention.key_length")), mamba_num_heads=heads,
               mamba_head_dim=int(key("ssm.inner_size")) // heads, n_groups=int(key("ssm.group_count")),
               ssm_state_size=int(key("ssm.state_size")), conv_kernel=int(key("ssm.conv_kernel")),
               mlp_hidden_act="relu2", use_mamba_kernels=False)
    return cfg


def _reverse_names(spec, n_layers: int) -> dict[str, str]:
    out = {g: h for h, g in spec.top.items()}
    for i in range(n_layers):
        for h, g in spec.block.items():
            out.setdefault(f"blk.{i}.{g}", f"{spec.block_prefix}{i}.{h}")
    return out


def _unpermute_qk(w, n_head: int):
    """Inverse of slmctl.arch.permute_qk: llama.cpp's interleaved pairs -> HF rotate-half rows."""
    shape = w.shape
    return w.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def gguf_config(meta: dict[str, Any], tensor_names, arch: str) -> dict[str, Any]:
    """config.json for a GGUF of an OWN_IMPORT architecture, from its metadata."""
    from ..arch import ARCHS

    spec_name, model_type = OWN_IMPORT[arch]
    spec = ARCHS.get(spec_name)

    def key(suffix, default=None):
        v = meta.get(f"{arch}.{suffix}", default)
        return v.tolist() if hasattr(v, "tolist") else v  # numpy scalars and arrays -> Python

    cfg: dict[str, Any] = {"architectures": [spec.hf_architectures[0]], "model_type": model_type}
    for suffix, keys in spec.hparams.items():
        v = key(suffix)
        if v is not None and not isinstance(v, list):
            cfg.setdefault(keys[0], v)
    if arch == "nemotron_h":
        return _nemotron_h_config(cfg, key)
    n = int(cfg["num_hidden_layers"])
    heads = int(cfg["num_attention_heads"])
    cfg.setdefault("num_key_value_heads", heads)
    if key("attention.key_length"):
        cfg["head_dim"] = int(key("attention.key_length"))
    cfg["tie_word_embeddings"] = "output.weight" not in tensor_names
    for kind, gkey in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id")):
        if meta.get(f"tokenizer.ggml.{gkey}") is not None:
            cfg[f"{kind}_token_id"] = int(meta[f"tokenizer.ggml.{gkey}"])
    theta = float(key("rope.freq_base", 10000.0))
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": theta}
    if key("rope.scaling.type") == "linear" and key("rope.scaling.factor"):
        rope = {"rope_type": "linear", "rope_theta": theta, "factor": float(key("rope.scaling.factor"))}
    elif key("rope.scaling.type") not in (None, "none"):
        raise UnsupportedError(f"GGUF {arch} with RoPE scaling {key('rope.scaling.type')!r}: slmctl imports "
                               "default and linear RoPE for this family")
    if arch == "gemma3":
        pattern = key("attention.sliding_window_pattern")
        if isinstance(pattern, list):
            swa = [bool(x) for x in pattern]
        else:  # llama.cpp's default: 5 sliding layers, then a full one
            every = int(pattern or 6)
            swa = [(i + 1) % every != 0 for i in range(n)]
        window = key("attention.sliding_window")
        if not window:
            swa = [False] * n
        cfg["layer_types"] = ["sliding_attention" if s else "full_attention" for s in swa[:n]]
        cfg["sliding_window"] = int(window or 4096)
        cfg["rope_parameters"] = {"full_attention": rope,
                                  "sliding_attention": {"rope_type": "default",
                                                        "rope_theta": float(key("rope.freq_base_swa", 10000.0))}}
        # llama.cpp scales scores by 1/sqrt(head_dim) (1/sqrt(hidden/heads) with 62 layers); the exporter
        # folded any other scale into the Q norm, which is read back as it is
        hd = cfg.get("head_dim") or cfg["hidden_size"] // heads
        cfg["query_pre_attn_scalar"] = cfg["hidden_size"] // heads if n == 62 else hd
        cfg["final_logit_softcapping"] = float(key("final_logit_softcapping")) if key("final_logit_softcapping") else None
        cfg["attn_logit_softcapping"] = None
        cfg["hidden_activation"] = "gelu_pytorch_tanh"
    else:
        cfg["rope_parameters"] = rope
    if arch == "smollm3":  # llama.cpp leaves RoPE out of every 4th layer
        cfg["no_rope_layer_interval"] = 4
        cfg["no_rope_layers"] = [int((i + 1) % 4 != 0) for i in range(n)]
        cfg["use_sliding_window"] = False
    if arch == "granite" and "attention_multiplier" not in cfg:
        cfg["attention_multiplier"] = 1.0 / (cfg.get("head_dim") or cfg["hidden_size"] // heads) ** 0.5
    return cfg


def gguf_state(art, spec, cfg: dict[str, Any]):
    """{HF name: float32 tensor} of the GGUF, quirks undone."""
    names = _reverse_names(spec, int(cfg.get("num_hidden_layers") or len(cfg["layers_block_type"])))
    hd = int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])
    state = {}
    for g, lt in art.tensors.items():
        h = names.get(g)
        if h is None:
            if g == "rope_freqs.weight":
                continue
            raise FormatError(f"{art.path}: tensor {g!r} has no place in a {spec.hf_architectures[0]}",
                              hint="the GGUF is not what its general.architecture says")
        t = lt.load().float()
        if spec.permuted(h):
            t = _unpermute_qk(t, t.shape[0] // hd)
        if spec.shifted_norm(h):
            t = t - 1.0
        op = spec.tensor_op(h)
        if op is not None:
            t = _UNDO_OPS[op](t)
        state[h] = t.contiguous()
    return state


def gguf_tokenizer(path):
    """The transformers tokenizer of a GGUF file, rebuilt from its ``tokenizer.ggml.*`` metadata. For an
    architecture transformers has no model for (OLMo 2, Granite, SmolLM3, llama.cpp's ``deci``) the
    tokenizer does not depend on it, so it is built alone."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (ValueError, KeyError):
        return PreTrainedTokenizerFast.from_pretrained(str(path.parent), gguf_file=path.name)


def import_gguf(art):
    """(transformers model in float32, tokenizer) of a GGUF whose architecture is in OWN_IMPORT."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..arch import ARCHS

    arch = art.metadata.get("general.architecture")
    spec = ARCHS.get(OWN_IMPORT[arch][0])
    cfg = gguf_config(art.metadata, set(art.tensors), arch)
    if "token_embd.weight" not in art.tensors:
        raise FormatError(f"{art.path}: no token_embd.weight", hint="the GGUF is incomplete")
    cfg["vocab_size"] = int(art.tensors["token_embd.weight"].shape[0])
    c = dict(cfg)
    hf_cfg = AutoConfig.for_model(c.pop("model_type"), **c)
    model = AutoModelForCausalLM.from_config(hf_cfg, dtype=torch.float32)
    state = gguf_state(art, spec, cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and cfg["tie_word_embeddings"])]
    if missing or unexpected:
        raise FormatError(f"{art.path}: the GGUF's tensors do not fill a {spec.hf_architectures[0]} "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.tie_weights()
    return model.eval(), gguf_tokenizer(art.path)
