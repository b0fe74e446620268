"""Export to ONNX with torch.onnx.export (dynamo), verified against PyTorch with onnxruntime.

Causal LMs get the layout Optimum's ORTModelForCausalLM and onnxruntime-genai load:
inputs ``input_ids``, ``attention_mask``, ``position_ids``, ``past_key_values.N.key|value``;
outputs ``logits``, ``present.N.key|value``; batch, sequence and past axes dynamic.
Encoders (BERT/MiniLM family) get ``input_ids``, ``attention_mask``, ``token_type_ids`` ->
``last_hidden_state`` (feature extraction) or ``logits`` (sequence classification).

Every export is run through onnxruntime and compared with PyTorch before it is renamed into place:
a mismatch is an error (exit 1), never a silent success.
Reference: https://pytorch.org/docs/stable/onnx_dynamo.html
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ... import provenance
from .registry import EXPORTERS
from ...errors import InputError, SlmctlError, UnsupportedError, UsageError

OPSET = 18
VERIFY_PROMPT = ("To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
                 "the slings and arrows of outrageous fortune.")
GREEDY_TOKENS = 32
DECODE_STEPS = 8
ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert", "electra", "mpnet")


class ExportMismatch(SlmctlError):
    """The ONNX graph does not compute what the PyTorch model computes (exit 1)."""


# ---------------------------------------------------------------- kinds
def model_kind(config: dict) -> str:
    """``decoder`` for causal LMs, ``encoder`` for BERT-like models."""
    archs = config.get("architectures") or []
    if any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs):
        return "decoder"
    if config.get("model_type") in ENCODER_TYPES:
        return "encoder"
    if config.get("is_decoder") is False or config.get("is_encoder_decoder"):
        raise UnsupportedError(f"model_type {config.get('model_type')!r} ({', '.join(archs) or 'no architectures'}) "
                               "is not a causal LM or a BERT-like encoder")
    return "decoder"


@contextlib.contextmanager
def _quiet_torch_onnx():
    """torch.onnx prints registration warnings and a progress report; slmctl reports progress itself."""
    if os.environ.get("SLMCTL_DEBUG") == "1":
        yield
        return
    names = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript", "torch._export")
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
                yield
    finally:
        for n, lvl in saved.items():
            logging.getLogger(n).setLevel(lvl)


# ---------------------------------------------------------------- decoder
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


def _decoder_wrapper(model, n_layers: int):
    """A module with flat tensor inputs/outputs around an HF causal LM and its DynamicCache."""
    import torch
    from transformers import DynamicCache

    class CausalLMWithPast(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, position_ids, *past):
            # a full (non-sliding) layer per block: sliding-window models get their window from the mask,
            # so the graph stays one shape for every layer
            cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(n_layers)])
            out = self.m(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         cache=cache, use_cache=True)
            presents = []
            for layer in out.cache.layers:
                presents += [layer.keys, layer.values]
            return (out.logits, *presents)

    return CausalLMWithPast(model)


def _kv_shape(model) -> tuple[int, int]:
    """(kv heads, head size) as the model's own cache stores them."""
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.zeros((1, 2), dtype=torch.long), use_cache=True)
    k = out.cache.layers[0].keys
    return int(k.shape[1]), int(k.shape[3])


