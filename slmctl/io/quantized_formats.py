"""Quantised checkpoint layouts that serving stacks load: the GPTQ layout and compressed-tensors.

**GPTQ layout** (AutoGPTQ "v1" checkpoint format, read by GPTQModel, transformers and vLLM), for a
linear ``L`` with ``out`` x ``in`` weight and ``G`` groups:

- ``L.qweight`` int32 (in*bits/32, out): codes packed along the input dimension, 32 codes per
  ``bits`` words as one little-endian bit stream (for 4 bits: code ``8*r+j`` in bits ``4j..4j+3`` of row r);
- ``L.qzeros``  int32 (G, out*bits/32): zero points packed the same way along the output dimension;
  ``checkpoint_format: gptq`` (v1, every reader) stores ``zero - 1`` and loaders add the 1 back,
  ``gptq_v2`` stores the zero itself. slmctl writes symmetric grids as v1 and asymmetric ones as v2:
  GPTQModel refuses asymmetric v1 checkpoints from any producer but itself (old AutoGPTQ files
  underflowed a zero of 0), and vLLM reads v2 since 0.11 (vllm-project/vllm#26092);
- ``L.scales``  float16 (G, out); ``L.g_idx`` int32 (in,): group of each input column; ``L.bias``;
- config.json ``quantization_config``: ``quant_method: gptq``, bits, group_size, desc_act, sym, ...

**compressed-tensors ``pack-quantized``** (llm-compressor's W4A16 output, read by transformers with
compressed-tensors and by vLLM):

- ``L.weight_packed`` int32 (out, in*bits/32): signed codes ``q - 2**(bits-1)`` offset back to
  unsigned and packed along the input dimension with the same bit stream;
- ``L.weight_scale`` (out, G); ``L.weight_shape`` int64 [out, in];
- asymmetric only: ``L.weight_zero_point`` int32 (out*bits/32, G), signed zeros packed along dim 0;
- config.json ``quantization_config``: ``quant_method: compressed-tensors``, ``format: pack-quantized``,
  one config group targeting ``Linear`` with ``weights: {num_bits, type: int, symmetric, strategy,
  group_size}``, ``ignore: [lm_head]``.

Both dequantise to ``scale * (q - zero)`` with the same integers, so slmctl writes either from one
QuantResult and reads either back (``dequantized_tensors``) to evaluate, profile or export it.
References: https://github.com/ModelCloud/GPTQModel (format), https://github.com/neuralmagic/compressed-tensors
"""

from __future__ import annotations

import math
from typing import Any, Iterator

from ..errors import FormatError, UnsupportedError

FORMATS = ("gptq", "compressed-tensors")


