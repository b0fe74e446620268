from __future__ import annotations

from typing import Annotated, Optional

import typer

from .options import DataOpt, FieldOpt, ModelArg, Report, Run, verb_options


@verb_options("max_ppl_increase", "max_kld", "min_top1", "json", "quiet", "allow_pickle", "trust_remote_code",
              "device", "threads")
def eval_(
    model: ModelArg,
    data: DataOpt = None,
    field: FieldOpt = "text",
    reference: Annotated[Optional[str], typer.Option("--reference", "-r", help="Reference model for KL divergence, "
                                                     "top-1 agreement and the perplexity ratio.")] = None,
    ctx: Annotated[int, typer.Option("--ctx", help="Tokens per window.")] = 512,
    windows: Annotated[int, typer.Option("--windows", help="Number of non-overlapping windows (0: all).")] = 40,
    backend: Annotated[Optional[str], typer.Option("--backend", help="Force a backend: torch, llamacpp, onnxruntime.")] = None,
    run: Run = Run(),
    report: Report = Report(),
) -> int:
    """Perplexity, and KL divergence / top-1 agreement against a reference; gates exit 3.

    Every backend (torch for HF/safetensors, llama.cpp for GGUF, onnxruntime for ONNX) sees the same
    token windows. The default data is the evaluation region of the Shakespeare sample. Several --data
    give one row per domain (a robustness table; gates apply to every domain), e.g.
    --data sample:mix --data sample:unseen:code --data sample:unseen:readme --data sample:unseen:licenses.
    """
    from .. import api
    from ..eval.compare import enforce
    from ..recipe import EvalRecipe

    out = run.output()
    recipe = EvalRecipe(data=data or ["sample:shakespeare"], field=field, reference=reference, ctx=ctx,
                        windows=windows or None, backend=backend, **report.fields)
    res = api.eval_verb(model, recipe, allow_pickle=run.allow_pickle, trust_remote_code=run.trust_remote_code,
                        log=out.log, progress=out.progress)
    out.result(res, human=render_domains(res) if "domains" in res else render(res))
    enforce(res)
    return 0

def render(rep: dict) -> str:
    rows = [("model", f"{rep['model']} ({rep['format']}, {rep['backend']})"),
            ("windows", f"{rep['windows']} x {rep['ctx']} tokens ({rep['tokens']} scored)"),
            ("perplexity", f"{rep['ppl']:.4f}")]
    if "kld" in rep:
        k = rep["kld"]
        rows += [("reference", f"{rep['reference']} ({rep['reference_backend']})"),
                 ("reference ppl", f"{rep['reference_ppl']:.4f}"),
                 ("ppl ratio", f"{rep['ppl_ratio']:.5f} ({rep['ppl_increase_pct']:+.3f}%)"),
                 ("KL mean", f"{k['mean']:.6f}"), ("KL median", f"{k['median']:.6f}"),
                 ("KL p99", f"{k['p99']:.6f}"), ("KL max", f"{k['max']:.6f}"),
                 ("top-1 agreement", f"{rep['top1_agreement_pct']:.2f}%")]
    if rep.get("tokens_per_s"):
        rows.append(("throughput", f"{rep['tokens_per_s']:.1f} tokens/s"))
    g = rep.get("gates")
    if g and (g["failed"] or g["passed"]):
        rows.append(("gates", "passed" if g["passed"] else "FAILED: " + "; ".join(g["failed"])))
    w = max(len(r[0]) for r in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def render_domains(res: dict) -> str:
    """The robustness table: perplexity (and with a reference KL, top-1, the rise) per domain."""
    reps = res["domains"]
    ref = "kld" in reps[0]
    head = ["domain", "windows", "ppl"] + (["ref ppl", "rise %", "KL mean", "top-1 %"] if ref else [])
    rows = [[r["data"], f"{r['windows']}x{r['ctx']}", f"{r['ppl']:.4f}"]
            + ([f"{r['reference_ppl']:.4f}", f"{r['ppl_increase_pct']:+.3f}", f"{r['kld']['mean']:.6f}",
                f"{r['top1_agreement_pct']:.2f}"] if ref else []) for r in reps]
    w = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    lines = [f"model {res['model']} ({res['format']}, {res['backend']})"
             + (f", reference {res['reference']}" if res.get("reference") else "")]
    lines += ["  ".join(str(x).ljust(n) if i == 0 else str(x).rjust(n) for i, (x, n) in enumerate(zip(r, w)))
              for r in [head, *rows]]
    g = res.get("gates")
    if g and g["failed"]:
        lines.append("gates FAILED: " + "; ".join(g["failed"]))
    return "\n".join(lines)