def export_decoder(model, path: Path, *, dtype, opset: int, external_data: bool, metadata: dict[str, str]) -> list[Path]:
    import torch
    from torch.export import Dim

    from ...io.onnx_writer import save_program

    n_layers = model.config.get_text_config().num_hidden_layers
    heads, head_dim = _kv_shape(model)
    model = model.to(dtype)
    wrap = _decoder_wrapper(model, n_layers).eval()
    # example sizes above 1 so torch.export does not specialise any dynamic axis
    b, s, p = 2, 3, 4
    ids = torch.zeros((b, s), dtype=torch.long)
    mask = torch.ones((b, p + s), dtype=torch.long)
    pos = torch.arange(p, p + s).unsqueeze(0).expand(b, s).contiguous()
    past = tuple(torch.zeros((b, heads, p, head_dim), dtype=dtype) for _ in range(2 * n_layers))
    batch, seq, past_len = Dim("batch"), Dim("sequence_length"), Dim("past_sequence_length")
    shapes = ({0: batch, 1: seq}, {0: batch, 1: Dim.AUTO}, {0: batch, 1: seq},
              tuple({0: batch, 2: past_len} for _ in range(2 * n_layers)))
    in_names = ["input_ids", "attention_mask", "position_ids"] + [
        f"past_key_values.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]
    out_names = ["logits"] + [f"present.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]
    with _quiet_torch_onnx(), torch.no_grad(), _onnx_attention_for(model), _longrope_in_graph(model):
        try:
            prog = torch.onnx.export(wrap, (ids, mask, pos, *past), dynamo=True, opset_version=opset,
                                     input_names=in_names, output_names=out_names, dynamic_shapes=shapes,
                                     optimize=False, verbose=False, report=False)
            _optimize(prog.model)
        except Exception as exc:  # torch.export raises many kinds
            raise UnsupportedError(f"torch.onnx.export failed for {type(model).__name__}: "
                                   f"{str(exc).strip().splitlines()[0][:300]}",
                                   hint="rerun with SLMCTL_DEBUG=1 for the exporter's report") from None
    _name_dims(prog, {"attention_mask": {1: "total_sequence_length"}})
    _rsqrt_as_div(prog.model)
    for k, v in metadata.items():
        prog.model.metadata_props[k] = v
    return save_program(prog, path, external_data=external_data)


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


def _prompt_ids(folder: Path, vocab: int, n: int = 12) -> list[int]:
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(folder))
        ids = tok(VERIFY_PROMPT, add_special_tokens=False)["input_ids"]
        if len(ids) >= 4 and max(ids) < vocab:
            return ids[:n]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return [int(x) for x in np.random.default_rng(0).integers(0, vocab, n)]


def reference_decoder(model, prompt: list[int], new_tokens: int = GREEDY_TOKENS) -> dict[str, Any]:
    """PyTorch's logits on the prompt and on each greedy step through its own KV cache."""
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor([prompt]), use_cache=True)
        prefill = out.logits[0].float().numpy()
        cache = out.cache
        tokens, steps = [int(prefill[-1].argmax())], []
        for _ in range(new_tokens - 1):
            out = model(input_ids=torch.tensor([[tokens[-1]]]), cache=cache, use_cache=True)
            cache = out.cache
            step = out.logits[0, -1].float().numpy()
            steps.append(step)
            tokens.append(int(step.argmax()))
    return {"prompt": prompt, "prefill": prefill, "steps": np.stack(steps), "tokens": tokens}


def compare_decoder(onnx_file: Path, ref: dict[str, Any], decode_steps: int = DECODE_STEPS) -> dict[str, Any]:
    """Run the ONNX graph on the reference's prompt, then feed PyTorch's greedy tokens one at a time through
    present -> past: max abs logit diff (prompt, decode steps), top-1 agreement, and whether greedy generation
    is identical (ONNX's argmax equals PyTorch's at every step, so free-running generation matches too)."""
    from ...eval.backend_onnx import OrtCausalLM

    lm = OrtCausalLM(onnx_file)
    logits, past = lm.run(np.asarray([ref["prompt"]]))
    prefill = logits[0].astype(np.float32)
    steps = []
    toks = ref["tokens"]
    for t in toks[:-1]:
        logits, past = lm.run(np.asarray([[t]]), past)
        steps.append(logits[0, -1].astype(np.float32))
    steps = np.stack(steps)
    greedy = [int(prefill[-1].argmax())] + [int(s.argmax()) for s in steps]
    all_ort = np.concatenate([prefill, steps])
    all_ref = np.concatenate([ref["prefill"], ref["steps"]])
    return {
        "prompt_tokens": len(ref["prompt"]),
        "max_abs_diff_prompt": float(np.abs(prefill - ref["prefill"]).max()),
        "max_abs_diff_decode": float(np.abs(steps[:decode_steps] - ref["steps"][:decode_steps]).max()),
        "max_abs_diff_all": float(np.abs(all_ort - all_ref).max()),
        "top1_agreement_pct": float((all_ort.argmax(-1) == all_ref.argmax(-1)).mean() * 100.0),
        "greedy_tokens": len(toks),
        "greedy_identical": greedy == toks,
        "logit_scale": float(np.abs(all_ref).max()),
    }


