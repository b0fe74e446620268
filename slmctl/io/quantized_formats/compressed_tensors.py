"""compressed-tensors ``pack-quantized`` (llm-compressor's W4A16 output): see the package docstring."""

from __future__ import annotations

from typing import Any

from ...errors import UnsupportedError
from .layout import LAYOUTS, Get, Layout
from .packing import pack_rows, unpack_rows


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
    from ... import __version__

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


@LAYOUTS.register("compressed-tensors")
class CompressedTensors(Layout):
    """``weight_packed`` (out, in*bits/32), ``weight_scale`` (out, G), ``weight_shape``, ``weight_zero_point``."""

    name, suffix = "compressed-tensors", ".weight_packed"
    extra = (".weight_packed", ".weight_scale", ".weight_shape", ".weight_zero_point")

    def _weights(self) -> dict:
        return next(iter(self.qc["config_groups"].values()))["weights"]

    def grid(self) -> tuple[int, bool, int]:
        w = self._weights()
        return int(w["num_bits"]), bool(w["symmetric"]), int(w.get("group_size") or -1)

    def unpack(self, get: Get, prefix: str):
        bits, sym, group = self.grid()
        return ct_unpack(get, prefix, bits, sym, group)

    def shape(self, tensors: dict, get: Get, prefix: str) -> tuple[int, int]:
        return tensors[prefix + self.suffix].shape[0], int(get(prefix + ".weight_shape")[1])
