"""The GPTQ layout (AutoGPTQ v1 / GPTQModel v2 checkpoint format): see the package docstring."""

from __future__ import annotations

from typing import Any

from ...errors import FormatError, UnsupportedError
from .layout import LAYOUTS, Get, Layout
from .packing import pack_rows, unpack_rows


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
    from ... import __version__

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


@LAYOUTS.register("gptq")
class GPTQ(Layout):
    """``qweight`` (in*bits/32, out), ``qzeros``, ``scales`` (G, out), ``g_idx`` (in,)."""

    name, suffix, extra = "gptq", ".qweight", (".qweight", ".qzeros", ".scales", ".g_idx")

    def grid(self) -> tuple[int, bool, int]:
        return int(self.qc["bits"]), bool(self.qc.get("sym", True)), int(self.qc.get("group_size", -1))

    def unpack(self, get: Get, prefix: str):
        return gptq_unpack(get, prefix, int(self.qc["bits"]), self.qc.get("checkpoint_format") == "gptq_v2")

    def shape(self, tensors: dict, get: Get, prefix: str) -> tuple[int, int]:
        rows, out_f = tensors[prefix + self.suffix].shape
        return out_f, rows * 32 // int(self.qc["bits"])

    def g_idx(self, get: Get, prefix: str):
        return get(prefix + ".g_idx")
