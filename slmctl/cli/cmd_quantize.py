from __future__ import annotations

from typing import Annotated, Optional

import typer

from .options import DataOpt, FieldOpt, ForceOpt, JsonOpt, ModelArg, QuietOpt, TrustRemoteCodeOpt
from .options import DeviceOpt, ThreadsOpt, apply_runtime
from .output import Output


def quantize(
    model: ModelArg,
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Output folder (written atomically). "
                                                  "Default: MODEL-<method>-w<bits>g<group> beside the input.",
                                                  show_default=False)] = None,
    bits: Annotated[int, typer.Option("--bits", "-b", help="Bits per weight: 2, 3, 4 or 8.")] = 4,
    method: Annotated[str, typer.Option("--method", "-m", help="rtn, gptq or awq.")] = "gptq",
    group_size: Annotated[int, typer.Option("--group-size", "-g", help="Input columns per scale: 32, 64, 128, ... "
                                                                      "or -1 for one scale per row.")] = 128,
    sym: Annotated[bool, typer.Option("--sym/--asym", help="Symmetric grid (zero fixed mid-range) or asymmetric.")] = True,
    format: Annotated[str, typer.Option("--format", "-f", help="gptq (GPTQ checkpoint layout; --asym as gptq_v2), "
                                                              "compressed-tensors (pack-quantized, symmetric only) or "
                                                              "gguf (one llama.cpp file of --type T; --method gptq, "
                                                              "imatrix or rtn).")] = "gptq",
    data: DataOpt = None,
    field: FieldOpt = "text",
    samples: Annotated[int, typer.Option("--samples", help="Calibration windows (gptq, awq).")] = 64,
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per calibration window.")] = 512,
    seed: Annotated[int, typer.Option("--seed", help="Seed for drawing the calibration windows.")] = 0,
    damp: Annotated[float, typer.Option("--damp", help="GPTQ damping, a fraction of mean(diag H).")] = 0.01,
    act_order: Annotated[bool, typer.Option("--act-order/--no-act-order", help="GPTQ: columns in decreasing Hessian order.")] = True,
    static_groups: Annotated[bool, typer.Option("--static-groups/--no-static-groups", help="GPTQ: group grids fixed before act-order.")] = True,
    true_sequential: Annotated[bool, typer.Option("--true-sequential/--no-true-sequential", help="GPTQ: quantise a layer's linears in forward order.")] = True,
    qtype: Annotated[Optional[str], typer.Option("--type", help="GGUF input or --format gguf: llama.cpp type (q4_k_m, q8_0, ...); "
                                                               "ONNX input: onnxruntime type.")] = None,
    allow_requantize: Annotated[bool, typer.Option("--allow-requantize", help="GGUF: requantise an already quantised file.")] = False,
    skip_incompatible: Annotated[bool, typer.Option("--skip-incompatible", help="Leave unquantised (float) the linears "
                                                    "the format's runtime cannot load with this grid (e.g. input width "
                                                    "not divisible by the group size for compressed-tensors), instead "
                                                    "of refusing.")] = False,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Measure perplexity before/after, KL and top-1.")] = True,
    eval_data: Annotated[Optional[list[str]], typer.Option("--eval-data", help="Report domains, repeatable (a "
                                                          "sample's eval region). Default: the calibration domain "
                                                          "and one it did not see (sample:unseen:readme).",
                                                          show_default=False)] = None,
    eval_ctx: Annotated[int, typer.Option("--eval-ctx", help="Tokens per report window.")] = 512,
    eval_windows: Annotated[int, typer.Option("--eval-windows", help="Report windows.")] = 16,
    max_ppl_increase: Annotated[Optional[float], typer.Option("--max-ppl-increase", help="Gate: largest perplexity rise in % (exit 3).")] = None,
    force: ForceOpt = False,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
) -> int:
    """Quantise the linear weights (RTN, GPTQ or AWQ) to safetensors that GPTQModel, transformers and vLLM load.

    Prints the output path; the quality report (perplexity before/after on held-out text, KL, top-1
    agreement, size, bits per weight) goes to stderr, and into the JSON with --json.
    GGUF inputs take --type (llama.cpp types); ONNX inputs are quantised through onnxruntime.
    """
    from .. import api
    from ..eval.compare import enforce, render_report
    from ..recipe import QuantizeRecipe

    out = Output(json, quiet)
    apply_runtime(device, threads)
    recipe = QuantizeRecipe(bits=bits, method=method, group_size=group_size, sym=sym, fmt=format,
                            data=data or "sample:mix", field=field, samples=samples, seq_len=seq_len, seed=seed,
                            damp=damp, act_order=act_order, static_groups=static_groups,
                            true_sequential=true_sequential, qtype=qtype, allow_requantize=allow_requantize,
                            skip_incompatible=skip_incompatible, report=report, eval_data=eval_data,
                            eval_ctx=eval_ctx, eval_windows=eval_windows, max_ppl_increase=max_ppl_increase)
    res = api.quantize(model, output, recipe, force=force, trust_remote_code=trust_remote_code, log=out.log,
                       progress=lambda it=None, desc="", **kw: out.progress(it, desc=desc, **kw))
    rep = res.get("report")
    if rep:
        out.log(render_report(rep))
    if json and rep:
        rep.pop("eval", None)
    out.result(res, human=res["output"])
    enforce(res)
    return 0
