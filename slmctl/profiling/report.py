"""Profiles and sweeps as text tables and CSV."""

from __future__ import annotations

import csv
import io
from typing import Any


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(r)) for r in cells]
    lines.insert(1, "  ".join("-" * x for x in w))
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1 else f"{v:,.1f}" if abs(v) < 1e5 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "-" if v is None else str(v)


def render_profile(rep: dict) -> str:
    out = [f"model     {rep['model']} ({rep['format']}, {rep['parameters']:,} parameters)",
           f"target    {rep['target']} on {rep['device']} ({rep['machine'].get('cpu', '?')}, "
           f"load avg {rep['machine'].get('load_avg_1m', float('nan')):.1f})",
           f"settings  {rep['settings']['repeats']} repeats after {rep['settings']['warmup']} warm-ups; "
           f"decode: {rep['settings']['decode_tokens']} steps after a {rep['settings']['decode_ctx']}-token prompt",
           ""]
    out.append(_table(["prefill / TTFT", "ctx", "p50 ms", "p95 ms", "p95/p50", "tokens/s"],
                      [["batch 1", r["ctx"], r["p50_ms"], r["p95_ms"], r["p95_over_p50"], r["tokens_per_s"]]
                       for r in rep["prefill"]]))
    out.append("")
    out.append(_table(["decode", "batch", "p50 ms/step", "p95 ms/step", "p95/p50", "tokens/s"],
                      [[f"ctx {r['ctx']}", r["batch"], r["p50_ms"], r["p95_ms"], r["p95_over_p50"],
                        r["tokens_per_s"]] for r in rep["decode"]]))
    m = rep["memory"]
    out += ["", f"memory    peak RSS {m['peak_rss_mb']:.0f} MiB ({m['peak_over_baseline_mb']:+.0f} MiB over the "
                f"process before loading; load {m['load_delta_mb']:+.0f} MiB)"
            + (f"; device peak {m['device_peak_mb']:.0f} MiB" if m.get("device_peak_mb") is not None else "")]
    bw, eff = rep.get("bandwidth"), rep.get("efficiency")
    if bw:
        out.append(f"bandwidth {bw['gb_per_s']:.1f} GB/s ({bw['kernel']} streaming copy, {bw['threads']} threads)")
    if eff:
        out.append(f"decode efficiency at batch 1: {eff['weight_bytes_per_token'] / 2**20:.1f} MiB of weights/token x "
                   f"{eff['tokens_per_s']:.1f} tokens/s = {eff['achieved_gb_per_s']:.2f} GB/s = "
                   f"{100 * eff['fraction']:.1f}% of the measured bandwidth "
                   f"(roofline {eff['roofline_tokens_per_s']:.0f} tokens/s)")
    lt = rep.get("layers")
    if lt:
        out.append("")
        rows = [[p["module"], p["ms"], p["pct"], d["ms"], d["pct"]] for p, d in zip(lt["prefill"], lt["decode"])]
        out.append(_table([f"per module (one run)", f"prefill ctx {lt['ctx']} ms", "%", "decode ms", "%"], rows))
    for n in rep.get("notes", []):
        out.append(f"note: {n}")
    return "\n".join(out)


def profile_rows(rep: dict) -> list[dict]:
    """One flat row per measurement (CSV)."""
    rows = []
    base = {"model": rep["model"], "target": rep["target"], "device": rep["device"]}
    for r in rep["prefill"]:
        rows.append({**base, "phase": "prefill", "ctx": r["ctx"], "batch": 1, **_lat(r)})
    for r in rep["decode"]:
        rows.append({**base, "phase": "decode", "ctx": r["ctx"], "batch": r["batch"], **_lat(r)})
    return rows


def _lat(r: dict) -> dict:
    return {k: r[k] for k in ("p50_ms", "p95_ms", "mean_ms", "min_ms", "max_ms", "n", "tokens_per_s")}


def to_csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    keys = list(dict.fromkeys(k for r in rows for k in r))
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


# ---------------------------------------------------------------- sweeps
def sweep_rows(rep: dict) -> list[dict]:
    rows = []
    for c in rep["configs"]:
        row = {k: c[k] for k in ("layers", "hidden", "heads", "kv_heads", "head_dim", "intermediate", "params",
                                 "params_delta_pct")}
        row["prefill_p50_ms"] = c["prefill"]["p50_ms"] if c.get("prefill") else None
        for b, d in c["decode"].items():
            row[f"decode_b{b}_p50_ms"] = d["p50_ms"]
            row[f"decode_b{b}_p95_ms"] = d["p95_ms"]
            row[f"decode_b{b}_tokens_per_s"] = d["tokens_per_s"]
        row["pareto"] = c["pareto"]
        if "meets_budget" in c:
            row["meets_budget"] = c["meets_budget"]
        rows.append(row)
    return rows


def render_sweep(rep: dict) -> str:
    batches = [str(b) for b in rep["settings"]["batch"]]
    head = ["layers", "hidden", "heads/kv", "ffn", "params", "prefill ms"] + \
           [f"b{b} ms/step" for b in batches] + [f"b{b} tok/s" for b in batches] + ["pareto"]
    budget = rep.get("budget_ms")
    if budget is not None:
        head.append(f"<= {budget} ms")
    rows = []
    for c in rep["configs"]:
        r = [c["layers"], c["hidden"], f"{c['heads']}/{c['kv_heads']}", c["intermediate"], c["params"],
             c["prefill"]["p50_ms"] if c.get("prefill") else None]
        r += [c["decode"][b]["p50_ms"] for b in batches] + [c["decode"][b]["tokens_per_s"] for b in batches]
        r.append("*" if c["pareto"] else "")
        if budget is not None:
            r.append("yes" if c.get("meets_budget") else "")
        rows.append(r)
    out = [f"depth-width sweep at {rep['params_target']:,} parameters (+-{rep['tolerance_pct']}%) from "
           f"{rep['base']} on target {rep['target']} ({rep['device']}); random weights, "
           f"{rep['settings']['repeats']} repeats", "", _table(head, rows)]
    eff = rep.get("effect")
    if eff:
        out += ["", eff["summary"]]
    if budget is not None:
        ok = [c for c in rep["configs"] if c.get("meets_budget")]
        out.append(f"{len(ok)} shape(s) meet the {budget} ms batch-1 decode budget"
                   + (": " + ", ".join(f"{c['layers']}x{c['hidden']}" for c in ok) if ok else ""))
    for n in rep.get("notes", []):
        out.append(f"note: {n}")
    return "\n".join(out)
