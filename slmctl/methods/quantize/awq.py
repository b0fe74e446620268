"""AWQ: activation-aware weight quantisation. Input channels that carry large activations are scaled up
in the weight (and the same scale divided out of the operation that feeds them: a norm, or the rows
of the previous linear), so rounding hurts them less; then each group's clipping range is searched.

Per decoder layer, for each group of linears that share an input (q/k/v, o, gate/up, down):

1. search ``s = x_mean**a / w_mean**(1-a)`` over a grid of ``a`` (and ``s = 1``), minimising the
   error of the group's outputs on calibration tokens after quantising ``W * s``;
2. fold ``1/s`` into the preceding norm (or rows of v_proj / up_proj), checked on a calibration window;
3. per output row and group, search a clipping shrink of the min/max range minimising output error
   (skipped for q/k, whose products feed the softmax).

Reference: Lin et al., "AWQ: Activation-aware Weight Quantization for LLM Compression and
Acceleration", https://arxiv.org/abs/2306.00978 (reference code: https://github.com/mit-han-lab/llm-awq).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...arch import AWQ_FOLDS
from ...errors import UsageError
from .common import QUANTIZERS, QuantConfig, QuantResult, dequantize, minmax_qparams, quantize_affine

_NO_CLIP = ("q_proj", "k_proj", "qkv_proj")


@dataclass(frozen=True)
class AWQConfig:
    """AWQ options: scale grid points, duo scaling (activations and weights), clipping search."""

    grid: int = 20
    duo_scaling: bool = True
    clip: bool = True
    clip_grid: int = 20
    max_shrink: float = 0.5
    max_tokens: int = 1024
    clip_tokens: int = 512

    def __post_init__(self):
        if self.grid < 1 or self.clip_grid < 1 or not 0 < self.max_shrink < 1:
            raise UsageError("AWQ: grid sizes must be positive and max_shrink in (0, 1)")


def fake_quantize(w, cfg: QuantConfig, shrink=None):
    """Quantise-dequantise ``w`` (out, in) on its min/max grid; ``shrink`` (out, G) narrows each group's range."""
    import torch

    out_f, in_f = w.shape
    g = cfg.group_len(in_f)
    if in_f % g == 0:  # all groups at once: (out, G, g)
        blk = w.reshape(out_f, in_f // g, g)
        s, z = minmax_qparams(blk, cfg, shrink=1.0 if shrink is None else shrink)
        q = torch.clamp(torch.round(blk / s[..., None]) + z[..., None], 0, cfg.maxq)
        return (s[..., None] * (q - z[..., None])).reshape(out_f, in_f)
    res = []
    for i in range(cfg.n_groups(in_f)):
        blk = w[:, i * g:(i + 1) * g]
        s, z = minmax_qparams(blk, cfg, shrink=1.0 if shrink is None else shrink[:, i])
        q = torch.clamp(torch.round(blk / s[:, None]) + z[:, None], 0, cfg.maxq)
        res.append(s[:, None] * (q - z[:, None]))
    return torch.cat(res, 1)


def search_scale(X, weights: list, cfg: QuantConfig, acfg: AWQConfig):
    """The per-input-channel scale for linears ``weights`` (each (out, in)) sharing inputs X (n, in)."""
    import torch

    x_mean = X.abs().mean(0)
    W = torch.cat(weights, 0)
    g = cfg.group_len(W.shape[1])
    Wa = W.abs()
    parts = [Wa[:, a:a + g] / Wa[:, a:a + g].amax(-1, keepdim=True).clamp(min=1e-8) for a in range(0, W.shape[1], g)]
    w_mean = torch.cat(parts, 1).mean(0)
    ref = X @ W.T

    def loss(s):
        Wq = fake_quantize(W * s, cfg) / s
        return float(((X @ Wq.T - ref) ** 2).mean())

    best_s, best = torch.ones_like(x_mean), loss(torch.ones_like(x_mean))
    best_ratio = None
    for k in range(acfg.grid):
        r = k / acfg.grid
        if acfg.duo_scaling:
            s = (x_mean.pow(r) / w_mean.clamp(min=1e-8).pow(1 - r)).clamp(min=1e-4)
        else:
            s = x_mean.pow(r).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        if not torch.isfinite(s).all():
            continue
        lv = loss(s)
        if lv < best:
            best, best_s, best_ratio = lv, s, r
    return best_s, best_ratio


def search_clip(X, w, cfg: QuantConfig, acfg: AWQConfig):
    """Shrink factors (out, G) of each group's min/max range minimising the group's output error on X."""
    import torch

    out_f, in_f = w.shape
    g = cfg.group_len(in_f)
    G = cfg.n_groups(in_f)
    best_shrink = torch.ones(out_f, G)
    steps = int(acfg.max_shrink * acfg.clip_grid)
    for gi in range(G):  # each group's share of the output, on its own columns
        a, b = gi * g, min((gi + 1) * g, in_f)
        Xg = X[:, a:b]
        wg = w[:, a:b]
        ref = Xg @ wg.T  # (n, out)
        best_err = torch.full((out_f,), float("inf"))
        bs = torch.ones(out_f)
        one = QuantConfig(cfg.bits, -1, cfg.sym, cfg.zero_min)
        for k in range(steps + 1):
            shrink = torch.full((out_f, 1), 1 - k / acfg.clip_grid)
            wq = fake_quantize(wg, one, shrink)
            err = ((Xg @ wq.T - ref) ** 2).mean(0)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            bs = torch.where(better, shrink[:, 0], bs)
        best_shrink[:, gi] = bs
    return best_shrink


def quantize_with_shrink(w, cfg: QuantConfig, shrink, bias=None) -> QuantResult:
    import torch

    out_f, in_f = w.shape
    g = cfg.group_len(in_f)
    scales, zeros = [], []
    for i in range(cfg.n_groups(in_f)):
        s, z = minmax_qparams(w[:, i * g:(i + 1) * g], cfg, shrink=shrink[:, i])
        scales.append(s)
        zeros.append(z)
    scale, zero = torch.stack(scales), torch.stack(zeros)
    g_idx = torch.arange(in_f, dtype=torch.int32) // g
    q = quantize_affine(w, scale, zero, g_idx, cfg)
    return QuantResult(q, scale, zero.to(torch.int32), g_idx, cfg, bias)


def _fold(layer, prev_name: str, kind: str, s) -> None:
    """Divide ``s`` out of the operation that produces the group's input."""
    prev = layer.get_submodule(prev_name)
    if kind == "norm":
        if "gemma" in type(prev).__name__.lower():  # Gemma norms multiply by (1 + weight)
            prev.weight.data = (1 + prev.weight.data) / s - 1
        else:
            prev.weight.data = prev.weight.data / s
            if getattr(prev, "bias", None) is not None:
                prev.bias.data = prev.bias.data / s
    else:
        prev.weight.data = prev.weight.data / s[:, None]
        if prev.bias is not None:
            prev.bias.data = prev.bias.data / s


def _prev_for(layer, group: list[str]):
    names = dict(layer.named_modules())
    spec = AWQ_FOLDS.get(group[0])
    if spec is None:
        return None
    for cand in spec[0]:
        if cand in names and hasattr(names[cand], "weight"):
            return cand, spec[1]
    return None


@QUANTIZERS.register("awq", "AWQ: activation-aware channel scales and clipping search")
def quantize_awq(layer, cfg: QuantConfig, *, names: list[str], step, awq: AWQConfig | None = None, log=None,
                 keep_float=(), **_) -> dict[str, QuantResult]:
    """AWQ for the linears ``names`` of a decoder layer (a layerwise LayerStep gives the inputs).

    ``keep_float``: linears of ``names`` that get their group's activation scales (the fold into the
    previous norm/linear changes their input too) but stay float, unquantised.
    """
    import torch

    acfg = awq or AWQConfig()
    want = set(names)
    groups = [[n for n in grp if n in want] for grp in step.groups()]
    groups = [grp for grp in groups if grp]
    # inputs of each group (one sample of tokens per group; the members share them)
    n_tok = sum(h.shape[0] * h.shape[1] for h in step.hidden)
    stride = max(1, -(-n_tok // acfg.max_tokens))
    feats: dict[str, list] = {grp[0]: [] for grp in groups}
    step.recapture([grp[0] for grp in groups],
                   on_input=lambda n, x: feats[n].append(x.reshape(-1, x.shape[-1])[::stride].float()))
    X = {n: torch.cat(v, 0) for n, v in feats.items()}
    ref_out = step.run(step.hidden[:1])[0]
    info = {}
    with torch.no_grad():
        for grp in groups:
            lead = grp[0]
            prev = _prev_for(layer, grp)
            if prev is None:
                continue
            ws = [layer.get_submodule(n).weight.data.float() for n in grp]
            if prev[1] == "rows" and layer.get_submodule(prev[0]).weight.shape[0] != ws[0].shape[1]:
                continue  # e.g. v_proj with fewer (grouped) heads than o_proj's input
            s, ratio = search_scale(X[lead], ws, cfg, acfg)
            if ratio is None:
                continue
            saved = {n: layer.get_submodule(n).weight.data.clone() for n in grp}
            pm = layer.get_submodule(prev[0])
            saved_prev = (pm.weight.data.clone(), pm.bias.data.clone() if getattr(pm, "bias", None) is not None else None)
            for n in grp:
                layer.get_submodule(n).weight.data *= s
            _fold(layer, prev[0], prev[1], s)
            new_out = step.run(step.hidden[:1])[0]
            if not torch.allclose(new_out, ref_out, rtol=1e-3, atol=1e-3 * float(ref_out.abs().max())):
                for n in grp:  # the fold is not exact for this architecture: undo it
                    layer.get_submodule(n).weight.data = saved[n]
                pm.weight.data = saved_prev[0]
                if saved_prev[1] is not None:
                    pm.bias.data = saved_prev[1]
                if log:
                    log(f"  awq: scales for {lead} could not be folded into {prev[0]}; left unscaled")
                continue
            X[lead] = X[lead] / s
            info[lead] = ratio
        out: dict[str, QuantResult] = {}
        for grp in groups:
            Xc = X[grp[0]]
            Xc = Xc[:: max(1, Xc.shape[0] // acfg.clip_tokens)][: acfg.clip_tokens]
            for n in grp:
                if n in keep_float:
                    continue
                lin = layer.get_submodule(n)
                w = lin.weight.data.float()
                bias = lin.bias.data.clone() if lin.bias is not None else None
                if acfg.clip and not n.rsplit(".", 1)[-1].startswith(_NO_CLIP):
                    shrink = search_clip(Xc, w, cfg, acfg)
                else:
                    shrink = torch.ones(w.shape[0], cfg.n_groups(w.shape[1]))
                res = quantize_with_shrink(w, cfg, shrink, bias)
                res.info["awq_ratio"] = info.get(grp[0])
                lin.weight.data = dequantize(res.q, res.scale, res.zero, res.g_idx).to(lin.weight.dtype)
                out[n] = res
    return out