def tolerance(dtype_name: str, scale: float) -> float:
    """Largest max-abs logit diff accepted: 1e-3 in fp32 (relaxed for logits far above 10), wider in fp16."""
    if dtype_name == "float16":
        return 0.05 + 0.02 * scale
    return 1e-3 * max(1.0, scale / 10.0)


def check(report: dict[str, Any], dtype_name: str, where: Path) -> None:
    tol = tolerance(dtype_name, report["logit_scale"])
    report["tolerance"] = tol
    problems = []
    if not np.isfinite(report["max_abs_diff_all"]) or report["max_abs_diff_all"] > tol:
        problems.append(f"max abs logit diff {report['max_abs_diff_all']:.3g} > {tol:.3g}")
    if dtype_name == "float16":
        if report["top1_agreement_pct"] < 90.0:
            problems.append(f"top-1 agreement {report['top1_agreement_pct']:.1f}% < 90%")
    elif report.get("greedy_identical") is False:
        problems.append(f"greedy generation of {report['greedy_tokens']} tokens differs")
    if problems:
        raise ExportMismatch(f"{where}: the ONNX export does not match PyTorch ({'; '.join(problems)}; "
                             f"top-1 agreement {report['top1_agreement_pct']:.1f}%)",
                             hint="nothing was written; report this with SLMCTL_DEBUG=1 output "
                                  "(an unsupported config key, such as a RoPE variant, is the usual cause)")


# ---------------------------------------------------------------- encoder
def _encoder_wrapper(model, with_types: bool):
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kw = {"token_type_ids": token_type_ids} if with_types else {}
            out = self.m(input_ids=input_ids, attention_mask=attention_mask, **kw)
            return out.logits if hasattr(out, "logits") else out.last_hidden_state

    return Encoder(model)


def export_encoder(model, path: Path, *, dtype, opset: int, external_data: bool, metadata: dict[str, str]) -> list[Path]:
    import torch
    from torch.export import Dim

    from ...io.onnx_writer import save_program

    with_types = getattr(model.config, "type_vocab_size", 0) > 0
    model = model.to(dtype)
    wrap = _encoder_wrapper(model, with_types).eval()
    b, s = 2, 5
    args = [torch.ones((b, s), dtype=torch.long), torch.ones((b, s), dtype=torch.long)]
    names = ["input_ids", "attention_mask"]
    batch, seq = Dim("batch"), Dim("sequence_length")
    shapes = [{0: batch, 1: seq}, {0: batch, 1: seq}]
    if with_types:
        args.append(torch.zeros((b, s), dtype=torch.long))
        names.append("token_type_ids")
        shapes.append({0: batch, 1: seq})
    out_name = "logits" if hasattr(model, "classifier") else "last_hidden_state"
    with _quiet_torch_onnx(), torch.no_grad():
        try:
            prog = torch.onnx.export(wrap, tuple(args), dynamo=True, opset_version=opset, input_names=names,
                                     output_names=[out_name], dynamic_shapes=tuple(shapes), optimize=False,
                                     verbose=False, report=False)
            _optimize(prog.model)
        except Exception as exc:
            raise UnsupportedError(f"torch.onnx.export failed for {type(model).__name__}: "
                                   f"{str(exc).strip().splitlines()[0][:300]}",
                                   hint="rerun with SLMCTL_DEBUG=1 for the exporter's report") from None
    for k, v in metadata.items():
        prog.model.metadata_props[k] = v
    return save_program(prog, path, external_data=external_data)


