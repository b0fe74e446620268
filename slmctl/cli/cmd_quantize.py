from __future__ import annotations

from typing import Annotated, Optional

import typer

from .options import DataOpt, FieldOpt, ModelArg, Report, Run, verb_options


@verb_options("eval_data", "eval_ctx", "eval_windows", "max_ppl_increase", "force", "json", "quiet",
              "trust_remote_code", "device", "threads", eval_ctx=512, eval_windows=16)
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
    scale_search: Annotated[bool, typer.Option("--scale-search/--no-scale-search", help="GPTQ: each group's grid clipped where that lowers the Hessian-weighted rounding error (off: plain min/max grid).")] = True,
    qtype: Annotated[Optional[str], typer.Option("--type", help="GGUF input or --format gguf: llama.cpp type (q4_k_m, q8_0, ...); "
                                                               "ONNX input: onnxruntime type.")] = None,
    tensor_type: Annotated[Optional[list[str]], typer.Option("--tensor-type", help="--format gguf: PATTERN=TYPE, "
                                                             "repeatable: tensors whose GGUF name matches the regular "
                                                             "expression get this ggml type (q8_0, q6_k, q4_k, f16, ...) "
                                                             "instead of the --type mixture's; the first match wins.",
                                                             show_default=False)] = None,
    tensor_types_from: Annotated[Optional[str], typer.Option("--tensor-types-from", help="--format gguf: take every "
                                                             "tensor's type from this GGUF file of the same model (e.g. "
                                                             "to match another tool's file size); --type defaults to "
                                                             "its file type.", show_default=False)] = None,
    allow_requantize: Annotated[bool, typer.Option("--allow-requantize", help="GGUF: requantise an already quantised file.")] = False,
    skip_incompatible: Annotated[bool, typer.Option("--skip-incompatible", help="Leave unquantised (float) the linears "
                                                    "the format's runtime cannot load with this grid (e.g. input width "
                                                    "not divisible by the group size for compressed-tensors), instead "
                                                    "of refusing.")] = False,
    report_on: Annotated[bool, typer.Option("--report/--no-report", help="Measure perplexity before/after, KL and top-1.")] = True,
    run: Run = Run(),
    report: Report = Report(),
) -> int:
    """Quantise the linear weights (RTN, GPTQ or AWQ) to safetensors that GPTQModel, transformers and vLLM load.

    Prints the output path; the quality report (perplexity before/after on held-out text, KL, top-1
    agreement, size, bits per weight) goes to stderr, and into the JSON with --json.
    GGUF inputs take --type (llama.cpp types); ONNX inputs are quantised through onnxruntime.
    """
    from .. import api
    from ..eval.compare import enforce, render_report
    from ..recipe import QuantizeRecipe

    out = run.output()
    recipe = QuantizeRecipe(bits=bits, method=method, group_size=group_size, sym=sym, fmt=format,
                            data=data or "sample:mix", field=field, samples=samples, seq_len=seq_len, seed=seed,
                            damp=damp, act_order=act_order, static_groups=static_groups,
                            true_sequential=true_sequential, scale_search=scale_search, qtype=qtype, tensor_type=tensor_type,
                            tensor_types_from=tensor_types_from, allow_requantize=allow_requantize,
                            skip_incompatible=skip_incompatible, report=report_on, **report.fields)
    res = api.quantize(model, output, recipe, force=run.force, trust_remote_code=run.trust_remote_code, log=out.log,
                       progress=lambda it=None, desc="", **kw: out.progress(it, desc=desc, **kw))
    rep = res.get("report")
    if rep:
        out.log(render_report(rep))
    if run.json and rep:
        rep.pop("eval", None)
    out.result(res, human=res["output"])
    enforce(res)
    return 0
