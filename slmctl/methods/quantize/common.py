"""Weight-only integer quantisation: configs and tensor maths shared by RTN, GPTQ and AWQ.

The grid is the GPTQ one, which the GPTQ checkpoint layout and compressed-tensors both store:
``q = clamp(round(w / scale) + zero, 0, 2**bits - 1)`` and ``w ≈ scale * (q - zero)``, one
(scale, zero) per output row and group of ``group_size`` input columns. Symmetric grids fix
``zero = 2**(bits-1)``. Scales are rounded to float16 before use, because that is how they are
stored, so the maths here and every loader agree bit for bit.

Reference: torchao's affine quantisation primitives (choose_qparams / quantize_affine /
dequantize_affine), https://github.com/pytorch/ao/blob/main/torchao/quantization/quant_primitives.py
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ...errors import UsageError
from ...io.quantized_formats.packing import dequantize  # noqa: F401  (the layouts' affine maths, one copy)
from ...registry import Registry

BITS = (2, 3, 4, 8)
#: method name -> fn(step, cfg, *, names, log) -> {linear name: QuantResult}; see rtn.py, gptq.py, awq.py
QUANTIZERS: Registry[Callable[..., Any]] = Registry("quantize method")


@dataclass(frozen=True)
class QuantConfig:
    """What grid to quantise to: ``bits`` per weight, ``group_size`` input columns per scale (-1: whole row)."""

    bits: int = 4
    group_size: int = 128
    sym: bool = True
    #: smallest zero point of an asymmetric grid: the GPTQ v1 layout stores zero - 1, so it needs 1
    zero_min: int = 0

    def __post_init__(self):
        if self.bits not in BITS:
            raise UsageError(f"--bits {self.bits} is not supported", hint="valid: " + ", ".join(map(str, BITS)))
        if self.group_size != -1 and self.group_size < 1:
            raise UsageError(f"--group-size {self.group_size} is not valid", hint="use 32, 64, 128, ... or -1 (per row)")

    @property
    def maxq(self) -> int:
        return (1 << self.bits) - 1

    def group_len(self, in_features: int) -> int:
        return in_features if self.group_size == -1 else self.group_size

    def n_groups(self, in_features: int) -> int:
        g = self.group_len(in_features)
        return (in_features + g - 1) // g

    def tag(self) -> str:
        return f"w{self.bits}g{self.group_size if self.group_size > 0 else 'row'}{'' if self.sym else 'a'}"


@dataclass
class QuantResult:
    """One quantised linear: integer codes, per-group scales and zeros, and the column -> group map.

    ``q``: (out, in) int32 in [0, 2**bits - 1]; ``scale``: (n_groups, out) float32 (fp16-exact);
    ``zero``: (n_groups, out) int32; ``g_idx``: (in,) int32 group of each input column.
    """

    q: Any
    scale: Any
    zero: Any
    g_idx: Any
    cfg: QuantConfig
    bias: Any = None
    info: dict[str, Any] = field(default_factory=dict)

    def dequantize(self):
        return dequantize(self.q, self.scale, self.zero, self.g_idx)


def minmax_qparams(x, cfg: QuantConfig, *, shrink: float | Any = 1.0):
    """(scale, zero) over the last dimension of ``x`` (min/max grid, optionally shrunk for clipping)."""
    import torch

    x = x.float()
    zero_t = torch.zeros((), dtype=x.dtype)
    xmin = torch.minimum(x.amin(-1), zero_t) * shrink
    xmax = torch.maximum(x.amax(-1), zero_t) * shrink
    if cfg.sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    both0 = (xmin == 0) & (xmax == 0)
    xmin = torch.where(both0, torch.full_like(xmin, -1.0), xmin)
    xmax = torch.where(both0, torch.full_like(xmax, 1.0), xmax)
    scale = (xmax - xmin) / cfg.maxq
    scale = _fp16_exact(scale)
    if cfg.sym:
        zero = torch.full_like(scale, (cfg.maxq + 1) // 2)
    else:
        zero = torch.clamp(torch.round(-xmin / scale), 0, cfg.maxq)
        if cfg.zero_min:
            # a group whose zero would fall below zero_min: start the grid at zero_min and
            # stretch the scale so xmax still fits
            low = zero < cfg.zero_min
            if low.any():
                alt = _fp16_exact(xmax / (cfg.maxq - cfg.zero_min))
                scale = torch.where(low, torch.maximum(alt, scale), scale)
                zero = torch.clamp(torch.round(-xmin / scale), cfg.zero_min, cfg.maxq)
    return scale, zero


def _fp16_exact(scale):
    """Round scales to float16 (as stored), never to zero or inf."""
    import torch

    s = scale.clamp(min=1e-7, max=6e4).to(torch.float16).float()
    return torch.where(s == 0, torch.full_like(s, 2.0 ** -24), s)


def choose_qparams(w, cfg: QuantConfig):
    """Per-group (scale, zero) of a weight (out, in): each (n_groups, out), plus g_idx (in,)."""
    import torch

    out_f, in_f = w.shape
    g = cfg.group_len(in_f)
    n = cfg.n_groups(in_f)
    g_idx = torch.arange(in_f, dtype=torch.int32) // g
    if in_f % g == 0:  # all groups at once: (out, n, g) -> (n, out)
        s, z = minmax_qparams(w.reshape(out_f, n, g), cfg)
        return s.T.contiguous(), z.T.contiguous(), g_idx
    scales, zeros = [], []
    for i in range(n):
        s, z = minmax_qparams(w[:, i * g:(i + 1) * g], cfg)
        scales.append(s)
        zeros.append(z)
    return torch.stack(scales), torch.stack(zeros), g_idx


def quantize_affine(w, scale, zero, g_idx, cfg: QuantConfig):
    """Integer codes (out, in) for ``w`` on the grid (scale, zero)[g_idx]."""
    import torch

    gi = g_idx.long()
    s = scale[gi].T  # (out, in)
    z = zero[gi].T
    return torch.clamp(torch.round(w.float() / s) + z, 0, cfg.maxq).to(torch.int32)


def quantize_column(x, scale, zero, maxq: int):
    """Fake-quantise one column (or any tensor) with matching scale/zero: used inside GPTQ."""
    import torch

    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return scale * (q - zero)


def rtn(w, cfg: QuantConfig, bias=None) -> QuantResult:
    """Round-to-nearest on the min/max grid."""
    scale, zero, g_idx = choose_qparams(w, cfg)
    q = quantize_affine(w, scale, zero, g_idx, cfg)
    return QuantResult(q, scale, zero.to(__import__("torch").int32), g_idx, cfg, bias)


def load_methods() -> Registry:
    """Import the method modules so they register (explicit, as DESIGN.md asks)."""
    import importlib

    for m in ("rtn", "gptq", "awq"):
        importlib.import_module(f"{__package__}.{m}")

    return QUANTIZERS
