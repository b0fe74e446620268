from __future__ import annotations

from typing import Annotated, Optional

import typer

from .options import ModelArg, OutOpt, Run, verb_options


@verb_options("max_shard_size", "force", "allow_pickle", "json", "quiet")
def export(
    model: ModelArg,
    output: OutOpt,
    format: Annotated[str, typer.Option("--format", "-f", help="hf, safetensors, gguf or onnx.")] = "hf",
    dtype: Annotated[str, typer.Option("--dtype", help="auto, float32, float16 or bfloat16 (hf/safetensors; onnx: float32/float16).")] = "auto",
    outtype: Annotated[Optional[str], typer.Option("--outtype", help="GGUF tensor type: f32, f16, bf16, q8_0, q4_0, q4_k_m, ...")] = None,
    imatrix: Annotated[Optional[str], typer.Option("--imatrix", help="GGUF k-quants: importance matrix file (llama.cpp GGUF or .dat); with --data it is computed and written there.")] = None,
    data: Annotated[Optional[list[str]], typer.Option("--data", help="GGUF k-quants: calibration text for slmctl's importance matrix, repeatable and weighted like quantize's --data (e.g. sample:mix, the offline calibration mix).", show_default=False)] = None,
    method: Annotated[Optional[str], typer.Option("--method", "-m", help="GGUF quantised types: gptq (error-correcting, "
                                                  "needs --data), imatrix (importance-weighted scales) or rtn (llama.cpp's "
                                                  "reference). Default: gptq with --data, imatrix with --imatrix, else rtn.")] = None,
    bits: Annotated[Optional[int], typer.Option("--bits", "-b", help="ONNX: quantise the export, 4 (MatMulNBits: "
                                                "slmctl's calibrated GPTQ with --data, default sample:mix) or 8 "
                                                "(onnxruntime's dynamic int8).")] = None,
    modelfile: Annotated[bool, typer.Option("--modelfile", help="GGUF: also write an Ollama Modelfile beside it "
                                                                "(chat template and stop tokens from the tokenizer).")] = False,
    run: Run = Run(),
) -> None:
    """Convert a model between formats (HF folder, .safetensors, GGUF, ONNX). Prints the output path."""
    from .. import api
    from ..recipe import ExportRecipe

    out = run.output()
    recipe = ExportRecipe(fmt=format, dtype=dtype, max_shard_size=run.max_shard_size, outtype=outtype, imatrix=imatrix,
                          data=data, method=method, bits=bits, modelfile=modelfile)
    path = api.export(model, output, recipe, force=run.force, allow_pickle=run.allow_pickle, log=out.log,
                      progress=lambda it, desc="": out.progress(it, desc=desc))
    out.result({"output": str(path), "format": format}, human=str(path))
