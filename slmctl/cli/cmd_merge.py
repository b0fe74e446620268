from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from .options import AllowPickleOpt, ForceOpt, JsonOpt, MaxShardOpt, OutOpt, QuietOpt
from .output import Output


def merge(
    output: OutOpt,
    models: Annotated[Optional[List[str]], typer.Argument(
        help="Models to merge (HF folders, .safetensors with config.json, .gguf, sample:..., hub ids). "
             "With --lora: the one base model.", show_default=False)] = None,
    method: Annotated[Optional[str], typer.Option("--method", "-m", help="linear, slerp, task_arithmetic, ties, "
                                                  "dare_ties, dare_linear, passthrough, model_stock, breadcrumbs, "
                                                  "breadcrumbs_ties, della, della_linear, nearswap.")] = None,
    base: Annotated[Optional[str], typer.Option("--base", help="Base model (task vectors are taken against it; "
                                                "slerp's t=0 end; default for slerp: the first model).")] = None,
    weights: Annotated[Optional[str], typer.Option("--weights", help="Weights, one or one per model (besides "
                                                   "the base), comma-separated, e.g. 1,0.5.")] = None,
    t: Annotated[Optional[str], typer.Option("--t", help="Interpolation factor for slerp/nearswap; a list "
                                             "(0,0.5,1) is a gradient over the layers.")] = None,
    density: Annotated[Optional[str], typer.Option("--density", help="Fraction of each task vector kept (ties, "
                                                   "dare_*, breadcrumbs, della); one or one per model.")] = None,
    lambda_: Annotated[Optional[float], typer.Option("--lambda", help="Scale of the merged task vector.")] = None,
    normalize: Annotated[Optional[bool], typer.Option("--normalize/--no-normalize", help="Divide by the sum of "
                                                      "weights (method default if unset).", show_default=False)] = None,
    rescale: Annotated[Optional[bool], typer.Option("--rescale/--no-rescale", help="DARE/DELLA: rescale kept "
                                                    "deltas to the dropped delta's L1 norm.", show_default=False)] = None,
    gamma: Annotated[Optional[float], typer.Option("--gamma", help="breadcrumbs: fraction of largest deltas dropped.")] = None,
    epsilon: Annotated[Optional[float], typer.Option("--epsilon", help="della: spread of keep probabilities.")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="A mergekit YAML config (models, "
                                                   "method and parameters come from it).")] = None,
    lora: Annotated[Optional[str], typer.Option("--lora", help="Fold this PEFT LoRA adapter folder into the "
                                                "one model given.")] = None,
    tokenizer_source: Annotated[Optional[str], typer.Option("--tokenizer-source", help="'base' or a model: its "
                                                            "tokenizer is kept and embedding rows are aligned to it "
                                                            "by token.")] = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="Compute dtype: float32, float16, bfloat16 "
                                                 "(default: the inputs').")] = None,
    out_dtype: Annotated[Optional[str], typer.Option("--out-dtype", help="Output dtype (default: the compute "
                                                     "dtype).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random drops (dare_*, della); the same seed "
                                      "gives the same output.")] = 0,
    eval_data: Annotated[Optional[list[str]], typer.Option("--eval-data", help="Report domains, repeatable (a "
                                                           "sample's eval region). Default: sample:mix and "
                                                           "sample:unseen:readme.", show_default=False)] = None,
    eval_ctx: Annotated[int, typer.Option("--eval-ctx", help="Tokens per report window.")] = 256,
    eval_windows: Annotated[int, typer.Option("--eval-windows", help="Report windows: perplexity, KL and top-1 of "
                                                                     "the merged model against the base (0: no "
                                                                     "report).")] = 0,
    max_ppl_increase: Annotated[Optional[float], typer.Option("--max-ppl-increase", help="Gate: largest perplexity "
                                                              "rise over the base in %; exit 3 when crossed (the "
                                                              "output is kept).")] = None,
    max_kld: Annotated[Optional[float], typer.Option("--max-kld", help="Gate: largest mean KL divergence from the "
                                                     "base.")] = None,
    min_top1: Annotated[Optional[float], typer.Option("--min-top1", help="Gate: smallest top-1 agreement with the "
                                                      "base in %.")] = None,
    max_shard_size: MaxShardOpt = None,
    force: ForceOpt = False,
    allow_pickle: AllowPickleOpt = False,
    json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> int:
    """Merge models (linear, SLERP, task arithmetic, TIES, DARE, passthrough, ...) or fold a LoRA adapter.

    Examples: slmctl merge A B --method slerp --t 0.5 -o OUT;
    slmctl merge A B C --method ties --base BASE --density 0.5 --weights 1,1 -o OUT;
    slmctl merge --config merge.yml -o OUT; slmctl merge --lora ADAPTER BASE -o OUT.
    Streams one tensor at a time; prints the output folder.
    """
    from .. import api
    from ..eval.compare import enforce, render_report
    from ..recipe import MergeRecipe

    out = Output(json, quiet)
    recipe = MergeRecipe(method=method, base=base, weights=weights, t=t, density=density, lambda_=lambda_,
                         normalize=normalize, rescale=rescale, gamma=gamma, epsilon=epsilon,
                         tokenizer_source=tokenizer_source, dtype=dtype, out_dtype=out_dtype, seed=seed,
                         max_shard_size=max_shard_size, eval_data=eval_data, eval_ctx=eval_ctx,
                         eval_windows=eval_windows, max_ppl_increase=max_ppl_increase, max_kld=max_kld,
                         min_top1=min_top1)
    res = api.merge_verb(models or [], output, recipe, config=config, lora=lora, force=force,
                         allow_pickle=allow_pickle, log=out.log,
                         progress=lambda it, desc="": out.progress(it, desc=desc, unit="tensor"))
    if res.get("report"):
        out.log(render_report(res["report"]))
        res["report"].pop("eval", None)
    out.result(res, human=res["output"])
    enforce(res)
    return 0
