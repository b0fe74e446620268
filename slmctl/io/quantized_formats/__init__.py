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

from typing import Any, Iterator

from ...errors import FormatError, UnsupportedError
from .layout import LAYOUTS, Layout
from .compressed_tensors import CompressedTensors, ct_config, ct_tensors, ct_unpack
from .gptq_layout import GPTQ, gptq_config, gptq_tensors, gptq_unpack
from .packing import dequantize, pack_rows, unpack_rows

FORMATS = ("gptq", "compressed-tensors")


def quant_format(config: dict | None) -> str | None:
    qc = (config or {}).get("quantization_config")
    if not isinstance(qc, dict):
        return None
    m = qc.get("quant_method")
    if m == "compressed-tensors" and qc.get("format") != "pack-quantized":
        raise UnsupportedError(f"compressed-tensors format {qc.get('format')!r} is not supported",
                               hint="slmctl reads pack-quantized (W4A16-style) checkpoints")
    return m if m in FORMATS else (m or None)


def layout_of(art) -> Layout:
    """The layout of a quantised artifact (its config's quantization_config), or a clear refusal."""
    fmt = quant_format(art.config)
    if fmt not in LAYOUTS:
        raise UnsupportedError(f"{art.path}: quantisation method {fmt!r} cannot be read by slmctl",
                               hint="slmctl reads its own GPTQ-layout and compressed-tensors outputs")
    return LAYOUTS.get(fmt)(art.config["quantization_config"])


def quantized_prefixes(art, layout: Layout) -> list[str]:
    """The module names (no ``.weight``) of the quantised linears."""
    return [n[: -len(layout.suffix)] for n in art.tensors if n.endswith(layout.suffix)]


def dequantized_tensors(art) -> Iterator[tuple[str, Any]]:
    """(name, float tensor) of a GPTQ-layout or pack-quantized artifact, quantised linears dequantised."""
    layout = layout_of(art)
    tensors = art.tensors

    def get(name):
        return tensors[name].load() if name in tensors else None

    prefixes = quantized_prefixes(art, layout)
    skip = {p + e for p in prefixes for e in layout.extra}
    for p in prefixes:
        yield f"{p}.weight", dequantize(*layout.unpack(get, p))
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


__all__ = ["FORMATS", "LAYOUTS", "CompressedTensors", "GPTQ", "Layout", "ct_config", "ct_tensors", "ct_unpack",
           "dequantize", "dequantized_tensors", "gptq_config", "gptq_tensors", "gptq_unpack", "layout_of",
           "load_dequantized_model", "pack_rows", "quant_format", "quantized_prefixes", "unpack_rows"]
