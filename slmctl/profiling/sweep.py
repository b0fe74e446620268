"""Depth-width sweeps at a fixed parameter budget (after Nemotron-Flash, arXiv:2511.18890).

From a base config, for each depth the width is solved so the parameter count matches the budget:
the head dimension and the query/KV head ratio of the base are kept (so shapes stay legal), the hidden
size is ``heads x head_dim``, and the FFN width is solved last so the count lands within +-3%; among the
hidden sizes that do, the one whose FFN/hidden ratio is closest to the base's wins. Counts are exact
(the model is built on the meta device). Weights are random: only latency is measured.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import InputError, UnsupportedError, UsageError

Log = Callable[[str], None]
DEFAULT_DEPTHS = (6, 8, 12, 16, 24, 32, 48)
TOLERANCE_PCT = 3.0
_NEEDED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")


def parse_count(v: str | int | float | None) -> int:
    """135M, 30m, 1.5B, 200k, 5e6 -> an integer."""
    if v is None:
        raise UsageError("a depth-width sweep needs a parameter budget", hint="e.g. --params 135M")
    if isinstance(v, (int, float)):
        return int(v)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kKmMbBgG]?)\s*", v)
    if not m:
        raise UsageError(f"cannot read {v!r} as a parameter count", hint="e.g. 135M, 1.5B, 500k")
    mult = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


def load_base_config(ref: str) -> tuple[dict, str]:
    """A transformers config dict from a config.json, a model folder/ref, or a folder with config.json."""
    p = Path(ref)
    if p.suffix == ".json" and p.is_file():
        try:
            cfg = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{p}: not a readable config.json ({exc})") from None
        return cfg, str(p)
    from ..io.resolve import load_artifact

    art, path = load_artifact(ref)
    if not art.config:
        raise InputError(f"{path}: no transformers config to sweep from ({art.format})",
                         hint="pass an HF folder or its config.json as --base (a GGUF: slmctl export it --format hf)")
    return dict(art.config), str(path)


def count_params(cfg: dict) -> int:
    """Exact parameter count of the transformers model ``cfg`` describes (built on the meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..hf import quiet_transformers

    quiet_transformers()
    c = _clean(cfg)
    hf = AutoConfig.for_model(c.pop("model_type"), **c)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf)
    return sum(p.numel() for p in model.parameters())


def _clean(cfg: dict) -> dict:
    c = dict(cfg)
    for k in ("architectures", "transformers_version", "torch_dtype", "dtype", "quantization_config",
              "_name_or_path", "_model_name_or_path"):
        c.pop(k, None)
    return c


def _approx(base: dict, layers: int, hidden: int, heads: int, kv: int, hd: int, inter: int) -> float:
    """A quick estimate to choose the width; the exact count comes from count_params."""
    tied = base.get("tie_word_embeddings", False)
    emb = base["vocab_size"] * hidden * (1 if tied else 2)
    attn = hidden * heads * hd * 2 + hidden * kv * hd * 2
    return emb + layers * (attn + 3 * hidden * inter + 2 * hidden) + hidden


def _kv_for(heads: int, ratio: float) -> int:
    divisors = [d for d in range(1, heads + 1) if heads % d == 0]
    return min(divisors, key=lambda d: (abs(heads / d - ratio), -d))


