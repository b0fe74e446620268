"""Architecture knowledge as data: one spec per family (HF architecture -> GGUF architecture).

A spec holds the tensor-name templates (HF -> GGUF, ``{bid}`` for the block index), where each
hyperparameter lives in config.json, and the family's quirks as flags:

- ``permute_qk``: llama.cpp's "normal" RoPE rotates interleaved pairs while HF llama rotates halves,
  so Q and K rows are permuted on the way out (as convert_hf_to_gguf.py's ``LlamaModel.permute``);
- ``norm_plus_one``: Gemma's RMSNorm multiplies by (1 + w); llama.cpp by w, so norms get +1;
- ``transpose``: GPT-2's Conv1D stores (in, out); GGUF wants (out, in);
- fused tensors (phi3 qkv_proj, gate_up_proj) are written fused: llama.cpp splits them itself.

References: https://github.com/ggml-org/llama.cpp/blob/master/gguf-py/gguf/tensor_mapping.py and
https://github.com/ggml-org/llama.cpp/blob/master/convert_hf_to_gguf.py
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import UnsupportedError
from ..registry import Registry

# the tensors every llama-like decoder has (HF suffix -> GGUF suffix)
_LLAMA_TOP = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LLAMA_BLOCK = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.bias": "attn_output.bias",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
# the Q and K projections llama.cpp's "normal" RoPE reads in another row order (ArchSpec.permuted)
QK_PROJ = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.q_proj.bias", "self_attn.k_proj.bias")
# AWQ: the first linear of a group of linears sharing one input -> the modules that may produce that input
# (block-relative; the first one present wins) and how an activation scale is folded into it: "norm" divides
# the norm's weight, "rows" the producing linear's output rows. Llama-style names (Phi-3's fused qkv/gate_up
# included); a group whose producer a family lacks (OLMo 2 has no pre-norms) is left unscaled
AWQ_FOLDS: dict[str, tuple[tuple[str, ...], str]] = {
    "self_attn.q_proj": (("input_layernorm",), "norm"),
    "self_attn.qkv_proj": (("input_layernorm",), "norm"),
    "mlp.gate_proj": (("pre_feedforward_layernorm", "post_attention_layernorm"), "norm"),
    "mlp.gate_up_proj": (("pre_feedforward_layernorm", "post_attention_layernorm"), "norm"),
    "self_attn.o_proj": (("self_attn.v_proj",), "rows"),
    "mlp.down_proj": (("mlp.up_proj",), "rows"),
}


def _weight_bias(hf: str, gguf: str) -> dict[str, str]:
    """A module with a weight and a bias: both names mapped."""
    return {f"{hf}.weight": f"{gguf}.weight", f"{hf}.bias": f"{gguf}.bias"}


# per-head RMSNorm of Q and K (Qwen 3, Gemma 3, OLMo 2)
_QK_NORMS = {"self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight"}
# norms after attention and after the MLP (Gemma 2/3 keep the pre-norms too, OLMo 2 only these)
_POST_ATTN_NORM = {"post_attention_layernorm.weight": "post_attention_norm.weight"}
_POST_FFW_NORM = {"post_feedforward_layernorm.weight": "post_ffw_norm.weight"}
# Gemma 2/3: four norms per block (the pre-MLP norm is llama.cpp's ffn_norm)
_GEMMA_BLOCK = {**_LLAMA_BLOCK, **_POST_ATTN_NORM, "pre_feedforward_layernorm.weight": "ffn_norm.weight",
                **_POST_FFW_NORM}


@dataclass(frozen=True)
class ArchSpec:
    """How one HF family maps onto one GGUF architecture."""

    name: str
    gguf_arch: str
    hf_architectures: tuple[str, ...]
    top: dict[str, str]  # HF name -> GGUF name, outside the blocks
    block: dict[str, str]  # HF suffix after the block prefix -> GGUF suffix after "blk.{bid}."
    block_prefix: str = "model.layers."
    # GGUF key suffix (after "<arch>.") -> config keys tried in order
    hparams: dict[str, tuple[str, ...]] = field(default_factory=dict)
    rope: bool = True
    permute_qk: bool = False
    norm_plus_one: bool = False
    transpose: tuple[str, ...] = ()  # HF suffixes stored transposed (Conv1D)
    skip: tuple[str, ...] = ()  # HF name regexes that llama.cpp does not use
    drop_output_when_tied: bool = True
    # llama.cpp scales attention by 1/sqrt(head_dim); a different query scale (Gemma 3's
    # query_pre_attn_scalar) is folded into the Q norm weights, which multiply Q just before RoPE
    fold_query_scale: bool = False
    # a layer pattern written as a per-layer array: "swa" (sliding layers from layer_types) or
    # "no_rope" (SmolLM3's every-4th layer without RoPE, which llama.cpp hard-codes: checked, not written)
    layer_pattern: str | None = None
    per_layer_arch: str | None = None  # GGUF arch that reads per-layer head/FFN arrays
    # HF suffix -> reshaping op applied on the way to GGUF (see pipelines/export/gguf.py TENSOR_OPS): Mamba2's A_log is
    # stored as -exp(A_log), depthwise conv kernels lose their singleton axis, the gated norm is split per group
    tensor_ops: dict[str, str] = field(default_factory=dict)
    # regexes of HF module names inside the state-space / convolution mixers: their linears feed a recurrence,
    # so pruning and quantisation leave them in full precision (and say so)
    mixers: tuple[str, ...] = ()
    aliases: tuple[tuple[str, str], ...] = ()  # (other HF prefix, the prefix the tables use), e.g. backbone. -> model.
    model_types: tuple[str, ...] = ()  # config.json model_type values other than the spec's name (gemma3_text)

    def _canon(self, hf_name: str) -> str:
        for other, ours in self.aliases:
            if hf_name.startswith(other):
                return ours + hf_name[len(other):]
        return hf_name

    def gguf_name(self, hf_name: str) -> str | None:
        """The GGUF name of an HF tensor; None if llama.cpp does not use it; raises if unknown."""
        if any(re.search(p, hf_name) for p in self.skip):
            return None
        hf_name = self._canon(hf_name)
        if hf_name in self.top:
            return self.top[hf_name]
        if hf_name.startswith(self.block_prefix):
            rest = hf_name[len(self.block_prefix):]
            bid, _, suffix = rest.partition(".")
            if bid.isdigit() and suffix in self.block:
                return f"blk.{int(bid)}.{self.block[suffix]}"
        raise UnsupportedError(f"tensor {hf_name!r} has no GGUF name in the {self.name} spec",
                               hint="the model has a part slmctl's GGUF exporter does not know; "
                                    "open an issue with `slmctl inspect MODEL --json`")

    # ---- tensor roles: what the GGUF writer and reader do to one HF tensor on the way
    def transposed(self, hf_name: str) -> bool:
        """Stored (in, out) by a Conv1D: GGUF wants it transposed."""
        return any(hf_name.endswith("." + s) for s in self.transpose)

    def permuted(self, hf_name: str) -> bool:
        """A Q or K projection (weight or bias) whose rows llama.cpp wants in interleaved-pair RoPE order."""
        return self.permute_qk and hf_name.endswith(QK_PROJ)

    def shifted_norm(self, hf_name: str) -> bool:
        """A (1 + w) norm weight (Gemma) that GGUF stores as w + 1."""
        return self.norm_plus_one and hf_name.endswith("norm.weight")

    def tensor_op(self, hf_name: str) -> str | None:
        """The name of the reshaping op (tensor_ops) applied to this tensor, or None."""
        return next((op for suffix, op in self.tensor_ops.items() if hf_name.endswith("." + suffix)), None)

    def hf_top(self, gguf_name: str) -> str | None:
        """The HF name of a tensor outside the blocks (``token_embd.weight`` -> the embedding), or None."""
        return next((h for h, g in self.top.items() if g == gguf_name), None)

    @property
    def hidden_norms(self) -> tuple[str, ...]:
        """The block's norms over the hidden size (module names after the block prefix; per-head Q/K norms and
        the final norm are not among them)."""
        not_hidden = (*_QK_NORMS.values(), "ssm_norm.weight")  # per-head Q/K norms; Mamba-2's gated norm (inner width)
        return tuple(h.removesuffix(".weight") for h, g in self.block.items()
                     if g.endswith("norm.weight") and h.endswith(".weight") and g not in not_hidden)

    @property
    def embedding(self) -> str:
        """The HF name of the token embedding."""
        return self.hf_top("token_embd.weight")

    @property
    def head(self) -> str | None:
        """The HF name of the output head (None when the family has none of its own)."""
        return self.hf_top("output.weight")

    def block_index(self, hf_name: str) -> int | None:
        hf_name = self._canon(hf_name)
        if hf_name.startswith(self.block_prefix):
            bid = hf_name[len(self.block_prefix):].split(".", 1)[0]
            return int(bid) if bid.isdigit() else None
        return None


_COMMON_HP = {
    "context_length": ("max_position_embeddings", "n_positions", "n_ctx"),
    "embedding_length": ("hidden_size", "n_embd"),
    "block_count": ("num_hidden_layers", "n_layer"),
    "feed_forward_length": ("intermediate_size", "n_inner"),
    "attention.head_count": ("num_attention_heads", "n_head"),
    "attention.head_count_kv": ("num_key_value_heads", "num_attention_heads", "n_head"),
    "attention.layer_norm_rms_epsilon": ("rms_norm_eps",),
}

ARCHS: Registry[ArchSpec] = Registry("architecture")


def _add(spec: ArchSpec) -> ArchSpec:
    ARCHS.add(spec.name, spec, f"{', '.join(spec.hf_architectures)} -> GGUF {spec.gguf_arch}")
    return spec


_add(ArchSpec("llama", "llama", ("LlamaForCausalLM",), _LLAMA_TOP, _LLAMA_BLOCK, hparams=_COMMON_HP,
              permute_qk=True, skip=(r"rotary_emb\.inv_freq$",), per_layer_arch="deci"))
_add(ArchSpec("mistral", "llama", ("MistralForCausalLM",), _LLAMA_TOP, _LLAMA_BLOCK, hparams=_COMMON_HP,
              permute_qk=True, skip=(r"rotary_emb\.inv_freq$",), per_layer_arch="deci"))
_add(ArchSpec("qwen2", "qwen2", ("Qwen2ForCausalLM",), _LLAMA_TOP, _LLAMA_BLOCK, hparams=_COMMON_HP))
_add(ArchSpec("qwen3", "qwen3", ("Qwen3ForCausalLM",), _LLAMA_TOP,
              {**_LLAMA_BLOCK, **_QK_NORMS}, hparams=_COMMON_HP))
_add(ArchSpec("phi3", "phi3", ("Phi3ForCausalLM",), _LLAMA_TOP,
              {"input_layernorm.weight": "attn_norm.weight", "self_attn.qkv_proj.weight": "attn_qkv.weight",
               "self_attn.o_proj.weight": "attn_output.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
               "mlp.gate_up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"},
              hparams=_COMMON_HP))
_add(ArchSpec("gemma2", "gemma2", ("Gemma2ForCausalLM",), {**_LLAMA_TOP}, _GEMMA_BLOCK,
              hparams=_COMMON_HP, norm_plus_one=True, skip=(r"^lm_head\.weight$",)))
_add(ArchSpec("gpt2", "gpt2", ("GPT2LMHeadModel",),
              {"transformer.wte.weight": "token_embd.weight", "transformer.wpe.weight": "position_embd.weight",
               "transformer.ln_f.weight": "output_norm.weight", "transformer.ln_f.bias": "output_norm.bias",
               "lm_head.weight": "output.weight"},
              {k: v for hf, gg in (("ln_1", "attn_norm"), ("attn.c_attn", "attn_qkv"), ("attn.c_proj", "attn_output"),
                                   ("ln_2", "ffn_norm"), ("mlp.c_fc", "ffn_up"), ("mlp.c_proj", "ffn_down"))
               for k, v in _weight_bias(hf, gg).items()},
              block_prefix="transformer.h.",
              hparams={"context_length": ("n_positions", "n_ctx"), "embedding_length": ("n_embd",),
                       "block_count": ("n_layer",), "attention.head_count": ("n_head",),
                       "attention.layer_norm_epsilon": ("layer_norm_epsilon",)},
              rope=False, transpose=("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"),
              skip=(r"\.attn\.bias$", r"\.attn\.masked_bias$")))

# Gemma 3 text (gemma3_text): Gemma 2's four norms per block plus per-head Q/K norms, (1 + w) norms,
# sliding and full layers with their own RoPE bases, the query scale folded into the Q norm
_add(ArchSpec("gemma3", "gemma3", ("Gemma3ForCausalLM",), {**_LLAMA_TOP}, {**_GEMMA_BLOCK, **_QK_NORMS},
              hparams=_COMMON_HP, norm_plus_one=True, fold_query_scale=True, layer_pattern="swa",
              skip=(r"^lm_head\.weight$", r"rotary_emb.*\.inv_freq$"), model_types=("gemma3_text",)))
# SmolLM3: a llama with RoPE left out of every 4th layer (no_rope_layers)
_add(ArchSpec("smollm3", "smollm3", ("SmolLM3ForCausalLM",), _LLAMA_TOP, _LLAMA_BLOCK, hparams=_COMMON_HP,
              permute_qk=True, layer_pattern="no_rope", skip=(r"rotary_emb\.inv_freq$",)))
# Granite 3.x dense: a llama with embedding, attention, residual and logits multipliers
_add(ArchSpec("granite", "granite", ("GraniteForCausalLM",), _LLAMA_TOP, _LLAMA_BLOCK,
              hparams={**_COMMON_HP, "embedding_scale": ("embedding_multiplier",),
                       "attention.scale": ("attention_multiplier",), "residual_scale": ("residual_multiplier",),
                       "logit_scale": ("logits_scaling",)},
              permute_qk=True, skip=(r"rotary_emb\.inv_freq$",)))
# OLMo 2: no pre-norms; norms after attention and MLP, RMSNorm over the whole Q and K projections;
# llama.cpp always reads an output tensor (a tied one is written twice)
_add(ArchSpec("olmo2", "olmo2", ("Olmo2ForCausalLM",), _LLAMA_TOP,
              {**{k: v for k, v in _LLAMA_BLOCK.items() if k != "input_layernorm.weight"},
               **_POST_ATTN_NORM, **_POST_FFW_NORM, **_QK_NORMS},
              hparams=_COMMON_HP, drop_output_when_tied=False, skip=(r"rotary_emb\.inv_freq$",)))

# LFM2 (Liquid): gated short convolutions in most blocks, GQA attention with QK norms in the rest; the final
# norm is called embedding_norm in HF and token_embd_norm in llama.cpp
_add(ArchSpec("lfm2", "lfm2", ("Lfm2ForCausalLM", "LFM2ForCausalLM"),
              {"model.embed_tokens.weight": "token_embd.weight", "model.embedding_norm.weight": "token_embd_norm.weight",
               "lm_head.weight": "output.weight"},
              {"operator_norm.weight": "attn_norm.weight", "ffn_norm.weight": "ffn_norm.weight",
               "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
               "self_attn.v_proj.weight": "attn_v.weight", "self_attn.out_proj.weight": "attn_output.weight",
               "self_attn.q_layernorm.weight": "attn_q_norm.weight", "self_attn.k_layernorm.weight": "attn_k_norm.weight",
               **{k: v for part in ("conv", "in_proj", "out_proj")
                  for k, v in _weight_bias(f"conv.{part}", f"shortconv.{part}").items()},
               "feed_forward.w1.weight": "ffn_gate.weight", "feed_forward.w3.weight": "ffn_up.weight",
               "feed_forward.w2.weight": "ffn_down.weight"},
              hparams={**{k: v for k, v in _COMMON_HP.items() if k not in ("feed_forward_length", "attention.head_count_kv")},
                       "attention.layer_norm_rms_epsilon": ("norm_eps", "rms_norm_eps")},
              tensor_ops={"conv.conv.weight": "squeeze"}, mixers=(r"\.conv\.",)))
# Nemotron-H (NVIDIA): Mamba-2 / attention / ReLU^2-MLP blocks, one mixer per block, no RoPE at all
_NEMOTRON_H_BLOCK = {
    "norm.weight": "attn_norm.weight",
    "mixer.in_proj.weight": "ssm_in.weight", "mixer.conv1d.weight": "ssm_conv1d.weight",
    "mixer.conv1d.bias": "ssm_conv1d.bias", "mixer.dt_bias": "ssm_dt.bias", "mixer.A_log": "ssm_a",
    "mixer.D": "ssm_d", "mixer.norm.weight": "ssm_norm.weight", "mixer.out_proj.weight": "ssm_out.weight",
    "mixer.q_proj.weight": "attn_q.weight", "mixer.k_proj.weight": "attn_k.weight",
    "mixer.v_proj.weight": "attn_v.weight", "mixer.o_proj.weight": "attn_output.weight",
    "mixer.up_proj.weight": "ffn_up.weight", "mixer.down_proj.weight": "ffn_down.weight",
}
_add(ArchSpec("nemotron_h", "nemotron_h", ("NemotronHForCausalLM",),
              {"model.embeddings.weight": "token_embd.weight", "model.norm_f.weight": "output_norm.weight",
               "lm_head.weight": "output.weight"},
              _NEMOTRON_H_BLOCK, aliases=(("backbone.", "model."),),
              hparams={"context_length": ("max_position_embeddings",), "embedding_length": ("hidden_size",),
                       "attention.head_count": ("num_attention_heads",),
                       "attention.layer_norm_epsilon": ("layer_norm_epsilon",),
                       "attention.layer_norm_rms_epsilon": ("layer_norm_epsilon",)},
              rope=False,
              tensor_ops={"mixer.conv1d.weight": "squeeze", "mixer.A_log": "neg_exp_col", "mixer.D": "col",
                          "mixer.norm.weight": "per_group"},
              mixers=(r"\.mixer\.(in_proj|out_proj|conv1d)$",)))


def spec_for(config: dict[str, Any], where: str = "config.json") -> ArchSpec:
    """The spec of a model from its config.json (``architectures``, then ``model_type``)."""
    archs = config.get("architectures") or []
    for name in ARCHS:
        s = ARCHS.get(name)
        if any(a in s.hf_architectures for a in archs):
            return s
    mt = config.get("model_type")
    if config.get("vision_config") is not None:  # e.g. Gemma 3 4B+ (model_type gemma3, as the text spec's name)
        raise UnsupportedError(f"{where}: {archs[0] if archs else mt!r} is a vision-language model; slmctl's GGUF "
                               "exporter writes text models",
                               hint="text-only families: " + ", ".join(sorted(ARCHS)))
    if mt in ARCHS:
        return ARCHS.get(mt)
    for name in ARCHS:
        if mt in ARCHS.get(name).model_types:
            return ARCHS.get(name)
    raise UnsupportedError(f"{where}: architecture {archs[0] if archs else mt!r} has no GGUF spec",
                           hint="supported: " + ", ".join(sorted(ARCHS)))


def rope_params(config: dict[str, Any]) -> dict[str, Any]:
    """RoPE settings from either transformers 5 ``rope_parameters`` or the older top-level keys."""
    rp = dict(config.get("rope_parameters") or {})
    rp = dict(rp.get("full_attention", rp))
    legacy = config.get("rope_scaling") or {}
    for k, v in legacy.items():
        rp.setdefault(k, v)
    if "type" in rp and "rope_type" not in rp:
        rp["rope_type"] = rp["type"]
    if "rope_theta" not in rp and "rope_theta" in config:
        rp["rope_theta"] = config["rope_theta"]
    if "partial_rotary_factor" not in rp and "partial_rotary_factor" in config:
        rp["partial_rotary_factor"] = config["partial_rotary_factor"]
    return rp


def head_dim(config: dict[str, Any]) -> int:
    hd = config.get("head_dim") or config.get("attention_head_dim")  # the latter: Nemotron-H hub configs
    if hd:
        return int(hd)
    hidden = config.get("hidden_size") or config.get("n_embd")
    heads = config.get("num_attention_heads") or config.get("n_head")
    return int(hidden) // int(heads)


# Nemotron-H's pattern letters (hybrid_override_pattern) and its newer list names -> one vocabulary
_NEMOTRON_KINDS = {"M": "mamba", "*": "attention", "-": "mlp", "E": "moe", "mamba": "mamba",
                   "linear_attention": "mamba", "attention": "attention", "full_attention": "attention",
                   "mlp": "mlp", "moe": "moe"}


def layer_kinds(config: dict[str, Any]) -> list[str] | None:
    """What mixes tokens in each block of a hybrid: 'attention', 'conv' (LFM2), 'mamba', 'mlp' (Nemotron-H);
    None for a plain transformer (every block is attention + MLP)."""
    mt = config.get("model_type")
    if mt == "lfm2":
        lt = config.get("layer_types")
        if not lt:
            idx = set(config.get("full_attn_idxs") or range(config["num_hidden_layers"]))
            lt = ["full_attention" if i in idx else "conv" for i in range(config["num_hidden_layers"])]
        return ["attention" if t == "full_attention" else "conv" for t in lt]
    if mt == "nemotron_h":
        lt = config.get("layers_block_type") or config.get("hybrid_override_pattern")
        if not lt:
            raise UnsupportedError("config.json: Nemotron-H without layers_block_type or hybrid_override_pattern")
        return [_NEMOTRON_KINDS[t] for t in lt]
    return None


def mixer_filter(config: dict[str, Any]):
    """``in_mixer(name) -> bool`` for a model's linear (module) names: True inside a convolution / state-space
    mixer (ArchSpec.mixers), which pruning and quantisation leave alone; always False for other families."""
    try:
        pats = spec_for(config).mixers
    except UnsupportedError:
        pats = ()
    rx = [re.compile(p) for p in pats]
    return lambda name: any(r.search(name if name.startswith(".") else "." + name) for r in rx)


def lfm2_ffn_size(config: dict[str, Any]) -> int:
    """LFM2's MLP width: ``block_ff_dim`` shrunk to 2/3, scaled and rounded up to ``block_multiple_of``."""
    ff = int(config.get("block_ff_dim") or config["intermediate_size"])
    if config.get("block_auto_adjust_ff_dim", True):
        ff = int(2 * ff / 3)
        mult = config.get("block_ffn_dim_multiplier", 1.0)
        if mult is not None:
            ff = int(mult * ff)
            m = int(config.get("block_multiple_of", 256))
            ff = m * ((ff + m - 1) // m)
    return ff


def sliding_layers(config: dict[str, Any]) -> list[bool]:
    """Which layers use sliding-window attention: ``layer_types``, else Gemma 3's older
    ``sliding_window_pattern`` (every Nth layer full), else none."""
    n = int(config["num_hidden_layers"])
    lt = config.get("layer_types")
    if isinstance(lt, list) and len(lt) == n:
        return [t == "sliding_attention" for t in lt]
    every = config.get("sliding_window_pattern") or config.get("_sliding_window_pattern")
    if isinstance(every, int) and every > 0 and config.get("sliding_window"):
        return [(i + 1) % every != 0 for i in range(n)]
    return [False] * n


def rope_layers(config: dict[str, Any]) -> list[bool]:
    """Which layers apply RoPE: SmolLM3's ``no_rope_layers`` (1 = RoPE), else every
    ``no_rope_layer_interval``-th layer without, else all."""
    n = int(config["num_hidden_layers"])
    nr = config.get("no_rope_layers")
    if isinstance(nr, list) and len(nr) == n:
        return [bool(x) for x in nr]
    every = config.get("no_rope_layer_interval")
    if isinstance(every, int) and every > 0:
        return [(i + 1) % every != 0 for i in range(n)]
    return [True] * n


def _llama3_fit(freqs, theta: float, dim: int) -> dict[str, Any] | None:
    """llama3 RoPE parameters that reproduce llama.cpp's ``rope_freqs`` divisors, or None.

    The long-wavelength divisor is ``factor``; inside the band each divisor gives the smoothing weight,
    which is linear in 1/wavelength: with Meta's low_freq_factor 1 that fixes high_freq_factor and the
    original context. The result is checked by recomputing every divisor.
    """
    import math

    r = [float(x) for x in freqs]
    factor = max(r)
    if factor <= 1.0:
        return None
    wl = [2 * math.pi * theta ** (2 * i / dim) for i in range(len(r))]
    band = [(1 / w, (1 / x - 1 / factor) / (1 - 1 / factor)) for x, w in zip(r, wl) if 1.0 + 1e-6 < x < factor - 1e-6]
    low, high, orig = 1.0, 4.0, None  # Meta's low/high_freq_factor where the divisors cannot tell
    if len(band) >= 2:  # s = orig/(high-low) * (1/wl) - low/(high-low)
        (x1, s1), (x2, s2) = band[0], band[-1]
        a = (s1 - s2) / (x1 - x2)
        b = a * x1 - s1
        if b > 0:
            high = low + low / b
            orig = a * (high - low)
    elif band:
        x1, s1 = band[0]
        orig = (s1 * (high - low) + low) / x1
    else:  # only the boundaries: any context between them gives these divisors; prefer a power of two
        kept = [w for x, w in zip(r, wl) if x <= 1.0 + 1e-6]
        slowed = [w for x, w in zip(r, wl) if x >= factor - 1e-6]
        lo_b, hi_b = (max(kept) * high if kept else 1.0), (min(slowed) * low if slowed else 2.0 ** 20)
        pow2 = [2 ** k for k in range(4, 21) if lo_b < 2 ** k < hi_b]
        orig = pow2[-1] if pow2 else (lo_b + hi_b) / 2
    if not orig or not high:
        return None
    cand = {"rope_type": "llama3", "rope_theta": theta, "factor": factor, "low_freq_factor": low,
            "high_freq_factor": round(high, 4), "original_max_position_embeddings": int(round(orig))}
    for x, w in zip(r, wl):
        o = cand["original_max_position_embeddings"]
        hi, lo = cand["high_freq_factor"], cand["low_freq_factor"]
        sm = (o / w - lo) / (hi - lo)
        want = 1.0 if w < o / hi else factor if w > o / lo else 1.0 / ((1 - sm) / factor + sm)
        if abs(want - x) > 1e-3 * x:
            return None
    return cand


def rope_from_gguf(arch: str, meta: dict[str, Any], tensors: dict[str, Any], hf_config: dict[str, Any]) -> dict[str, Any]:
    """Config keys transformers' GGUF loader drops, read back from llama.cpp's RoPE metadata and tensors:
    Phi-3/Phi-4's LongRoPE factors and partial rotation, Llama 3.1/3.2's frequency divisors.

    ``tensors``: {"rope_freqs.weight" | "rope_factors_long.weight" | "rope_factors_short.weight": array}.
    Returns the keys to set on the HF config (empty when nothing was lost)."""
    hd = int(hf_config.get("head_dim") or hf_config["hidden_size"] // hf_config["num_attention_heads"])
    theta = float(meta.get(f"{arch}.rope.freq_base", hf_config.get("rope_theta") or 10000.0))
    rot = int(meta.get(f"{arch}.rope.dimension_count", hd))
    out: dict[str, Any] = {}
    rp: dict[str, Any] = {"rope_type": "default", "rope_theta": theta}
    if rot != hd:
        out["partial_rotary_factor"] = rot / hd
        rp["partial_rotary_factor"] = rot / hd
    if "rope_factors_long.weight" in tensors and "rope_factors_short.weight" in tensors:
        orig = int(meta.get(f"{arch}.rope.scaling.original_context_length") or hf_config["max_position_embeddings"])
        rp.update(rope_type="longrope", original_max_position_embeddings=orig,
                  long_factor=[float(x) for x in tensors["rope_factors_long.weight"]],
                  short_factor=[float(x) for x in tensors["rope_factors_short.weight"]])
        if f"{arch}.rope.scaling.attn_factor" in meta:
            rp["attention_factor"] = float(meta[f"{arch}.rope.scaling.attn_factor"])
        out["original_max_position_embeddings"] = orig
    elif "rope_freqs.weight" in tensors:
        fit = _llama3_fit(tensors["rope_freqs.weight"], theta, rot)
        if fit is None:
            raise UnsupportedError(f"the GGUF's rope_freqs divisors are not a llama3 RoPE schedule slmctl can "
                                   "express in config.json", hint="import from the original HF model instead")
        rp.update(fit)
    if rp["rope_type"] != "default" or "partial_rotary_factor" in rp:
        out["rope_parameters"] = rp
    return out


def rope_pattern_problem(config: dict[str, Any]) -> str | None:
    """Why llama.cpp cannot run this SmolLM3's RoPE layers (it leaves RoPE out of every 4th layer by a fixed
    rule, and GGUF has no key for another pattern), or None when it can; the layers drawn as R (RoPE) / -."""
    use = rope_layers(config)
    if use == [(i + 1) % 4 != 0 for i in range(len(use))]:
        return None
    return (f"SmolLM3 layers with RoPE (R) and without (-): {''.join('R' if u else '-' for u in use)}; llama.cpp's "
            "smollm3 leaves RoPE out of every 4th layer only, and GGUF has no key for another pattern")


def permute_qk(w, n_head: int):
    """HF rotate-half row order -> llama.cpp interleaved pairs (rows grouped per head)."""
    shape = w.shape
    return w.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)
