"""HF tensors -> a GGUF file: the tensor plan (names, types, reshaping), hyperparameters, vocabulary, and the
streaming write. The exporter (export/gguf.py) and slmctl's own GGUF quantisers (pipelines/gguf_quant.py)
both write through ``write_gguf``.
Reference: https://github.com/ggml-org/llama.cpp/blob/master/convert_hf_to_gguf.py
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ... import provenance
from ...arch import ArchSpec, head_dim, permute_qk, rope_params, spec_for
from ...errors import InputError, UnsupportedError, UsageError
from ...io.gguf_types import file_types

NATIVE = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")
# k-quants through llama.cpp (each type's llama_ftype number: io.gguf_types.file_types, from gguf-py)
KQUANTS = ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k")
# llama.cpp also quantises to the legacy types itself (used for GGUF -> GGUF)
LLAMA_TYPES = ("f32", "f16", "q4_0", "q4_1", "q8_0", "q5_0", "q5_1", "bf16", *KQUANTS)
CHUNK = 1 << 20  # elements quantised at a time
DTYPE_OUTTYPE = {"auto": "f16", "float32": "f32", "float16": "f16", "bfloat16": "bf16"}

Log = Callable[[str], None]


def normalise_outtype(outtype: str | None, dtype: str = "auto") -> str:
    t = (outtype or DTYPE_OUTTYPE.get(dtype, "f16")).lower()
    if t not in NATIVE and t not in KQUANTS:
        import difflib

        close = difflib.get_close_matches(t, [*NATIVE, *KQUANTS], n=1)
        raise UsageError(f"unknown GGUF --outtype {outtype!r}",
                         hint=(f"did you mean {close[0]!r}? " if close else "") + "valid: " + ", ".join([*NATIVE, *KQUANTS]))
    return t


@dataclass
class _Planned:
    hf: str
    gguf: str
    shape: tuple[int, ...]  # output shape, numpy order
    gtype: str
    bid: int | None
    make: Callable[[], np.ndarray] | None = None  # a tensor slmctl computes (not in the HF model)


# convolution kernels of the recurrent mixers: llama.cpp's ssm_conv reads them as f32 only
F32_TENSORS = (".ssm_conv1d.weight", ".shortconv.conv.weight")


def _mamba_groups(cfg: dict) -> int:
    return int(cfg.get("n_groups") or cfg.get("mamba_n_groups") or 1)


# ArchSpec.tensor_ops: name -> (GGUF shape from the HF shape, array transform)
TENSOR_OPS: dict[str, tuple[Callable[[tuple, dict], tuple], Callable[[np.ndarray, dict], np.ndarray]]] = {
    # depthwise Conv1d kernel (channels, 1, width) -> (channels, width)
    "squeeze": (lambda s, c: (s[0], s[-1]), lambda a, c: a.reshape(a.shape[0], a.shape[-1])),
    # Mamba-2 stores log(-A); llama.cpp wants A itself, one per head, as a column
    "neg_exp_col": (lambda s, c: (s[0], 1), lambda a, c: -np.exp(a.astype(np.float64)).astype(np.float32).reshape(-1, 1)),
    "col": (lambda s, c: (s[0], 1), lambda a, c: a.reshape(-1, 1)),
    # the gated RMSNorm normalises each of n_groups slices separately
    "per_group": (lambda s, c: (_mamba_groups(c), s[0] // _mamba_groups(c)),
                  lambda a, c: a.reshape(_mamba_groups(c), -1)),
}


def _tensor_op(spec: ArchSpec, hf_name: str):
    op = spec.tensor_op(hf_name)
    return TENSOR_OPS[op] if op is not None else None


def _tensor_type(spec: ArchSpec, gguf_name: str, shape: tuple[int, ...], outtype: str) -> str:
    """convert_hf_to_gguf.py's rule: 1-D, norms, biases, position embeddings and conv kernels stay f32."""
    if len(shape) <= 1 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight") \
            or gguf_name.startswith("position_embd.") or gguf_name.endswith(F32_TENSORS):
        return "f32"
    if outtype in ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1") and shape[-1] % 32:
        return "f16"  # rows that do not fill whole blocks
    return outtype