def candidates(base: dict, params: int, depths: Sequence[int] = DEFAULT_DEPTHS, *,
               tolerance_pct: float = TOLERANCE_PCT, ffn_multiple: int = 16) -> tuple[list[dict], list[str]]:
    """Configs of ``params`` parameters (+-tolerance) at each depth; notes say which depths have none."""
    missing = [k for k in _NEEDED if k not in base]
    if missing or "model_type" not in base:
        raise UnsupportedError(f"the base config lacks {', '.join(missing or ['model_type'])}, which a depth-width sweep "
                               "solves for", hint="use a Llama-style config (llama, mistral, qwen2, qwen3, ...)")
    heads0 = base["num_attention_heads"]
    hd = base.get("head_dim") or base["hidden_size"] // heads0
    ratio = heads0 / (base.get("num_key_value_heads") or heads0)
    ffn_ratio = base["intermediate_size"] / base["hidden_size"]
    out, notes = [], []
    for L in depths:
        if L < 1:
            raise UsageError("--depths take positive integers")
        best = None
        # keep the base's grouping (queries per KV head) exactly when it is an integer, e.g. 9/3 -> 3
        group = int(ratio) if float(ratio).is_integer() else 1
        for heads in range(group, 4097, group):
            hidden = heads * hd
            kv = heads // group if group > 1 else _kv_for(heads, ratio)
            fixed = _approx(base, L, hidden, heads, kv, hd, 0)
            if fixed >= params:
                break
            inter = (params - fixed) / (L * 3 * hidden)
            inter = max(ffn_multiple, int(round(inter / ffn_multiple)) * ffn_multiple)
            score = abs(math.log((inter / hidden) / ffn_ratio))
            if best is None or score < best[0]:
                best = (score, heads, hidden, kv, inter)
        if best is None:
            notes.append(f"depth {L}: no width fits {params:,} parameters")
            continue
        _, heads, hidden, kv, inter = best
        cfg = dict(base, num_hidden_layers=L, hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv,
                   head_dim=hd, intermediate_size=inter)
        _fix_family(cfg)
        exact = count_params(cfg)
        # one linear correction of the FFN width with the exact count
        step = L * 3 * hidden
        adj = int(round((params - exact) / step / ffn_multiple)) * ffn_multiple
        if adj and inter + adj >= ffn_multiple:
            cfg["intermediate_size"] = inter + adj
            exact = count_params(cfg)
        delta = 100.0 * (exact - params) / params
        if abs(delta) > tolerance_pct:
            notes.append(f"depth {L}: the closest shape has {exact:,} parameters ({delta:+.1f}%), outside "
                         f"+-{tolerance_pct}%")
            continue
        out.append({"layers": L, "hidden": hidden, "heads": heads, "kv_heads": kv, "head_dim": hd,
                    "intermediate": cfg["intermediate_size"], "params": exact, "params_delta_pct": delta,
                    "ffn_ratio": cfg["intermediate_size"] / hidden, "config": cfg})
    return out, notes


def _fix_family(cfg: dict) -> None:
    """Keys some families tie to the width."""
    if cfg.get("model_type") in ("gemma2", "gemma3_text") and "query_pre_attn_scalar" in cfg:
        cfg["query_pre_attn_scalar"] = cfg["head_dim"]
    if isinstance(cfg.get("no_rope_layers"), list):  # SmolLM3: every no_rope_layer_interval-th layer, at any depth
        every = int(cfg.get("no_rope_layer_interval") or 4)
        cfg["no_rope_layers"] = [int((i + 1) % every != 0) for i in range(cfg["num_hidden_layers"])]
    if "layer_types" in cfg and isinstance(cfg["layer_types"], list):
        lt = cfg["layer_types"]
        cfg["layer_types"] = [lt[i % len(lt)] for i in range(cfg["num_hidden_layers"])]
    if "max_window_layers" in cfg:
        cfg["max_window_layers"] = min(cfg["max_window_layers"], cfg["num_hidden_layers"])


def pareto(points: list[tuple[float, float]]) -> list[bool]:
    """Which points no other point beats on both coordinates (lower is better)."""
    flags = []
    for i, (a, b) in enumerate(points):
        dominated = any((x <= a and y <= b) and (x < a or y < b) for j, (x, y) in enumerate(points) if j != i)
        flags.append(not dominated)
    return flags


def _spearman(x: Sequence[float], y: Sequence[float]) -> float:
    import numpy as np

    if len(x) < 3:
        return float("nan")
    rx = np.argsort(np.argsort(x)).astype(float)
    ry = np.argsort(np.argsort(y)).astype(float)
    return float(np.corrcoef(rx, ry)[0, 1])


def effect(configs: list[dict], batch: str) -> dict[str, Any] | None:
    """Does depth cost latency at ``batch`` at equal parameters? Deepest vs shallowest, and rank correlation."""
    cs = sorted((c for c in configs if batch in c["decode"]), key=lambda c: c["layers"])
    if len(cs) < 2:
        return None
    lo, hi = cs[0], cs[-1]
    ratio = hi["decode"][batch]["p50_ms"] / lo["decode"][batch]["p50_ms"]
    rho = _spearman([c["layers"] for c in cs], [c["decode"][batch]["p50_ms"] for c in cs])
    shows = ratio > 1.1 and (math.isnan(rho) or rho > 0.5)
    summary = (f"at batch {batch}, the deepest shape ({hi['layers']} x {hi['hidden']}) decodes at "
               f"{hi['decode'][batch]['p50_ms']:.2f} ms/step, {ratio:.2f}x the shallowest "
               f"({lo['layers']} x {lo['hidden']}: {lo['decode'][batch]['p50_ms']:.2f} ms/step); Spearman rho(depth, "
               f"latency) = {rho:.2f}: " + ("deeper and thinner is slower here, as the paper finds"
                                            if shows else "this target does not show the paper's effect clearly"))
    return {"batch": int(batch), "deepest_over_shallowest": ratio, "spearman_rho": rho, "shows_effect": shows,
            "summary": summary}