# ---------------------------------------------------------------- bit packing
def pack_rows(values, bits: int):
    """Pack unsigned ``bits``-bit codes (rows, cols) into int32 (rows, ceil(cols*bits/32)), bit stream per row."""
    import torch

    v = values.to(torch.int64) & ((1 << bits) - 1)
    rows, cols = v.shape
    padded = -(-cols // 32) * 32
    if padded != cols:
        v = torch.nn.functional.pad(v, (0, padded - cols))
    v = v.reshape(rows, padded // 32, 32)
    words = torch.zeros(rows, padded // 32, bits + 1, dtype=torch.int64)
    for k in range(32):
        off = k * bits
        w, s = divmod(off, 32)
        words[:, :, w] |= (v[:, :, k] << s) & 0xFFFFFFFF
        if s + bits > 32:
            words[:, :, w + 1] |= v[:, :, k] >> (32 - s)
    words = words[:, :, :bits].reshape(rows, -1)[:, : math.ceil(cols * bits / 32)]
    return _to_int32(words)


def unpack_rows(packed, bits: int, cols: int):
    """Inverse of pack_rows: int64 codes (rows, cols)."""
    import torch

    p = packed.to(torch.int64) & 0xFFFFFFFF
    rows, n = p.shape
    groups = -(-n // bits)
    if groups * bits != n:
        p = torch.nn.functional.pad(p, (0, groups * bits - n))
    p = torch.cat([p.reshape(rows, groups, bits), torch.zeros(rows, groups, 1, dtype=torch.int64)], -1)
    mask = (1 << bits) - 1
    out = torch.empty(rows, groups, 32, dtype=torch.int64)
    for k in range(32):
        w, s = divmod(k * bits, 32)
        val = p[:, :, w] >> s
        if s + bits > 32:
            val = val | (p[:, :, w + 1] << (32 - s))
        out[:, :, k] = val & mask
    return out.reshape(rows, groups * 32)[:, :cols]


def _to_int32(words):
    import torch

    w = words & 0xFFFFFFFF
    return torch.where(w >= 1 << 31, w - (1 << 32), w).to(torch.int32)


# ---------------------------------------------------------------- GPTQ layout
def gptq_tensors(prefix: str, res, *, scale_dtype="float16", v2: bool = False) -> dict[str, Any]:
    """The GPTQ-layout tensors of one quantised linear (``prefix`` = module name, no ``.weight``).

    ``v2``: store zero points as they are (``checkpoint_format: gptq_v2``), not minus one (v1).
    """
    import torch

    bits = res.cfg.bits
    out_f, in_f = res.q.shape
    if (in_f * bits) % 32 or (out_f * bits) % 32:
        raise UnsupportedError(f"{prefix}: the GPTQ layout packs whole int32 words: {out_f}x{in_f} at {bits} bits "
                               "leaves a partial word",
                               hint="leave this layer unquantised or use --format compressed-tensors")
    t = {
        f"{prefix}.qweight": pack_rows(res.q, bits).T.contiguous(),
        f"{prefix}.qzeros": pack_rows(res.zero.to(torch.int64) - (0 if v2 else 1), bits),
        f"{prefix}.scales": res.scale.to(getattr(torch, scale_dtype)),
        f"{prefix}.g_idx": res.g_idx.to(torch.int32),
    }
    if res.bias is not None:
        t[f"{prefix}.bias"] = res.bias.to(getattr(torch, scale_dtype))
    return t


def gptq_config(cfg, *, desc_act: bool, static_groups: bool = False, true_sequential: bool = True,
                damp: float = 0.01, method: str = "gptq", v2: bool = False) -> dict[str, Any]:
    from .. import __version__

    return {"quant_method": "gptq", "bits": cfg.bits, "group_size": cfg.group_size, "desc_act": desc_act,
            "sym": cfg.sym, "static_groups": static_groups, "true_sequential": true_sequential,
            "damp_percent": damp, "lm_head": False, "checkpoint_format": "gptq_v2" if v2 else "gptq", "pack_dtype": "int32",
            "meta": {"quantizer": [f"slmctl:{__version__}"], "method": method}}


def gptq_unpack(get, prefix: str, bits: int, v2: bool = False):
    """(q, scale, zero, g_idx) of a GPTQ-layout linear; ``get(name)`` returns a tensor (``v2``: gptq_v2 zeros)."""
    import torch

    qweight, qzeros, scales = get(f"{prefix}.qweight"), get(f"{prefix}.qzeros"), get(f"{prefix}.scales")
    g_idx = get(f"{prefix}.g_idx")
    in_f = qweight.shape[0] * 32 // bits
    out_f = qweight.shape[1]
    if scales.shape[1] != out_f or qzeros.shape[0] != scales.shape[0]:
        raise FormatError(f"{prefix}: GPTQ tensors disagree (qweight {tuple(qweight.shape)}, qzeros "
                          f"{tuple(qzeros.shape)}, scales {tuple(scales.shape)})")
    q = unpack_rows(qweight.T.contiguous(), bits, in_f)
    zero = (unpack_rows(qzeros, bits, out_f) + (0 if v2 else 1)) & ((1 << bits) - 1)
    if g_idx is None:
        g_idx = torch.arange(in_f, dtype=torch.int32) // (in_f // scales.shape[0])
    return q, scales.float(), zero, g_idx


# ---------------------------------------------------------------- compressed-tensors
def ct_tensors(prefix: str, res, *, scale_dtype="float16") -> dict[str, Any]:
    """compressed-tensors pack-quantized tensors of one linear (grid must have trivial g_idx)."""
    import torch

    bits = res.cfg.bits
    out_f, in_f = res.q.shape
    g = res.cfg.group_len(in_f)
    if not torch.equal(res.g_idx.long(), torch.arange(in_f) // g):
        raise UnsupportedError(f"{prefix}: compressed-tensors stores groups in column order; act-order without "
                               "static groups permutes them", hint="use --static-groups (the default) or --format gptq")
    half = 1 << (bits - 1)
    t = {f"{prefix}.weight_packed": pack_rows(res.q.to(torch.int64), bits),
         f"{prefix}.weight_scale": res.scale.T.contiguous().to(getattr(torch, scale_dtype)),
         f"{prefix}.weight_shape": torch.tensor([out_f, in_f], dtype=torch.int64)}
    if not res.cfg.sym:
        # stored signed (zero - 2**(bits-1)), packed along the output dimension
        zs = res.zero.T.to(torch.int64) - half  # (out, G)
        t[f"{prefix}.weight_zero_point"] = pack_rows((zs + half).T.contiguous(), bits).T.contiguous()
    if res.bias is not None:
        t[f"{prefix}.bias"] = res.bias
    return t


def ct_config(cfg, *, method: str = "gptq", actorder: str | None = None) -> dict[str, Any]:
    from .. import __version__

    weights = {"num_bits": cfg.bits, "type": "int", "symmetric": cfg.sym,
               "group_size": cfg.group_size if cfg.group_size > 0 else None,
               "strategy": "group" if cfg.group_size > 0 else "channel", "dynamic": False,
               "actorder": actorder, "observer": "minmax", "observer_kwargs": {}, "block_structure": None}
    return {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": None,
                                          "output_activations": None, "format": "pack-quantized"}},
            "ignore": ["lm_head"], "kv_cache_scheme": None, "global_compression_ratio": None,
            "version": "0.20.1", "slmctl": {"version": __version__, "method": method}}


def ct_unpack(get, prefix: str, bits: int, sym: bool, group: int | None = None):
    """(q, scale, zero, g_idx) of a pack-quantized linear; ``group``: the config's group size (None or
    -1: the groups split the row evenly, as a per-row grid or a divisible width does)."""
    import torch

    shape = get(f"{prefix}.weight_shape").tolist()
    out_f, in_f = int(shape[0]), int(shape[1])
    scale = get(f"{prefix}.weight_scale").float()  # (out, G)
    n_groups = scale.shape[1]
    q = unpack_rows(get(f"{prefix}.weight_packed"), bits, in_f)
    half = 1 << (bits - 1)
    if sym:
        zero = torch.full((n_groups, out_f), half, dtype=torch.int64)
    else:
        zp = get(f"{prefix}.weight_zero_point")
        zero = unpack_rows(zp.T.contiguous(), bits, out_f)  # (G, out), offset-unsigned == our zero
    g = group if group and group > 0 else -(-in_f // n_groups)
    g_idx = torch.arange(in_f, dtype=torch.int32) // g
    return q, scale.T.contiguous(), zero, g_idx


# ---------------------------------------------------------------- reading back
def quant_format(config: dict | None) -> str | None:
    qc = (config or {}).get("quantization_config")
    if not isinstance(qc, dict):
        return None
    m = qc.get("quant_method")
    if m == "compressed-tensors" and qc.get("format") != "pack-quantized":
        raise UnsupportedError(f"compressed-tensors format {qc.get('format')!r} is not supported",
                               hint="slmctl reads pack-quantized (W4A16-style) checkpoints")
    return m if m in FORMATS else (m or None)


def dequantized_tensors(art) -> Iterator[tuple[str, Any]]:
    """(name, float tensor) of a GPTQ-layout or pack-quantized artifact, quantised linears dequantised."""
    from ..methods.quantize.common import dequantize

    fmt = quant_format(art.config)
    qc = art.config["quantization_config"]
    tensors = art.tensors

    def get(name):
        return tensors[name].load() if name in tensors else None

    if fmt == "gptq":
        bits = int(qc["bits"])
        suffix, extra = ".qweight", (".qweight", ".qzeros", ".scales", ".g_idx")
    elif fmt == "compressed-tensors":
        w = next(iter(qc["config_groups"].values()))["weights"]
        bits, sym, group = int(w["num_bits"]), bool(w["symmetric"]), int(w.get("group_size") or -1)
        suffix, extra = ".weight_packed", (".weight_packed", ".weight_scale", ".weight_shape", ".weight_zero_point")
    else:
        raise UnsupportedError(f"{art.path}: quantisation method {fmt!r} cannot be read by slmctl",
                               hint="slmctl reads its own GPTQ-layout and compressed-tensors outputs")
    prefixes = [n[: -len(suffix)] for n in tensors if n.endswith(suffix)]
    skip = {p + e for p in prefixes for e in extra}
    for p in prefixes:
        if fmt == "gptq":
            q, scale, zero, g_idx = gptq_unpack(get, p, bits, qc.get("checkpoint_format") == "gptq_v2")
        else:
            q, scale, zero, g_idx = ct_unpack(get, p, bits, sym, group)
        yield f"{p}.weight", dequantize(q, scale, zero, g_idx)
    for n, lt in tensors.items():
        if n not in skip:
            yield n, lt.load()


def load_dequantized_model(art, *, dtype=None, trust_remote_code: bool = False):
    """A plain transformers model of a quantised artifact, its weights dequantised (CPU, fp32)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = art.path if art.path.is_dir() else art.path.parent
    cfg = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    dtype = dtype or torch.float32
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):  # parameters on meta, buffers (rotary) real
        model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=trust_remote_code, dtype=dtype)
    sd = {n: t.to(dtype) if t.is_floating_point() else t for n, t in dequantized_tensors(art)}
    unexpected = []
    own = dict(model.named_parameters())
    own.update(dict(model.named_buffers()))
    for n in list(sd):
        if n not in own:
            alt = "model." + n[len("backbone."):] if n.startswith("backbone.") else None  # Nemotron-H / Mamba names
            if alt in own:
                sd[alt] = sd.pop(n)
                continue
            unexpected.append(n)
    model.load_state_dict(sd, strict=False, assign=True)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    still_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if still_meta or unexpected:
        raise FormatError(f"{art.path}: the dequantised weights do not fit the model "
                          f"(missing {still_meta[:3]}, unexpected {unexpected[:3]})")
    return model.eval()


# ---------------------------------------------------------------- to GGUF
def _grid_spec(art) -> tuple[int, bool, int]:
    """(bits, sym, group_size) of a GPTQ-layout or pack-quantized artifact."""
    qc = art.config["quantization_config"]
    if quant_format(art.config) == "gptq":
        return int(qc["bits"]), bool(qc.get("sym", True)), int(qc.get("group_size", -1))
    w = next(iter(qc["config_groups"].values()))["weights"]
    return int(w["num_bits"]), bool(w["symmetric"]), int(w.get("group_size") or -1)


def gguf_view(art, outtype: str | None, *, log=None):
    """A float view of a quantised artifact for the GGUF writer, and the GGUF type to write.

    When the grid fits a GGUF block type exactly (blocks of 32 inside one group, codes in range:
    see gguf_blocks.exact_block_types), each quantised linear keeps its own scales and codes in that
    type: the nearest one when ``outtype`` is None, or ``outtype`` when it is one of them. Otherwise
    the linears are dequantised, and the writer (or llama.cpp, for k-quants) requantises them to
    ``outtype`` (f16 when None). The unquantised tensors (embeddings, LM head) follow ``outtype``,
    f16 when None. Returns (view, outtype, message); the view is an Artifact whose ``gguf_types``
    and ``gguf_grids`` tell the writer which tensors carry a grid.
    """
    import dataclasses

    import torch

    from ..methods.quantize.common import dequantize
    from ..methods.quantize.gguf_blocks import exact_block_types
    from .lazy import LazyTensor

    fmt = quant_format(art.config)
    if fmt not in FORMATS:
        raise UnsupportedError(f"{art.path}: quantisation method {fmt!r} cannot be read by slmctl",
                               hint="slmctl reads its own GPTQ-layout and compressed-tensors outputs")
    bits, sym, group = _grid_spec(art)
    tensors = art.tensors
    suffix = ".qweight" if fmt == "gptq" else ".weight_packed"
    extra = (".qweight", ".qzeros", ".scales", ".g_idx") if fmt == "gptq" else \
        (".weight_packed", ".weight_scale", ".weight_shape", ".weight_zero_point")
    prefixes = [n[: -len(suffix)] for n in tensors if n.endswith(suffix)]

    def get(name):
        return tensors[name].load() if name in tensors else None

    def unpack(p):
        if fmt == "gptq":
            return gptq_unpack(get, p, bits, art.config["quantization_config"].get("checkpoint_format") == "gptq_v2")
        return ct_unpack(get, p, bits, sym, group)

    exact = exact_block_types(bits, sym)
    target = outtype or (exact[0] if exact else "f16")
    mapped = target in exact

    def fits(p) -> bool:
        if fmt == "gptq":
            in_f = tensors[p + ".qweight"].shape[0] * 32 // bits
            g_idx = get(p + ".g_idx")
        else:
            in_f = int(get(p + ".weight_shape")[1])
            g_idx = None
        g = in_f if group == -1 else group
        trivial = g_idx is None or torch.equal(g_idx.long(), torch.arange(in_f) // g)
        return in_f % 32 == 0 and g % 32 == 0 and trivial

    gtypes: dict[str, str] = {}
    grids: dict[str, Any] = {}
    new: dict[str, Any] = {}
    skip = {p + e for p in prefixes for e in extra}
    n_fit = 0
    for p in prefixes:
        def load(p=p):
            return dequantize(*unpack(p))

        def grid(p=p):
            q, scale, zero, g_idx = unpack(p)
            gi = g_idx.long()
            return scale[gi].T.numpy(), zero[gi].T.float().numpy()

        shape = tuple(tensors[p + suffix].shape)
        out_f = shape[1] if fmt == "gptq" else shape[0]
        in_f = (shape[0] * 32 // bits) if fmt == "gptq" else int(get(p + ".weight_shape")[1])
        name = f"{p}.weight"
        new[name] = LazyTensor(name, "F32", (out_f, in_f), out_f * in_f * 4, load)
        if mapped and fits(p):
            gtypes[name], grids[name] = target, grid
            n_fit += 1
    for n, lt in tensors.items():
        if n not in skip:
            new[n] = lt
            if mapped and n.endswith(".weight") and len(lt.shape) == 2 and outtype is None:
                gtypes[n] = "f16"  # embeddings, LM head: unquantised in the input, kept close to it
    desc = f"{bits}-bit {'symmetric' if sym else 'asymmetric'} g{group if group > 0 else 'row'} grid"
    if mapped and n_fit == len(prefixes):
        how = ("exactly" if sym or target == "q8_0" else
               "with each block minimum rounded to float16")
        msg = (f"GGUF: the {desc} maps onto {target} {how}: every block keeps its group's scale and codes "
               f"(no requantisation){'; embeddings and LM head as f16' if outtype is None else ''}")
    elif mapped:
        msg = (f"GGUF: the {desc} maps onto {target} for {n_fit} of {len(prefixes)} linears; the others "
               f"(act-order groups or rows not in blocks of 32) are dequantised and requantised to {target}")
    elif target in ("f32", "f16", "bf16"):
        msg = f"GGUF: the {desc} is dequantised and written as {target}"
    else:
        msg = (f"GGUF: the {desc} has no exact {target} form: dequantised, then requantised to {target}"
               + (f" (exact types for this grid: {', '.join(exact)})" if exact else ""))
    if log:
        log(msg)
    cfg = {k: v for k, v in art.config.items() if k != "quantization_config"}
    view = dataclasses.replace(art, config=cfg, tensors=new)
    view.gguf_types, view.gguf_grids = gtypes, grids
    return view, target, msg