def reference_encoder(model, folder: Path) -> dict[str, Any]:
    import torch

    vocab = model.config.vocab_size
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(folder))
        enc = tok([VERIFY_PROMPT, "A shorter second sentence."], padding=True, return_tensors="np")
        ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
    except (OSError, ValueError, KeyError, TypeError):
        ids = np.random.default_rng(0).integers(0, vocab, (2, 12)).astype(np.int64)
        mask = np.ones_like(ids)
        mask[1, 8:] = 0
    types = np.zeros_like(ids)
    kw = {"token_type_ids": torch.from_numpy(types)} if getattr(model.config, "type_vocab_size", 0) > 0 else {}
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), **kw)
    y = (out.logits if hasattr(out, "logits") else out.last_hidden_state).float().numpy()
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "output": y}


def compare_encoder(onnx_file: Path, ref: dict[str, Any]) -> dict[str, Any]:
    from ...eval.backend_onnx import session

    sess = session(onnx_file)
    feed = {i.name: ref[i.name] for i in sess.get_inputs()}
    y = sess.run(None, feed)[0].astype(np.float32)
    mask = ref["attention_mask"].astype(bool)
    r = ref["output"]
    if y.ndim == 3:  # hidden states: padded positions are don't-care
        diff = np.abs(y - r)[mask]
    else:
        diff = np.abs(y - r)
    rep = {"max_abs_diff_all": float(diff.max()), "logit_scale": float(np.abs(r).max()),
           "top1_agreement_pct": 100.0}
    if y.ndim == 2:
        rep["top1_agreement_pct"] = float((y.argmax(-1) == r.argmax(-1)).mean() * 100.0)
    else:
        a, b = y[mask], r[mask]
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
        rep["min_cosine"] = float(cos.min())
    return rep


# ---------------------------------------------------------------- the exporter
def _refuse_recurrent(config: dict, folder: Path) -> None:
    """Hybrids carry convolution / state-space states between steps, which the past_key_values layout
    (and onnxruntime-genai's config) has no place for: say so before loading anything."""
    from ...arch import layer_kinds

    kinds = set(layer_kinds(config) or ()) - {"attention", "mlp"}
    if kinds:
        arch = (config.get("architectures") or [config.get("model_type")])[0]
        raise UnsupportedError(f"{folder}: {arch} ({' + '.join(sorted(kinds))} blocks beside attention) is not "
                               "supported for ONNX yet: its recurrent states do not fit the KV-cache layout "
                               "onnxruntime-genai and Optimum read",
                               hint="export it to GGUF instead (slmctl export MODEL --format gguf): llama.cpp runs it")


def _load_model(folder: Path, kind: str, config: dict):
    import torch
    import transformers

    from ...hf import quiet_transformers

    quiet_transformers()
    try:
        if kind == "decoder":
            cls = transformers.AutoModelForCausalLM
        else:
            archs = config.get("architectures") or []
            cls = transformers.AutoModelForSequenceClassification if any(
                a.endswith("ForSequenceClassification") for a in archs) else transformers.AutoModel
        model = cls.from_pretrained(str(folder), dtype=torch.float32)
    except (ValueError, OSError, KeyError) as exc:
        raise UnsupportedError(f"{folder}: transformers cannot build this model ({str(exc).splitlines()[0]})",
                               hint="export from an HF folder with config.json and safetensors weights") from None
    return model.eval()


def _param_bytes(model, itemsize: int) -> int:
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel() * itemsize
    return n