def run_sweep(base_ref: str | None, *, params, target: str = "torch", depths: Sequence[int] | None = None,
              batch: Sequence[int] = (1, 16), ctx: Sequence[int] = (128,), repeats: int = 5, warmup: int = 1,
              decode_tokens: int = 8, device: str | None = None, budget_ms: float | None = None, seed: int = 0,
              log: Log = lambda m: None, progress=None) -> dict[str, Any]:
    """Measure every candidate shape at each batch size; mark the Pareto front and the budget filter."""
    from ..targets import get_target
    from .latency import measure

    if base_ref is None:
        raise UsageError("a depth-width sweep needs a base model or config", hint="--base sample:smollm2-135m")
    n = parse_count(params)
    tgt = get_target(target)
    tgt.check_available()
    base, where = load_base_config(base_ref)
    depths = list(depths or DEFAULT_DEPTHS)
    batch = sorted(set(batch))
    cands, notes = candidates(base, n, depths)
    if not cands:
        raise UsageError(f"no shape of {n:,} parameters (+-{TOLERANCE_PCT}%) at depths {depths}",
                         hint="; ".join(notes) or "try other --depths or --params")
    log(f"{len(cands)} shape(s) at {n:,} parameters: " + ", ".join(f"{c['layers']}x{c['hidden']}" for c in cands))
    it = progress(cands, desc="sweep") if progress else cands
    device_used = None
    for c in it:
        log(f"measuring {c['layers']} layers x {c['hidden']} (ffn {c['intermediate']}, {c['params']:,} parameters)")
        session = tgt.load_config(c["config"], device=device, seed=seed, log=log)
        device_used = session.device
        try:
            res = measure(session, ctx=[min(ctx)], batch=batch, repeats=repeats, warmup=warmup,
                          decode_tokens=decode_tokens, layers=False, seed=seed)
        finally:
            session.close()
        c["prefill"] = {k: res["prefill"][0][k] for k in ("ctx", "p50_ms", "p95_ms", "tokens_per_s")}
        c["decode"] = {str(d["batch"]): {k: d[k] for k in ("p50_ms", "p95_ms", "p95_over_p50", "tokens_per_s")}
                       for d in res["decode"]}
        notes += [x for x in res["notes"] if x not in notes]
    keys = [str(b) for b in batch]
    measured = [c for c in cands if all(k in c["decode"] for k in keys)]
    flags = pareto([tuple(c["decode"][k]["p50_ms"] for k in keys[:1] + keys[-1:]) for c in measured])
    for c in cands:
        c["pareto"] = False
    for c, f in zip(measured, flags):
        c["pareto"] = f
    if budget_ms is not None:
        for c in cands:
            c["meets_budget"] = "1" in c["decode"] and c["decode"]["1"]["p50_ms"] <= budget_ms
    rep = {"sweep": "depth-width", "base": base_ref, "base_path": where, "params_target": n,
           "tolerance_pct": TOLERANCE_PCT, "target": tgt.name, "device": device_used,
           "settings": {"depths": depths, "batch": batch, "ctx": min(ctx), "repeats": repeats, "warmup": warmup,
                        "decode_tokens": decode_tokens, "seed": seed},
           "budget_ms": budget_ms,
           "configs": [{k: v for k, v in c.items() if k != "config"} | {"config": _clean(c["config"])} for c in cands],
           "pareto_front": [f"{c['layers']}x{c['hidden']}" for c in cands if c["pareto"]],
           "effect": effect(cands, "1") if "1" in keys else None,
           "effect_large_batch": effect(cands, keys[-1]) if len(keys) > 1 else None,
           "notes": notes}
    from .latency import machine_info

    rep["machine"] = machine_info()
    return rep
