"""RTN: round every weight to the nearest point of its group's min/max grid. No calibration data.

Reference: the baseline of GPTQ (Frantar et al., 2022), https://arxiv.org/abs/2210.17323, section 5.
"""

from __future__ import annotations

from .common import QUANTIZERS, QuantConfig, QuantResult, rtn


@QUANTIZERS.register("rtn", "round-to-nearest on a min/max grid; no calibration data")
def quantize_rtn(layer, cfg: QuantConfig, *, names: list[str], step=None, log=None, **_) -> dict[str, QuantResult]:
    """Round-to-nearest for the linears ``names`` of ``layer`` (weights are updated to their dequantised value)."""
    import torch

    out = {}
    with torch.no_grad():
        for n in names:
            lin = layer.get_submodule(n)
            res = rtn(lin.weight.data, cfg, lin.bias.data.clone() if lin.bias is not None else None)
            lin.weight.data = res.dequantize().to(lin.weight.dtype)
            out[n] = res
    return out

