"""Graph rewrites for the ONNX export: attention and LongRoPE traced in graph form, onnxscript's optimiser
without the rules that cost more than they give, Rsqrt as Div, named dynamic axes."""

from __future__ import annotations

import contextlib

ATTN_IMPL = "slmctl_onnx"


def _onnx_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                    softcap: float | None = None, **kwargs):
    """Eager attention written for onnxruntime's CPU kernels, used only while exporting.

    transformers' sdpa path exports as torchlib's decomposition: K^T goes through Reshape -> 3-D Transpose
    -> Reshape (a copy of the whole key cache per layer and step that onnxruntime cannot fold into the
    MatMul), and grouped-query heads are repeated with Expand (another copy of K and V). Here the query
    heads that share a KV head are folded into the query-length axis instead, so K and V are read in
    place, and ``matmul(q, k.transpose(2, 3))`` is a plain last-two-axes Transpose that onnxruntime fuses
    into FusedMatMul(transB). The maths is the eager one (additive mask, fp32 softmax, optional softcap)."""
    import torch

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if kwargs.get("s_aux") is not None or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    b, heads, _, d = query.shape
    kv_heads = key.shape[1]
    n_rep = heads // kv_heads
    scaling = d ** -0.5 if scaling is None else scaling
    # head h reads KV head h // n_rep (repeat_kv's order), so (b, kv, n_rep * s, d) is a free view
    q = query.reshape(b, kv_heads, -1, d)
    scores = torch.matmul(q, key.transpose(2, 3)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.unflatten(2, (n_rep, -1))  # (b, kv, n_rep, s, t)
    if attention_mask is not None:
        m = attention_mask[:, :, :, : key.shape[2]]
        scores = scores + (m.unsqueeze(2) if m.shape[1] == 1 else m.unflatten(1, (kv_heads, n_rep)))
    probs = torch.nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(probs.flatten(2, 3), value)  # (b, kv, n_rep * s, dv)
    out = out.reshape(b, heads, -1, value.shape[-1]).transpose(1, 2).contiguous()
    return out, None


@contextlib.contextmanager
def _onnx_attention_for(model):
    """Route the model's attention through :func:`_onnx_attention` (with transformers' additive eager mask)
    for the export, and restore the implementation it had afterwards."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(ATTN_IMPL, _onnx_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPL, eager_mask)
    previous = model.config._attn_implementation
    model.set_attn_implementation(ATTN_IMPL)  # sets every sub-config too
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


@contextlib.contextmanager
def _longrope_in_graph(model):
    """LongRoPE (Phi-3/Phi-4-mini) switches from the short to the long factors once the positions pass
    ``original_max_position_embeddings``; transformers decides that in Python, which torch.export cannot
    trace. While exporting, the rotary modules compute both frequency sets and pick one with ``where`` on
    the largest position, as transformers does at run time."""
    import torch
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    patched = []
    for mod in model.modules():
        if getattr(mod, "rope_type", None) != "longrope" or not hasattr(mod, "original_inv_freq"):
            continue
        cfg = mod.config
        orig = int(cfg.rope_parameters["original_max_position_embeddings"])
        short = mod.original_inv_freq.float().clone()
        long, _ = ROPE_INIT_FUNCTIONS["longrope"](cfg, short.device, seq_len=orig + 1)
        scale = mod.attention_scaling

        def forward(x, position_ids, short=short, long=long.float(), orig=orig, scale=scale):
            inv = torch.where(position_ids.max() + 1 > orig, long, short)
            freqs = (inv[None, :, None].expand(position_ids.shape[0], -1, 1) @ position_ids[:, None, :].float())
            emb = torch.cat((freqs.transpose(1, 2),) * 2, dim=-1)
            return (emb.cos() * scale).to(x.dtype), (emb.sin() * scale).to(x.dtype)

        mod.forward = forward
        patched.append(mod)
    try:
        yield
    finally:
        for mod in patched:
            del mod.forward  # back to the class's method


# onnxscript's SlicesSplit rule matches two output nodes by walking the whole graph for every Slice: on the
# 30-layer sample the optimiser took 18.8 s with it and 4.5 s without it, for the same graph (it rewrote
# nothing: the rotary halves slice to INT64_MAX); onnxruntime makes those Slices a Split itself at load.
_SKIPPED_RULES = frozenset({"SlicesSplit"})


def _optimize(model) -> None:
    """What ``torch.onnx.export(optimize=True)`` runs (onnxscript's optimiser: constant folding, its default
    rewrite rules, dead-code and common-subexpression passes), without the rules in ``_SKIPPED_RULES``."""
    import onnxscript.optimizer
    from onnxscript import rewriter

    saved = getattr(rewriter, "_DEFAULT_REWRITE_RULES", None)
    if saved is not None:
        rewriter._DEFAULT_REWRITE_RULES = tuple(r for r in saved if getattr(r, "name", None) not in _SKIPPED_RULES)
    try:
        onnxscript.optimizer.optimize(model)
    finally:
        if saved is not None:
            rewriter._DEFAULT_REWRITE_RULES = saved


def _rsqrt_as_div(model) -> None:
    """``x * Reciprocal(Sqrt(v))`` -> ``x / Sqrt(v)``, in place.

    torchlib writes ``torch.rsqrt`` as Reciprocal(Sqrt); onnxruntime's SimplifiedLayerNormalization fusion
    (RMSNorm as one kernel, applied when a session loads the graph) only knows the Div form. The file stays
    plain ONNX; the rewrite changes the result by at most an ulp."""
    from onnxscript.rewriter import pattern, rewrite

    def recip_mul(op, x, v):
        return op.Mul(x, op.Reciprocal(op.Sqrt(v)))

    def recip_mul_r(op, x, v):
        return op.Mul(op.Reciprocal(op.Sqrt(v)), x)

    def div(op, x, v):
        return op.Div(x, op.Sqrt(v))

    rewrite(model, pattern.RewriteRuleSet([pattern.RewriteRule(recip_mul, div), pattern.RewriteRule(recip_mul_r, div)]))


def _name_dims(prog, names: dict[str, dict[int, str]]) -> None:
    """Give the axes torch.export named automatically (s53, ...) the names the ecosystem uses."""
    import onnx_ir as ir

    for v in prog.model.graph.inputs:
        if v.name in names and v.shape is not None:
            dims = list(v.shape)
            for axis, label in names[v.name].items():
                if not isinstance(dims[axis], int):
                    dims[axis] = ir.SymbolicDim(label)
            v.shape = ir.Shape(dims)
