"""The one quality report every verb ends with, and the gates on it.

``quality_report`` measures an output against its input on held-out text, domain by domain (perplexity
before and after, KL divergence, top-1 agreement) and their sizes on disk. ``gates`` says which limits a
report crosses; ``check_gates`` records that in the report; ``enforce`` raises ``GateFailed`` (exit 3,
mapped in one place, slmctl.cli.app.main) once the caller has printed its result, so a gated output is
still written and reported.
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import GateFailed, UsageError

Log = Callable[[str], None]


def _nolog(msg: str) -> None:
    pass


def quality_report(out: str, ref: str, *, data, ctx: int, windows: int, stats: dict | None = None, calib=None,
                   field: str = "text", log: Log = _nolog, progress=None) -> dict[str, Any]:
    """Perplexity before/after, KL and top-1 agreement of ``out`` against ``ref`` on each domain of ``data``
    (a source, or a list of domains: the first fills the top-level figures), sizes on disk and, with the
    quantiser's ``stats``, bits per weight. ``calib``: the calibration data, to mark each domain as the
    calibration domain or one it did not see. ``eval`` holds the first domain's full eval report."""
    from ..calib import domain_role, label
    from ..io.resolve import load_artifact
    from .run import evaluate

    out_art, ref_art = load_artifact(out, log=log)[0], load_artifact(ref, log=log)[0]
    domains = [data] if isinstance(data, str) else list(data)
    rows, first = [], None
    for d in domains:
        log(f"quality report: {windows} window(s) of {ctx} tokens of {label(d)} (held-out region)")
        rep = evaluate(out_art, data=d, field=field, reference_art=ref_art, ctx=ctx, windows=windows, log=log,
                       progress=progress)
        rep["data"] = label(d)
        first = first or rep
        rows.append({"data": label(d), "role": domain_role(d, calib) if calib is not None else None,
                     "ctx": ctx, "windows": rep["windows"], "ppl_before": rep["reference_ppl"], "ppl_after": rep["ppl"],
                     "ppl_increase_pct": rep["ppl_increase_pct"], "kld_mean": rep["kld"]["mean"],
                     "top1_agreement_pct": rep["top1_agreement_pct"]})
        log(f"{rows[-1]['data']}: perplexity {rows[-1]['ppl_before']:.4f} -> {rows[-1]['ppl_after']:.4f} "
            f"({rows[-1]['ppl_increase_pct']:+.2f}%), KL {rows[-1]['kld_mean']:.4f}, "
            f"top-1 {rows[-1]['top1_agreement_pct']:.1f}%")
    r = {k: v for k, v in rows[0].items() if k != "role"}
    r["size_before"], r["size_after"] = ref_art.size_on_disk(), out_art.size_on_disk()
    if stats is not None:
        params = stats.get("quantized_params") or 0
        r["bits_per_weight"] = (8 * stats["quantized_bytes"] / params) if params else None
    r["domains"] = rows
    r["eval"] = first
    return r


def domain_lines(rows: list[dict]) -> list[str]:
    """The per-domain part of a quality report: one line per domain."""
    w = max(len(x["data"]) for x in rows)
    return [f"  {x['data']:<{w}}  {x['ppl_before']:.4f} -> {x['ppl_after']:.4f} ({x['ppl_increase_pct']:+.3f}%)  "
            f"KL {x['kld_mean']:.6f}  top-1 {x['top1_agreement_pct']:.2f}%"
            + (f"  [{x['role']}]" if x.get("role") else "") for x in rows]


def render_report(r: dict[str, Any]) -> str:
    """The quality report as aligned lines for stderr."""
    mb = 1024 * 1024
    rows = [("perplexity", f"{r['ppl_before']:.4f} -> {r['ppl_after']:.4f} ({r['ppl_increase_pct']:+.3f}%)"),
            ("KL mean", f"{r['kld_mean']:.6f}"), ("top-1 agreement", f"{r['top1_agreement_pct']:.2f}%"),
            ("size", f"{r['size_before'] / mb:.1f} MiB -> {r['size_after'] / mb:.1f} MiB")]
    if r.get("bits_per_weight"):
        rows.append(("bits per weight", f"{r['bits_per_weight']:.3f} (quantised linears, with scales and zeros)"))
    rows.append(("measured on", f"{r['windows']} x {r['ctx']} tokens of {r['data']}"))
    w = max(len(k) for k, _ in rows)
    lines = [f"{k:<{w}}  {v}" for k, v in rows]
    if len(r.get("domains") or ()) > 1:
        lines += ["per domain (perplexity before -> after, KL, top-1):", *domain_lines(r["domains"])]
    return "\n".join(lines)


# ---------------------------------------------------------------- gates
def _figures(rep: dict) -> tuple[float, float, float, float | None, float | None]:
    """(before, after, rise %, mean KL, top-1 %) from an eval report (model vs reference) or a quality report."""
    if "ppl_before" in rep:
        return (rep["ppl_before"], rep["ppl_after"], rep["ppl_increase_pct"], rep.get("kld_mean"),
                rep.get("top1_agreement_pct"))
    return rep["reference_ppl"], rep["ppl"], rep["ppl_increase_pct"], rep["kld"]["mean"], rep["top1_agreement_pct"]


def gates(rep: dict, *, max_ppl_increase: float | None = None, max_kld: float | None = None,
          min_top1: float | None = None) -> list[str]:
    """Messages for each gate ``rep`` crosses (empty when all pass). ``rep`` is a quality report or an eval
    report against a reference; a report without a reference cannot be gated (a usage error)."""
    if max_ppl_increase is None and max_kld is None and min_top1 is None:
        return []
    if "ppl_before" not in rep and "kld" not in rep:
        raise UsageError("quality gates compare against a reference model", hint="add --reference REF")
    before, after, rise, kld, top1 = _figures(rep)
    failed = []
    if max_ppl_increase is not None and rise > max_ppl_increase:
        failed.append(f"perplexity rose {rise:.3f}% ({before:.4f} -> {after:.4f}), "
                      f"limit {max_ppl_increase}%: over by {rise - max_ppl_increase:.3f} points")
    if max_kld is not None and kld > max_kld:
        failed.append(f"mean KL divergence {kld:.6f} exceeds {max_kld} by {kld - max_kld:.6f}")
    if min_top1 is not None and top1 < min_top1:
        failed.append(f"top-1 agreement {top1:.2f}% is below {min_top1}% by {min_top1 - top1:.2f} points")
    return failed


def check_gates(result: dict, reports: dict | list[tuple[str, dict]], **limits: float | None) -> dict:
    """Gate ``reports`` (one report, or (label, report) pairs for several domains, each failure prefixed with
    its label) and record ``result["gates"] = {"passed", "failed"}``; returns that record."""
    if isinstance(reports, dict):
        failed = gates(reports, **limits)
    else:
        failed = [f"{name}: {f}" for name, rep in reports for f in gates(rep, **limits)]
    result["gates"] = {"passed": not failed, "failed": failed}
    return result["gates"]


def enforce(result: dict) -> None:
    """Raise GateFailed when ``result["gates"]`` records a crossed gate (after the result was printed)."""
    g = result.get("gates") or {}
    if g.get("failed"):
        raise GateFailed(f"{len(g['failed'])} quality gate(s) failed", failed=list(g["failed"]))