def plan(art, spec: ArchSpec, outtype: str) -> list[_Planned]:
    cfg = art.config or {}
    tied = bool(cfg.get("tie_word_embeddings", spec.name in ("gpt2", "gemma2", "gemma3")))
    out: list[_Planned] = []
    for name, lt in art.tensors.items():
        g = spec.gguf_name(name)
        if g is None or (g == "output.weight" and tied and spec.drop_output_when_tied):
            continue
        shape = tuple(lt.shape)
        if spec.transposed(name):
            shape = tuple(reversed(shape))
        op = _tensor_op(spec, name)
        if op is not None:
            shape = tuple(op[0](shape, cfg))
        out.append(_Planned(name, g, shape, _tensor_type(spec, g, shape, outtype), spec.block_index(name)))
    if not any(p.gguf == "token_embd.weight" for p in out):
        raise InputError(f"{art.path}: no token embedding tensor found", hint="is this a complete causal LM?")
    if tied and not spec.drop_output_when_tied and not any(p.gguf == "output.weight" for p in out):
        emb = next(p for p in out if p.gguf == "token_embd.weight")  # llama.cpp reads its own output tensor
        out.append(_Planned(emb.hf, "output.weight", emb.shape, emb.gtype, None))
    order = {"token_embd.weight": 0, "position_embd.weight": 1}
    rp = rope_params(cfg)
    if spec.rope and rp.get("rope_type") == "llama3":
        factors = llama3_rope_factors(cfg, rp)
        out.append(_Planned("", "rope_freqs.weight", factors.shape, "f32", None, make=lambda: factors))
    if spec.rope and rp.get("rope_type") in ("longrope", "su"):
        for kind, arr in longrope_factors(cfg, rp).items():
            out.append(_Planned("", f"rope_factors_{kind}.weight", arr.shape, "f32", None, make=lambda a=arr: a))
    out.sort(key=lambda p: (p.bid if p.bid is not None else (-1 if p.gguf in order else 1 << 30),
                            order.get(p.gguf, 2), p.gguf))
    return out


