from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import UsageError
from .options import Run, verb_options


def _ints(v: Optional[str], name: str) -> Optional[list[int]]:
    if v is None:
        return None
    try:
        out = [int(x) for x in v.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{name} takes comma-separated integers, not {v!r}", hint=f"e.g. {name} 1,4") from None
    if not out or min(out) < 1:
        raise UsageError(f"{name} takes positive integers, not {v!r}")
    return out


@verb_options("force", "json", "quiet", "allow_pickle")
def profile(
    model: Annotated[Optional[str], typer.Argument(help="Model: a path (HF folder, .safetensors, .gguf, .onnx), "
                                                        "sample:smollm2-135m, or a hub id. With --sweep: the base.",
                                                   show_default=False)] = None,
    target: Annotated[str, typer.Option("--target", "-t", help="Target: torch, onnxruntime, llamacpp, or one a "
                                                               "plugin adds (slmctl plugins lists them).")] = "torch",
    ctx: Annotated[Optional[str], typer.Option("--ctx", help="Prefill context lengths, e.g. 128,512 "
                                                             "(sweep: the prompt length).")] = None,
    batch: Annotated[Optional[str], typer.Option("--batch", help="Decode batch sizes, e.g. 1,4 (sweep: 1,16).")] = None,
    repeats: Annotated[int, typer.Option("--repeats", "-n", help="Timed runs per figure (p50/p95 over them).")] = 10,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed runs before the timed ones.")] = 2,
    decode_tokens: Annotated[int, typer.Option("--decode-tokens", help="Decode steps per timed run.")] = 16,
    decode_ctx: Annotated[Optional[int], typer.Option("--decode-ctx", help="Prompt length before decoding "
                                                                           "(default: the smallest --ctx).")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, ... (default: the target's best).")] = None,
    layers: Annotated[bool, typer.Option("--layers/--no-layers", help="Per-layer time breakdown (torch).")] = True,
    bandwidth: Annotated[bool, typer.Option("--bandwidth/--no-bandwidth", help="Measure memory bandwidth and "
                                                                                 "decode efficiency.")] = True,
    sweep: Annotated[Optional[str], typer.Option("--sweep", help="Sweep shapes instead: depth-width.")] = None,
    params: Annotated[Optional[str], typer.Option("--params", "--budget", help="Sweep: parameter budget, e.g. 135M.")] = None,
    base: Annotated[Optional[str], typer.Option("--base", help="Sweep: base model or config.json (or MODEL).")] = None,
    depths: Annotated[Optional[str], typer.Option("--depths", help="Sweep: depths, e.g. 6,8,12,16,24,32,48.")] = None,
    budget_ms: Annotated[Optional[float], typer.Option("--budget-ms", help="Sweep: list the shapes whose batch-1 "
                                                                           "decode p50 meets this budget.")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write a plot: PNG, and SVG beside it (matplotlib).",
                                                 show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Also write the JSON report here.",
                                                   show_default=False)] = None,
    csv: Annotated[bool, typer.Option("--csv", help="Print the table as CSV.")] = False,
    run: Run = Run(),
) -> int:
    """Latency and memory on a hardware target: prefill (TTFT) per context length, decode per batch size,
    p50/p95 after warm-ups, peak memory, memory bandwidth and decode efficiency.

    With --sweep depth-width --params 135M --base MODEL: shapes of equal parameter count across depths,
    random weights, measured at batch 1 and a large batch, with the Pareto front.
    """
    from .. import api
    from ..recipe import ProfileRecipe

    if run.json and csv:
        raise UsageError("--json and --csv both print the result; choose one")
    out = run.output()
    ctx_l, batch_l, depths_l = _ints(ctx, "--ctx"), _ints(batch, "--batch"), _ints(depths, "--depths")
    if sweep is None and (params or base or depths or budget_ms is not None):
        raise UsageError("--params, --base, --depths and --budget-ms go with --sweep depth-width")
    if sweep is not None:
        recipe = ProfileRecipe(target=target, sweep=sweep, params=params, base=base, depths=depths_l,
                               ctx=ctx_l or [128], batch=batch_l or [1, 16], repeats=repeats, warmup=warmup,
                               decode_tokens=decode_tokens, device=device, budget_ms=budget_ms)
        rep = api.profile(model, recipe, log=out.log, progress=lambda it, desc="": out.progress(it, desc=desc))
        from ..profiling.report import render_sweep, sweep_rows, to_csv

        human = to_csv(sweep_rows(rep)) if csv else render_sweep(rep)
        plotter = "plot_sweep"
    else:
        recipe = ProfileRecipe(target=target, ctx=ctx_l or [128, 512], batch=batch_l or [1, 4], repeats=repeats,
                               warmup=warmup, decode_tokens=decode_tokens, decode_ctx=decode_ctx, device=device,
                               layers=layers, bandwidth=bandwidth)
        rep = api.profile(model, recipe, allow_pickle=run.allow_pickle, log=out.log)
        from ..profiling.report import profile_rows, render_profile, to_csv

        human = to_csv(profile_rows(rep)) if csv else render_profile(rep)
        plotter = "plot_profile"
    if plot is not None:
        from ..profiling import plot as plots

        written = getattr(plots, plotter)(rep, plot, force=run.force)
        rep["plots"] = [str(p) for p in written]
        out.log("wrote " + ", ".join(rep["plots"]))
    if output is not None:
        import json as _json

        from ..io.atomic import atomic_path

        with atomic_path(output, force=run.force) as tmp:
            tmp.write_text(_json.dumps(rep, indent=2, default=str) + "\n")
        out.log(f"wrote {output}")
    out.result(rep, human=human)
    return 0
