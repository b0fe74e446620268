from __future__ import annotations

from typing import Annotated, Optional

import typer

from .options import DataOpt, FieldOpt, ModelArg, OutOpt, Report, Run, verb_options


@verb_options("eval_data", "eval_ctx", "eval_windows", "max_ppl_increase", "max_shard_size", "force", "json", "quiet",
              "trust_remote_code", "device", "threads", eval_ctx=256, eval_windows=8)
def prune(
    model: ModelArg,
    output: OutOpt,
    method: Annotated[str, typer.Option("--method", "-m", help="magnitude, wanda, sparsegpt (unstructured / N:M), "
                                                                "depth (drop layers) or width (heads, MLP, hidden).")] = "wanda",
    sparsity: Annotated[float, typer.Option("--sparsity", help="Share of weights to zero (unstructured).")] = 0.5,
    pattern: Annotated[Optional[str], typer.Option("--pattern", help="N:M pattern, e.g. 2:4 (N kept of every M).")] = None,
    adaptive: Annotated[bool, typer.Option("--adaptive", help="Per-layer ratios: prune less where a layer matters "
                                                              "more, the average held at the target.")] = False,
    adaptive_metric: Annotated[Optional[str], typer.Option("--adaptive-metric", help="owl (outlier ratio, default for "
                                                           "unstructured) or bi (Block Influence; width always uses bi).")] = None,
    adaptive_lambda: Annotated[float, typer.Option("--adaptive-lambda", help="Largest per-layer deviation from the "
                                                                             "target ratio.")] = 0.08,
    layers: Annotated[Optional[int], typer.Option("--layers", help="Depth: number of decoder layers to remove.")] = None,
    ratio: Annotated[Optional[float], typer.Option("--ratio", help="Depth: share of decoder layers to remove.")] = None,
    depth_metric: Annotated[str, typer.Option("--depth-metric", help="bi (Block Influence), angular (block of K "
                                                                     "layers) or last (baseline).")] = "bi",
    heads_ratio: Annotated[float, typer.Option("--heads-ratio", help="Width: share of attention heads to remove "
                                                                     "(GQA groups kept consistent).")] = 0.0,
    mlp_ratio: Annotated[float, typer.Option("--mlp-ratio", help="Width: share of MLP channels to remove.")] = 0.0,
    hidden_ratio: Annotated[float, typer.Option("--hidden-ratio", help="Width: share of hidden/embedding channels "
                                                                       "to remove.")] = 0.0,
    data: DataOpt = None,
    field: FieldOpt = "text",
    samples: Annotated[int, typer.Option("--samples", help="Calibration windows.")] = 32,
    seqlen: Annotated[int, typer.Option("--seqlen", help="Tokens per calibration window.")] = 256,
    seed: Annotated[int, typer.Option("--seed", help="Seed for drawing calibration windows.")] = 0,
    run: Run = Run(),
    report: Report = Report(),
) -> int:
    """Prune a model: unstructured or N:M sparsity, whole layers (depth) or heads/channels (width).

    Calibration text defaults to the calibration region of the offline mix sample:mix (seeded); the
    perplexity before and after is measured on its held-out evaluation region and on a domain it never
    saw (sample:unseen:readme). Writes an HF folder
    and prints its path (or the full report with --json).
    """
    from .. import api
    from ..eval.compare import enforce
    from ..recipe import PruneRecipe

    out = run.output()
    recipe = PruneRecipe(method=method, sparsity=sparsity, pattern=pattern, adaptive=adaptive,
                         adaptive_metric=adaptive_metric, adaptive_lambda=adaptive_lambda, layers=layers, ratio=ratio,
                         depth_metric=depth_metric, heads_ratio=heads_ratio, mlp_ratio=mlp_ratio,
                         hidden_ratio=hidden_ratio, data=data or "sample:mix", field=field, samples=samples,
                         seqlen=seqlen, seed=seed, max_shard_size=run.max_shard_size, **report.fields)
    rep = api.prune(model, output, recipe, force=run.force, trust_remote_code=run.trust_remote_code, log=out.log,
                    progress=lambda it, desc="": out.progress(it, desc=desc))
    for line in summary(rep):
        out.log(line)
    out.result(rep, human=rep["output"])
    enforce(rep)
    return 0


def summary(rep: dict) -> list[str]:
    """The human report on stderr: parameters, per-layer sparsity or sizes, quality."""
    lines = [f"parameters: {rep['parameters_before']:,} -> {rep['parameters_after']:,}"
             + (f" ({rep['nonzero_parameters_after']:,} non-zero; sparsity {rep['sparsity']:.2%} of the decoder "
                "linear weights)" if "sparsity" in rep else "")]
    for r in rep["layers"]:
        if "sparsity" in r:
            lines.append(f"  layer {r['layer']:>3}: sparsity {r['sparsity']:.4f} (target {r['target']:.4f})")
        elif "dropped" in r:
            bi = f"  BI {r['block_influence']:.4f}" if "block_influence" in r else ""
            lines.append(f"  layer {r['layer']:>3}: {'dropped' if r['dropped'] else 'kept'}{bi}")
        else:
            lines.append(f"  layer {r['layer']:>3}: heads {r['num_attention_heads']}/{r['num_key_value_heads']} kv, "
                         f"mlp {r['intermediate_size']}")
    q = rep.get("quality")
    if q:
        from ..eval.compare import domain_lines

        lines.append(f"perplexity {q['ppl_before']:.4f} -> {q['ppl_after']:.4f} ({q['ppl_increase_pct']:+.2f}%) "
                     f"on {q['windows']} x {q['ctx']} tokens of {q['data']}"
                     + (" (evaluation region)" if q["data"].startswith("sample:") else ""))
        if len(q.get("domains") or ()) > 1:
            lines += ["per domain (perplexity before -> after, KL, top-1):", *domain_lines(q["domains"])]
    return lines