def llama3_rope_factors(cfg: dict, rp: dict) -> np.ndarray:
    """Llama 3.1's frequency-dependent RoPE scaling as per-frequency divisors (llama.cpp's rope_freqs).

    Long wavelengths are slowed by ``factor``, short ones kept, the band between interpolated.
    Reference: https://github.com/meta-llama/llama-models/blob/main/models/llama3/reference_impl/model.py
    """
    dim = head_dim(cfg)
    base = float(rp.get("rope_theta", 10000.0))
    factor = float(rp.get("factor", 8.0))
    low, high = float(rp.get("low_freq_factor", 1.0)), float(rp.get("high_freq_factor", 4.0))
    old_ctx = float(rp.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    wavelen = 2 * np.pi / freqs
    smooth = (old_ctx / wavelen - low) / (high - low)
    scale = np.where(wavelen < old_ctx / high, 1.0,
                     np.where(wavelen > old_ctx / low, factor, 1.0 / ((1 - smooth) / factor + smooth)))
    return scale.astype(np.float32)


def longrope_factors(cfg: dict, rp: dict) -> dict[str, np.ndarray]:
    """Phi-3/Phi-4's LongRoPE per-frequency divisors: llama.cpp's rope_factors_short and rope_factors_long.

    One value per rotated pair (``rope.dimension_count / 2``); llama.cpp uses the long ones when the context
    it is given exceeds ``rope.scaling.original_context_length`` (transformers: when the sequence does).
    """
    n = rope_dim(cfg) // 2
    out = {}
    for kind in ("long", "short"):
        v = rp.get(f"{kind}_factor")
        if not isinstance(v, (list, tuple)) or len(v) != n:
            raise InputError(f"config.json: rope {kind}_factor must list {n} numbers (rotary dims / 2), "
                             f"not {len(v) if isinstance(v, (list, tuple)) else v!r}",
                             hint="LongRoPE needs both short_factor and long_factor, one per rotated pair")
        out[kind] = np.asarray(v, dtype=np.float32)
    return out


def longrope_attn_factor(cfg: dict, rp: dict) -> float:
    """The cos/sin scale LongRoPE applies (transformers' rule: given, or from the context extension ratio)."""
    import math

    if rp.get("attention_factor") is not None:
        return float(rp["attention_factor"])
    orig = float(rp.get("original_max_position_embeddings") or cfg.get("original_max_position_embeddings")
                 or cfg["max_position_embeddings"])
    factor = float(rp.get("factor") or cfg["max_position_embeddings"] / orig)
    return math.sqrt(1 + math.log(factor) / math.log(orig)) if factor > 1.0 else 1.0


def rope_dim(cfg: dict) -> int:
    """Rotated dimensions per head (``partial_rotary_factor`` of the head, as Phi-4-mini's 96 of 128)."""
    return int(head_dim(cfg) * float(rope_params(cfg).get("partial_rotary_factor", 1.0)))


def _convert(a: np.ndarray, p: _Planned, spec: ArchSpec, cfg: dict, grid=None) -> np.ndarray:
    """One HF tensor (float32 numpy) -> the bytes GGUF stores for it (family quirks, then the type).

    ``grid``: (scale, zero) per weight of a quantised input whose grid maps onto ``p.gtype``
    (export/gguf_view.py); they go through the same reordering, then the blocks keep them.
    """
    from ...methods.quantize.gguf_blocks import quantize_on_grid

    if spec.transposed(p.hf):
        a = a.T
        grid = tuple(g.T for g in grid) if grid is not None else None
    if spec.permuted(p.hf):
        a = permute_qk(a, a.shape[0] // head_dim(cfg))
        grid = tuple(permute_qk(g, g.shape[0] // head_dim(cfg)) for g in grid) if grid is not None else None
    if spec.shifted_norm(p.hf):
        a = a + np.float32(1)
    if spec.fold_query_scale and p.hf.endswith("self_attn.q_norm.weight"):
        a = a * np.float32(query_scale_fold(cfg))
    op = _tensor_op(spec, p.hf)
    if op is not None:
        a = op[1](a, cfg)
    a = np.ascontiguousarray(a, dtype=np.float32)
    if tuple(a.shape) != p.shape:
        raise InputError(f"tensor {p.hf}: shape {tuple(a.shape)} after conversion, planned {p.shape}")
    if p.gtype == "f32":
        return a
    if grid is not None:
        return quantize_on_grid(p.gtype, a, *grid)
    return _encode_rows(lambda i, j: a[i:j], p.shape, p.gtype)


def _plain(spec: ArchSpec, p: _Planned) -> bool:
    """GGUF stores this tensor exactly as the HF model holds it (no transposition, reordering or arithmetic)."""
    return not (spec.transposed(p.hf) or spec.permuted(p.hf) or spec.shifted_norm(p.hf)
                or (spec.fold_query_scale and p.hf.endswith("self_attn.q_norm.weight"))
                or _tensor_op(spec, p.hf) is not None)


def _type_fn(gtype: str) -> Callable[[np.ndarray], np.ndarray]:
    from ...methods.quantize.gguf_blocks import GGUF_BLOCK_TYPES, quantize_bf16

    return {"f32": lambda x: x, "f16": lambda x: x.astype(np.float16), "bf16": quantize_bf16}.get(gtype) \
        or GGUF_BLOCK_TYPES.get(gtype)


# numpy casts float32 -> float16 one element at a time; torch uses the CPU's conversion instructions (F16C /
# AVX-512, tens of times faster), with the same IEEE round-to-nearest-even result. Importing torch costs over
# a second and about 190 MB of memory, and the export casts slices on several threads, so numpy's cast only
# becomes the slow part for big models: an export that does not have torch loaded already takes it from this
# many float16 elements on (8B-class models).
F16_TORCH_MIN = 4_000_000_000
FILLED = object()  # a converter's answer: the tensor is already in the file (GGUFStreamWriter.write_at)


def _numpy_cast(dst: np.ndarray, src: np.ndarray) -> None:
    np.copyto(dst, src, casting="same_kind")


def f16_caster(n_elements: int) -> Callable[[np.ndarray, np.ndarray], None]:
    """``cast(dst, src)``: float32 rows into float16 ``dst``, through torch when casting ``n_elements`` pays for
    importing it (or it is imported already), else numpy's cast."""
    import sys

    if n_elements < F16_TORCH_MIN and "torch" not in sys.modules:
        return _numpy_cast
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency; numpy's cast is the fallback
        return _numpy_cast

    def cast(dst: np.ndarray, src: np.ndarray) -> None:
        if src.dtype != np.float32 or not (src.flags.c_contiguous and dst.flags.c_contiguous):
            _numpy_cast(dst, src)
        else:
            torch.from_numpy(dst).copy_(torch.from_numpy(src))

    return cast


def _encode_rows(read: Callable[[int, int], np.ndarray], shape: tuple[int, ...], gtype: str,
                 chunk: int = CHUNK) -> np.ndarray:
    """A float32 tensor of ``shape`` in GGUF type ``gtype``, encoded about ``chunk`` elements at a time:
    ``read(i, j)`` gives rows i..j-1 of its outermost dimension (from memory or from the file). What
    ``read`` returns may be a reused buffer: each slice is encoded before the next one is read."""
    fn = _type_fn(gtype)
    n = shape[0] if shape else 1
    per_row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    step = max(1, chunk // max(per_row, 1))
    if len(shape) < 2 or n <= step:
        out = fn(read(0, n))
        return out.copy() if gtype == "f32" else out  # never the reader's buffer
    if gtype in ("f16", "f32"):  # cast straight into the result, no temporary per slice
        out = np.empty(shape, dtype=np.float16 if gtype == "f16" else np.float32)
        for i in range(0, n, step):
            np.copyto(out[i:i + step], read(i, min(n, i + step)), casting="same_kind")
        return out
    # row chunks keep the block maths' temporaries small next to the tensor itself
    first = fn(read(0, step))
    out = np.empty((n, *first.shape[1:]), dtype=first.dtype)
    out[:step] = first
    for i in range(step, n, step):
        out[i:i + step] = fn(read(i, min(n, i + step)))
    return out


# slices read straight from a safetensors file: small enough that the float32 rows stay in the CPU caches
FILE_CHUNK = 1 << 18


def _stream_file(reader, shape: tuple[int, ...], gtype: str, write: Callable[[int, np.ndarray], None],
                 cast: Callable[[np.ndarray, np.ndarray], None] = _numpy_cast) -> None:
    """A plain safetensors tensor encoded in ``gtype`` and handed to ``write(byte offset, slice)`` a slice of
    rows at a time (GGUFStreamWriter.write_at): the read buffer (and the float16 one) are reused, so neither a
    float32 copy nor an encoded copy of the whole tensor is ever in memory."""
    from ...io.gguf_writer import tensor_nbytes

    per_row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    n = shape[0] if shape else 1
    rows = max(1, min(n, FILE_CHUNK // max(per_row, 1)))
    row_bytes = tensor_nbytes(shape or (1,), gtype) // n
    fn = _type_fn(gtype)
    buf = np.empty(rows * per_row, dtype=np.float32)
    enc = np.empty(rows * per_row, dtype=np.float16) if gtype == "f16" else None
    with open(reader.path, "rb", buffering=0) as f:
        for i in range(0, n, rows):
            j = min(n, i + rows)
            src = reader.read(f, i, j, buf)
            if enc is not None:
                out = enc[:src.size]
                cast(out, src.reshape(-1))
            elif gtype == "f32":
                out = src
            else:
                out = fn(src.reshape(j - i, *shape[1:]) if len(shape) > 1 else src)
            write(i * row_bytes, out)


def _first(cfg: dict, keys: tuple[str, ...]):
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return None


def write_hparams(w, spec: ArchSpec, cfg: dict, arch: str, per_layer: dict[str, list[int]]) -> None:
    """``<arch>.*`` hyperparameters from config.json through the spec's key table."""
    from ...io.gguf_writer import F32, U32

    per_key = {"attention.head_count": "num_attention_heads", "attention.head_count_kv": "num_key_value_heads",
               "feed_forward_length": "intermediate_size"}
    for suffix, keys in spec.hparams.items():
        if per_key.get(suffix) in per_layer:
            w.add_array(f"{arch}.{suffix}", per_layer[per_key[suffix]], U32)
            continue
        v = _first(cfg, keys)
        if v is None and suffix == "feed_forward_length" and spec.name == "gpt2":
            v = 4 * cfg["n_embd"]
        if v is None:
            continue
        w.add(f"{arch}.{suffix}", v, F32 if isinstance(v, float) or suffix in F32_KEYS else U32)
    if spec.name == "gpt2" and not w.has(f"{arch}.feed_forward_length"):
        w.add_u32(f"{arch}.feed_forward_length", cfg.get("n_inner") or 4 * cfg["n_embd"])
    if spec.name in ("llama", "mistral"):
        w.add_u32(f"{arch}.vocab_size", cfg["vocab_size"])
    if cfg.get("head_dim") or spec.name == "gemma2":
        w.add_u32(f"{arch}.attention.key_length", head_dim(cfg))
        w.add_u32(f"{arch}.attention.value_length", head_dim(cfg))
    if spec.rope:
        rp = rope_params(cfg)
        w.add_u32(f"{arch}.rope.dimension_count", rope_dim(cfg))
        if rp.get("rope_theta") is not None:
            w.add_f32(f"{arch}.rope.freq_base", rp["rope_theta"])
        rtype = rp.get("rope_type", "default")
        if rtype == "linear" and rp.get("factor"):
            w.add_string(f"{arch}.rope.scaling.type", "linear")
            w.add_f32(f"{arch}.rope.scaling.factor", rp["factor"])
        elif rtype == "yarn" and rp.get("factor"):
            w.add_string(f"{arch}.rope.scaling.type", "yarn")
            w.add_f32(f"{arch}.rope.scaling.factor", rp["factor"])
            w.add_u32(f"{arch}.rope.scaling.original_context_length", rp["original_max_position_embeddings"])
        elif rtype == "llama3":
            pass  # frequency factors go into the rope_freqs tensor (see plan)
        elif rtype in ("longrope", "su"):  # short/long factors are tensors (see plan); the cos/sin scale a key
            w.add_f32(f"{arch}.rope.scaling.attn_factor", longrope_attn_factor(cfg, rp))
        elif rtype not in ("default", None):
            raise UnsupportedError(f"RoPE type {rtype!r} is not supported by slmctl's GGUF exporter yet",
                                   hint="supported: default, linear, yarn, llama3, longrope")
    if spec.name == "phi3":
        rp = rope_params(cfg)
        w.add_u32(f"{arch}.rope.scaling.original_context_length",
                  int(rp.get("original_max_position_embeddings") or cfg.get("original_max_position_embeddings")
                      or cfg.get("max_position_embeddings")))
        w.add_u32(f"{arch}.attention.sliding_window", int(cfg.get("sliding_window") or 0))
    if spec.name in ("lfm2", "nemotron_h"):
        _hybrid_hparams(w, spec, cfg, arch)
    if spec.name == "gemma2":
        w.add_f32(f"{arch}.attn_logit_softcapping", cfg.get("attn_logit_softcapping") or 0.0)
        w.add_f32(f"{arch}.final_logit_softcapping", cfg.get("final_logit_softcapping") or 0.0)
        if cfg.get("sliding_window"):
            w.add_u32(f"{arch}.attention.sliding_window", int(cfg["sliding_window"]))
    if spec.layer_pattern:
        _layer_pattern_hparams(w, spec, cfg, arch)
    if spec.name == "olmo2" and head_dim(cfg) * int(cfg["num_attention_heads"]) != int(cfg["hidden_size"]):
        raise UnsupportedError(f"OLMo 2 with {cfg['num_attention_heads']} heads of {head_dim(cfg)} and hidden size "
                               f"{cfg['hidden_size']}: llama.cpp's olmo2 graph needs heads x head size = hidden size",
                               hint="width-prune OLMo 2's MLP only (--mlp-ratio) for a GGUF; ONNX and HF keep any width")


# GGUF keys that llama.cpp reads as floats even when config.json has a whole number (Granite's 12 or 8)
F32_KEYS = {"embedding_scale", "attention.scale", "residual_scale", "logit_scale", "attention.layer_norm_rms_epsilon",
            "attention.layer_norm_epsilon"}


def query_scale_fold(cfg: dict) -> float:
    """The factor folded into Gemma 3's Q norm: HF scales scores by ``query_pre_attn_scalar ** -0.5``,
    llama.cpp's gemma3 by ``1/sqrt(head_dim)`` (``1/sqrt(hidden/heads)`` when it has 62 layers, the 27B)."""
    qpas = cfg.get("query_pre_attn_scalar")
    if not qpas:
        return 1.0
    ref = cfg["hidden_size"] / cfg["num_attention_heads"] if cfg.get("num_hidden_layers") == 62 else head_dim(cfg)
    return float(np.sqrt(ref / float(qpas)))


def _layer_pattern_hparams(w, spec: ArchSpec, cfg: dict, arch: str) -> None:
    """Per-layer patterns: Gemma 3's sliding layers as an explicit array (llama.cpp's default is 5 sliding,
    1 full, which a pruned model no longer follows); SmolLM3's layers without RoPE, which llama.cpp fixes
    at every 4th layer, checked."""
    from ...arch import rope_pattern_problem, sliding_layers
    from ...io.gguf_writer import BOOL

    if spec.layer_pattern == "swa":
        swa = sliding_layers(cfg)
        if any(swa) and cfg.get("sliding_window"):
            w.add_u32(f"{arch}.attention.sliding_window", int(cfg["sliding_window"]))
            w.add_array(f"{arch}.attention.sliding_window_pattern", swa, BOOL)
            local = dict((cfg.get("rope_parameters") or {}).get("sliding_attention") or {})
            base = local.get("rope_theta") or cfg.get("rope_local_base_freq") or 10000.0
            w.add_f32(f"{arch}.rope.freq_base_swa", float(base))
        if cfg.get("final_logit_softcapping"):
            w.add_f32(f"{arch}.final_logit_softcapping", float(cfg["final_logit_softcapping"]))
        if cfg.get("attn_logit_softcapping"):
            raise UnsupportedError("Gemma 3 with attn_logit_softcapping: llama.cpp's gemma3 graph has no "
                                   "attention soft-capping")
    elif spec.layer_pattern == "no_rope" and rope_pattern_problem(cfg):
        raise UnsupportedError(rope_pattern_problem(cfg),
                               hint="after depth pruning, drop whole groups of 4 layers (for example the last ones: "
                                    "slmctl prune --method depth --depth-metric last --layers 4) to keep the pattern")


def _hybrid_hparams(w, spec: ArchSpec, cfg: dict, arch: str) -> None:
    """Hybrids: llama.cpp tells a recurrent block by head_count_kv 0 (and, for Nemotron-H, feed_forward_length 0)."""
    from ...arch import layer_kinds, lfm2_ffn_size
    from ...io.gguf_writer import U32

    kinds = layer_kinds(cfg)
    kv = int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"])
    w.add_array(f"{arch}.attention.head_count_kv", [kv if k == "attention" else 0 for k in kinds], U32)
    if spec.name == "lfm2":
        w.add_u32(f"{arch}.feed_forward_length", lfm2_ffn_size(cfg))
        w.add_u32(f"{arch}.shortconv.l_cache", int(cfg.get("conv_L_cache", 3)))
        w.add_u32(f"{arch}.vocab_size", int(cfg["vocab_size"]))
        return
    if "moe" in kinds:
        raise UnsupportedError("Nemotron-H with mixture-of-experts blocks is not supported by slmctl's GGUF "
                               "exporter yet", hint="dense Nemotron-H (Mamba-2, attention and MLP blocks) exports")
    w.add_u32(f"{arch}.block_count", len(kinds))
    w.add_array(f"{arch}.feed_forward_length",
                [int(cfg["intermediate_size"]) if k == "mlp" else 0 for k in kinds], U32)
    for k in ("attention.key_length", "attention.value_length"):  # hub configs name it attention_head_dim
        if not w.has(f"{arch}.{k}"):
            w.add_u32(f"{arch}.{k}", head_dim(cfg))
    heads, hdim = int(cfg["mamba_num_heads"]), int(cfg["mamba_head_dim"])
    w.add_u32(f"{arch}.ssm.conv_kernel", int(cfg.get("conv_kernel") or cfg.get("mamba_d_conv") or 4))
    w.add_u32(f"{arch}.ssm.state_size", int(cfg["ssm_state_size"]))
    w.add_u32(f"{arch}.ssm.group_count", int(cfg.get("n_groups") or cfg.get("mamba_n_groups") or 1))
    w.add_u32(f"{arch}.ssm.inner_size", heads * hdim)
    w.add_u32(f"{arch}.ssm.time_step_rank", heads)


def write_vocab(w, vocab) -> None:
    from ...io.gguf_writer import I32, STRING, F32

    w.add_string("tokenizer.ggml.model", vocab.model)
    if vocab.model == "gpt2":
        w.add_string("tokenizer.ggml.pre", vocab.pre)
    w.add_array("tokenizer.ggml.tokens", vocab.tokens, STRING)
    w.add_array("tokenizer.ggml.token_type", vocab.types, I32)
    if vocab.scores is not None:
        w.add_array("tokenizer.ggml.scores", vocab.scores, F32)
    if vocab.add_space_prefix is not None:
        w.add_bool("tokenizer.ggml.add_space_prefix", vocab.add_space_prefix)
    if vocab.merges:
        w.add_array("tokenizer.ggml.merges", vocab.merges, STRING)
    for kind, i in vocab.special.items():
        w.add_u32(f"tokenizer.ggml.{'padding' if kind == 'pad' else kind}_token_id" if kind != "unk"
                  else "tokenizer.ggml.unknown_token_id", i)
    w.add_bool("tokenizer.ggml.add_bos_token", bool(vocab.add_bos))
    w.add_bool("tokenizer.ggml.add_eos_token", bool(vocab.add_eos))
    if vocab.chat_template:
        w.add_string("tokenizer.chat_template", vocab.chat_template)


def per_layer_sizes(cfg: dict) -> dict[str, list[int]]:
    """``slmctl_per_layer`` lists (only the keys that vary), validated against the layer count."""
    pl = cfg.get("slmctl_per_layer") or {}
    n = cfg.get("num_hidden_layers")
    out = {}
    for k in ("num_attention_heads", "num_key_value_heads", "intermediate_size"):
        if k in pl:
            v = pl[k]
            if not isinstance(v, list) or len(v) != n or not all(isinstance(x, int) and x >= 0 for x in v):
                raise InputError(f"config.json: slmctl_per_layer.{k} must list {n} non-negative integers",
                                 hint="re-run the pruning step that wrote it")
            out[k] = v
    if out:  # llama.cpp's per-layer arrays need all three once one varies
        out.setdefault("num_attention_heads", [cfg["num_attention_heads"]] * n)
        out.setdefault("num_key_value_heads", [cfg.get("num_key_value_heads") or cfg["num_attention_heads"]] * n)
        out.setdefault("intermediate_size", [cfg["intermediate_size"]] * n)
    return out


def write_gguf(art, out_tmp: Path, outtype: str, prov: dict, *, vocab_pre: str | None = None, log: Log,
               progress=None, quant=None, finish: Callable[[], tuple[str, str]] | None = None) -> dict[str, Any]:
    """Stream one HF artifact into a GGUF file at ``out_tmp``; returns a summary.

    ``quant`` (pipelines.gguf_quant.GGUFQuant): slmctl's own quantisation to a llama.cpp file type
    (``outtype`` then names it, e.g. q4_k_m): it sets each tensor's type and produces its blocks.
    ``finish`` (provenance.input_record_later's): the input hash, computed while the tensors are written;
    its placeholder in the provenance metadata is overwritten before the file is closed."""
    from ...io.artifact import PROVENANCE_KEY
    from ...io.gguf_writer import GGUFStreamWriter
    from ...io.hf_vocab import read_vocab
    from ...io.np_tensors import RowReader, load_float32
    from ...io.prefetch import ordered_map

    cfg = art.config
    if cfg is None:
        raise InputError(f"{art.path}: no config.json beside the weights", hint="export from the HF model folder")
    spec = spec_for(cfg, str(art.path / "config.json") if art.path.is_dir() else str(art.path))
    per_layer = per_layer_sizes(cfg)
    arch = spec.gguf_arch
    if per_layer:
        if not spec.per_layer_arch:
            raise UnsupportedError(f"{art.path}: llama.cpp has no per-layer head/FFN sizes for {spec.name}",
                                   hint="per-layer widths export for llama and mistral (as GGUF arch 'deci')")
        arch = spec.per_layer_arch
        log(f"per-layer widths: writing GGUF architecture {arch!r} with per-layer arrays")
    folder = art.path if art.path.is_dir() else art.path.parent
    vocab = read_vocab(folder, cfg, int(cfg.get("vocab_size") or 0))
    if vocab_pre:
        vocab.pre = vocab_pre
    planned = plan(art, spec, outtype)
    # a quantised input (export/gguf_view.py): linears whose grid maps onto a GGUF type keep it
    gtypes, grids = getattr(art, "gguf_types", {}), getattr(art, "gguf_grids", {})
    for p in planned:
        p.gtype = gtypes.get(p.hf, p.gtype)
    if quant is not None:
        quant.retype(planned, spec, cfg)

    w = GGUFStreamWriter(out_tmp, arch)
    w.add_string("general.type", "model")
    # not the folder name: llama.cpp keys vocab quirks on general.name (a folder "phi3" would claim Phi-3's tokens)
    name = cfg.get("_name_or_path") or cfg.get("_model_name_or_path")
    if name:
        w.add_string("general.name", str(name))
    write_hparams(w, spec, cfg, arch, per_layer)
    _add_general(w, prov, sum(int(np.prod(p.shape)) for p in planned), outtype not in ("f32", "f16", "bf16"))
    if outtype in NATIVE or quant is not None:
        w.add_u32("general.file_type", file_types().get(outtype, 0))
    w.add_u32("general.quantization_version", 2)
    write_vocab(w, vocab)
    w.add_string(PROVENANCE_KEY, provenance.dumps(prov))
    for p in planned:
        w.add_tensor_info(p.gguf, p.shape, p.gtype)
    w.open()
    try:
        it = progress(planned, desc="tensors") if progress and quant is None else planned
        if quant is not None:
            it = quant.tensors(planned, spec, cfg, lambda hf: load_float32(art.tensors[hf]))
            for p, a in it:
                w.write_tensor(p.gguf, a)
            it = []
        cast = f16_caster(sum(int(np.prod(p.shape)) for p in planned if p.gtype == "f16"))

        def convert(p: _Planned) -> np.ndarray:
            if p.make is not None:
                return p.make()
            lt, grid = art.tensors[p.hf], (grids[p.hf]() if p.hf in grids else None)
            if grid is None and tuple(lt.shape) == p.shape and _plain(spec, p):
                reader = RowReader.of(lt)  # other sources load whole
                if reader is not None:  # streamed into the file, slice by slice
                    _stream_file(reader, p.shape, p.gtype, lambda at, b, g=p.gguf: w.write_at(g, at, b), cast)
                    return FILLED
            return _convert(load_float32(lt), p, spec, cfg, grid)

        # the next tensors are read and converted on the other cores while this one is written
        for p, a in ordered_map(convert, it):
            if a is FILLED:
                w.filled(p.gguf)
            else:
                w.write_tensor(p.gguf, a)
        if finish is not None:
            w.patch_header(*finish())
        w.close()
    except BaseException:
        w.abort()
        raise
    return {"arch": arch, "tensors": len(planned), "pre": vocab.pre}


def _add_general(w, prov: dict, n_params: int, quantized: bool) -> None:
    """general.* as llama.cpp's converter fills it (base model, license, size label, tags) from the provenance."""
    from ...io.gguf_writer import STRING
    from ..lineage import gguf_general

    for key, v in gguf_general(prov, n_params=n_params, quantized=quantized, has_name=w.has("general.name")):
        if w.has(key):
            continue
        if isinstance(v, list):
            w.add_array(key, v, STRING)
        elif isinstance(v, int):
            w.add_u32(key, v)
        else:
            w.add_string(key, v)
