"""A quantised (GPTQ-layout or compressed-tensors) artifact seen as float tensors for the GGUF writer,
keeping each grid that maps exactly onto a GGUF block type."""

from __future__ import annotations

from typing import Any


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

    from ...io.lazy import LazyTensor
    from ...io.quantized_formats import dequantize, layout_of, quantized_prefixes
    from ...methods.quantize.gguf_blocks import exact_block_types

    layout = layout_of(art)
    bits, sym, group = layout.grid()
    tensors = art.tensors
    prefixes = quantized_prefixes(art, layout)

    def get(name):
        return tensors[name].load() if name in tensors else None

    def unpack(p):
        return layout.unpack(get, p)

    exact = exact_block_types(bits, sym)
    target = outtype or (exact[0] if exact else "f16")
    mapped = target in exact

    def fits(p) -> bool:
        in_f = layout.shape(tensors, get, p)[1]
        g_idx = layout.g_idx(get, p)
        g = in_f if group == -1 else group
        trivial = g_idx is None or torch.equal(g_idx.long(), torch.arange(in_f) // g)
        return in_f % 32 == 0 and g % 32 == 0 and trivial

    gtypes: dict[str, str] = {}
    grids: dict[str, Any] = {}
    new: dict[str, Any] = {}
    skip = {p + e for p in prefixes for e in layout.extra}
    n_fit = 0
    for p in prefixes:
        def load(p=p):
            return dequantize(*unpack(p))

        def grid(p=p):
            q, scale, zero, g_idx = unpack(p)
            gi = g_idx.long()
            return scale[gi].T.numpy(), zero[gi].T.float().numpy()

        out_f, in_f = layout.shape(tensors, get, p)
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