@EXPORTERS.register("onnx")
def export_onnx(art, ref: str, out: Path, *, dtype: str, max_shard_size, force: bool, log, progress=None,
                opset: int = OPSET, external_data: bool | None = None, bits: int | None = None,
                method: str | None = None, data=None) -> Path:
    """An ONNX folder (model.onnx, tokenizer, config), run by onnxruntime and checked against PyTorch;
    with ``bits`` (4: MatMulNBits, 8: dynamic int8) that export quantised by pipelines/quantize_onnx."""
    if bits:
        from ..quantize_onnx import export_quantized

        return export_quantized(export_onnx, art, ref, out, bits=bits, method=method,
                                data=data, force=force, log=log, dtype=dtype,
                                max_shard_size=max_shard_size, progress=progress, opset=opset,
                                external_data=external_data)
    import torch

    from ...io.artifact import PROVENANCE_FILE, PROVENANCE_KEY, SIDE_FILES
    from ...io.atomic import atomic_path
    from ...io.convert import write_provenance_file
    from ...io.onnx_writer import EXTERNAL_DATA_THRESHOLD, copy_side_files

    if max_shard_size:
        raise UsageError("--max-shard-size does not apply to ONNX (weights past 2 GB go to one model.onnx.data)")
    if dtype == "bfloat16":
        raise UnsupportedError("bfloat16 ONNX models do not run on onnxruntime's CPU provider",
                               hint="use --dtype float32 (default) or float16")
    if opset < 18:
        raise UsageError(f"opset {opset} is too old", hint="use 18 or newer")
    if art.format == "onnx":
        raise UsageError(f"{art.path} is already ONNX", hint="quantize it with: slmctl quantize MODEL.onnx --bits 8")
    if art.format == "gguf":
        raise UnsupportedError(f"{art.path}: export a GGUF to ONNX through an HF folder",
                               hint="slmctl export MODEL.gguf --format hf -o DIR, then slmctl export DIR --format onnx")
    if art.config is None or art.format != "hf":
        raise InputError(f"{art.path}: ONNX export needs an HF folder (config.json with safetensors weights)",
                         hint="point at the model folder rather than a bare .safetensors file")
    folder = art.path
    kind = model_kind(art.config)
    _refuse_recurrent(art.config, folder)
    dt_name = "float32" if dtype == "auto" else dtype
    target = getattr(torch, dt_name)
    t0 = time.perf_counter()
    log(f"loading {folder.name} ({kind}) with transformers")
    model = _load_model(folder, kind, art.config)
    nbytes = _param_bytes(model, torch.tensor([], dtype=target).element_size())
    ext = external_data if external_data is not None else nbytes > EXTERNAL_DATA_THRESHOLD
    if kind == "decoder":
        vocab = model.config.get_text_config().vocab_size
        prompt = _prompt_ids(folder, vocab)
        ref_out = reference_decoder(model, prompt)
    else:
        ref_out = reference_encoder(model, folder)
    recipe = {"format": "onnx", "kind": kind, "dtype": dt_name, "opset": opset, "external_data": ext}
    prov = provenance.build("export", recipe, [provenance.input_record(ref, art.path, art)])
    meta = {PROVENANCE_KEY: provenance.dumps(prov), "slmctl.kind": kind}
    with atomic_path(out, force=force, is_dir=True) as tmp:
        log(f"exporting with torch.onnx.export (dynamo, opset {opset}, {dt_name}"
            f"{', external data' if ext else ''})")
        exporter = export_decoder if kind == "decoder" else export_encoder
        exporter(model, tmp / "model.onnx", dtype=target, opset=opset, external_data=ext, metadata=meta)
        del model
        t_export = time.perf_counter() - t0
        log(f"verifying with onnxruntime against PyTorch ({'prompt + greedy decode' if kind == 'decoder' else 'batch of 2'})")
        if kind == "decoder":
            rep = compare_decoder(tmp / "model.onnx", ref_out)
            check(rep, dt_name, out)
            log(f"max abs logit diff: prompt {rep['max_abs_diff_prompt']:.3g}, {DECODE_STEPS} decode steps "
                f"{rep['max_abs_diff_decode']:.3g}; top-1 agreement {rep['top1_agreement_pct']:.1f}%; "
                f"greedy {rep['greedy_tokens']} tokens {'identical' if rep['greedy_identical'] else 'DIFFER'}")
        else:
            rep = compare_encoder(tmp / "model.onnx", ref_out)
            check(rep, dt_name, out)
            log(f"max abs output diff {rep['max_abs_diff_all']:.3g}")
        copy_side_files(folder, tmp, [n for n in SIDE_FILES])
        if kind == "decoder":  # onnxruntime-genai opens the folder with it (tokenizer files are the side files)
            from ...io.genai_config import write_genai_config

            write_genai_config(tmp, folder, art.config, tmp / "model.onnx")
        prov_file = dict(prov)
        prov_file["verification"] = rep
        prov_file["export_seconds"] = round(t_export, 2)
        write_provenance_file(tmp / PROVENANCE_FILE, prov_file)
    return out
